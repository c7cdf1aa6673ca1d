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
    /// Sampling weight of each data source ([`SourcedExample::source`] indexes it; a source
    /// not listed weighs 1). A source of weight `w` puts `w` times its training examples in
    /// an epoch: each one `floor(w)` times, plus a seeded sample without replacement of the
    /// fraction (0.5 trains on half of them, 2 on each twice). Applied after deduplication and
    /// the validation split, so validation holds each record at most once and never a copy of
    /// a training one.
    pub source_weights: Vec<f64>,
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
            source_weights: Vec::new(),
        }
    }
}

/// A tokenized record with its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    /// `file:line` of the record.
    pub origin: String,
    /// The data source it came from.
    pub source: usize,
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
    /// What each data source came to, indexed by [`SourcedExample::source`].
    pub sources: Vec<SourceCounts>,
}

/// What one data source of a run came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceCounts {
    /// Records read.
    pub records: usize,
    /// Dropped as duplicates, for short replies, for length, with no trained token or for a
    /// template error.
    pub dropped: usize,
    /// Training examples in an epoch (after the source's weight).
    pub train_examples: usize,
    /// Validation examples.
    pub validation_examples: usize,
    /// Trained (labelled) tokens of its training examples in an epoch.
    pub trained_tokens: usize,
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

/// Checks the settings both supervised and preference data are prepared with.
pub(crate) fn check_config(config: &DatasetConfig) -> Result<()> {
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
    if let Some((i, w)) = config
        .source_weights
        .iter()
        .enumerate()
        .find(|(_, w)| !(w.is_finite() && **w > 0.0))
    {
        return Err(DataError::Invalid(format!(
            "the weight of data source {} is {w}; it must be a positive number",
            i + 1
        )));
    }
    Ok(())
}

