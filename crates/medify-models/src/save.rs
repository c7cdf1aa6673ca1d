//! Saving a model as a Hugging Face directory (`config.json` + `model.safetensors`) with any
//! LoRA adapters folded in: what `merge_and_unload()` + `save_pretrained()` produce in Python.

use std::io::Write;
use std::path::Path;

use burn::tensor::Tensor;
use medify_lora::FrozenWeight;
use medify_lora::Projection;
use medify_quant::bnb::{self, OwnedTensor};
use medify_quant::{Int8Weight, Packed4Bit, QuantConfig, int8_quantization_config};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

use crate::error::{ModelError, Result};
use crate::loader::LinearQuant;
use crate::model::CausalLm;
use crate::tokenizer::ModelTokenizer;

/// Floating-point type of saved weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaveDtype {
    /// 32-bit, exact.
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16, the usual dtype of released checkpoints.
    BF16,
}

impl SaveDtype {
    /// Parses `f32|float32|f16|float16|bf16|bfloat16`.
    pub fn parse(name: &str) -> Option<SaveDtype> {
        match name.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(SaveDtype::F32),
            "f16" | "float16" | "fp16" | "half" => Some(SaveDtype::F16),
            "bf16" | "bfloat16" => Some(SaveDtype::BF16),
            _ => None,
        }
    }

    /// The dtype a Hugging Face model directory says its weights are in (`dtype`, or the
    /// older `torch_dtype`, of its `config.json`), when it names one of ours. `None` for a GGUF
    /// file, a directory without it, or an unreadable config (loading reports those).
    ///
    /// ```
    /// use medify_models::SaveDtype;
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama3");
    /// assert!(SaveDtype::of_checkpoint(dir.as_ref()).is_some());
    /// assert_eq!(SaveDtype::of_checkpoint("model.gguf".as_ref()), None);
    /// ```
    pub fn of_checkpoint(path: &std::path::Path) -> Option<SaveDtype> {
        let text = std::fs::read_to_string(path.join("config.json")).ok()?;
        let config: serde_json::Value = serde_json::from_str(&text).ok()?;
        ["dtype", "torch_dtype"].iter().find_map(|k| {
            config
                .get(*k)
                .and_then(|v| v.as_str())
                .and_then(SaveDtype::parse)
        })
    }

    /// transformers' name (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::F16 => "float16",
            SaveDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "F32",
            SaveDtype::F16 => "F16",
            SaveDtype::BF16 => "BF16",
        }
    }

    fn size(self) -> usize {
        match self {
            SaveDtype::F32 => 4,
            SaveDtype::F16 | SaveDtype::BF16 => 2,
        }
    }

    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(values.len() * self.size());
        match self {
            SaveDtype::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            SaveDtype::F16 => values
                .iter()
                .for_each(|v| out.extend(half::f16::from_f32(*v).to_le_bytes())),
            SaveDtype::BF16 => values
                .iter()
                .for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
        }
    }
}

pub(crate) enum Source<'a> {
    /// Values computed for the file (e.g. GGUF's `rope_freqs`).
    Values(Vec<f32>),
    Vector(&'a Tensor<1>),
    Matrix(&'a Tensor<2>),
    Linear(&'a Projection),
}

impl Source<'_> {
    pub(crate) fn shape(&self) -> Vec<usize> {
        match self {
            Source::Values(v) => vec![v.len()],
            Source::Vector(t) => t.dims().to_vec(),
            Source::Matrix(t) => t.dims().to_vec(),
            Source::Linear(p) => p.dims().to_vec(),
        }
    }

    pub(crate) fn values(&self) -> std::result::Result<Vec<f32>, String> {
        let data = match self {
            Source::Values(v) => return Ok(v.clone()),
            Source::Vector(t) => (*t).clone().into_data(),
            Source::Matrix(t) => (*t).clone().into_data(),
            Source::Linear(p) => p.effective_weight().into_data(),
        };
        data.convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))
    }
}

