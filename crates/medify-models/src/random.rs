//! A weight source of deterministic random values in a config's exact shapes: real layer sizes
//! without the checkpoint, for measuring memory and speed of models this machine cannot hold
//! (`cargo xtask bench-memory` builds one or two 7B decoder layers from it).

use std::collections::BTreeSet;

use crate::config::{Family, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::weights::{HostWeight, WeightSource};

/// Random weights for `config`: linear weights uniform with standard deviation 0.02 (the
/// initializer range of these models), norm scales at their identity. Same seed, same values.
///
/// ```
/// use burn::tensor::Device;
/// use medify_models::{CausalLm, LlamaConfig, LoadOptions, RandomWeights};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
/// let config = LlamaConfig::from_file(format!("{dir}/config.json")).unwrap();
/// let source = RandomWeights::new(config.clone(), 7);
/// let (model, report) = CausalLm::load(&source, &config, &Device::flex(), &LoadOptions::default()).unwrap();
/// assert_eq!(model.layers.len(), config.num_hidden_layers);
/// assert!(report.unused.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct RandomWeights {
    config: LlamaConfig,
    seed: u64,
    names: BTreeSet<String>,
}

impl RandomWeights {
    /// Random weights for every tensor `config` needs.
    pub fn new(config: LlamaConfig, seed: u64) -> RandomWeights {
        let names = crate::loader::required_names(&config).into_iter().collect();
        RandomWeights {
            config,
            seed,
            names,
        }
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let c = &self.config;
        let (h, v, inter) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        let (q, kv) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        if name == "model.embed_tokens.weight" || name == "lm_head.weight" {
            return Some(vec![v, h]);
        }
        let part = name.strip_suffix(".weight")?.rsplit('.').next()?;
        Some(match part {
            "norm" | "input_layernorm" | "post_attention_layernorm" => vec![h],
            "q_proj" => vec![q, h],
            "k_proj" | "v_proj" => vec![kv, h],
            "o_proj" => vec![h, q],
            "gate_proj" | "up_proj" => vec![inter, h],
            "down_proj" => vec![h, inter],
            _ => return None,
        })
    }
}

/// SplitMix64: a well-mixed 64-bit hash of a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl WeightSource for RandomWeights {
    fn origin(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }

    fn names(&self) -> Vec<String> {
        self.names.iter().cloned().collect()
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn load(&self, name: &str) -> Result<HostWeight> {
        let shape = match self.shape(name) {
            Some(s) if self.names.contains(name) => s,
            _ => {
                return Err(ModelError::weights(
                    self.origin(),
                    format!("no tensor {name}"),
                ));
            }
        };
        let n: usize = shape.iter().product();
        let values = if shape.len() == 1 {
            // Gemma stores the norm scale as w in (1 + w).
            let identity = if self.config.family == Family::Gemma {
                0.0
            } else {
                1.0
            };
            vec![identity; n]
        } else {
            // Uniform on [-a, a] has standard deviation a / sqrt(3).
            let a = 0.02 * 3f32.sqrt();
            let key = mix(self.seed ^ mix(name.bytes().fold(0u64, |h, b| mix(h ^ b as u64))));
            (0..n as u64)
                .map(|i| {
                    let u = (mix(key ^ i) >> 40) as f32 / (1u64 << 24) as f32;
                    (2.0 * u - 1.0) * a
                })
                .collect()
        };
        Ok(HostWeight::Dense { shape, values })
    }
}
