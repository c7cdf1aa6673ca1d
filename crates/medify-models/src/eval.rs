//! Perplexity of plain-text records: token-weighted mean next-token cross-entropy.

use std::path::Path;

use serde::Serialize;

use crate::error::{ModelError, Result};
use crate::model::{CausalLm, IGNORE_INDEX, TokenBatch};
use crate::tokenizer::ModelTokenizer;

/// Loss over a set of records, weighted by predicted tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalReport {
    /// Mean next-token cross-entropy over all predicted tokens.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Number of predicted tokens.
    pub tokens: usize,
    /// Number of records.
    pub records: usize,
}

/// Reads `{"text": …}` records from a JSONL file (blank lines skipped); errors name the line.
pub fn read_text_records(path: impl AsRef<Path>) -> Result<Vec<String>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", path.display(), i + 1);
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| ModelError::InvalidRequest(format!("{}: invalid JSON: {e}", where_())))?;
        let t = value.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
            ModelError::InvalidRequest(format!(
                "{}: expected an object with a string field \"text\"",
                where_()
            ))
        })?;
        out.push(t.to_string());
    }
    Ok(out)
}

impl CausalLm {
    /// Token-weighted loss of `texts`, each tokenized with the tokenizer's default special tokens
    /// and cut to `max_length` tokens; `batch_size` records run together (right-padded, padding
    /// masked out of attention and loss).
    pub fn evaluate_texts(
        &self,
        tokenizer: &ModelTokenizer,
        texts: &[String],
        batch_size: usize,
        max_length: usize,
    ) -> Result<EvalReport> {
        let mut seqs = Vec::with_capacity(texts.len());
        for t in texts {
            let mut ids = tokenizer.encode(t, true)?;
            ids.truncate(max_length.max(2));
            seqs.push(ids);
        }
        let mut total = 0f64;
        let mut tokens = 0usize;
        let pad = tokenizer.pad_id();
        for chunk in seqs.chunks(batch_size.max(1)) {
            let width = chunk.iter().map(Vec::len).max().unwrap_or(0);
            if width < 2 {
                continue;
            }
            let mut batch = TokenBatch::new(Vec::new());
            let mut mask = Vec::new();
            let mut labels = Vec::new();
            for s in chunk {
                let pad_n = width - s.len();
                batch.ids.push(
                    s.iter()
                        .copied()
                        .chain(std::iter::repeat_n(pad, pad_n))
                        .collect(),
                );
                mask.push((0..width).map(|i| i < s.len()).collect());
                labels.push(
                    s.iter()
                        .map(|&t| t as i64)
                        .chain(std::iter::repeat_n(IGNORE_INDEX, pad_n))
                        .collect(),
                );
            }
            batch.attention_mask = Some(mask);
            let out = self.loss(&batch, &labels)?;
            total += out.sum.into_scalar::<f32>() as f64;
            tokens += out.tokens;
        }
        let loss = if tokens == 0 {
            f64::NAN
        } else {
            total / tokens as f64
        };
        Ok(EvalReport {
            loss,
            perplexity: loss.exp(),
            tokens,
            records: texts.len(),
        })
    }
}
