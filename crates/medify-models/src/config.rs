//! `config.json` of a Hugging Face causal LM, read into one struct for the whole Llama family.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::error::{ModelError, Result};

/// Which member of the Llama family a checkpoint is; decides the few places they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `LlamaForCausalLM`: Llama 2/3, TinyLlama, SmolLM2.
    Llama,
    /// `MistralForCausalLM`: Llama plus sliding-window attention.
    Mistral,
    /// `GemmaForCausalLM` (Gemma 1): GeGLU, scaled embeddings, `(1 + w)` RMSNorm.
    Gemma,
}

impl Family {
    /// The `architectures` entry transformers writes for this family.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Mistral => "MistralForCausalLM",
            Family::Gemma => "GemmaForCausalLM",
        }
    }

    /// The `model_type` transformers writes for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Gemma => "gemma",
        }
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU MLP): Llama, Mistral.
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`, GeGLU): Gemma.
    GeluTanh,
    /// Exact GELU.
    Gelu,
}

impl Activation {
    fn parse(name: &str, origin: &str) -> Result<Activation> {
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(ModelError::config(
                origin,
                format!("hidden_act {other:?} is not supported (silu, gelu, gelu_pytorch_tanh)"),
            )),
        }
    }
}

/// How rotary frequencies are rescaled for long contexts (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor`.
    Linear {
        /// Scale factor.
        factor: f64,
    },
    /// Llama 3.1's frequency-dependent scaling.
    Llama3 {
        /// Scale for low frequencies.
        factor: f64,
        /// Wavelength boundary (as a fraction of the original context) of the low band.
        low_freq_factor: f64,
        /// Wavelength boundary of the high band.
        high_freq_factor: f64,
        /// Context length the model was pretrained with.
        original_max_position_embeddings: f64,
    },
}

/// The bitsandbytes quantization transformers records in `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub enum BnbQuantization {
    /// `load_in_4bit`.
    FourBit {
        /// `nf4` or `fp4`.
        quant_type: String,
        /// Whether the block scales are themselves quantized.
        double_quant: bool,
        /// The compute dtype the checkpoint was made for.
        compute_dtype: String,
        /// The dtype the packed bytes are stored as (`uint8` normally).
        quant_storage: String,
    },
    /// `load_in_8bit` (LLM.int8): int8 weights with a per-row `SCB`.
    Int8 {
        /// `llm_int8_threshold`: bitsandbytes' outlier threshold for its inference path (its
        /// training path, which this crate follows, decodes the weight and ignores it).
        threshold: f64,
    },
}

/// Hyper-parameters of a Llama-family model, as read from `config.json` (or a GGUF header).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Which architecture.
    pub family: Family,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA when fewer than query heads, MQA when 1).
    pub num_key_value_heads: usize,
    /// Width of one head (not always hidden / heads: Gemma, Llama 3.2 variants).
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f64,
    /// Long-context rescaling of the rotary frequencies.
    pub rope_scaling: RopeScaling,
    /// The longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Mistral's attention window (a query sees the last `w` keys, itself included).
    pub sliding_window: Option<usize>,
    /// MLP gate activation.
    pub hidden_act: Activation,
    /// Bias on q/k/v/o.
    pub attention_bias: bool,
    /// Bias on gate/up/down.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (several for Llama 3 instruct models).
    pub eos_token_ids: Vec<u32>,
    /// Padding token.
    pub pad_token_id: Option<u32>,
    /// bitsandbytes 4-bit checkpoint settings, when the weights are stored in 4 bits.
    pub quantization: Option<BnbQuantization>,
    /// llama.cpp's per-frequency RoPE divisors (`rope_freqs.weight`, `head_dim / 2` of them),
    /// as a Llama 3.1 GGUF stores its rope scaling; applied after `rope_scaling`.
    pub rope_freq_factors: Option<Vec<f32>>,
}

struct Fields<'a> {
    map: &'a Map<String, Value>,
    origin: &'a str,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
                ModelError::config(
                    self.origin,
                    format!("field {key} must be a non-negative integer, got {v}"),
                )
            }),
        }
    }

    fn usize_req(&self, key: &str) -> Result<usize> {
        let n = self
            .usize_opt(key)?
            .ok_or_else(|| ModelError::config(self.origin, format!("missing field {key}")))?;
        if n == 0 {
            return Err(ModelError::config(
                self.origin,
                format!("field {key} must be positive"),
            ));
        }
        Ok(n)
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| {
                ModelError::config(
                    self.origin,
                    format!("field {key} must be a number, got {v}"),
                )
            }),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                ModelError::config(
                    self.origin,
                    format!("field {key} must be true or false, got {v}"),
                )
            }),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| {
                ModelError::config(
                    self.origin,
                    format!("field {key} must be a string, got {v}"),
                )
            }),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let bad = || {
            ModelError::config(
                self.origin,
                format!("field {key} must be a token id or a list of ids"),
            )
        };
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as u32).ok_or_else(bad))
                .collect(),
            Some(v) => v.as_u64().map(|n| vec![n as u32]).ok_or_else(bad),
        }
    }
}

