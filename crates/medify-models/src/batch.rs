//! Continuous batching: sequences join and leave one shared KV cache between decode steps, so
//! one forward pass advances every active sequence by a token whatever its length or age.

use crate::error::{ModelError, Result};
use crate::generate::{GenerationConfig, Sampler, StopReason};
use crate::model::{CausalLm, KvCache, TokenBatch};

/// Names a sequence of a [`DecodeBatch`] (unique within that batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// One token that a [`DecodeBatch::step`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceToken {
    /// The sequence it belongs to.
    pub sequence: SequenceId,
    /// The token id.
    pub id: u32,
    /// Set when this was the sequence's last token (it has left the batch).
    pub finished: Option<StopReason>,
}

struct Row {
    id: SequenceId,
    sampler: Sampler,
    stop_ids: Vec<u32>,
    max_new_tokens: usize,
    /// Prompt and generated ids (for the repetition penalty).
    seen: Vec<u32>,
    generated: usize,
}

/// Sequences decoding together over one KV cache. [`admit`](Self::admit) queues a prompt; each
/// [`step`](Self::step) gives every running sequence its next token in one forward pass and
/// prefills the prompts admitted since (together), which then join the cache. A finished or
/// [`cancel`](Self::cancel)led sequence leaves the batch at once, so the others do not wait.
///
/// Each sequence samples with its own settings and seed, as [`CausalLm::generate`] (which runs
/// on this) would for it alone.
///
/// ```
/// use burn::tensor::Device;
/// use medify_models::{CausalLm, DecodeBatch, GenerationConfig, LoadOptions};
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
/// let (model, _) = CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense()).unwrap();
/// let mut batch = DecodeBatch::new(&model);
/// let cfg = GenerationConfig { max_new_tokens: 3, ..Default::default() };
/// let a = batch.admit(vec![1, 59, 76], &cfg).unwrap();
/// let first = batch.step().unwrap();                   // a's first token
/// let b = batch.admit(vec![1, 80], &cfg).unwrap();     // b joins while a decodes
/// let second = batch.step().unwrap();
/// assert_eq!((first.len(), second.len()), (1, 2));
/// while !batch.is_empty() {
///     batch.step().unwrap();
/// }
/// # let _ = (a, b);
/// ```
pub struct DecodeBatch<'m> {
    model: &'m CausalLm,
    /// burn's cache of the running rows (when there is no host decoder).
    cache: KvCache,
    /// The host decode path, with one cache per running row.
    #[cfg(feature = "flex")]
    host: Option<(crate::HostDecoder, Vec<crate::DecodeSequence>)>,
    /// Logits of the last step, reused.
    logits: Vec<f32>,
    rows: Vec<Row>,
    /// Admitted, not yet prefilled (their `seen` is still just the prompt).
    waiting: Vec<Row>,
    next_id: u64,
}

