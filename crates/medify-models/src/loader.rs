//! Builds a [`CausalLm`] from a checkpoint, one tensor at a time.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};
use medify_lora::Projection;
use medify_quant::{Int8Tensor, Int8Weight, Nf4Tensor, Packed4Bit, QuantConfig};

use crate::config::{Family, LlamaConfig};
use crate::dtype::ComputeDtype;
use crate::error::{ModelError, Result};
use crate::gguf::GgufSource;
use crate::layers::{Attention, DecoderLayer, Mlp, RmsNorm};
use crate::model::CausalLm;
use crate::weights::{HostWeight, SafetensorsSource, Tracker, WeightSource};

/// How linear layers are quantized while loading.
#[derive(Debug, Clone, PartialEq)]
pub enum LinearQuant {
    /// NF4/FP4 with `QuantConfig` (QLoRA's frozen base; bitsandbytes' `load_in_4bit`).
    Bits4(QuantConfig),
    /// Row-wise absmax int8 (LLM.int8; bitsandbytes' `load_in_8bit`).
    Int8,
}

impl std::fmt::Display for LinearQuant {
    /// `nf4 (blocks of 64, double quant)`, `int8`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinearQuant::Bits4(c) => write!(
                f,
                "{} (blocks of {}{})",
                c.quant_type.as_str(),
                c.blocksize,
                if c.double_quant { ", double quant" } else { "" }
            ),
            LinearQuant::Int8 => f.write_str("int8"),
        }
    }
}

impl From<QuantConfig> for LinearQuant {
    fn from(config: QuantConfig) -> LinearQuant {
        LinearQuant::Bits4(config)
    }
}

/// How to place a checkpoint on the device.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Quantize dense linear weights while loading (the frozen base). Weights already stored in
    /// 4 or 8 bits (bitsandbytes checkpoints) stay as they are either way.
    pub quantize: Option<LinearQuant>,
    /// The dtype dense weights are stored in on the device and activations computed in
    /// (QLoRA's `bnb_4bit_compute_dtype`); checked against the device when loading.
    pub compute_dtype: ComputeDtype,
}

impl LoadOptions {
    /// Dense weights, as stored.
    pub fn dense() -> LoadOptions {
        LoadOptions::default()
    }

    /// Every linear layer in 4 bits with `config` (embeddings, norms and `lm_head` stay dense,
    /// as bitsandbytes leaves them).
    pub fn quantized(config: QuantConfig) -> LoadOptions {
        LoadOptions {
            quantize: Some(LinearQuant::Bits4(config)),
            compute_dtype: ComputeDtype::F32,
        }
    }

    /// Every linear layer in int8, quantized as bitsandbytes' `load_in_8bit` does
    /// (embeddings, norms and `lm_head` stay dense).
    pub fn int8() -> LoadOptions {
        LoadOptions {
            quantize: Some(LinearQuant::Int8),
            compute_dtype: ComputeDtype::F32,
        }
    }

    /// The same options computing in `dtype`.
    pub fn with_compute_dtype(mut self, dtype: ComputeDtype) -> LoadOptions {
        self.compute_dtype = dtype;
        self
    }
}

/// What loading did: which tensors went where, and what the checkpoint held that was not used.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// The checkpoint.
    pub origin: String,
    /// Tensors in the checkpoint the model did not use.
    pub unused: Vec<String>,
    /// Linear layers held in 4 bits.
    pub quantized_linears: usize,
    /// Linear layers held dense.
    pub dense_linears: usize,
    /// Bytes of weights on the device.
    pub device_bytes: usize,
}

struct Builder<'a> {
    tracker: Tracker<'a>,
    config: &'a LlamaConfig,
    device: &'a Device,
    options: &'a LoadOptions,
    report: LoadReport,
}

