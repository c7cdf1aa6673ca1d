//! # medify-models
//!
//! Llama-family causal language models on burn, picked at run time from the device:
//! Llama 2/3 (with Llama 3.1 rope scaling), TinyLlama, SmolLM2, Mistral (sliding window) and
//! Gemma 1, loaded from Hugging Face directories (safetensors, single or sharded, dense or
//! bitsandbytes 4-bit) or GGUF files, with their tokenizers, a KV cache and sampling.
//!
//! ```
//! use burn::tensor::Device;
//! use medify_models::{CausalLm, LoadOptions, ModelTokenizer, GenerationConfig};
//! use medify_quant::QuantConfig;
//! let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
//! // The QLoRA base: every linear layer in NF4 with double quantization.
//! let options = LoadOptions::quantized(QuantConfig::default());
//! let (model, report) = CausalLm::from_pretrained(dir, &Device::flex(), &options).unwrap();
//! assert_eq!(report.quantized_linears, 14);
//! let tok = ModelTokenizer::from_dir(dir).unwrap();
//! let prompt = tok.encode("What is diabetes?", true).unwrap();
//! let cfg = GenerationConfig { max_new_tokens: 5, stop_ids: tok.stop_ids.clone(), ..Default::default() };
//! let out = model.generate(&[prompt], &cfg, &mut |_, _| true).unwrap();
//! assert!(!out[0].ids.is_empty());
//! ```

mod adapt;
mod batch;
mod config;
mod decode;
mod dtype;
mod error;
mod fused;
mod generate;
pub mod gguf;
mod gguf_export;
mod gradient_checkpointing;
mod kquants;
mod layers;
mod loader;
mod loss;
mod model;
mod random;
mod rope;
mod save;
mod tiled;
mod tokenizer;
pub mod weights;

pub use batch::{DecodeBatch, SequenceId, SequenceToken};
pub use config::{Activation, BnbQuantization, Family, LlamaConfig, RopeScaling};
pub use decode::{DecodeOptions, HeadPrecision};
#[cfg(feature = "flex")]
pub use decode::{DecodeSequence, HostDecoder};
pub use dtype::ComputeDtype;
pub use error::{ModelError, Result};
pub use fused::{FusedOps, KernelPath, masked_softmax, supports_fused, swiglu};
pub use generate::{Generation, GenerationConfig, Sampler, StopReason, TextStreamer};
pub use gguf::GgufSource;
pub use gguf_export::{GgufExport, GgufType, permute_qk};
pub use gradient_checkpointing::{Checkpointing, MicroBatchGradients};
pub use layers::{Attention, AttentionContext, DecoderLayer, LayerCache, Mlp, RmsNorm};
pub use loader::{LinearQuant, LoadOptions, LoadReport};
pub use loss::{CHUNK_BYTES, LmLossOps, chunked_lm_loss};
pub use model::{
    CausalLm, DEFAULT_TILE_BYTES, KvCache, Label, LossOutput, SequenceLogps, TokenBatch,
};
pub use random::RandomWeights;
pub use rope::Rope;
pub use save::SaveDtype;
pub use tokenizer::ModelTokenizer;
pub use weights::{HostWeight, SafetensorsSource, WeightSource};

use std::path::Path;

/// Loads a model and its tokenizer from a Hugging Face directory or a `.gguf` file.
///
/// ```
/// use burn::tensor::Device;
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama.gguf");
/// let (model, tok, _) = medify_models::load_pretrained(dir, &Device::flex(), &Default::default()).unwrap();
/// assert_eq!(model.config().vocab_size, tok.vocab_size());
/// ```
pub fn load_pretrained(
    path: impl AsRef<Path>,
    device: &burn::tensor::Device,
    options: &LoadOptions,
) -> Result<(CausalLm, ModelTokenizer, LoadReport)> {
    let path = path.as_ref();
    if let Err(source) = std::fs::metadata(path) {
        // Say so for the path given, not for a file looked for inside it.
        return Err(ModelError::Io {
            path: path.to_path_buf(),
            source,
        });
    }
    if path.is_file() {
        // One parse of the GGUF header serves the tokenizer, the config and the weights.
        let source = GgufSource::open(path)?;
        let tokenizer = ModelTokenizer::from_gguf(&source)?;
        let config = source.config().clone();
        let (model, report) = CausalLm::load(&source, &config, device, options)?;
        return Ok((model, tokenizer, report));
    }
    let tokenizer = ModelTokenizer::from_dir(path)?;
    let (model, report) = CausalLm::from_pretrained(path, device, options)?;
    Ok((model, tokenizer, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "flex")]
    #[test]
    fn a_path_that_does_not_exist_is_named_as_such() {
        let missing = Path::new("/nonexistent/model.gguf");
        let err = load_pretrained(
            missing,
            &burn::tensor::Device::flex(),
            &LoadOptions::dense(),
        )
        .expect_err("a missing path loads nothing");
        assert!(
            matches!(&err, ModelError::Io { path, source } if path == missing
                && source.kind() == std::io::ErrorKind::NotFound),
            "{err}"
        );
    }
}
