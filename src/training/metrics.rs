//! The run's log, `metrics.jsonl`: one JSON object per line, a [`StepMetrics`] after every
//! optimizer step and an [`EvalMetrics`] after every evaluation. The trainer's
//! [`MetricsLog`](crate::training::MetricsLog) writes it; the loss plot and the sweep read it
//! back with [`read_metrics`].

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result, io_err};
use crate::evaluation::EvalResult;
use crate::training::preference::PairStats;

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// The step just taken (1-based).
    pub step: u64,
    /// Epoch the step's micro-batches came from.
    #[serde(default)]
    pub epoch: u64,
    /// Mean loss per trained token over the step's micro-batches.
    pub loss: f64,
    /// Learning rate the step used.
    #[serde(default)]
    pub lr: f64,
    /// Global gradient norm before clipping.
    #[serde(default)]
    pub grad_norm: f64,
    /// Factor clipping scaled the gradients by (1 when not clipped).
    #[serde(default)]
    pub clip_scale: f64,
    /// Trained (labelled) tokens in the step.
    #[serde(default)]
    pub tokens: u64,
    /// Trained tokens per second of the step.
    #[serde(default)]
    pub tokens_per_s: f64,
    /// The optimizer skipped the update (non-finite gradients).
    #[serde(default)]
    pub skipped: bool,
    /// Seconds since this training call started.
    #[serde(default)]
    pub elapsed_s: f64,
    /// Peak resident memory of the whole process during the step, when measured
    /// ([`PeakMemory`](crate::training::PeakMemory)).
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// Bytes the device allocator holds after the step, when measured.
    #[serde(default)]
    pub device_reserved_bytes: Option<u64>,
    /// A preference step's rewards and log-probabilities, under TRL's names
    /// (`rewards/chosen`, …); absent for supervised steps.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMetrics>,
    /// Each device's micro-batches, tokens and seconds in a data-parallel step; absent on one
    /// device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<crate::training::DeviceShare>>,
}

/// What TRL logs of a preference batch, under its names: the means over the batch's pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PreferenceMetrics {
    /// Mean implicit reward of the chosen answers (DPO: β times the policy/reference log-ratio).
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    /// Mean implicit reward of the rejected answers.
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Share of pairs whose chosen reward beats the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// Mean chosen minus rejected reward.
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    /// Mean summed (SimPO, ORPO: per-token mean) log-probability of the chosen answers.
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    /// The same for the rejected answers.
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
    /// ORPO: the chosen sequences' NLL term.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll_loss: Option<f64>,
    /// ORPO: the mean log-sigmoid of the log odds ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_odds_ratio: Option<f64>,
    /// ORPO: the mean log odds ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_odds_chosen: Option<f64>,
}

impl PreferenceMetrics {
    /// The means of a batch's statistics.
    pub fn of(stats: &PairStats) -> PreferenceMetrics {
        PreferenceMetrics {
            rewards_chosen: stats.mean_reward_chosen(),
            rewards_rejected: stats.mean_reward_rejected(),
            rewards_accuracies: stats.accuracy(),
            rewards_margins: stats.margin(),
            logps_chosen: stats.mean_logps_chosen(),
            logps_rejected: stats.mean_logps_rejected(),
            nll_loss: stats.nll_loss,
            log_odds_ratio: stats.log_odds_ratio,
            log_odds_chosen: stats.log_odds_chosen,
        }
    }
}

