//! From records to training sequences: cleaning, a seeded shuffle and split, encoding in
//! parallel, truncation, packing, and padded batches.

use std::collections::HashSet;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::encode::{ChatEncoder, Encoded, IGNORE};
use crate::error::{DataError, Result};
use crate::record::SourcedExample;

/// What to do with a record longer than `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the first `max_len` tokens (a record left with no trained token is dropped).
    #[default]
    KeepStart,
    /// Drop the record.
    Drop,
}

/// How records become training sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetConfig {
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// Over-long records.
    pub truncation: Truncation,
    /// Drop records whose (conversation or text) repeats an earlier one exactly.
    pub dedupe: bool,
    /// Drop records whose shortest assistant reply has fewer characters than this.
    pub min_reply_chars: usize,
    /// Share of records held out for validation (0 for none).
    pub validation_fraction: f64,
    /// Seed of the shuffle (and so of the split).
    pub seed: u64,
    /// Shuffle before splitting.
    pub shuffle: bool,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig {
            max_len: 512,
            truncation: Truncation::KeepStart,
            dedupe: true,
            min_reply_chars: 0,
            validation_fraction: 0.0,
            seed: 42,
            shuffle: true,
        }
    }
}

/// A tokenized record with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    /// `file:line` of the record.
    pub origin: String,
    /// Ids and labels.
    pub encoded: Encoded,
}

/// Counts of what preparation left out, so nothing disappears silently.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// Records in.
    pub records: usize,
    /// Exact duplicates dropped.
    pub duplicates: usize,
    /// Records with a reply shorter than `min_reply_chars`.
    pub short_replies: usize,
    /// Records cut to `max_len`.
    pub truncated: usize,
    /// Records dropped for length (`Truncation::Drop`).
    pub too_long: usize,
    /// Records with no trained token left (e.g. the reply was truncated away), dropped.
    pub untrained: Vec<String>,
    /// Records whose template raised, with the message.
    pub template_errors: Vec<(String, String)>,
}

/// Training and validation sequences.
#[derive(Debug, Clone, Default)]
pub struct PreparedData {
    /// Training examples in shuffled order.
    pub train: Vec<EncodedExample>,
    /// Validation examples.
    pub validation: Vec<EncodedExample>,
    /// What was left out.
    pub report: PrepareReport,
}

/// Cleans, shuffles, splits and encodes records. Records that end up with no trained token are
/// dropped with a loud warning on stderr (and listed in the report).
pub fn prepare(
    records: Vec<SourcedExample>,
    encoder: &ChatEncoder,
    config: &DatasetConfig,
) -> Result<PreparedData> {
    if config.max_len < 2 {
        return Err(DataError::Invalid(format!(
            "max_len {} is too short",
            config.max_len
        )));
    }
    if !(0.0..1.0).contains(&config.validation_fraction) {
        return Err(DataError::Invalid(format!(
            "validation fraction {} must be in [0, 1)",
            config.validation_fraction
        )));
    }
    let mut report = PrepareReport {
        records: records.len(),
        ..PrepareReport::default()
    };
    let mut seen = HashSet::new();
    let mut kept = Vec::with_capacity(records.len());
    for r in records {
        if config.dedupe && !seen.insert(r.example.clone()) {
            report.duplicates += 1;
            continue;
        }
        if config.min_reply_chars > 0
            && r.example
                .replies()
                .any(|a| a.trim().chars().count() < config.min_reply_chars)
        {
            report.short_replies += 1;
            continue;
        }
        kept.push(r);
    }
    if config.shuffle {
        kept.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    }
    let encoded: Vec<(String, Result<Encoded>)> = kept
        .par_iter()
        .map(|r| (r.origin.clone(), encoder.encode(&r.example)))
        .collect();
    let mut out = Vec::with_capacity(encoded.len());
    for (origin, e) in encoded {
        let mut e = match e {
            Ok(e) => e,
            Err(DataError::Template { message, .. }) => {
                report.template_errors.push((origin, message));
                continue;
            }
            Err(other) => return Err(other),
        };
        if e.len() > config.max_len {
            match config.truncation {
                Truncation::Drop => {
                    report.too_long += 1;
                    continue;
                }
                Truncation::KeepStart => {
                    e.input_ids.truncate(config.max_len);
                    e.labels.truncate(config.max_len);
                    report.truncated += 1;
                }
            }
        }
        if e.trained_tokens() == 0 {
            report.untrained.push(origin);
            continue;
        }
        out.push(EncodedExample { origin, encoded: e });
    }
    if !report.untrained.is_empty() {
        eprintln!(
            "WARNING: {} record(s) have no trained token (reply truncated away at max_len {} or empty) and were dropped, e.g. {}",
            report.untrained.len(),
            config.max_len,
            report.untrained[0]
        );
    }
    if !report.template_errors.is_empty() {
        eprintln!(
            "WARNING: the chat template raised on {} record(s), which were skipped, e.g. {}: {}",
            report.template_errors.len(),
            report.template_errors[0].0,
            report.template_errors[0].1
        );
    }
    let n_val = (out.len() as f64 * config.validation_fraction).round() as usize;
    let validation = out.split_off(out.len() - n_val.min(out.len()));
    Ok(PreparedData {
        train: out,
        validation,
        report,
    })
}

/// One training row: several examples packed, or one padded example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Labels ([`IGNORE`] where not trained).
    pub labels: Vec<i64>,
    /// Position ids, restarting at 0 for every packed example.
    pub positions: Vec<u32>,
    /// Example index within the row: attention never crosses a change of segment.
    pub segments: Vec<u32>,
}