impl<'m> DecodeBatch<'m> {
    /// An empty batch over `model`. On the CPU (Flex, f32) decode steps run on the host
    /// decoder ([`crate::HostDecoder`], with the model's [`crate::DecodeOptions`]); elsewhere,
    /// or with [`crate::KernelPath::Reference`], on burn's forward pass. Prompts are always
    /// prefilled by burn's forward pass.
    pub fn new(model: &'m CausalLm) -> DecodeBatch<'m> {
        #[cfg(feature = "flex")]
        let host = match model.kernel_path() {
            crate::KernelPath::Fast => {
                crate::HostDecoder::new(model, &model.decode_options()).unwrap_or(None)
            }
            crate::KernelPath::Reference => None,
        };
        DecodeBatch {
            model,
            cache: KvCache::new(),
            #[cfg(feature = "flex")]
            host: host.map(|h| (h, Vec::new())),
            logits: Vec::new(),
            rows: Vec::new(),
            waiting: Vec::new(),
            next_id: 0,
        }
    }

    /// Queues `prompt` to be prefilled at the next step. Fails on an empty prompt, a token
    /// outside the vocabulary, invalid sampling settings or `max_new_tokens == 0`.
    pub fn admit(&mut self, prompt: Vec<u32>, config: &GenerationConfig) -> Result<SequenceId> {
        config.validate()?;
        if prompt.is_empty() {
            return Err(ModelError::InvalidRequest(
                "every prompt needs at least one token".into(),
            ));
        }
        if config.max_new_tokens == 0 {
            return Err(ModelError::InvalidRequest(
                "max_new_tokens must be at least 1".into(),
            ));
        }
        let vocab = self.model.config().vocab_size;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        let row = Row {
            id,
            sampler: Sampler::new(config),
            stop_ids: config.stop_ids.clone(),
            max_new_tokens: config.max_new_tokens,
            seen: prompt,
            generated: 0,
        };
        self.waiting.push(row);
        Ok(id)
    }

    /// Sequences running or waiting for their prefill.
    pub fn len(&self) -> usize {
        self.rows.len() + self.waiting.len()
    }

    /// Whether no sequence is running or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tokens held in the shared cache per sequence (the longest context plus padding).
    pub fn cached_len(&self) -> usize {
        #[cfg(feature = "flex")]
        if let Some((_, seqs)) = &self.host {
            return seqs
                .iter()
                .map(crate::DecodeSequence::len)
                .max()
                .unwrap_or(0);
        }
        self.cache.len()
    }

    /// Removes a sequence (running or waiting); `false` when it is not in the batch.
    pub fn cancel(&mut self, sequence: SequenceId) -> bool {
        if let Some(i) = self.waiting.iter().position(|r| r.id == sequence) {
            self.waiting.remove(i);
            return true;
        }
        let Some(i) = self.rows.iter().position(|r| r.id == sequence) else {
            return false;
        };
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&r| r != i).collect();
        self.rows.remove(i);
        #[cfg(feature = "flex")]
        if let Some((_, seqs)) = &mut self.host {
            seqs.remove(i);
            return true;
        }
        self.cache.retain_rows(&keep);
        true
    }

    /// Whether decode steps run on the host decoder ([`crate::HostDecoder`]).
    pub fn uses_host_decoder(&self) -> bool {
        #[cfg(feature = "flex")]
        return self.host.is_some();
        #[cfg(not(feature = "flex"))]
        false
    }

    /// One token for every running sequence, then the first token of every waiting one.
    /// On an error the batch is left empty (its cache may no longer match its rows).
    pub fn step(&mut self) -> Result<Vec<SequenceToken>> {
        let out = self.try_step();
        if out.is_err() {
            self.rows.clear();
            self.waiting.clear();
            self.cache = KvCache::new();
            #[cfg(feature = "flex")]
            if let Some((_, seqs)) = &mut self.host {
                seqs.clear();
            }
        }
        out
    }