/// [`PreferenceMetrics`] of an evaluation, under TRL's `eval_` names (`eval_rewards/chosen`, …).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalPreferenceMetrics {
    /// See [`PreferenceMetrics::rewards_chosen`].
    #[serde(rename = "eval_rewards/chosen")]
    pub rewards_chosen: f64,
    /// See [`PreferenceMetrics::rewards_rejected`].
    #[serde(rename = "eval_rewards/rejected")]
    pub rewards_rejected: f64,
    /// See [`PreferenceMetrics::rewards_accuracies`].
    #[serde(rename = "eval_rewards/accuracies")]
    pub rewards_accuracies: f64,
    /// See [`PreferenceMetrics::rewards_margins`].
    #[serde(rename = "eval_rewards/margins")]
    pub rewards_margins: f64,
    /// See [`PreferenceMetrics::logps_chosen`].
    #[serde(rename = "eval_logps/chosen")]
    pub logps_chosen: f64,
    /// See [`PreferenceMetrics::logps_rejected`].
    #[serde(rename = "eval_logps/rejected")]
    pub logps_rejected: f64,
    /// Pairs evaluated.
    #[serde(rename = "eval_pairs")]
    pub pairs: u64,
}

impl EvalPreferenceMetrics {
    /// The means of held-out pairs' statistics.
    pub fn of(stats: &PairStats) -> EvalPreferenceMetrics {
        let m = PreferenceMetrics::of(stats);
        EvalPreferenceMetrics {
            rewards_chosen: m.rewards_chosen,
            rewards_rejected: m.rewards_rejected,
            rewards_accuracies: m.rewards_accuracies,
            rewards_margins: m.rewards_margins,
            logps_chosen: m.logps_chosen,
            logps_rejected: m.logps_rejected,
            pairs: stats.rewards_chosen.len() as u64,
        }
    }
}

/// One evaluation on the validation sequences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Optimizer steps taken when it ran (0: before training).
    pub step: u64,
    /// Mean loss per labelled token.
    pub eval_loss: f64,
    /// `exp(eval_loss)`.
    #[serde(default)]
    pub eval_perplexity: f64,
    /// Labelled tokens evaluated.
    #[serde(default)]
    pub eval_tokens: u64,
    /// Held-out preference pairs: reward accuracy and margin, under TRL's `eval_` names. The
    /// loss is then the preference objective's, and `eval_perplexity` its exponential.
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<EvalPreferenceMetrics>,
}

impl EvalMetrics {
    /// The log line of an evaluation at `step`.
    pub fn of(step: u64, r: &EvalResult) -> EvalMetrics {
        EvalMetrics {
            step,
            eval_loss: r.loss,
            eval_perplexity: r.perplexity,
            eval_tokens: r.tokens as u64,
            preference: None,
        }
    }
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsRecord {
    /// After an optimizer step.
    Step(StepMetrics),
    /// After an evaluation.
    Eval(EvalMetrics),
}

impl MetricsRecord {
    /// The step the record belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsRecord::Step(s) => s.step,
            MetricsRecord::Eval(e) => e.step,
        }
    }
}

