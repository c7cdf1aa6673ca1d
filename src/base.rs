//! Loading a base model with its tokenizer and chat template, dense or as 4-bit.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::data::{ChatEncoder, ChatTemplate, TokenizerSpecials};
use crate::error::Result;
use crate::models::{
    CausalLm, LoadOptions, LoadReport, ModelTokenizer, SaveDtype, load_pretrained,
};
use crate::quant::QuantConfig;

/// A loaded base model: the network, its tokenizer for generation, and the chat encoder that
/// turns records into training sequences with its template.
#[derive(Debug)]
pub struct BaseModel {
    /// The network (adapters can be added with [`LoraExt`](crate::lora::LoraExt)).
    pub model: CausalLm,
    /// Tokenizer with special tokens and stop ids, for generation and chat.
    pub tokenizer: ModelTokenizer,
    /// Template + tokenizer for datasets, evaluation and chat prompts.
    pub encoder: ChatEncoder,
    /// What was loaded.
    pub report: LoadReport,
    /// Where it came from.
    pub path: PathBuf,
}

impl BaseModel {
    /// Writes a dense Hugging Face directory: the model with its adapters merged (4-bit bases
    /// decoded) in `dtype`, plus the tokenizer files and chat template, so transformers and
    /// [`load_base`] open it directly.
    pub fn save_merged(&self, dir: &Path, dtype: SaveDtype, overwrite: bool) -> Result<()> {
        self.model.save_pretrained(dir, dtype, overwrite)?;
        self.tokenizer.save_pretrained(dir)?;
        Ok(())
    }
}

/// Loads a Hugging Face directory (safetensors, dense or bitsandbytes 4-bit) or a GGUF file.
/// With `quant`, dense weights are quantized to 4-bit on load (QLoRA's frozen base); a
/// bitsandbytes checkpoint stays 4-bit either way. `template` picks a built-in chat template
/// (`chatml`, `llama3`, …) instead of the model's own.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::{load_base, quant::QuantConfig};
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama.gguf");
/// let base = load_base(path.as_ref(), &Device::flex(), Some(QuantConfig::default()), Some("chatml")).unwrap();
/// assert!(base.report.device_bytes > 0);
/// ```
pub fn load_base(
    path: &Path,
    device: &Device,
    quant: Option<QuantConfig>,
    template: Option<&str>,
) -> Result<BaseModel> {
    let options = LoadOptions {
        quantize: quant,
        ..LoadOptions::default()
    };
    load_base_with(path, device, &options, template)
}

/// [`load_base`] with every loading option (4-bit quantization and the compute dtype);
/// [`crate::FinetuneConfig::load_options`] gives a run's.
pub fn load_base_with(
    path: &Path,
    device: &Device,
    options: &LoadOptions,
    template: Option<&str>,
) -> Result<BaseModel> {
    let (model, tokenizer, report) = load_pretrained(path, device, options)?;
    let encoder = if path.is_dir() {
        ChatEncoder::from_dir(path, template)?
    } else {
        gguf_chat_encoder(&tokenizer, path, template)?
    };
    Ok(BaseModel {
        model,
        tokenizer,
        encoder,
        report,
        path: path.to_path_buf(),
    })
}

/// The chat encoder of a GGUF model: its tokenizer with the chat template from its metadata, or
/// the built-in `template` when one is named.
///
/// ```
/// use medify_qlora::gguf_chat_encoder;
/// use medify_qlora::models::{GgufSource, ModelTokenizer};
/// let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama.gguf"));
/// let tok = ModelTokenizer::from_gguf(&GgufSource::open(path).unwrap()).unwrap();
/// assert!(gguf_chat_encoder(&tok, path, Some("chatml")).is_ok());
/// ```
pub fn gguf_chat_encoder(
    tokenizer: &ModelTokenizer,
    path: &Path,
    template: Option<&str>,
) -> Result<ChatEncoder> {
    let chat = match (template, &tokenizer.chat_template) {
        (Some(name), _) => ChatTemplate::builtin(name)?,
        (None, Some(t)) => ChatTemplate::new(&path.display().to_string(), t)?,
        (None, None) => {
            return Err(crate::data::DataError::Invalid(format!(
                "{} has no chat template; pass a built-in template name (chatml, llama3, …)",
                path.display()
            ))
            .into());
        }
    };
    let specials = TokenizerSpecials {
        bos: tokenizer.bos_token.clone(),
        eos: tokenizer.eos_token.clone(),
        pad: tokenizer.pad_token.clone(),
        unk: None,
    };
    Ok(ChatEncoder::new(tokenizer.inner().clone(), chat, specials))
}