impl LlamaConfig {
    /// Reads `config.json`.
    ///
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama3");
    /// let cfg = medify_models::LlamaConfig::from_file(format!("{dir}/config.json")).unwrap();
    /// assert_eq!(cfg.head_dim, 32);
    /// assert!(matches!(cfg.rope_scaling, medify_models::RopeScaling::Llama3 { .. }));
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<LlamaConfig> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.into(),
            source,
        })?;
        LlamaConfig::from_json(&value, &path.display().to_string())
    }

    /// Reads a parsed `config.json`; `origin` names it in errors.
    pub fn from_json(value: &Value, origin: &str) -> Result<LlamaConfig> {
        let map = value
            .as_object()
            .ok_or_else(|| ModelError::config(origin, "config.json must hold a JSON object"))?;
        let f = Fields { map, origin };
        let family = detect_family(&f)?;
        let hidden_size = f.usize_req("hidden_size")?;
        let heads = f.usize_req("num_attention_heads")?;
        let kv_heads = f.usize_opt("num_key_value_heads")?.unwrap_or(heads);
        let head_dim = match f.usize_opt("head_dim")? {
            Some(d) => d,
            None if hidden_size % heads == 0 => hidden_size / heads,
            None => {
                return Err(ModelError::config(
                    origin,
                    format!(
                        "hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({heads}) and head_dim is absent"
                    ),
                ));
            }
        };
        let act_name = match family {
            // transformers' Gemma reads hidden_activation first, defaulting to the tanh GELU.
            Family::Gemma => f
                .str_opt("hidden_activation")?
                .unwrap_or("gelu_pytorch_tanh"),
            _ => f.str_opt("hidden_act")?.unwrap_or("silu"),
        };
        let (rope_theta, rope_scaling) = read_rope(&f)?;
        let sliding_window = match family {
            Family::Mistral => f.usize_opt("sliding_window")?,
            _ => None,
        };
        let config = LlamaConfig {
            family,
            vocab_size: f.usize_req("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize_req("intermediate_size")?,
            num_hidden_layers: f.usize_req("num_hidden_layers")?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps: f.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: f.usize_opt("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: f
                .bool_opt("tie_word_embeddings")?
                .unwrap_or(family == Family::Gemma),
            sliding_window,
            hidden_act: Activation::parse(act_name, origin)?,
            attention_bias: f.bool_opt("attention_bias")?.unwrap_or(false),
            mlp_bias: f.bool_opt("mlp_bias")?.unwrap_or(false),
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
            pad_token_id: f.token_ids("pad_token_id")?.first().copied(),
            quantization: read_quantization(&f)?,
            rope_freq_factors: None,
        };
        config.validate(origin)?;
        Ok(config)
    }

    /// `config.json` as transformers writes it for this architecture, with the weights' dtype.
    /// RoPE settings use the `rope_theta` / `rope_scaling` form that transformers 4 and 5 both
    /// read. No `quantization_config`: a saved model is dense.
    ///
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama3");
    /// let cfg = medify_models::LlamaConfig::from_file(format!("{dir}/config.json")).unwrap();
    /// let json = cfg.to_json("bfloat16");
    /// assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    /// let back = medify_models::LlamaConfig::from_json(&json, "roundtrip").unwrap();
    /// assert_eq!(back, cfg);
    /// ```
    pub fn to_json(&self, dtype: &str) -> Value {
        let act = match self.hidden_act {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Gelu => "gelu",
        };
        let rope_scaling = match self.rope_scaling {
            RopeScaling::Default => Value::Null,
            RopeScaling::Linear { factor } => json!({"rope_type": "linear", "factor": factor}),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": original_max_position_embeddings,
            }),
        };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let mut v = json!({
            "architectures": [self.family.architecture()],
            "model_type": self.family.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": act,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype,
            "dtype": dtype,
            "use_cache": true,
        });
        if let Some(obj) = v.as_object_mut() {
            match self.family {
                Family::Mistral => {
                    obj.insert("sliding_window".into(), json!(self.sliding_window));
                }
                Family::Gemma => {
                    obj.insert("hidden_activation".into(), json!(act));
                }
                Family::Llama => {}
            }
        }
        v
    }

    /// The number of query heads sharing one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Parameters of the model in its dense form (embeddings counted once when tied).
    pub fn num_parameters(&self) -> usize {
        let (h, i, v, d) = (
            self.hidden_size,
            self.intermediate_size,
            self.vocab_size,
            self.head_dim,
        );
        let q = self.num_attention_heads * d;
        let kv = self.num_key_value_heads * d;
        let attn = h * q + 2 * h * kv + q * h;
        let attn_bias = if self.attention_bias {
            q + 2 * kv + h
        } else {
            0
        };
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let layer = attn + attn_bias + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }
}

