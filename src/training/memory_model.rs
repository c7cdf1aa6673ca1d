//! How much memory QLoRA training of a real model needs, measured on its real layer shapes.
//!
//! A 7–8B model does not fit this project's CI machines, but its memory does not need the whole
//! model to be known: the training peak is a fixed part (embedding, lm_head, one logits chunk,
//! one layer's working set, the runtime) plus a per-layer part (4-bit weights, adapter weights,
//! gradients and optimizer state, and the checkpointed input — or, without checkpointing, every
//! activation of the layer). [`measure_step_peak`] builds the architecture's exact shapes with
//! random NF4 weights at one and at two decoder layers and runs real training steps on the
//! device; [`predict`] extends the two-layer peak by what each further layer keeps and splits
//! the prediction into its components.
//!
//! ```
//! use medify_qlora::training::memory_model::Architecture;
//! let config = "llama-3-8b".parse::<Architecture>().unwrap().config();
//! assert_eq!((config.hidden_size, config.num_hidden_layers, config.vocab_size), (4096, 32, 128256));
//! assert!("llama-9b".parse::<Architecture>().is_err());
//! ```

use std::str::FromStr;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{FinetuneError, Result};
use crate::lora::{LoraConfig, LoraExt, TargetModules};
use crate::models::{
    CausalLm, Checkpointing, ComputeDtype, Label, LlamaConfig, LoadOptions, RandomWeights,
    TokenBatch,
};
use crate::optim::PagedAdamW;
use crate::quant::QuantConfig;
use crate::training::config::FinetuneConfig;
use crate::training::step::train_step;

/// The models people fine-tune with QLoRA, by their published `config.json` shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// TinyLlama-1.1B (22 layers, 2048 wide, GQA 32/4, vocab 32k).
    #[serde(rename = "tinyllama-1.1b")]
    TinyLlama1_1B,
    /// Llama-2-7B (32 layers, 4096 wide, MHA, vocab 32k).
    #[serde(rename = "llama-2-7b")]
    Llama2_7B,
    /// Llama-3-8B (32 layers, 4096 wide, GQA 32/8, MLP 14336, vocab 128k).
    #[serde(rename = "llama-3-8b")]
    Llama3_8B,
    /// Mistral-7B-v0.1 (32 layers, 4096 wide, GQA 32/8, MLP 14336, 4096-token window).
    #[serde(rename = "mistral-7b")]
    Mistral7B,
    /// Gemma-2B (18 layers, 2048 wide, MQA, head dim 256, MLP 16384, vocab 256k, tied).
    #[serde(rename = "gemma-2b")]
    Gemma2B,
    /// Llama-3.2-1B (16 layers, 2048 wide, GQA 32/8, MLP 8192, vocab 128k, tied, Llama 3.1
    /// rope scaling).
    #[serde(rename = "llama-3.2-1b")]
    Llama32_1B,
}

impl Architecture {
    /// Every preset.
    pub const ALL: [Architecture; 6] = [
        Architecture::TinyLlama1_1B,
        Architecture::Llama32_1B,
        Architecture::Llama2_7B,
        Architecture::Llama3_8B,
        Architecture::Mistral7B,
        Architecture::Gemma2B,
    ];

