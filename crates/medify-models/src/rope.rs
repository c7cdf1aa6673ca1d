//! Rotary position embeddings in Hugging Face's rotate-half layout, with Llama 3 / linear scaling.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{LlamaConfig, RopeScaling};

/// Inverse frequencies of one head, computed in f32 the way transformers computes them.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    /// Frequencies for `config` (`head_dim`, `rope_theta`, `rope_scaling`).
    pub fn new(config: &LlamaConfig) -> Rope {
        let dim = config.head_dim;
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        match config.rope_scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor as f32),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let old = original_max_position_embeddings as f32;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    // transformers' `~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)`.
                    #[allow(clippy::neg_cmp_op_on_partial_ord)]
                    let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
                    *f = if medium {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        if let Some(factors) = &config.rope_freq_factors {
            inv_freq.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        Rope {
            inv_freq,
            head_dim: dim,
        }
    }

    /// One position's `cos` and `sin_signed` rows (`head_dim` values each; see
    /// [`Rope::tables`]).
    pub(crate) fn cos_sin(&self, position: u32, cos: &mut [f32], sin_signed: &mut [f32]) {
        let half = self.head_dim / 2;
        for (k, f) in self.inv_freq.iter().enumerate().take(half) {
            let angle = f * position as f32;
            let (s, c) = (angle.sin(), angle.cos());
            cos[k] = c;
            cos[k + half] = c;
            sin_signed[k] = -s;
            sin_signed[k + half] = s;
        }
    }

    /// `(cos, sin_signed)` tables `[batch, 1, seq, head_dim]` for the given positions, where
    /// `sin_signed` carries rotate-half's sign so that `rope(x) = x·cos + swap_halves(x)·sin_signed`.
    pub fn tables(&self, positions: &[Vec<u32>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let b = positions.len();
        let s = positions.first().map_or(0, Vec::len);
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        let (mut c, mut sn) = (vec![0f32; d], vec![0f32; d]);
        for row in positions {
            for &p in row {
                self.cos_sin(p, &mut c, &mut sn);
                cos.extend_from_slice(&c);
                sin.extend_from_slice(&sn);
            }
        }
        let shape = [b, 1, s, d];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Applies rotary embeddings to `x` `[batch, heads, seq, head_dim]`.
pub fn apply_rope(x: Tensor<4>, cos: &Tensor<4>, sin_signed: &Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let half = d / 2;
    let swapped = Tensor::cat(
        vec![
            x.clone().narrow(3, half, half),
            x.clone().narrow(3, 0, half),
        ],
        3,
    );
    x * cos.clone() + swapped * sin_signed.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn llama3_scaling_leaves_high_frequencies_and_divides_low_ones() {
        let v = json!({
            "architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 256,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        });
        let cfg = LlamaConfig::from_json(&v, "t").unwrap();
        let plain = Rope::new(&LlamaConfig {
            rope_scaling: RopeScaling::Default,
            ..cfg.clone()
        });
        let scaled = Rope::new(&cfg);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert!((plain.inv_freq[last] / 8.0 - scaled.inv_freq[last]).abs() < 1e-12);
    }
}
