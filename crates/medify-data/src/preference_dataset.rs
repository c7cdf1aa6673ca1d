//! From preference pairs to tokenized training and validation pairs: the same cleaning,
//! seeded shuffle, split and source weights as supervised data ([`prepare`](crate::prepare)),
//! with TRL's tokenization ([`ChatEncoder::encode_pair`]) and its `max_length` truncation.

use crate::dataset::{DatasetConfig, PrepareReport, SourcedItem, clean_and_encode, split};
use crate::encode::ChatEncoder;
use crate::error::Result;
use crate::preference::{EncodedPair, PairTruncation, PreferencePair, SourcedPair};

impl SourcedItem for SourcedPair {
    type Key = PreferencePair;
    fn origin(&self) -> &str {
        &self.origin
    }
    fn source(&self) -> usize {
        self.source
    }
    fn key(&self) -> Self::Key {
        self.pair.clone()
    }
}

/// Training and validation pairs.
#[derive(Debug, Clone, Default)]
pub struct PreparedPairs {
    /// Training pairs in shuffled order (each source's pairs repeated by its weight).
    pub train: Vec<EncodedPair>,
    /// Validation pairs.
    pub validation: Vec<EncodedPair>,
    /// What was left out; a "record" is a pair, its trained tokens are its completion tokens
    /// within `max_len` (chosen and rejected).
    pub report: PrepareReport,
}

/// Completion tokens of `pair` that survive `max_len` with `truncation` (chosen, rejected).
fn kept_completion(pair: &EncodedPair, max_len: usize, truncation: PairTruncation) -> [usize; 2] {
    pair.rows(Some(max_len), truncation)
        .map(|row| row.labels.iter().filter(|&&l| l >= 0).count())
}

/// Dedupes, shuffles, encodes (as TRL's `DPOTrainer`) and splits preference pairs with
/// `config`'s `max_len` (TRL's `max_length`), seed, validation share and source weights.
/// A pair with a completion cut away entirely by `max_len` gives no signal and is dropped,
/// listed in the report's `untrained`; a pair the template refuses is skipped and listed.
///
/// ```
/// use medify_data::{ChatEncoder, DatasetConfig, PairTruncation, PreferencePair, SourcedPair, Turns, prepare_pairs};
/// # let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_models/llama/tokenizer.json");
/// # let tokenizer = tokenizers::Tokenizer::from_file(path).unwrap();
/// # let specials = medify_data::TokenizerSpecials { eos: Some("<|im_end|>".into()), ..Default::default() };
/// # let encoder = ChatEncoder::new(tokenizer, medify_data::ChatTemplate::builtin("chatml").unwrap(), specials);
/// let pair = |i: usize| SourcedPair { origin: format!("p.jsonl:{i}"), source: 0, pair: PreferencePair {
///     prompt: Turns::Text(format!("Question {i}: is chest pain serious?")),
///     chosen: Turns::Text(" It can be; call emergency services.".into()),
///     rejected: Turns::Text(" No.".into()) } };
/// let config = DatasetConfig { validation_fraction: 0.25, ..DatasetConfig::default() };
/// let prepared = prepare_pairs((0..8).map(pair).collect(), &encoder, &config, PairTruncation::KeepStart).unwrap();
/// assert_eq!((prepared.train.len(), prepared.validation.len()), (6, 2));
/// ```
pub fn prepare_pairs(
    pairs: Vec<SourcedPair>,
    encoder: &ChatEncoder,
    config: &DatasetConfig,
    truncation: PairTruncation,
) -> Result<PreparedPairs> {
    let (mut report, encoded) =
        clean_and_encode(pairs, config, |_, _| false, |p| encoder.encode_pair(p))?;
    let mut out = Vec::with_capacity(encoded.len());
    for (origin, source, e) in encoded {
        let whole = e.prompt.len() + e.chosen.len().max(e.rejected.len());
        if whole > config.max_len {
            report.truncated += 1;
        }
        if kept_completion(&e, config.max_len, truncation).contains(&0) {
            report.untrained.push(origin);
            report.sources[source].dropped += 1;
            continue;
        }
        out.push(e);
    }
    if !report.untrained.is_empty() {
        eprintln!(
            "WARNING: {} pair(s) have a completion cut away entirely at max_len {} and were dropped, e.g. {}",
            report.untrained.len(),
            config.max_len,
            report.untrained[0]
        );
    }
    let (train, validation) = split(
        out,
        config,
        &mut report,
        |p| p.source,
        |p| {
            kept_completion(p, config.max_len, truncation)
                .iter()
                .sum::<usize>()
        },
    );
    Ok(PreparedPairs {
        train,
        validation,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::{PreferencePair, Turns};

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

    fn pair(i: usize, source: usize, chosen: &str) -> SourcedPair {
        SourcedPair {
            origin: format!("s{source}.jsonl:{i}"),
            source,
            pair: PreferencePair {
                prompt: Turns::Text(format!("Question {i} about a rash that spreads.")),
                chosen: Turns::Text(chosen.into()),
                rejected: Turns::Text(" It is nothing, ignore it.".into()),
            },
        }
    }

    #[test]
    fn duplicates_and_cut_completions_are_counted_and_dropped() {
        let mut pairs: Vec<_> = (0..6).map(|i| pair(i, 0, " See a clinician.")).collect();
        pairs.push(pair(0, 0, " See a clinician."));
        let config = DatasetConfig {
            max_len: 64,
            ..DatasetConfig::default()
        };
        let p = prepare_pairs(
            pairs.clone(),
            &encoder(),
            &config,
            PairTruncation::KeepStart,
        )
        .unwrap();
        assert_eq!((p.report.duplicates, p.train.len()), (1, 6));
        // The prompt alone fills max_len: nothing of either completion is left.
        let short = DatasetConfig {
            max_len: 8,
            ..config
        };
        let p = prepare_pairs(pairs, &encoder(), &short, PairTruncation::KeepStart).unwrap();
        assert!(p.train.is_empty());
        assert_eq!(p.report.untrained.len(), 6);
        assert_eq!(p.report.sources[0].dropped, 7);
    }

    #[test]
    fn weights_and_split_follow_the_sources() {
        let pairs: Vec<_> = (0..10)
            .map(|i| pair(i, 0, " Ask a nurse."))
            .chain((10..20).map(|i| pair(i, 1, " Call your doctor today.")))
            .collect();
        let config = DatasetConfig {
            validation_fraction: 0.1,
            source_weights: vec![2.0, 0.5],
            ..DatasetConfig::default()
        };
        let p = prepare_pairs(pairs, &encoder(), &config, PairTruncation::KeepStart).unwrap();
        assert_eq!(p.validation.len(), 2);
        let counts = &p.report.sources;
        let val: usize = counts.iter().map(|c| c.validation_examples).sum();
        assert_eq!(val, 2);
        let (a, b) = (
            counts[0].records - counts[0].validation_examples,
            counts[1].records - counts[1].validation_examples,
        );
        assert_eq!(counts[0].train_examples, 2 * a);
        assert_eq!(counts[1].train_examples, (b as f64 * 0.5).round() as usize);
        assert!(counts[0].trained_tokens > 0);
        // No validation pair is also trained on.
        for v in &p.validation {
            assert!(p.train.iter().all(|t| t.origin != v.origin));
        }
    }
}