    /// The command-line name (`tinyllama-1.1b`, `llama-3-8b`, …).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::TinyLlama1_1B => "tinyllama-1.1b",
            Architecture::Llama2_7B => "llama-2-7b",
            Architecture::Llama3_8B => "llama-3-8b",
            Architecture::Mistral7B => "mistral-7b",
            Architecture::Gemma2B => "gemma-2b",
            Architecture::Llama32_1B => "llama-3.2-1b",
        }
    }

    /// The values of the model's published `config.json`.
    pub fn config_json(self) -> serde_json::Value {
        match self {
            Architecture::TinyLlama1_1B => json!({"architectures": ["LlamaForCausalLM"],
                "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048,
                "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
                "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_position_embeddings": 2048, "tie_word_embeddings": false,
                "bos_token_id": 1, "eos_token_id": 2}),
            Architecture::Llama2_7B => json!({"architectures": ["LlamaForCausalLM"],
                "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
                "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 32, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_position_embeddings": 4096, "tie_word_embeddings": false,
                "bos_token_id": 1, "eos_token_id": 2}),
            Architecture::Llama3_8B => json!({"architectures": ["LlamaForCausalLM"],
                "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                "max_position_embeddings": 8192, "tie_word_embeddings": false,
                "bos_token_id": 128000, "eos_token_id": 128001}),
            Architecture::Mistral7B => json!({"architectures": ["MistralForCausalLM"],
                "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096,
                "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                "num_key_value_heads": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_position_embeddings": 32768, "sliding_window": 4096,
                "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}),
            Architecture::Gemma2B => json!({"architectures": ["GemmaForCausalLM"],
                "model_type": "gemma", "vocab_size": 256000, "hidden_size": 2048,
                "intermediate_size": 16384, "num_hidden_layers": 18, "num_attention_heads": 8,
                "num_key_value_heads": 1, "head_dim": 256, "rms_norm_eps": 1e-6,
                "rope_theta": 10000.0, "max_position_embeddings": 8192,
                "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": true,
                "bos_token_id": 2, "eos_token_id": 1}),
            Architecture::Llama32_1B => json!({"architectures": ["LlamaForCausalLM"],
                "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
                "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                "num_key_value_heads": 8, "head_dim": 64, "rms_norm_eps": 1e-5,
                "rope_theta": 500000.0, "max_position_embeddings": 131072,
                "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                    "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                "tie_word_embeddings": true, "bos_token_id": 128000, "eos_token_id": 128001}),
        }
    }

    /// The model's hyper-parameters, from [`config_json`](Self::config_json) (which is also what
    /// transformers builds the same shapes from: `AutoConfig.for_model(**json)`).
    pub fn config(self) -> LlamaConfig {
        LlamaConfig::from_json(&self.config_json(), self.name())
            .expect("the presets are valid configs")
    }
}

impl FromStr for Architecture {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<Architecture> {
        Architecture::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| FinetuneError::Config {
                field: "arch".into(),
                reason: format!(
                    "unknown architecture {s:?}; one of {}",
                    Architecture::ALL.map(Architecture::name).join(", ")
                ),
            })
    }
}

/// One training workload to measure: the QLoRA recipe (NF4 + DQ base, LoRA on all linear
/// layers, paged AdamW 32-bit) at a batch shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryProbe {
    /// The model's shapes.
    pub architecture: Architecture,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// LoRA rank.
    pub lora_r: usize,
    /// What a step keeps for backward.
    pub checkpointing: Checkpointing,
    /// Activation and matmul dtype (adapters and optimizer state stay f32).
    pub compute_dtype: ComputeDtype,
    /// Training steps run (the optimizer state exists from the first step's end on).
    pub steps: usize,
}

/// What one measured run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPeak {
    /// Decoder layers built.
    pub layers: usize,
    /// The peak over the training steps: the process's resident memory on the CPU (where host
    /// and device memory are one), the device allocator's reserved bytes on accelerators.
    pub peak_bytes: u64,
    /// Bytes of the base weights on the device (4-bit layers, dense embedding and head).
    pub base_weight_bytes: u64,
    /// Adapter parameters.
    pub trainable_params: u64,
    /// Optimizer state bytes in the measured memory: all of it on the CPU, what paged AdamW keeps
    /// resident on an accelerator.
    pub optimizer_state_bytes: u64,
    /// Seconds per training step.
    pub seconds_per_step: f64,
    /// Mean loss of the last step (a sanity check: random weights give about ln(vocab)).
    pub loss: f64,
    /// Whether host and device memory were one (the CPU backend): then the peak includes what
    /// an accelerator keeps in host memory.
    #[serde(default)]
    pub host_is_device: bool,
}

