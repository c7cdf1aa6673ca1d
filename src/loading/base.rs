//! Loading a base model with its tokenizer and chat template, dense or as 4-bit.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::data::{ChatEncoder, ChatTemplate};
use crate::error::{FinetuneError, Result, io_err};
use crate::models::LinearQuant;
use crate::models::{
    CausalLm, GgufExport, GgufType, LoadOptions, LoadReport, ModelTokenizer, SaveDtype,
    load_pretrained,
};
use crate::training::Modelfile;
use medify_chat::{Chat, chat_encoder};

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

/// The files [`BaseModel::save_merged`] writes: with `overwrite`, a directory holding only these
/// is replaced; anything else in it (another model's `chat_template.jinja`, a user's notes) stops
/// the save, so nothing is mixed into or lost from a directory that is not a merge's.
pub const MERGED_FILES: [&str; 5] = [
    "model.safetensors",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
];

impl BaseModel {
    /// A conversation with this model through its chat template, with the medical safety
    /// layer ([`Chat::new`]'s defaults: triage, the educational system prompt, the disclaimer).
    pub fn chat(&self) -> Chat<'_> {
        Chat::new(&self.model, &self.tokenizer, &self.encoder)
    }

    /// Writes a dense Hugging Face directory: the model with its adapters merged (4-bit bases
    /// decoded) in `dtype`, plus the tokenizer files and chat template, so transformers and
    /// [`load_base`] open it directly. An existing non-empty `dir` is refused unless `overwrite`
    /// is set and it holds only [`MERGED_FILES`]; each file is replaced atomically, so an
    /// interrupted save leaves every file whole (old or new).
    pub fn save_merged(&self, dir: &Path, dtype: SaveDtype, overwrite: bool) -> Result<()> {
        check_output_dir(dir, overwrite, &MERGED_FILES)?;
        self.model.save_pretrained(dir, dtype, true)?;
        self.tokenizer.save_pretrained(dir)?;
        Ok(())
    }

    /// Writes one GGUF file for llama.cpp, Ollama and LM Studio: the model with its adapters
    /// merged (4-bit bases decoded) with matrices in `dtype`, the tokenizer, and the chat
    /// template this model is used with (a built-in one it was loaded with, else the model's
    /// own), so the end-of-turn token stops generation there too. An existing file is refused
    /// unless `overwrite`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_qlora::{load_base, models::GgufType};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama");
    /// let base = load_base(dir.as_ref(), &Device::flex(), None, Some("chatml")).unwrap();
    /// let out = std::env::temp_dir().join(format!("medify-doc-merged-{}.gguf", std::process::id()));
    /// base.save_gguf(&out, GgufType::F16, true).unwrap();
    /// let back = load_base(&out, &Device::flex(), None, None).unwrap();
    /// assert_eq!(back.tokenizer.chat_template.as_deref(),
    ///     medify_qlora::data::ChatTemplate::builtin_source("chatml").ok());
    /// std::fs::remove_file(&out).unwrap();
    /// ```
    pub fn save_gguf(&self, path: &Path, dtype: GgufType, overwrite: bool) -> Result<()> {
        if path.exists() && !overwrite {
            return Err(FinetuneError::WouldOverwrite(path.to_path_buf()));
        }
        let options = GgufExport {
            dtype,
            name: self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
            chat_template: self.chat_template_source(),
            overwrite,
        };
        Ok(self.model.save_gguf(path, &self.tokenizer, &options)?)
    }

    /// The Jinja source of the chat template this model is used with: the built-in one it was
    /// loaded with, else the model's own.
    fn chat_template_source(&self) -> Option<String> {
        ChatTemplate::builtin_source(self.encoder.template().name())
            .ok()
            .map(str::to_string)
            .or_else(|| self.tokenizer.chat_template.clone())
    }

    /// The Ollama `Modelfile` of this model's GGUF export at `gguf` (written beside it): its chat
    /// template as Ollama's template, stops at the end-of-turn tokens, and `system` (or the
    /// default educational system prompt) with the disclaimer.
    pub fn ollama_modelfile(&self, gguf: &Path, system: Option<&str>) -> Modelfile {
        let name = gguf
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let template = self.chat_template_source().unwrap_or_default();
        let eos = self.tokenizer.eos_token.clone().unwrap_or_default();
        Modelfile::new(
            &name,
            &template,
            &eos,
            Some(system.unwrap_or(crate::safety::DEFAULT_SYSTEM_PROMPT)),
        )
    }
}

/// Checks that files can be written into `dir`: it is absent or empty, or, with `overwrite`,
/// holds only names in `ours` (what an earlier write of the same kind left). Anything else in
/// it stops the write, so nothing is mixed into or lost from a directory that is not ours.
pub(crate) fn check_output_dir(dir: &Path, overwrite: bool, ours: &[&str]) -> Result<()> {
    if dir.is_file() {
        let source = std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "is a file, not a directory",
        );
        return Err(io_err(dir)(source));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    if !names.is_empty() && !overwrite {
        return Err(FinetuneError::WouldOverwrite(dir.to_path_buf()));
    }
    names.retain(|n| !ours.contains(&n.as_str()));
    names.sort();
    if !names.is_empty() {
        return Err(FinetuneError::ForeignFiles {
            dir: dir.to_path_buf(),
            files: names,
        });
    }
    Ok(())
}

/// Loads a Hugging Face directory (safetensors, dense or bitsandbytes 4-bit or 8-bit) or a GGUF
/// file. With `quant`, dense weights are quantized on load (QLoRA's frozen base: 4-bit, or
/// int8); a bitsandbytes checkpoint stays as it is stored either way. `template` picks a built-in chat template
/// (`chatml`, `llama3`, …) instead of the model's own.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::{load_base, quant::QuantConfig};
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tiny_models/llama.gguf");
/// let base = load_base(path.as_ref(), &Device::flex(), Some(QuantConfig::default().into()), Some("chatml")).unwrap();
/// assert!(base.report.device_bytes > 0);
/// ```
pub fn load_base(
    path: &Path,
    device: &Device,
    quant: Option<LinearQuant>,
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
    let encoder = chat_encoder(&tokenizer, template)?;
    Ok(BaseModel {
        model,
        tokenizer,
        encoder,
        report,
        path: path.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_merge_replaces_only_a_directory_of_its_own_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("merged");
        check_output_dir(&dir, false, &MERGED_FILES).unwrap(); // new
        std::fs::create_dir(&dir).unwrap();
        check_output_dir(&dir, false, &MERGED_FILES).unwrap(); // empty
        for f in MERGED_FILES {
            std::fs::write(dir.join(f), "old").unwrap();
        }
        let err = check_output_dir(&dir, false, &MERGED_FILES).unwrap_err();
        assert!(matches!(err, FinetuneError::WouldOverwrite(_)), "{err}");
        check_output_dir(&dir, true, &MERGED_FILES).unwrap();
        std::fs::write(dir.join("chat_template.jinja"), "x").unwrap();
        std::fs::write(dir.join("NOTES.md"), "mine").unwrap();
        let err = check_output_dir(&dir, true, &MERGED_FILES)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(NOTES.md, chat_template.jinja)"), "{err}");
        // Refusing changed nothing.
        assert_eq!(
            std::fs::read_to_string(dir.join("NOTES.md")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("config.json")).unwrap(),
            "old"
        );
        let file = root.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = check_output_dir(&file, true, &MERGED_FILES)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a-file") && err.contains("not a directory"),
            "{err}"
        );
    }
}