impl CausalLm {
    /// Writes `config.json` and `model.safetensors` into `dir`, every linear layer as the weight
    /// it effectively applies: adapters are merged (DoRA rescaled) and 4-bit weights decoded,
    /// so the directory is a plain dense checkpoint that transformers and this crate load.
    /// Tensors are streamed one at a time into a temporary file that is renamed when complete.
    /// A non-empty `dir` is refused unless `overwrite`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, LoadOptions, SaveDtype};
    /// let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama_nf4");
    /// let device = Device::flex();
    /// let (model, _) = CausalLm::from_pretrained(src, &device, &LoadOptions::dense()).unwrap();
    /// let out = std::env::temp_dir().join(format!("medify-doc-save-{}", std::process::id()));
    /// model.save_pretrained(&out, SaveDtype::BF16, false).unwrap();
    /// assert!(model.save_pretrained(&out, SaveDtype::BF16, false).is_err()); // not without overwrite
    /// let (dense, report) = CausalLm::from_pretrained(&out, &device, &LoadOptions::dense()).unwrap();
    /// assert_eq!(report.quantized_linears, 0);
    /// std::fs::remove_dir_all(&out).unwrap();
    /// ```
    pub fn save_pretrained(
        &self,
        dir: impl AsRef<Path>,
        dtype: SaveDtype,
        overwrite: bool,
    ) -> Result<()> {
        let dir = dir.as_ref();
        self.check_hf_expressible(dir)?;
        prepare_dir(dir, overwrite)?;
        let entries = self.save_entries();

        let file = dir.join("model.safetensors");
        let mut header = Map::new();
        let mut offset = 0usize;
        for (name, src) in &entries {
            let shape = src.shape();
            let bytes = shape.iter().product::<usize>() * dtype.size();
            header.insert(
                name.clone(),
                json!({"dtype": dtype.safetensors_name(), "shape": shape, "data_offsets": [offset, offset + bytes]}),
            );
            offset += bytes;
        }
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut head = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| ModelError::weights(file.display().to_string(), e.to_string()))?;
        while head.len() % 8 != 0 {
            head.push(b' ');
        }
        // A tensor that cannot be read back stops the write with its own message, not an
        // I/O error; the file is then left as it was.
        let mut unreadable = None;
        let written = medify_quant::atomic::write_with(&file, |out| {
            out.write_all(&(head.len() as u64).to_le_bytes())?;
            out.write_all(&head)?;
            let mut buf = Vec::new();
            for (name, src) in &entries {
                let values = src.values().map_err(|e| {
                    unreadable = Some(format!("reading {name} from the device: {e}"));
                    std::io::Error::other("unreadable tensor")
                })?;
                dtype.encode(&values, &mut buf);
                out.write_all(&buf)?;
            }
            Ok(())
        });
        if let Some(message) = unreadable {
            return Err(ModelError::weights(file.display().to_string(), message));
        }
        written.map_err(|e| ModelError::io(&file, e))?;
        let config = self.config().to_json(dtype.torch_name());
        write_json(&dir.join("config.json"), &config)?;
        self.write_generation_config(dir)
    }

    /// Writes a bitsandbytes 4-bit Hugging Face directory (what `from_pretrained(...,
    /// quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...))` followed by
    /// `save_pretrained` writes): every decoder linear layer quantized with `quant` from the
    /// weight it effectively applies (adapters merged), embeddings, norms and an untied
    /// `lm_head` in f32, and `quantization_config` in `config.json`. A non-empty `dir` is
    /// refused unless `overwrite`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, LoadOptions};
    /// use medify_quant::QuantConfig;
    /// let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, _) = CausalLm::from_pretrained(src, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// let out = std::env::temp_dir().join(format!("medify-doc-4bit-{}", std::process::id()));
    /// model.save_pretrained_4bit(&out, &QuantConfig::default(), true).unwrap();
    /// let (q, report) = CausalLm::from_pretrained(&out, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// assert!(report.quantized_linears > 0);
    /// std::fs::remove_dir_all(&out).unwrap();
    /// ```
    pub fn save_pretrained_4bit(
        &self,
        dir: impl AsRef<Path>,
        quant: &QuantConfig,
        overwrite: bool,
    ) -> Result<()> {
        self.save_pretrained_quantized(dir, &LinearQuant::Bits4(*quant), overwrite)
    }

    /// Writes a bitsandbytes Hugging Face directory, 4-bit or 8-bit: what transformers'
    /// `save_pretrained` writes after loading with `load_in_4bit` or `load_in_8bit`. Decoder
    /// linear layers are quantized from the weight they effectively apply (adapters merged);
    /// an int8 layer whose stored weight is the one it applies (no adapter, or merged) is
    /// written as stored, so an 8-bit checkpoint round-trips byte for byte. Embeddings, norms and
    /// an untied `lm_head` stay f32. A non-empty `dir` is refused unless `overwrite`.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, LinearQuant, LoadOptions};
    /// let src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, _) = CausalLm::from_pretrained(src, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// let out = std::env::temp_dir().join(format!("medify-doc-int8-{}", std::process::id()));
    /// model.save_pretrained_quantized(&out, &LinearQuant::Int8, true).unwrap();
    /// let (_, report) = CausalLm::from_pretrained(&out, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// assert_eq!(report.quantized_linears, 14);
    /// std::fs::remove_dir_all(&out).unwrap();
    /// ```
    pub fn save_pretrained_quantized(
        &self,
        dir: impl AsRef<Path>,
        quant: &LinearQuant,
        overwrite: bool,
    ) -> Result<()> {
        let dir = dir.as_ref();
        self.check_hf_expressible(dir)?;
        prepare_dir(dir, overwrite)?;
        let file = dir.join("model.safetensors");
        let origin = file.display().to_string();
        let mut tensors = BTreeMap::new();
        for (name, src) in self.save_entries() {
            let bad = |e: medify_quant::QuantError| {
                ModelError::weights(origin.clone(), format!("{name}: {e}"))
            };
            if let (Source::Linear(p), LinearQuant::Int8) = (&src, quant)
                && let FrozenWeight::Int8(w) = p.weight()
                && (p.lora().is_none() || p.is_merged())
            {
                tensors.extend(w.to_weight().to_tensors(&name));
                continue;
            }
            let values = src
                .values()
                .map_err(|m| ModelError::weights(origin.clone(), format!("{name}: {m}")))?;
            let shape = src.shape();
            match (src, quant) {
                (Source::Linear(_), LinearQuant::Bits4(config))
                    if name.starts_with("model.layers.") =>
                {
                    let packed = Packed4Bit::quantize(&values, &shape, config).map_err(bad)?;
                    tensors.extend(bnb::to_tensors(&name, &packed));
                }
                (Source::Linear(_), LinearQuant::Int8) if name.starts_with("model.layers.") => {
                    let w = Int8Weight::quantize(&values, [shape[0], shape[1]]).map_err(bad)?;
                    tensors.extend(w.to_tensors(&name));
                }
                _ => {
                    tensors.insert(name, OwnedTensor::f32(shape, &values));
                }
            }
        }
        let bytes = bnb::serialize(&tensors)
            .map_err(|e| ModelError::weights(origin.clone(), e.to_string()))?;
        write_bytes(&file, &bytes)?;
        let mut config = self.config().to_json("float32");
        config["quantization_config"] = match quant {
            LinearQuant::Bits4(c) => bnb::quantization_config(c, "float32"),
            LinearQuant::Int8 => int8_quantization_config(),
        };
        write_json(&dir.join("config.json"), &config)?;
        self.write_generation_config(dir)
    }

    fn write_generation_config(&self, dir: &Path) -> Result<()> {
        let mut generation = json!({"bos_token_id": self.config().bos_token_id});
        if let Some(eos) = self.config().to_json("float32").get("eos_token_id") {
            generation["eos_token_id"] = eos.clone();
        }
        write_json(&dir.join("generation_config.json"), &generation)
    }

    /// Every tensor of a Hugging Face checkpoint of this model, by name, sorted.
    /// `config.json` cannot hold llama.cpp's per-frequency RoPE divisors.
    fn check_hf_expressible(&self, dir: &Path) -> Result<()> {
        if self.config().rope_freq_factors.is_some() {
            return Err(ModelError::weights(
                dir.display().to_string(),
                "this model's rope scaling came from a GGUF's rope_freqs, which config.json cannot \
                 express; export it as GGUF (save_gguf) instead",
            ));
        }
        Ok(())
    }

    pub(crate) fn save_entries(&self) -> Vec<(String, Source<'_>)> {
        let mut entries: Vec<(String, Source<'_>)> = vec![(
            "model.embed_tokens.weight".into(),
            Source::Matrix(&self.embed_tokens),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            entries.push((
                format!("{p}.input_layernorm.weight"),
                Source::Vector(&l.input_layernorm.weight),
            ));
            entries.push((
                format!("{p}.post_attention_layernorm.weight"),
                Source::Vector(&l.post_attention_layernorm.weight),
            ));
            for (name, proj) in l.projections() {
                entries.push((format!("{p}.{name}.weight"), Source::Linear(proj)));
                if let Some(b) = proj.bias() {
                    entries.push((format!("{p}.{name}.bias"), Source::Vector(b)));
                }
            }
        }
        entries.push((
            "model.norm.weight".into(),
            Source::Vector(&self.norm.weight),
        ));
        if let Some(head) = &self.lm_head {
            entries.push(("lm_head.weight".into(), Source::Linear(head)));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries
    }
}

impl ModelTokenizer {
    /// Writes `tokenizer.json` and a `tokenizer_config.json` carrying the special tokens and chat
    /// template, so a saved model directory is complete (also for models that came from GGUF).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let path = dir.join("tokenizer.json");
        let text = self
            .inner()
            .to_string(true)
            .map_err(|e| ModelError::weights(path.display().to_string(), e.to_string()))?;
        write_bytes(&path, text.as_bytes())?;
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "chat_template": self.chat_template,
            "clean_up_tokenization_spaces": false,
        });
        write_json(&dir.join("tokenizer_config.json"), &config)
    }
}

fn prepare_dir(dir: &Path, overwrite: bool) -> Result<()> {
    if dir.is_file() {
        return Err(ModelError::InvalidRequest(format!(
            "{} is a file, not a directory",
            dir.display()
        )));
    }
    let non_empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if non_empty && !overwrite {
        return Err(ModelError::InvalidRequest(format!(
            "{} is not empty; pass overwrite to replace the model in it",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    medify_quant::atomic::write(path, bytes).map_err(|e| ModelError::io(path, e))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        source: e,
    })?;
    write_bytes(path, text.as_bytes())
}