impl Builder<'_> {
    fn shape_error(&self, name: &str, expected: &[usize], actual: Vec<usize>) -> ModelError {
        ModelError::Shape {
            file: self.report.origin.clone(),
            name: name.to_string(),
            expected: expected.to_vec(),
            actual,
        }
    }

    fn dense(&mut self, name: &str, expected: &[usize]) -> Result<Option<Vec<f32>>> {
        match self.tracker.take(name)? {
            None => Ok(None),
            Some(HostWeight::Dense { shape, values }) => {
                if shape != expected {
                    return Err(self.shape_error(name, expected, shape));
                }
                Ok(Some(values))
            }
            Some(HostWeight::Quant4(_)) => Err(ModelError::weights(
                self.report.origin.clone(),
                format!("{name} is stored in 4 bits but must be dense"),
            )),
            Some(HostWeight::Int8(_)) => Err(ModelError::weights(
                self.report.origin.clone(),
                format!("{name} is stored in 8 bits but must be dense"),
            )),
        }
    }

    /// Places dense values on the device in the compute dtype (converted on the host, so only
    /// the 16-bit copy is uploaded).
    fn upload<const D: usize>(&mut self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        let dtype = self.options.compute_dtype.dtype();
        self.report.device_bytes += values.len() * dtype.size();
        let mut data = TensorData::new(values, shape);
        if dtype != burn::tensor::DType::F32 {
            data = data.convert_dtype(dtype);
        }
        Tensor::from_data(data, (self.device, dtype))
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor<1>>> {
        Ok(self.dense(name, &[len])?.map(|v| self.upload(v, [len])))
    }

    fn projection(
        &mut self,
        prefix: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Option<Projection>> {
        let name = format!("{prefix}.weight");
        let bias = if bias {
            self.vector(&format!("{prefix}.bias"), out)?
        } else {
            None
        };
        let weight = match self.tracker.take(&name)? {
            None => return Ok(None),
            Some(w) => w,
        };
        if weight.shape() != [out, inp] {
            return Err(self.shape_error(&name, &[out, inp], weight.shape()));
        }
        let quant = |e| ModelError::Quant {
            name: name.clone(),
            source: e,
        };
        let int8 = |w: Int8Weight, report: &mut LoadReport| -> Result<Option<Projection>> {
            let q = Int8Tensor::from_weight(&w, self.device).map_err(quant)?;
            report.quantized_linears += 1;
            report.device_bytes += q.device_bytes();
            Ok(Some(Projection::int8(q, bias.clone())))
        };
        let packed = match (weight, &self.options.quantize) {
            (HostWeight::Int8(w), _) => return int8(w, &mut self.report),
            (HostWeight::Dense { values, .. }, Some(LinearQuant::Int8)) => {
                let w = Int8Weight::quantize(&values, [out, inp]).map_err(quant)?;
                return int8(w, &mut self.report);
            }
            (HostWeight::Quant4(p), _) => p,
            (HostWeight::Dense { values, .. }, Some(LinearQuant::Bits4(cfg))) => {
                Packed4Bit::quantize(&values, &[out, inp], cfg).map_err(quant)?
            }
            (HostWeight::Dense { values, .. }, None) => {
                self.report.dense_linears += 1;
                let w = self.upload(values, [out, inp]);
                return Ok(Some(Projection::dense(w, bias)));
            }
        };
        let q = Nf4Tensor::from_packed(&packed, self.device).map_err(quant)?;
        self.report.quantized_linears += 1;
        self.report.device_bytes += q.device_bytes();
        Ok(Some(Projection::quant4(q, bias)))
    }

    fn layer(&mut self, i: usize) -> Result<Option<DecoderLayer>> {
        let c = self.config;
        let (h, d, inter) = (c.hidden_size, c.head_dim, c.intermediate_size);
        let (q_out, kv_out) = (c.num_attention_heads * d, c.num_key_value_heads * d);
        let p = format!("model.layers.{i}");
        let gemma = c.family == Family::Gemma;
        let ab = c.attention_bias;
        let parts = (
            self.vector(&format!("{p}.input_layernorm.weight"), h)?,
            self.projection(&format!("{p}.self_attn.q_proj"), q_out, h, ab)?,
            self.projection(&format!("{p}.self_attn.k_proj"), kv_out, h, ab)?,
            self.projection(&format!("{p}.self_attn.v_proj"), kv_out, h, ab)?,
            self.projection(&format!("{p}.self_attn.o_proj"), h, q_out, ab)?,
            self.vector(&format!("{p}.post_attention_layernorm.weight"), h)?,
            self.projection(&format!("{p}.mlp.gate_proj"), inter, h, c.mlp_bias)?,
            self.projection(&format!("{p}.mlp.up_proj"), inter, h, c.mlp_bias)?,
            self.projection(&format!("{p}.mlp.down_proj"), h, inter, c.mlp_bias)?,
        );
        let (Some(n1), Some(q), Some(k), Some(v), Some(o), Some(n2), Some(g), Some(u), Some(dn)) =
            parts
        else {
            return Ok(None);
        };
        Ok(Some(DecoderLayer {
            input_layernorm: RmsNorm::new(n1, c.rms_norm_eps, gemma),
            self_attn: Attention::new(
                [q, k, v, o],
                c.num_attention_heads,
                c.num_key_value_heads,
                d,
            ),
            post_attention_layernorm: RmsNorm::new(n2, c.rms_norm_eps, gemma),
            mlp: Mlp::new(g, u, dn, c.hidden_act),
        }))
    }
}

impl CausalLm {
    /// Loads a model directory (`config.json` + safetensors, dense or bitsandbytes 4-bit) or a
    /// `.gguf` file.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, LoadOptions, TokenBatch};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, report) = CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// assert!(report.unused.is_empty());
    /// let logits = model.forward(&TokenBatch::new(vec![vec![1, 40, 41]]), None).unwrap();
    /// assert_eq!(logits.dims(), [1, 3, 300]);
    /// ```
    pub fn from_pretrained(
        path: impl AsRef<Path>,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(CausalLm, LoadReport)> {
        let path = path.as_ref();
        if path.is_file() {
            let source = GgufSource::open(path)?;
            let config = source.config().clone();
            return CausalLm::load(&source, &config, device, options);
        }
        if !path.is_dir() {
            return Err(ModelError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model file or directory",
                ),
            ));
        }
        let config = LlamaConfig::from_file(path.join("config.json"))?;
        let source = SafetensorsSource::open_dir(path)?;
        CausalLm::load(&source, &config, device, options)
    }

    /// Builds the model from any [`WeightSource`], checking every shape against `config`.
    pub fn load(
        source: &dyn WeightSource,
        config: &LlamaConfig,
        device: &Device,
        options: &LoadOptions,
    ) -> Result<(CausalLm, LoadReport)> {
        options.compute_dtype.check(device)?;
        let required = required_names(config);
        let absent: Vec<&String> = required.iter().filter(|n| !source.contains(n)).collect();
        if !absent.is_empty() {
            let mut names: Vec<String> = absent.iter().take(8).map(|s| s.to_string()).collect();
            if absent.len() > 8 {
                names.push(format!("… {} more", absent.len() - 8));
            }
            return Err(ModelError::MissingTensors {
                file: source.origin(),
                names: names.join(", "),
            });
        }
        let mut b = Builder {
            tracker: Tracker::new(source),
            config,
            device,
            options,
            report: LoadReport {
                origin: source.origin(),
                unused: Vec::new(),
                quantized_linears: 0,
                dense_linears: 0,
                device_bytes: 0,
            },
        };
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed = b.dense("model.embed_tokens.weight", &[v, h])?;
        let embed = embed.map(|e| b.upload(e, [v, h]));
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            if let Some(layer) = b.layer(i)? {
                layers.push(layer);
            }
        }
        let norm = b.vector("model.norm.weight", h)?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            let values = b.dense("lm_head.weight", &[v, h])?;
            values.map(|w| {
                let w = b.upload(w, [v, h]);
                b.report.dense_linears += 1;
                Projection::dense(w, None)
            })
        };
        let missing = b.tracker.missing();
        let (Some(embed), Some(norm), true) = (embed, norm, missing.is_empty()) else {
            return Err(ModelError::MissingTensors {
                file: source.origin(),
                names: missing.join(", "),
            });
        };
        b.report.unused = b.tracker.unused();
        let norm = RmsNorm::new(norm, config.rms_norm_eps, config.family == Family::Gemma);
        let model = CausalLm::from_parts(config.clone(), embed, layers, norm, lm_head);
        Ok((model, b.report))
    }
}

/// Tensor names a checkpoint of `config` must hold (biases excepted: they are checked on use).
pub(crate) fn required_names(config: &LlamaConfig) -> Vec<String> {
    let mut names = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".to_string());
    }
    for i in 0..config.num_hidden_layers {
        for part in [
            "input_layernorm",
            "post_attention_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            names.push(format!("model.layers.{i}.{part}.weight"));
        }
    }
    names
}