/// The largest dimension a config may name: 2^24 (Llama 3.1-405B's widest is 2^17). A
/// header that claims more is corrupt, and trusting it would size allocations by a lie.
const MAX_DIMENSION: usize = 1 << 24;

impl LlamaConfig {
    /// Checks what every loader relies on, whichever file the config came from (`config.json`
    /// or GGUF metadata): positive sizes no larger than [`MAX_DIMENSION`], heads that divide
    /// into key/value groups, an even head width for RoPE, finite positive epsilon, RoPE base
    /// and scaling factors. `origin` names the file in the error.
    ///
    /// ```
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama3");
    /// let mut cfg = medify_models::LlamaConfig::from_file(format!("{dir}/config.json")).unwrap();
    /// assert!(cfg.validate("config.json").is_ok());
    /// cfg.head_dim = 7;
    /// assert!(cfg.validate("config.json").unwrap_err().to_string().contains("head_dim"));
    /// ```
    pub fn validate(&self, origin: &str) -> Result<()> {
        let bad = |msg: String| Err(ModelError::config(origin, msg));
        let dims = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in dims {
            if v == 0 || v > MAX_DIMENSION {
                return bad(format!("{name} must be in 1..={MAX_DIMENSION}, got {v}"));
            }
        }
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings must be positive".into());
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim must be even for rotary embeddings, got {}",
                self.head_dim
            ));
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(format!("{name} must be finite and positive, got {v}"))
            }
        };
        positive("rms_norm_eps", self.rms_norm_eps)?;
        positive("rope_theta", self.rope_theta)?;
        if let Some(f) = &self.rope_freq_factors {
            if f.len() != self.head_dim / 2 {
                return bad(format!(
                    "rope_freqs holds {} factors; head_dim {} needs {}",
                    f.len(),
                    self.head_dim,
                    self.head_dim / 2
                ));
            }
            if let Some(v) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                return bad(format!(
                    "rope_freqs factors must be finite and positive, got {v}"
                ));
            }
        }
        match self.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => positive("rope scaling factor", factor)?,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope scaling factor", factor)?;
                positive("rope scaling low_freq_factor", low_freq_factor)?;
                positive(
                    "rope scaling original_max_position_embeddings",
                    original_max_position_embeddings,
                )?;
                // Written so that NaN factors are refused too.
                #[allow(clippy::neg_cmp_op_on_partial_ord)]
                if !(high_freq_factor > low_freq_factor) {
                    return bad(format!(
                        "rope scaling llama3: high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                    ));
                }
            }
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive or null".into());
        }
        Ok(())
    }
}

fn detect_family(f: &Fields<'_>) -> Result<Family> {
    let arch = f
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str());
    let model_type = f.str_opt("model_type")?;
    let from_arch = match arch {
        Some("LlamaForCausalLM") => Some(Family::Llama),
        Some("MistralForCausalLM") => Some(Family::Mistral),
        Some("GemmaForCausalLM") => Some(Family::Gemma),
        Some(other) => return Err(ModelError::UnsupportedArchitecture(other.to_string())),
        None => None,
    };
    let from_type = match model_type {
        Some("llama") => Some(Family::Llama),
        Some("mistral") => Some(Family::Mistral),
        Some("gemma") => Some(Family::Gemma),
        Some(other) if from_arch.is_none() => {
            return Err(ModelError::UnsupportedArchitecture(other.to_string()));
        }
        _ => None,
    };
    match (from_arch, from_type) {
        (Some(a), Some(t)) if a != t => Err(ModelError::config(
            f.origin,
            format!(
                "architectures says {} but model_type says {:?}",
                a.architecture(),
                model_type.unwrap_or_default()
            ),
        )),
        (Some(a), _) => Ok(a),
        (None, Some(t)) => Ok(t),
        (None, None) => Err(ModelError::config(
            f.origin,
            "missing fields architectures and model_type",
        )),
    }
}