impl Sequence {
    fn single(e: &Encoded) -> Sequence {
        Sequence {
            input_ids: e.input_ids.clone(),
            labels: e.labels.clone(),
            positions: (0..e.len() as u32).collect(),
            segments: vec![0; e.len()],
        }
    }

    /// Tokens in the row.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the row is empty.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

/// Packs examples into rows of at most `max_len` tokens, in order (first fit over the open
/// row). Positions restart and the segment id changes at every example boundary; the first
/// label of each example is ignored so no example is predicted from the one before it.
///
/// ```
/// use medify_data::{Encoded, pack};
/// let e = |n: u32| Encoded { input_ids: (0..n).collect(), labels: (0..n as i64).collect() };
/// let rows = pack(&[e(3), e(2), e(4)], 6);
/// assert_eq!(rows.len(), 2);
/// assert_eq!(rows[0].positions, vec![0, 1, 2, 0, 1]);
/// assert_eq!(rows[0].segments, vec![0, 0, 0, 1, 1]);
/// assert_eq!(rows[0].labels, vec![-100, 1, 2, -100, 1]);
/// ```
pub fn pack(examples: &[Encoded], max_len: usize) -> Vec<Sequence> {
    let mut rows: Vec<Sequence> = Vec::new();
    let mut current: Option<Sequence> = None;
    let mut segment = 0u32;
    for e in examples {
        let e = &Encoded {
            input_ids: e.input_ids[..e.len().min(max_len)].to_vec(),
            labels: e.labels[..e.len().min(max_len)].to_vec(),
        };
        match current.as_mut() {
            Some(row) if row.len() + e.len() <= max_len => {
                segment += 1;
                row.input_ids.extend(&e.input_ids);
                row.labels.push(IGNORE);
                row.labels.extend(&e.labels[1..]);
                row.positions.extend(0..e.len() as u32);
                row.segments.extend(std::iter::repeat_n(segment, e.len()));
            }
            _ => {
                if let Some(done) = current.take() {
                    rows.push(done);
                }
                let mut row = Sequence::single(e);
                if let Some(first) = row.labels.first_mut() {
                    *first = IGNORE;
                }
                segment = 0;
                current = Some(row);
            }
        }
    }
    rows.extend(current);
    rows
}

/// Rows without packing.
pub fn unpacked(examples: &[Encoded]) -> Vec<Sequence> {
    examples.iter().map(Sequence::single).collect()
}

/// A rectangular batch, right-padded with `pad_id` (masked in attention and labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// `[batch][seq]` ids.
    pub input_ids: Vec<Vec<u32>>,
    /// `[batch][seq]` labels, [`IGNORE`] on padding.
    pub labels: Vec<Vec<i64>>,
    /// `[batch][seq]` positions.
    pub positions: Vec<Vec<u32>>,
    /// `[batch][seq]` segments.
    pub segments: Vec<Vec<u32>>,
    /// `[batch][seq]`: `false` on padding.
    pub attention_mask: Vec<Vec<bool>>,
}

impl Batch {
    /// Pads rows to the longest.
    ///
    /// ```
    /// use medify_data::{Batch, Sequence};
    /// let row = |n: u32| Sequence { input_ids: (1..=n).collect(), labels: (1..=n as i64).collect(),
    ///     positions: (0..n).collect(), segments: vec![0; n as usize] };
    /// let b = Batch::collate(&[row(3), row(1)], 0);
    /// assert_eq!(b.input_ids[1], vec![1, 0, 0]);
    /// assert_eq!(b.labels[1], vec![1, -100, -100]);
    /// assert_eq!(b.attention_mask[1], vec![true, false, false]);
    /// ```
    pub fn collate(rows: &[Sequence], pad_id: u32) -> Batch {
        let width = rows.iter().map(Sequence::len).max().unwrap_or(0);
        let mut b = Batch {
            input_ids: Vec::new(),
            labels: Vec::new(),
            positions: Vec::new(),
            segments: Vec::new(),
            attention_mask: Vec::new(),
        };
        for r in rows {
            let pad = width - r.len();
            let last_segment = r.segments.last().map_or(0, |s| s + 1);
            b.input_ids.push(
                r.input_ids
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad_id, pad))
                    .collect(),
            );
            b.labels.push(
                r.labels
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(IGNORE, pad))
                    .collect(),
            );
            b.positions
                .push(r.positions.iter().copied().chain(0..pad as u32).collect());
            b.segments.push(
                r.segments
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(last_segment, pad))
                    .collect(),
            );
            b.attention_mask
                .push((0..width).map(|i| i < r.len()).collect());
        }
        b
    }

    /// Tokens the loss covers.
    pub fn trained_tokens(&self) -> usize {
        self.labels
            .iter()
            .flatten()
            .filter(|&&l| l != IGNORE)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(n: u32) -> Encoded {
        Encoded {
            input_ids: (10..10 + n).collect(),
            labels: (10..10 + n as i64).collect(),
        }
    }

    #[test]
    fn packing_never_exceeds_max_len_and_keeps_every_token() {
        let examples: Vec<Encoded> = [5, 3, 7, 1, 8, 2, 2].iter().map(|&n| enc(n)).collect();
        let rows = pack(&examples, 8);
        assert!(rows.iter().all(|r| r.len() <= 8));
        assert_eq!(rows.iter().map(Sequence::len).sum::<usize>(), 28);
        for r in &rows {
            for i in 0..r.len() {
                let starts = i == 0 || r.segments[i] != r.segments[i - 1];
                assert_eq!(r.positions[i] == 0, starts);
                assert_eq!(r.labels[i] == IGNORE, starts);
            }
        }
        // an over-long example is cut to max_len
        let rows = pack(&[enc(12)], 8);
        assert_eq!(rows[0].len(), 8);
    }
}