/// Builds `probe`'s architecture with `layers` decoder layers of random NF4 weights on `device`
/// and runs `probe.steps` training steps, measuring the peak.
pub fn measure_step_peak(probe: &MemoryProbe, layers: usize, device: &Device) -> Result<StepPeak> {
    let mut config = probe.architecture.config();
    config.num_hidden_layers = layers;
    let device = device.clone().autodiff();
    let source = RandomWeights::new(config.clone(), 17);
    let options =
        LoadOptions::quantized(QuantConfig::default()).with_compute_dtype(probe.compute_dtype);
    let (mut model, report) = CausalLm::load(&source, &config, &device, &options)?;
    let lora = LoraConfig::new(probe.lora_r, 16.0)
        .with_target_modules(TargetModules::AllLinear)
        .with_dropout(0.05);
    let summary = model.add_adapters(&lora)?;
    let micro_batches = [synthetic_batch(
        config.vocab_size,
        probe.batch_size,
        probe.seq_len,
    )];
    // The trainer's optimizer and learning rate: QLoRA's recipe, FinetuneConfig's defaults.
    let recipe = FinetuneConfig::default();
    let mut optim = PagedAdamW::new(recipe.adamw_config()?)?;
    crate::training::memory::release_freed_memory();
    let window = crate::training::memory::reset_peak_memory();
    let started = Instant::now();
    let mut loss = f64::NAN;
    for step in 1..=probe.steps.max(1) as u64 {
        let (next, step_loss, _) = train_step(
            model,
            &mut optim,
            &micro_batches,
            recipe.seed,
            step,
            recipe.learning_rate,
            probe.checkpointing,
        )?;
        model = next;
        loss = step_loss;
    }
    let seconds_per_step = started.elapsed().as_secs_f64() / probe.steps.max(1) as f64;
    let peak_bytes = if crate::quant::is_flex(&device) {
        if !window {
            return Err(FinetuneError::Config {
                field: "device".into(),
                reason: "this system does not report peak memory (/proc/self/clear_refs)".into(),
            });
        }
        crate::training::memory::peak_rss_bytes().unwrap_or(0)
    } else {
        device
            .memory_pool_usage()
            .map(|u| u.bytes_reserved)
            .ok_or_else(|| FinetuneError::Config {
                field: "device".into(),
                reason: "the device does not report its memory".into(),
            })?
    };
    Ok(StepPeak {
        layers,
        peak_bytes,
        base_weight_bytes: report.device_bytes as u64,
        trainable_params: summary.trainable as u64,
        optimizer_state_bytes: if crate::quant::is_flex(&device) {
            optim.memory().state_bytes
        } else {
            optim.memory().resident_bytes
        },
        seconds_per_step,
        loss,
        host_is_device: crate::quant::is_flex(&device),
    })
}

/// `batch` rows of `seq_len` pseudo-random ids below `vocab`, every label predicted: the batch
/// the training benchmarks measure on.
pub fn synthetic_batch(
    vocab: usize,
    batch: usize,
    seq_len: usize,
) -> (TokenBatch, Vec<Vec<Label>>) {
    let vocab = vocab as u64;
    let ids: Vec<Vec<u32>> = (0..batch as u64)
        .map(|b| {
            (0..seq_len as u64)
                .map(|i| ((i * 7919 + b * 104_729 + 13) % vocab) as u32)
                .collect()
        })
        .collect();
    let labels = ids
        .iter()
        .map(|r| r.iter().map(|&t| Some(t)).collect())
        .collect();
    (TokenBatch::new(ids), labels)
}

/// `pairs` synthetic preference pairs whose chosen and rejected rows are `seq_len` tokens each
/// (a shared prompt of half of them, then different completions): the same tokens through the
/// policy as [`synthetic_batch`] with `2 · pairs` rows, for comparing a preference step with a
/// supervised one.
pub fn synthetic_pairs(
    vocab: usize,
    pairs: usize,
    seq_len: usize,
) -> Vec<crate::data::EncodedPair> {
    let vocab = vocab as u64;
    let ids = |seed: u64, n: usize| -> Vec<u32> {
        (0..n as u64)
            .map(|i| ((i * 7919 + seed * 104_729 + 13) % vocab) as u32)
            .collect()
    };
    let prompt = seq_len / 2;
    (0..pairs as u64)
        .map(|p| crate::data::EncodedPair {
            origin: format!("synthetic:{p}"),
            source: 0,
            prompt: ids(3 * p, prompt),
            chosen: ids(3 * p + 1, seq_len - prompt),
            rejected: ids(3 * p + 2, seq_len - prompt),
        })
        .collect()
}