    fn try_step(&mut self) -> Result<Vec<SequenceToken>> {
        let mut tokens = Vec::with_capacity(self.len());
        #[cfg(feature = "flex")]
        if let Some((decoder, seqs)) = &mut self.host {
            if !self.rows.is_empty() {
                let ids: Vec<u32> = self.rows.iter().map(|r| last(&r.seen)).collect();
                let mut refs: Vec<&mut crate::DecodeSequence> = seqs.iter_mut().collect();
                decoder.step(&mut refs, &ids, &mut self.logits)?;
                let vocab = self.model.config().vocab_size;
                let finished = sample_rows(&mut self.rows, &mut self.logits, vocab, &mut tokens);
                drop_finished(&mut self.rows, &finished);
                drop_finished(seqs, &finished);
            }
            if !self.waiting.is_empty() {
                let mut rows = std::mem::take(&mut self.waiting);
                let (mut logits, cache) = prefill(self.model, &rows)?;
                let mut joined = decoder.sequences_from(&cache)?;
                let vocab = self.model.config().vocab_size;
                let finished = sample_rows(&mut rows, &mut logits, vocab, &mut tokens);
                drop_finished(&mut rows, &finished);
                drop_finished(&mut joined, &finished);
                self.rows.extend(rows);
                seqs.extend(joined);
            }
            return Ok(tokens);
        }
        if !self.rows.is_empty() {
            let batch = TokenBatch {
                ids: self.rows.iter().map(|r| vec![last(&r.seen)]).collect(),
                positions: Some(
                    self.rows
                        .iter()
                        .map(|r| vec![r.seen.len() as u32 - 1])
                        .collect(),
                ),
                attention_mask: None,
                segments: None,
            };
            let logits = self
                .model
                .next_token_logits(&batch, Some(&mut self.cache))?;
            let rows = std::mem::take(&mut self.rows);
            self.rows = advance(rows, host_logits(logits)?, &mut self.cache, &mut tokens)?;
        }
        if !self.waiting.is_empty() {
            let rows = std::mem::take(&mut self.waiting);
            let (logits, mut cache) = prefill(self.model, &rows)?;
            let joined = advance(rows, logits, &mut cache, &mut tokens)?;
            self.cache.append_rows(cache);
            self.rows.extend(joined);
        }
        Ok(tokens)
    }
}

/// burn's forward pass over the prompts of `rows` (left-padded together): their next-token
/// logits `[rows, vocab]` and the cache it filled.
fn prefill(model: &CausalLm, rows: &[Row]) -> Result<(Vec<f32>, KvCache)> {
    let prompts: Vec<Vec<u32>> = rows.iter().map(|r| r.seen.clone()).collect();
    let config = model.config();
    let pad = config.pad_token_id.or(config.bos_token_id).unwrap_or(0);
    let batch = TokenBatch::left_padded(&prompts, pad);
    let mut cache = KvCache::new();
    let logits = model.next_token_logits(&batch, Some(&mut cache))?;
    Ok((host_logits(logits)?, cache))
}

/// Removes the items at the (ascending) indices `finished`.
fn drop_finished<T>(items: &mut Vec<T>, finished: &[usize]) {
    let mut i = 0;
    items.retain(|_| {
        let keep = !finished.contains(&i);
        i += 1;
        keep
    });
}

fn host_logits(logits: burn::tensor::Tensor<2>) -> Result<Vec<f32>> {
    logits
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::InvalidRequest(format!("reading logits: {e:?}")))
}

fn last(ids: &[u32]) -> u32 {
    ids.last().copied().unwrap_or(0)
}

/// Samples each row's next token, then drops the finished rows from the batch and its cache.
fn advance(
    mut rows: Vec<Row>,
    mut logits: Vec<f32>,
    cache: &mut KvCache,
    tokens: &mut Vec<SequenceToken>,
) -> Result<Vec<Row>> {
    let vocab = logits.len() / rows.len().max(1);
    let finished = sample_rows(&mut rows, &mut logits, vocab, tokens);
    let keep: Vec<usize> = (0..rows.len()).filter(|i| !finished.contains(i)).collect();
    cache.retain_rows(&keep);
    drop_finished(&mut rows, &finished);
    Ok(rows)
}

