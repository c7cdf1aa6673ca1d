//! # medify-quant
//!
//! bitsandbytes-exact 4-bit quantization (NF4 / FP4, blockwise, with double quantization) for
//! QLoRA, on the host and on any burn device.
//!
//! * [`Packed4Bit`]: the host codec. Quantize an f32 tensor into packed codes plus a
//!   [`QuantState`], bit for bit what `bitsandbytes.functional.quantize_4bit` produces.
//! * [`Nf4Tensor`]: the same tensor resident on a burn device (packed codes as `u32` words),
//!   with dequantize, a fused 4-bit matmul and a differentiable frozen-weight `linear`.
//! * [`bnb`]: read and write the safetensors layout transformers uses for `load_in_4bit`.
//!
//! ```
//! use medify_quant::{Packed4Bit, QuantConfig};
//! let weights: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
//! let q = Packed4Bit::quantize(&weights, &[4, 64], &QuantConfig::default()).unwrap();
//! let back = q.dequantize();
//! let err = weights.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
//! assert!(err < 0.16); // half the widest NF4 gap (-1 .. -0.696)
//! ```

mod codebook;
mod error;
mod gemv;
mod host_kernels;
mod int8;
mod packed;
mod q4_gemm;
mod quant_state;

pub mod atomic;
pub mod bench;
pub mod bnb;
#[cfg(feature = "flex")]
mod decode_weight;
pub mod device;
pub mod dropout;
pub mod dtype;
#[cfg(feature = "flex")]
pub mod host_tensor;
pub mod simd;

pub use codebook::{FP4_CODE, NF4_CODE, QuantType, dynamic_signed_map, dynamic_unsigned_map};
#[cfg(feature = "flex")]
pub use decode_weight::DecodeWeight;
pub use device::{Int8Ops, Int8Tensor, Nf4Tensor, Quant4Ops, is_flex, linear_4bit};
pub use dropout::{DropoutKey, DropoutOps, dropout, dropout_at};
pub use error::QuantError;
pub use gemv::{GemvWeight, HeadPrecision, gemv_rows};
pub use host_kernels::{PackedView, Rhs, Scales, gemm_f32, matmul_4bit, matmul_4bit_input_grad};
pub use int8::{Int8Weight, SCB_SUFFIX, WEIGHT_FORMAT_SUFFIX, int8_quantization_config};
pub use packed::{Packed4Bit, QuantConfig, bits_per_weight, dequantize_blocks, quantize_blocks};
pub use quant_state::{
    Absmax, NESTED_BLOCKSIZE, NestedAbsmax, QuantState, QuantStateJson, check_blocksize,
    decode_nested, torch_sum_f32,
};