/// The predicted training peak of the whole model and what it consists of, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryPrediction {
    /// Decoder layers of the whole model.
    pub layers: usize,
    /// The peak without decoder layers: `two-layer peak − 2 × per_layer`.
    pub fixed_bytes: f64,
    /// What each decoder layer adds to the peak. With checkpointing, the exact sum of what a
    /// layer keeps (4-bit weights, adapter weights and gradients, optimizer state, checkpointed
    /// input: its working set is not kept, so it is part of the fixed cost); without, the
    /// measured difference between the two runs (all of a layer's activations stay).
    pub per_layer_bytes: f64,
    /// The two-layer peak minus the one-layer peak, for comparison.
    pub measured_per_layer_bytes: f64,
    /// `fixed + layers × per_layer`.
    pub predicted_peak_bytes: f64,
    /// All base weights (4-bit layers, dense embedding and head).
    pub base_weight_bytes: f64,
    /// Adapter weights and their gradients (f32).
    pub adapter_and_grad_bytes: f64,
    /// Optimizer state in the measured memory.
    pub optimizer_state_bytes: f64,
    /// Saved decoder-layer inputs (checkpointing), in the compute dtype.
    pub checkpoint_bytes: f64,
    /// The rest: one layer's working set (all layers' activations without checkpointing), one
    /// logits chunk, the runtime.
    pub other_bytes: f64,
    /// The peak on an accelerator's memory: the prediction less what stays in host memory there
    /// (paged AdamW's state, and the saved layer inputs with `--offload-checkpoints`). Equal to
    /// the prediction when it was measured on an accelerator; from a CPU measurement it is a
    /// projection (the CPU's runtime share stands in for the accelerator's).
    #[serde(default)]
    pub accelerator_peak_bytes: f64,
}

