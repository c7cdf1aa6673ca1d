//! The reference model's log-probabilities of every pair of a run, computed once before
//! training (`precompute_ref_logps`, TRL's `precompute_ref_log_probs`) and stored with the run
//! and its checkpoints, so the reference model can be dropped and a resumed run reads them
//! back instead of recomputing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{EncodedPair, PairTruncation};
use crate::error::{FinetuneError, Result};
use crate::models::CausalLm;
use crate::training::checkpoints::{read_json, write_json};
use crate::training::preference::ReferenceLogps;
use crate::training::preference_step::{PairMicroBatch, reference_logps};

/// The table's file name in a run directory and in each checkpoint.
pub const REFERENCE_LOGPS_FILE: &str = "reference_logps.json";

/// Summed reference log-probabilities `[chosen, rejected]` of each training and validation
/// pair, in the order of [`TrainData`](crate::TrainData)'s `pairs` and `validation_pairs`.
/// In the file each value is a decimal string (Rust's shortest exact form): serde_json's default
/// number parser may miss the last bit, and a resumed run must read back the very values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTable {
    /// One entry per training pair.
    #[serde(with = "exact")]
    pub train: Vec<[f64; 2]>,
    /// One entry per validation pair.
    #[serde(with = "exact")]
    pub validation: Vec<[f64; 2]>,
}

/// `[f64; 2]` entries as decimal strings that parse back to the same bits.
mod exact {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[[f64; 2]], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|[c, r]| [c.to_string(), r.to_string()]))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[f64; 2]>, D::Error> {
        let text: Vec<[String; 2]> = Vec::deserialize(d)?;
        text.iter()
            .map(|[c, r]| {
                let parse = |t: &str| {
                    t.parse::<f64>()
                        .map_err(|e| D::Error::custom(format!("{t:?} is not a number: {e}")))
                };
                Ok([parse(c)?, parse(r)?])
            })
            .collect()
    }
}

fn column(
    reference: &CausalLm,
    pairs: &[EncodedPair],
    pad_id: u32,
    batch: usize,
    max_len: usize,
    truncation: PairTruncation,
) -> Result<Vec<[f64; 2]>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let mb = PairMicroBatch::new(chunk, pad_id, Some(max_len), truncation);
        let r = reference_logps(reference, &mb)?;
        out.extend(r.chosen.into_iter().zip(r.rejected).map(|(c, r)| [c, r]));
    }
    Ok(out)
}

impl ReferenceTable {
    /// Runs `reference` (a model without autodiff, see
    /// [`reference_model`](crate::training::reference_model)) over every pair, `batch` pairs at
    /// a time, cut to `max_len` as training cuts them.
    pub fn compute(
        reference: &CausalLm,
        train: &[EncodedPair],
        validation: &[EncodedPair],
        pad_id: u32,
        batch: usize,
        max_len: usize,
        truncation: PairTruncation,
    ) -> Result<ReferenceTable> {
        Ok(ReferenceTable {
            train: column(reference, train, pad_id, batch, max_len, truncation)?,
            validation: column(reference, validation, pad_id, batch, max_len, truncation)?,
        })
    }

    /// The entries of training pairs `indices` (of validation pairs, with `validation`), as one
    /// micro-batch's reference.
    pub(crate) fn batch(&self, indices: &[usize], validation: bool) -> ReferenceLogps {
        let column = if validation {
            &self.validation
        } else {
            &self.train
        };
        let (chosen, rejected) = indices
            .iter()
            .map(|&i| (column[i][0], column[i][1]))
            .unzip();
        ReferenceLogps { chosen, rejected }
    }

    /// Writes the table into `dir` (atomically); the values read back bit for bit.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_json(&dir.join(REFERENCE_LOGPS_FILE), self)
    }

    /// The table stored in `dir`, checked against the run's `train` and `validation` pair
    /// counts.
    pub fn read(dir: &Path, train: usize, validation: usize) -> Result<ReferenceTable> {
        let path = dir.join(REFERENCE_LOGPS_FILE);
        if !path.is_file() {
            return Err(FinetuneError::Checkpoint {
                path,
                reason: "missing: the run precomputed its reference log-probabilities \
                         (precompute_ref_logps) and stores them here"
                    .into(),
            });
        }
        let table: ReferenceTable = read_json(&path)?;
        if table.train.len() != train || table.validation.len() != validation {
            return Err(FinetuneError::Checkpoint {
                path,
                reason: format!(
                    "holds {} training and {} validation pairs; the data gives {train} and \
                     {validation}",
                    table.train.len(),
                    table.validation.len()
                ),
            });
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_exactly_and_counts_are_checked() {
        let dir = std::env::temp_dir().join(format!("medify-reftable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = ReferenceTable {
            train: vec![[-12.345678901234567, -0.1 - 0.2], [-1e-300, -3.0]],
            validation: vec![[-7.0, -f64::MIN_POSITIVE]],
        };
        // Values whose last bit serde_json's default number parser can miss.
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut table = table;
        for _ in 0..2000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let v = -(f64::from_bits(0x3FF0_0000_0000_0000 | (rng >> 12)) - 1.0) * 1e3;
            table.train.push([v, v / 3.0]);
        }
        let table = ReferenceTable {
            train: table.train,
            validation: table.validation,
        };
        table.write(&dir).unwrap();
        let back = ReferenceTable::read(&dir, 2002, 1).unwrap();
        for (a, b) in back.train.iter().zip(&table.train) {
            assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits));
        }
        let e = ReferenceTable::read(&dir, 3, 1).unwrap_err().to_string();
        assert!(e.contains(REFERENCE_LOGPS_FILE) && e.contains("3"), "{e}");
        let b = table.batch(&[1, 0], false);
        assert_eq!(b.chosen, vec![-1e-300, -12.345678901234567]);
        assert_eq!(b.rejected, vec![-3.0, -0.1 - 0.2]);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = ReferenceTable::read(&dir, 2, 1).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