/// Cleans, shuffles, splits and encodes records. Records that end up with no trained token are
/// dropped with a loud warning on stderr (and listed in the report).
pub fn prepare(
    records: Vec<SourcedExample>,
    encoder: &ChatEncoder,
    config: &DatasetConfig,
) -> Result<PreparedData> {
    let (mut report, encoded) = clean_and_encode(
        records,
        config,
        |r, report| {
            let short = config.min_reply_chars > 0
                && r.example
                    .replies()
                    .any(|a| a.trim().chars().count() < config.min_reply_chars);
            if short {
                report.short_replies += 1;
            }
            short
        },
        |r| encoder.encode(&r.example),
    )?;
    let mut out = Vec::with_capacity(encoded.len());
    for (origin, source, mut e) in encoded {
        if e.len() > config.max_len {
            match config.truncation {
                Truncation::Drop => {
                    report.too_long += 1;
                    report.sources[source].dropped += 1;
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
            report.sources[source].dropped += 1;
            continue;
        }
        out.push(EncodedExample {
            origin,
            source,
            encoded: e,
        });
    }
    if !report.untrained.is_empty() {
        eprintln!(
            "WARNING: {} record(s) have no trained token (reply truncated away at max_len {} or empty) and were dropped, e.g. {}",
            report.untrained.len(),
            config.max_len,
            report.untrained[0]
        );
    }
    let (train, validation) = split(
        out,
        config,
        &mut report,
        |e| e.source,
        |e| e.encoded.trained_tokens(),
    );
    Ok(PreparedData {
        train,
        validation,
        report,
    })
}

/// A record or a pair, as preparation sees it before encoding: where it came from, its data
/// source, and what makes two of them the same.
pub(crate) trait SourcedItem: Sync {
    /// Equal for exact duplicates.
    type Key: std::hash::Hash + Eq;
    /// `file:line`.
    fn origin(&self) -> &str;
    /// The data source it came from.
    fn source(&self) -> usize;
    /// Its content, for dropping exact duplicates.
    fn key(&self) -> Self::Key;
}

impl SourcedItem for SourcedExample {
    type Key = crate::record::Example;
    fn origin(&self) -> &str {
        &self.origin
    }
    fn source(&self) -> usize {
        self.source
    }
    fn key(&self) -> Self::Key {
        self.example.clone()
    }
}

/// An encoded record or pair with its origin and data source.
pub(crate) type EncodedItem<E> = (String, usize, E);

/// What records and preference pairs go through alike before their own length checks: the
/// settings checked, each source's items counted, exact duplicates dropped (`dedupe`), `reject`
/// (which counts its own reason in the report), the seeded shuffle, `encode` in parallel, and
/// items the chat template refuses skipped, counted and warned about. Returns the report so far
/// and each encoded item with its origin and source, in the shuffled order.
pub(crate) fn clean_and_encode<T: SourcedItem, E: Send>(
    items: Vec<T>,
    config: &DatasetConfig,
    mut reject: impl FnMut(&T, &mut PrepareReport) -> bool,
    encode: impl Fn(&T) -> Result<E> + Sync,
) -> Result<(PrepareReport, Vec<EncodedItem<E>>)> {
    check_config(config)?;
    let n_sources = items
        .iter()
        .map(|r| r.source() + 1)
        .max()
        .unwrap_or(0)
        .max(config.source_weights.len());
    let mut report = PrepareReport {
        records: items.len(),
        sources: vec![SourceCounts::default(); n_sources],
        ..PrepareReport::default()
    };
    let mut seen = HashSet::new();
    let mut kept = Vec::with_capacity(items.len());
    for r in items {
        report.sources[r.source()].records += 1;
        if config.dedupe && !seen.insert(r.key()) {
            report.duplicates += 1;
            report.sources[r.source()].dropped += 1;
            continue;
        }
        if reject(&r, &mut report) {
            report.sources[r.source()].dropped += 1;
            continue;
        }
        kept.push(r);
    }
    if config.shuffle {
        kept.shuffle(&mut ChaCha8Rng::seed_from_u64(config.seed));
    }
    let encoded: Vec<(String, usize, Result<E>)> = kept
        .par_iter()
        .map(|r| (r.origin().to_string(), r.source(), encode(r)))
        .collect();
    let mut out = Vec::with_capacity(encoded.len());
    for (origin, source, e) in encoded {
        match e {
            Ok(e) => out.push((origin, source, e)),
            Err(DataError::Template { message, .. }) => {
                report.template_errors.push((origin, message));
                report.sources[source].dropped += 1;
            }
            Err(other) => return Err(other),
        }
    }
    if !report.template_errors.is_empty() {
        eprintln!(
            "WARNING: the chat template raised on {} record(s), which were skipped, e.g. {}: {}",
            report.template_errors.len(),
            report.template_errors[0].0,
            report.template_errors[0].1
        );
    }
    Ok((report, out))
}

/// Splits shuffled, encoded `items` into training and validation (the last
/// `validation_fraction` of them), applies the sources' weights to the training part, and
/// counts each source's training and validation items and the `trained` tokens of its
/// training items.
pub(crate) fn split<T: Clone>(
    mut items: Vec<T>,
    config: &DatasetConfig,
    report: &mut PrepareReport,
    source: impl Fn(&T) -> usize,
    trained: impl Fn(&T) -> usize,
) -> (Vec<T>, Vec<T>) {
    let n_val = (items.len() as f64 * config.validation_fraction).round() as usize;
    let validation = items.split_off(items.len() - n_val.min(items.len()));
    let train = weighted(items, &config.source_weights, config.seed, &source);
    for v in &validation {
        report.sources[source(v)].validation_examples += 1;
    }
    for t in &train {
        let counts = &mut report.sources[source(t)];
        counts.train_examples += 1;
        counts.trained_tokens += trained(t);
    }
    (train, validation)
}

/// The training items of an epoch under the sources' weights (see
/// [`DatasetConfig::source_weights`]), reshuffled with a seed of their own so copies spread
/// out. With every weight 1 the items come back as they are.
fn weighted<T: Clone>(
    train: Vec<T>,
    weights: &[f64],
    seed: u64,
    source_of: impl Fn(&T) -> usize,
) -> Vec<T> {
    if weights.iter().all(|&w| w == 1.0) {
        return train;
    }
    let weight = |source: usize| weights.get(source).copied().unwrap_or(1.0);
    let sources = train.iter().map(|e| source_of(e) + 1).max().unwrap_or(0);
    let mut out = Vec::new();
    for source in 0..sources {
        let own: Vec<&T> = train.iter().filter(|e| source_of(e) == source).collect();
        let w = weight(source);
        let whole = w.floor() as usize;
        for _ in 0..whole {
            out.extend(own.iter().map(|&e| e.clone()));
        }
        let extra = ((w - w.floor()) * own.len() as f64).round() as usize;
        if extra > 0 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + source as u64));
            let mut picked = own.clone();
            picked.shuffle(&mut rng);
            out.extend(picked.into_iter().take(extra).cloned());
        }
    }
    out.shuffle(&mut ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)));
    out
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

    fn records(source: usize, n: usize) -> Vec<SourcedExample> {
        (0..n)
            .map(|i| SourcedExample {
                origin: format!("s{source}:{i}"),
                example: crate::Example::Text(format!("source {source} record {i} text")),
                source,
            })
            .collect()
    }

    fn encoder() -> ChatEncoder {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tiny_models/llama/tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(path).expect("the shared tokenizer");
        let specials = crate::TokenizerSpecials {
            eos: Some("<|im_end|>".into()),
            ..crate::TokenizerSpecials::default()
        };
        ChatEncoder::new(
            tokenizer,
            crate::ChatTemplate::builtin("chatml").unwrap(),
            specials,
        )
    }

    #[test]
    fn source_weights_repeat_and_sample_training_examples_and_are_counted() {
        let mut all = records(0, 10);
        all.extend(records(1, 8));
        all.extend(records(2, 4));
        all.push(all[0].clone()); // a duplicate, counted against source 0
        let config = DatasetConfig {
            validation_fraction: 0.0,
            source_weights: vec![2.0, 0.5],
            ..DatasetConfig::default()
        };
        let enc = encoder();
        let p = prepare(all.clone(), &enc, &config).unwrap();
        let counts: Vec<usize> = p.report.sources.iter().map(|c| c.train_examples).collect();
        assert_eq!(counts, vec![20, 4, 4]);
        assert_eq!(p.report.sources[0].records, 11);
        assert_eq!(p.report.sources[0].dropped, 1);
        // each source-0 record twice; source 1's half is a sample without replacement
        for i in 0..10 {
            let n = p
                .train
                .iter()
                .filter(|e| e.origin == format!("s0:{i}"))
                .count();
            assert_eq!(n, 2, "s0:{i}");
        }
        let half: HashSet<&str> = p
            .train
            .iter()
            .filter(|e| e.source == 1)
            .map(|e| e.origin.as_str())
            .collect();
        assert_eq!(half.len(), 4);
        let tokens: usize = p
            .train
            .iter()
            .filter(|e| e.source == 2)
            .map(|e| e.encoded.trained_tokens())
            .sum();
        assert_eq!(p.report.sources[2].trained_tokens, tokens);
        // seeded: the same again, another seed another sample
        let again = prepare(all.clone(), &enc, &config).unwrap();
        assert_eq!(
            again.train.iter().map(|e| &e.origin).collect::<Vec<_>>(),
            p.train.iter().map(|e| &e.origin).collect::<Vec<_>>()
        );
        // validation takes records once, before weighting
        let split = DatasetConfig {
            validation_fraction: 0.25,
            ..config.clone()
        };
        let p = prepare(all.clone(), &enc, &split).unwrap();
        let val: HashSet<&str> = p.validation.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(val.len(), p.validation.len());
        assert!(p.train.iter().all(|e| !val.contains(e.origin.as_str())));
        // all weights 1: exactly the unweighted order
        let plain = prepare(all.clone(), &enc, &DatasetConfig::default()).unwrap();
        let ones = DatasetConfig {
            source_weights: vec![1.0, 1.0, 1.0],
            ..DatasetConfig::default()
        };
        let same = prepare(all.clone(), &enc, &ones).unwrap();
        assert_eq!(plain.train, same.train);
        for bad in [0.0, -1.0, f64::NAN] {
            let config = DatasetConfig {
                source_weights: vec![1.0, bad],
                ..DatasetConfig::default()
            };
            let err = prepare(all.clone(), &enc, &config).unwrap_err().to_string();
            assert!(err.contains("data source 2"), "{err}");
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
