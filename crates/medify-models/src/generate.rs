//! Decoding: batched prefill into a KV cache, then one token per step, greedy or sampled.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::batch::DecodeBatch;
use crate::error::{ModelError, Result};
use crate::model::CausalLm;

/// How to pick tokens. Defaults: greedy, 256 new tokens, no penalty.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Upper bound on generated tokens per sequence.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the k most likely tokens before sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// CTRL-style penalty on tokens already present (prompt included); 1 disables it.
    pub repetition_penalty: f32,
    /// Seed of the sampler (same seed, same tokens).
    pub seed: u64,
    /// Tokens that end a sequence (included in the output).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

impl GenerationConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::InvalidRequest(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad(format!("top_p must be in (0, 1], got {p}"));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition_penalty must be positive, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` was reached.
    MaxTokens,
    /// The streaming callback asked to stop.
    Cancelled,
}

/// The new tokens of one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids (the stop token included when one ended the sequence).
    pub ids: Vec<u32>,
    /// Why generation ended.
    pub stop: StopReason,
}

/// Applies repetition penalty, temperature, top-k and top-p (in transformers' order) and picks
/// a token.
pub struct Sampler {
    config: GenerationConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    /// A sampler seeded from `config.seed`.
    pub fn new(config: &GenerationConfig) -> Sampler {
        Sampler {
            config: config.clone(),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
        }
    }

    /// Picks the next token from one row of logits, given the ids seen so far.
    pub fn pick(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let c = &self.config;
        if c.repetition_penalty != 1.0 {
            let mut done = std::collections::HashSet::new();
            for &t in seen {
                if done.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    *l = if *l < 0.0 {
                        *l * c.repetition_penalty
                    } else {
                        *l / c.repetition_penalty
                    };
                }
            }
        }
        if c.temperature == 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = c.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i] - max) / c.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = c.top_p {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            order.truncate(keep);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return order[i] as u32;
            }
            u -= p;
        }
        order[order.len() - 1] as u32
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in xs.iter().enumerate() {
        if *x > xs[best] {
            best = i;
        }
    }
    best as u32
}

impl CausalLm {
    /// Continues each prompt (token ids; give several for a batch, they are left-padded) and
    /// calls `on_token(sequence, id)` for every new token as it is produced; returning `false`
    /// stops that sequence.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, GenerationConfig, LoadOptions};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (model, _) = CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
    /// let cfg = GenerationConfig { max_new_tokens: 4, ..Default::default() };
    /// let out = model.generate(&[vec![1, 59, 76]], &cfg, &mut |_, _| true).unwrap();
    /// assert_eq!(out[0].ids.len(), 4);
    /// ```
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        config: &GenerationConfig,
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generation>> {
        config.validate()?;
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::InvalidRequest(
                "every prompt needs at least one token".into(),
            ));
        }
        let mut out: Vec<Generation> = vec![
            Generation {
                ids: Vec::new(),
                stop: StopReason::MaxTokens
            };
            prompts.len()
        ];
        if config.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut batch = DecodeBatch::new(self);
        let mut row_of = std::collections::HashMap::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let seeded = GenerationConfig {
                seed: config.seed.wrapping_add(i as u64),
                ..config.clone()
            };
            row_of.insert(batch.admit(prompt.clone(), &seeded)?, i);
        }
        while !batch.is_empty() {
            for token in batch.step()? {
                let r = row_of[&token.sequence];
                out[r].ids.push(token.id);
                if !on_token(r, token.id) {
                    out[r].stop = StopReason::Cancelled;
                    batch.cancel(token.sequence);
                } else if let Some(stop) = token.finished {
                    out[r].stop = stop;
                }
            }
        }
        Ok(out)
    }
}

/// Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences.
pub struct TextStreamer<'a> {
    tokenizer: &'a crate::tokenizer::ModelTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> TextStreamer<'a> {
    /// A streamer over `tokenizer`.
    pub fn new(tokenizer: &'a crate::tokenizer::ModelTokenizer) -> TextStreamer<'a> {
        TextStreamer {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}')
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(&cfg);
        let mut logits = vec![1.0, 3.0, 2.0];
        assert_eq!(s.pick(&mut logits, &[1]), 2); // 3 / 2 = 1.5 < 2
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        let mut s = Sampler::new(&cfg);
        assert_eq!(s.pick(&mut [0.0, 5.0, 1.0], &[]), 1);
        let cfg = GenerationConfig {
            temperature: 1.0,
            seed: 9,
            ..Default::default()
        };
        let draw = |cfg: &GenerationConfig| {
            let mut s = Sampler::new(cfg);
            (0..20)
                .map(|_| s.pick(&mut [0.0, 0.1, 0.2, 0.3], &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&cfg);
        assert_eq!(a, draw(&cfg));
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_p_keeps_the_smallest_sufficient_set() {
        let cfg = GenerationConfig {
            temperature: 1.0,
            top_p: Some(0.5),
            ..Default::default()
        };
        let mut s = Sampler::new(&cfg);
        // probabilities ≈ 0.64, 0.24, 0.09, 0.03: top_p 0.5 keeps only the first
        for _ in 0..20 {
            assert_eq!(s.pick(&mut [3.0, 2.0, 1.0, 0.0], &[]), 0);
        }
    }
}