/// Predicts the whole model of `probe.architecture` from measurements at one and two layers
/// (see [`MemoryPrediction::per_layer_bytes`] for how a layer's share is found).
pub fn predict(probe: &MemoryProbe, one: &StepPeak, two: &StepPeak) -> Result<MemoryPrediction> {
    if (one.layers, two.layers) != (1, 2) {
        return Err(FinetuneError::Config {
            field: "layers".into(),
            reason: format!(
                "the fit needs runs at 1 and 2 layers, got {} and {}",
                one.layers, two.layers
            ),
        });
    }
    let config = probe.architecture.config();
    let n = config.num_hidden_layers as f64;
    let step = |a: u64, b: u64| b as f64 - a as f64;
    let base_per = step(one.base_weight_bytes, two.base_weight_bytes);
    let params_per = step(one.trainable_params, two.trainable_params);
    let state_per = step(one.optimizer_state_bytes, two.optimizer_state_bytes);
    let checkpoint_per = if probe.checkpointing == Checkpointing::Off {
        0.0
    } else {
        let bytes = probe.compute_dtype.dtype().size();
        (probe.batch_size * probe.seq_len * config.hidden_size * bytes) as f64
    };
    let measured_per_layer = step(one.peak_bytes, two.peak_bytes);
    let per_layer = if probe.checkpointing == Checkpointing::Off {
        measured_per_layer
    } else {
        base_per + params_per * 8.0 + state_per + checkpoint_per
    };
    let fixed = two.peak_bytes as f64 - 2.0 * per_layer;
    let predicted = fixed + n * per_layer;
    let along = |at_two: u64, per: f64| at_two as f64 + (n - 2.0) * per;
    let base = along(two.base_weight_bytes, base_per);
    let adapters = along(two.trainable_params, params_per) * 8.0;
    let state = along(two.optimizer_state_bytes, state_per);
    let checkpoints = n * checkpoint_per;
    let host_resident = if two.host_is_device {
        let offloaded = probe.checkpointing == Checkpointing::LayersOffloaded;
        state + if offloaded { checkpoints } else { 0.0 }
    } else {
        0.0
    };
    Ok(MemoryPrediction {
        layers: config.num_hidden_layers,
        fixed_bytes: fixed,
        per_layer_bytes: per_layer,
        measured_per_layer_bytes: measured_per_layer,
        predicted_peak_bytes: predicted,
        base_weight_bytes: base,
        adapter_and_grad_bytes: adapters,
        optimizer_state_bytes: state,
        checkpoint_bytes: checkpoints,
        other_bytes: predicted - base - adapters - state - checkpoints,
        accelerator_peak_bytes: predicted - host_resident,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> MemoryProbe {
        MemoryProbe {
            architecture: Architecture::TinyLlama1_1B,
            batch_size: 1,
            seq_len: 16,
            lora_r: 4,
            checkpointing: Checkpointing::Layers,
            compute_dtype: ComputeDtype::F32,
            steps: 1,
        }
    }

    #[test]
    fn presets_parse_and_round_trip_their_names() {
        for a in Architecture::ALL {
            assert_eq!(a.name().parse::<Architecture>().unwrap(), a);
            let c = a.config();
            assert!(c.num_hidden_layers >= 16 && c.hidden_size >= 2048, "{c:?}");
        }
        let gemma = Architecture::Gemma2B.config();
        assert!(gemma.tie_word_embeddings);
        assert_eq!((gemma.head_dim, gemma.num_key_value_heads), (256, 1));
        assert_eq!(Architecture::Mistral7B.config().sliding_window, Some(4096));
        let llama32 = Architecture::Llama32_1B.config();
        assert!(llama32.tie_word_embeddings);
        assert!(matches!(
            llama32.rope_scaling,
            crate::models::RopeScaling::Llama3 { .. }
        ));
        let e = "llama-9b".parse::<Architecture>().unwrap_err().to_string();
        assert!(e.contains("llama-3-8b"), "{e}");
    }

    #[test]
    fn the_prediction_adds_what_each_layer_keeps() {
        let at = |layers: u64| StepPeak {
            layers: layers as usize,
            peak_bytes: 1_000_000 + 300_000 * layers,
            base_weight_bytes: 500 + 100 * layers,
            trainable_params: 10 * layers,
            optimizer_state_bytes: 80 * layers,
            seconds_per_step: 1.0,
            loss: 10.0,
            host_is_device: true,
        };
        let ckpt = 16.0 * 2048.0 * 4.0;
        let p = predict(&probe(), &at(1), &at(2)).unwrap();
        assert_eq!(p.layers, 22);
        // Checkpointing: a layer keeps its weights, adapter + grad, state and input.
        let per = 100.0 + 10.0 * 8.0 + 80.0 + ckpt;
        assert_eq!(p.per_layer_bytes, per);
        assert_eq!(p.measured_per_layer_bytes, 300_000.0);
        assert_eq!(p.predicted_peak_bytes, 1_600_000.0 + 20.0 * per);
        assert_eq!(p.base_weight_bytes, 500.0 + 22.0 * 100.0);
        assert_eq!(p.adapter_and_grad_bytes, 22.0 * 10.0 * 8.0);
        assert_eq!(p.checkpoint_bytes, 22.0 * ckpt);
        let parts = p.base_weight_bytes
            + p.adapter_and_grad_bytes
            + p.optimizer_state_bytes
            + p.checkpoint_bytes
            + p.other_bytes;
        assert!((parts - p.predicted_peak_bytes).abs() < 1e-6);
        // Without checkpointing a layer's activations stay: the measured difference counts.
        let plain = MemoryProbe {
            checkpointing: Checkpointing::Off,
            ..probe()
        };
        let q = predict(&plain, &at(1), &at(2)).unwrap();
        assert_eq!(q.predicted_peak_bytes, 1_000_000.0 + 22.0 * 300_000.0);
        assert!(predict(&probe(), &at(2), &at(3)).is_err());
    }

    #[test]
    fn a_real_step_of_the_tinyllama_shape_is_measured() {
        let one = measure_step_peak(&probe(), 1, &Device::flex()).unwrap();
        assert_eq!(one.layers, 1);
        // Dense f32 embedding and head (2 x 32000 x 2048) plus one NF4 layer.
        assert!(one.base_weight_bytes > 2 * 32000 * 2048 * 4, "{one:?}");
        // Random weights predict about uniformly: the loss is near ln(32000) = 10.37.
        assert!((one.loss - 32000f64.ln()).abs() < 1.0, "{one:?}");
        assert!(one.trainable_params > 0 && one.optimizer_state_bytes > 0);
        if cfg!(target_os = "linux") {
            assert!(one.peak_bytes > one.base_weight_bytes, "{one:?}");
        }
    }
}