/// Reads rope_theta + rope_scaling (hub configs) or rope_parameters (transformers 5).
fn read_rope(f: &Fields<'_>) -> Result<(f64, RopeScaling)> {
    let origin = f.origin;
    let params = f.get("rope_parameters").or_else(|| f.get("rope_scaling"));
    let params = match params {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(v) => {
            return Err(ModelError::config(
                origin,
                format!("rope_scaling must be an object, got {v}"),
            ));
        }
    };
    let mut theta = f.f64_opt("rope_theta")?;
    let mut scaling = RopeScaling::Default;
    if let Some(p) = params {
        let pf = Fields { map: p, origin };
        if let Some(t) = pf.f64_opt("rope_theta")? {
            theta = Some(t);
        }
        let kind = match pf.str_opt("rope_type")? {
            Some(k) => Some(k),
            None => pf.str_opt("type")?,
        };
        // Values are range-checked once, in `LlamaConfig::validate`.
        let factor = || -> Result<f64> {
            pf.f64_opt("factor")?
                .ok_or_else(|| ModelError::config(origin, "rope scaling: missing field factor"))
        };
        scaling = match kind.unwrap_or("default") {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "llama3" => {
                let need = |k: &str| {
                    pf.f64_opt(k)?.ok_or_else(|| {
                        ModelError::config(
                            origin,
                            format!("rope scaling llama3: missing field {k}"),
                        )
                    })
                };
                RopeScaling::Llama3 {
                    factor: factor()?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: need("original_max_position_embeddings")?,
                }
            }
            other => {
                return Err(ModelError::config(
                    origin,
                    format!("rope_type {other:?} is not supported (default, linear, llama3)"),
                ));
            }
        };
    }
    let theta = theta.unwrap_or(10_000.0);
    if theta <= 0.0 {
        return Err(ModelError::config(
            origin,
            format!("rope_theta must be positive, got {theta}"),
        ));
    }
    Ok((theta, scaling))
}

fn read_quantization(f: &Fields<'_>) -> Result<Option<BnbQuantization>> {
    let Some(q) = f.get("quantization_config") else {
        return Ok(None);
    };
    let origin = f.origin;
    let map = q
        .as_object()
        .ok_or_else(|| ModelError::config(origin, "quantization_config must be an object"))?;
    let qf = Fields { map, origin };
    match qf.str_opt("quant_method")? {
        Some("bitsandbytes") => {}
        Some(other) => {
            return Err(ModelError::config(
                origin,
                format!(
                    "quantization_config.quant_method {other:?} is not supported (only bitsandbytes 4-bit and 8-bit)"
                ),
            ));
        }
        None => {
            return Err(ModelError::config(
                origin,
                "quantization_config.quant_method is missing",
            ));
        }
    }
    if qf.bool_opt("load_in_8bit")?.unwrap_or(false) {
        if qf.bool_opt("llm_int8_has_fp16_weight")?.unwrap_or(false) {
            return Err(ModelError::config(
                origin,
                "llm_int8_has_fp16_weight checkpoints keep 16-bit weights, not int8 ones; load the dense model instead",
            ));
        }
        let threshold = match qf.get("llm_int8_threshold") {
            None | Some(Value::Null) => 6.0,
            Some(v) => v.as_f64().ok_or_else(|| {
                ModelError::config(
                    origin,
                    "quantization_config.llm_int8_threshold must be a number",
                )
            })?,
        };
        return Ok(Some(BnbQuantization::Int8 { threshold }));
    }
    if !qf.bool_opt("load_in_4bit")?.unwrap_or(false) {
        return Err(ModelError::config(
            origin,
            "quantization_config needs load_in_4bit or load_in_8bit set true",
        ));
    }
    Ok(Some(BnbQuantization::FourBit {
        quant_type: qf
            .str_opt("bnb_4bit_quant_type")?
            .unwrap_or("fp4")
            .to_string(),
        double_quant: qf.bool_opt("bnb_4bit_use_double_quant")?.unwrap_or(false),
        compute_dtype: qf
            .str_opt("bnb_4bit_compute_dtype")?
            .unwrap_or("float32")
            .to_string(),
        quant_storage: qf
            .str_opt("bnb_4bit_quant_storage")?
            .unwrap_or("uint8")
            .to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 10,
            "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1
        })
    }

    fn err(v: Value) -> String {
        LlamaConfig::from_json(&v, "cfg.json")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = LlamaConfig::from_json(&base(), "cfg.json").unwrap();
        assert_eq!((c.head_dim, c.group_size(), c.rope_theta), (4, 2, 10_000.0));
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.rope_scaling, RopeScaling::Default);
    }

    #[test]
    fn missing_and_contradictory_fields_are_named() {
        let mut v = base();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(err(v).contains("missing field hidden_size"));
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(err(v).contains("multiple of num_key_value_heads"));
        let mut v = base();
        v["model_type"] = json!("gemma");
        assert!(err(v).contains("model_type"));
        let mut v = base();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        assert!(err(v).contains("unsupported architecture \"Qwen2ForCausalLM\""));
        let mut v = base();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        assert!(err(v).contains("yarn"));
        let mut v = base();
        v["hidden_size"] = json!("eight");
        assert!(err(v).contains("hidden_size must be a non-negative integer"));
        let mut v = base();
        v["quantization_config"] = json!({"quant_method": "gptq"});
        assert!(err(v).contains("gptq"));
    }
}