/// Samples each row's next token from `[rows, vocab]` logits; returns the rows that finished.
fn sample_rows(
    rows: &mut [Row],
    values: &mut [f32],
    vocab: usize,
    tokens: &mut Vec<SequenceToken>,
) -> Vec<usize> {
    let mut finished = Vec::new();
    for (r, row) in rows.iter_mut().enumerate() {
        let logits = &mut values[r * vocab..(r + 1) * vocab];
        let id = row.sampler.pick(logits, &row.seen);
        row.seen.push(id);
        row.generated += 1;
        let stop = if row.stop_ids.contains(&id) {
            Some(StopReason::StopToken)
        } else if row.generated >= row.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else {
            None
        };
        if stop.is_some() {
            finished.push(r);
        }
        tokens.push(SequenceToken {
            sequence: row.id,
            id,
            finished: stop,
        });
    }
    finished
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::LoadOptions;
    use burn::tensor::Device;
    use std::collections::HashMap;

    fn tiny() -> CausalLm {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/tiny_models/llama"
        );
        CausalLm::from_pretrained(dir, &Device::flex(), &LoadOptions::dense())
            .unwrap()
            .0
    }

    /// The reference: a full forward pass over the whole context per token, no cache, no batch.
    fn alone(model: &CausalLm, prompt: &[u32], cfg: &GenerationConfig) -> Vec<u32> {
        let mut sampler = Sampler::new(cfg);
        let mut seen = prompt.to_vec();
        let mut out = Vec::new();
        while out.len() < cfg.max_new_tokens {
            let batch = TokenBatch {
                ids: vec![seen.clone()],
                positions: None,
                attention_mask: None,
                segments: None,
            };
            let logits = model.next_token_logits(&batch, None).unwrap();
            let mut values = logits
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap();
            let id = sampler.pick(&mut values, &seen);
            seen.push(id);
            out.push(id);
            if cfg.stop_ids.contains(&id) {
                break;
            }
        }
        out
    }

    /// Sequences that join at different steps, with different lengths, settings and seeds, and
    /// one that is cancelled midway, each get exactly the tokens they get decoding alone.
    #[test]
    fn staggered_sequences_decode_as_if_alone() {
        let model = tiny();
        let greedy = GenerationConfig {
            max_new_tokens: 7,
            ..Default::default()
        };
        let sampled = GenerationConfig {
            max_new_tokens: 5,
            temperature: 0.9,
            top_p: Some(0.9),
            seed: 11,
            ..Default::default()
        };
        let plan: Vec<(usize, Vec<u32>, &GenerationConfig)> = vec![
            (0, vec![1, 59, 76, 12, 40], &greedy),
            (0, vec![1, 80], &sampled),
            (2, vec![1, 33, 34, 35, 36, 37, 38, 39, 40], &greedy),
            (3, vec![1, 90, 91], &sampled),
            (3, vec![1, 5], &greedy),
        ];
        let mut batch = DecodeBatch::new(&model);
        let mut got: HashMap<SequenceId, Vec<u32>> = HashMap::new();
        let mut ids = Vec::new();
        let mut cancelled = None;
        let mut step = 0;
        while step < 4 || !batch.is_empty() {
            for (at, prompt, cfg) in &plan {
                if *at == step {
                    ids.push(batch.admit(prompt.clone(), cfg).unwrap());
                }
            }
            for t in batch.step().unwrap() {
                got.entry(t.sequence).or_default().push(t.id);
            }
            if step == 4 {
                // The long prompt has two tokens by now; cancel it.
                assert!(batch.cancel(ids[2]));
                assert!(!batch.cancel(ids[2]));
                cancelled = Some(ids[2]);
            }
            step += 1;
            assert!(step < 50, "the batch never drained");
        }
        assert_eq!(batch.cached_len(), 0, "a drained batch holds no cache");
        for (id, (_, prompt, cfg)) in ids.iter().zip(&plan) {
            let want = alone(&model, prompt, cfg);
            let have = &got[id];
            if Some(*id) == cancelled {
                assert_eq!(have[..], want[..have.len()], "cancelled {id:?}");
                assert!(have.len() < want.len());
            } else {
                assert_eq!(have, &want, "sequence {id:?}");
            }
        }
    }

    #[test]
    fn bad_requests_are_refused_before_they_join() {
        let model = tiny();
        let mut batch = DecodeBatch::new(&model);
        let cfg = GenerationConfig::default();
        assert!(batch.admit(vec![], &cfg).is_err());
        assert!(batch.admit(vec![1, u32::MAX], &cfg).is_err());
        let zero = GenerationConfig {
            max_new_tokens: 0,
            ..Default::default()
        };
        assert!(batch.admit(vec![1], &zero).is_err());
        assert!(batch.is_empty());
        assert!(batch.step().unwrap().is_empty());
    }
}
