//! The one-token decode path on the CPU: a whole decoder step as host kernels.
//!
//! burn runs a decoder layer as a few dozen ops, each dispatched, allocated and (for the
//! matmuls) parallelized on its own; for one token of a small model that bookkeeping costs more
//! than the math. Here every thread of the pool runs the whole step (norms, 4-bit/int8/dense
//! matrix-vector products with their LoRA adapters, RoPE, attention over a host KV cache, the
//! gated MLP and the output head), taking its share of each op and meeting the others at a spin
//! barrier, so each weight is read once per step for every sequence of the batch and nothing is
//! allocated per token. The weights are the model's own Flex buffers (no copy); only an output
//! head made compact for inference ([`HeadPrecision`]) is a second, smaller copy.
//!
//! [`crate::DecodeBatch`] (and so `generate`, chat and serve) uses it when the model allows
//! (see [`HostDecoder::new`]) and prefills prompts with burn's forward pass, which is the faster
//! one for many tokens at once.

#[cfg(feature = "flex")]
mod host;
mod options;
#[cfg(feature = "flex")]
mod sequence;
#[cfg(feature = "flex")]
mod team;

#[cfg(feature = "flex")]
pub use host::HostDecoder;
pub use medify_quant::HeadPrecision;
pub(crate) use options::CompactHeadCache;
pub use options::DecodeOptions;
#[cfg(feature = "flex")]
pub use sequence::DecodeSequence;