/// Appends `record` to the log at `path` as one line (created when absent).
pub fn append_metrics(path: &Path, record: &MetricsRecord) -> Result<()> {
    let mut line = serde_json::to_string(record).map_err(|e| FinetuneError::Checkpoint {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    line.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    // One write per line: a kill leaves whole lines and at most a torn last one.
    f.write_all(line.as_bytes()).map_err(io_err(path))
}

/// Reads a `metrics.jsonl`. A malformed last line (a write torn by a kill) is left out; any
/// other malformed line is an error naming it.
///
/// ```
/// use medify_qlora::training::{MetricsRecord, read_metrics};
/// let dir = std::env::temp_dir().join(format!("medify-metrics-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("metrics.jsonl");
/// std::fs::write(&path, "{\"step\":0,\"eval_loss\":2.5}\n{\"step\":1,\"loss\":2.4}\n{\"st")?;
/// let records = read_metrics(&path)?;
/// assert!(matches!(&records[..], [MetricsRecord::Eval(_), MetricsRecord::Step(s)] if s.loss == 2.4));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut records = Vec::with_capacity(lines.len());
    for (n, (i, line)) in lines.iter().enumerate() {
        match serde_json::from_str::<MetricsRecord>(line) {
            Ok(r) => records.push(r),
            Err(_) if n + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(FinetuneError::Checkpoint {
                    path: path.to_path_buf(),
                    reason: format!("line {}: {e}", i + 1),
                });
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_keep_the_field_order_of_the_log() {
        let step = MetricsRecord::Step(StepMetrics {
            step: 3,
            epoch: 0,
            loss: 1.5,
            lr: 2e-4,
            grad_norm: 0.7,
            clip_scale: 1.0,
            tokens: 40,
            tokens_per_s: 100.0,
            skipped: false,
            elapsed_s: 0.4,
            peak_rss_bytes: Some(1 << 20),
            device_reserved_bytes: None,
            preference: None,
            devices: None,
        });
        let line = serde_json::to_string(&step).unwrap();
        assert!(
            line.starts_with("{\"step\":3,\"epoch\":0,\"loss\":1.5,"),
            "{line}"
        );
        assert!(line.ends_with("\"device_reserved_bytes\":null}"), "{line}");
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), step);
        let eval = MetricsRecord::Eval(EvalMetrics {
            step: 0,
            eval_loss: 2.0,
            eval_perplexity: 2f64.exp(),
            eval_tokens: 9,
            preference: None,
        });
        let line = serde_json::to_string(&eval).unwrap();
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), eval);
    }

    #[test]
    fn preference_records_use_trl_names_and_round_trip() {
        let stats = PairStats {
            rewards_chosen: vec![0.2, -0.1],
            rewards_rejected: vec![-0.3, 0.0],
            logps_chosen: vec![-10.0, -20.0],
            logps_rejected: vec![-12.0, -19.0],
            losses: vec![0.5, 0.7],
            nll_loss: Some(1.5),
            log_odds_ratio: Some(-0.6),
            log_odds_chosen: Some(0.1),
        };
        let step = MetricsRecord::Step(StepMetrics {
            step: 1,
            epoch: 0,
            loss: 0.6,
            lr: 1e-5,
            grad_norm: 0.1,
            clip_scale: 1.0,
            tokens: 12,
            tokens_per_s: 10.0,
            skipped: false,
            elapsed_s: 1.0,
            peak_rss_bytes: None,
            device_reserved_bytes: None,
            preference: Some(PreferenceMetrics::of(&stats)),
            devices: None,
        });
        let line = serde_json::to_string(&step).unwrap();
        for name in [
            "\"rewards/chosen\":0.05",
            "\"rewards/accuracies\":0.5",
            "\"rewards/margins\":0.2",
            "\"logps/rejected\":-15.5",
            "\"nll_loss\":1.5",
        ] {
            assert!(line.contains(name), "{name} in {line}");
        }
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), step);
        let eval = MetricsRecord::Eval(EvalMetrics {
            step: 4,
            eval_loss: 0.69,
            // Short decimals: serde_json's default parser may miss the last bit of others.
            eval_perplexity: 2.0,
            eval_tokens: 30,
            preference: Some(EvalPreferenceMetrics::of(&stats)),
        });
        let line = serde_json::to_string(&eval).unwrap();
        assert!(line.contains("\"eval_rewards/accuracies\":0.5"), "{line}");
        assert!(line.contains("\"eval_pairs\":2"), "{line}");
        assert_eq!(serde_json::from_str::<MetricsRecord>(&line).unwrap(), eval);
    }

    #[test]
    fn a_torn_last_line_is_left_out_and_a_bad_middle_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let ok = "{\"step\":1,\"loss\":2.0}\n";
        append_metrics(
            &path,
            &MetricsRecord::Eval(EvalMetrics {
                step: 0,
                eval_loss: 3.0,
                eval_perplexity: 3f64.exp(),
                eval_tokens: 5,
                preference: None,
            }),
        )
        .unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(ok);
        std::fs::write(&path, format!("{text}{{\"step\":2,\"lo")).unwrap();
        assert_eq!(read_metrics(&path).unwrap().len(), 2);
        std::fs::write(&path, format!("{text}{{\"step\":2,\"lo\n{ok}")).unwrap();
        let err = read_metrics(&path).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
    }
}
