//! Hyper-parameter sweeps: one base [`FinetuneConfig`] and a grid or a list of variants, each
//! trained as its own run directory under the sweep's, then tabulated.
//!
//! A sweep file is JSON:
//!
//! ```json
//! {"base": {"max_steps": 200, "eval_every": 50},
//!  "grid": {"learning_rate": [1e-4, 2e-4], "lora_r": [16, 64]},
//!  "variants": [{"name": "dora", "use_dora": true}]}
//! ```
//!
//! `base` and every variant hold [`FinetuneConfig`] fields (checked by name and type); the grid's
//! variants are every combination of its lists, the explicit ones follow. Rerunning a sweep
//! skips the variants that finished and resumes an interrupted one from its newest checkpoint.
//! [`run_sweep`] writes `results.csv`, `results.md` (sorted by best validation loss) and
//! `eval_loss.png` (every variant's validation curve). With `"generate": {…}` in the file
//! ([`GenerateSpec`]) each variant also answers its held-out chat records and the table gains
//! BLEU and ROUGE-1/2/L columns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use burn::module::Module;

use crate::chat::Chat;
use crate::error::{FinetuneError, Result, io_err};
use crate::evaluation::answers::{AnswerCase, AnswerReport, score_generated_answers};
use crate::evaluation::text_metrics::TextScores;
use crate::loading::{FinetunedModel, FinetunedOptions};
use crate::lora::LoraExt;
use crate::models::GenerationConfig;
use crate::training::checkpoints::{
    CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, latest_checkpoint, read_json, write_atomic,
};
use crate::training::config::FinetuneConfig;
use crate::training::metrics::{MetricsRecord, read_metrics};
use crate::training::provenance::RunSources;
use crate::training::run::start_run;
use crate::training::trainer::{TrainSummary, TrainerOptions};

/// A sweep file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    /// Settings every variant starts from.
    #[serde(default)]
    pub base: Map<String, Value>,
    /// Every combination of these values is a variant.
    #[serde(default)]
    pub grid: BTreeMap<String, Vec<Value>>,
    /// Variants given one by one (an optional `"name"` names the run directory).
    #[serde(default)]
    pub variants: Vec<Map<String, Value>>,
    /// Also score each variant's greedy answers to its held-out chat records.
    #[serde(default)]
    pub generate: Option<GenerateSpec>,
}

/// How a sweep scores answers: each finished variant answers (greedy, no disclaimer) the first
/// `max_records` chat records of its validation split, and BLEU (sacrebleu's) and ROUGE-1/2/L
/// (rouge_score's) compare the answers with the records' replies, as `eval --generate` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerateSpec {
    /// Held-out records answered (the first ones of the validation split).
    pub max_records: usize,
    /// Upper bound on tokens per answer.
    pub max_new_tokens: usize,
    /// transformers' `repetition_penalty` (1 = off).
    pub repetition_penalty: f32,
}

impl Default for GenerateSpec {
    fn default() -> GenerateSpec {
        GenerateSpec {
            max_records: 20,
            max_new_tokens: 128,
            repetition_penalty: 1.0,
        }
    }
}

/// A variant's scored answers, kept in its run directory so a rerun does not generate again.
pub const ANSWERS_FILE: &str = "answer_scores.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedAnswers {
    settings: GenerateSpec,
    report: AnswerReport,
}

/// One configuration of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Its run directory's name under the sweep's.
    pub name: String,
    /// The settings that make it differ from the base.
    pub overrides: Map<String, Value>,
    /// Its whole configuration.
    pub config: FinetuneConfig,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> FinetuneError {
    FinetuneError::Config {
        field: field.into(),
        reason: reason.into(),
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn dir_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._=-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl SweepSpec {
    /// Reads a sweep file, naming it in errors.
    pub fn read(path: &Path) -> Result<SweepSpec> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        serde_json::from_str(&text).map_err(|e| invalid(path.display().to_string(), e.to_string()))
    }

    /// The variants over `start` (the settings before the file's `base`), each checked.
    pub fn variants(&self, start: &FinetuneConfig) -> Result<Vec<Variant>> {
        let mut sets: Vec<(Option<String>, Map<String, Value>)> = Vec::new();
        if !self.grid.is_empty() {
            let mut points: Vec<Map<String, Value>> = vec![Map::new()];
            for (key, values) in &self.grid {
                if values.is_empty() {
                    return Err(invalid(format!("grid.{key}"), "has no values"));
                }
                points = points
                    .into_iter()
                    .flat_map(|p| {
                        values.iter().map(move |v| {
                            let mut q = p.clone();
                            q.insert(key.clone(), v.clone());
                            q
                        })
                    })
                    .collect();
            }
            sets.extend(points.into_iter().map(|p| (None, p)));
        }
        for v in &self.variants {
            let mut v = v.clone();
            let name = match v.remove("name") {
                None => None,
                Some(Value::String(s)) if !s.is_empty() => Some(s),
                Some(other) => {
                    return Err(invalid("variants[].name", format!("{other} is not a name")));
                }
            };
            sets.push((name, v));
        }
        if sets.is_empty() {
            return Err(invalid("sweep", "has no variants: give a grid or variants"));
        }
        let start = start
            .with_settings(&self.base)
            .map_err(|e| invalid("base", e.to_string()))?;
        let mut out: Vec<Variant> = Vec::with_capacity(sets.len());
        for (i, (name, overrides)) in sets.into_iter().enumerate() {
            let label = overrides
                .iter()
                .map(|(k, v)| format!("{k}={}", short(v)))
                .collect::<Vec<_>>()
                .join("_");
            let name = dir_name(&match name {
                Some(n) => n,
                None => format!("{:02}-{label}", i + 1),
            });
            let config = start
                .with_settings(&overrides)
                .map_err(|e| invalid(format!("variant {name}"), e.to_string()))?;
            if out.iter().any(|v| v.name == name) {
                return Err(invalid(
                    format!("variant {name}"),
                    "two variants have this name",
                ));
            }
            out.push(Variant {
                name,
                overrides,
                config,
            });
        }
        Ok(out)
    }
}

/// What a variant came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantResult {
    /// Its run directory's name.
    pub name: String,
    /// Its settings that differ from the base.
    pub overrides: Map<String, Value>,
    /// Optimizer steps.
    pub steps: u64,
    /// Training loss of the last step.
    pub final_train_loss: Option<f64>,
    /// Lowest validation loss and its step.
    pub best_eval: Option<(u64, f64)>,
    /// Validation perplexity at the end.
    pub eval_perplexity: Option<f64>,
    /// Mean training tokens per second over its steps.
    pub tokens_per_s: Option<f64>,
    /// Seconds of training (the last call, for a resumed run).
    pub wall_s: f64,
    /// Peak resident memory of its steps.
    pub peak_rss_bytes: Option<u64>,
    /// BLEU and ROUGE of its answers to held-out records, when the sweep asks for them.
    pub answers: Option<TextScores>,
    /// Preference runs: held-out reward accuracy and margin at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_rewards: Option<crate::training::metrics::EvalPreferenceMetrics>,
    /// Trained in an earlier invocation of the sweep (not run again).
    pub skipped: bool,
}

/// Where the sweep runs and how it reports.
pub struct SweepOptions {
    /// The sweep's directory; each variant runs in a directory of its name inside it.
    pub out_dir: PathBuf,
    /// The (autodiff) device to train on.
    pub device: Device,
    /// A progress bar for each variant's steps.
    pub progress: bool,
    /// Set to stop after the current step (with a checkpoint, resumed on the next invocation).
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Score each finished variant's answers (the sweep file's `generate`).
    pub generate: Option<GenerateSpec>,
}

/// Progress: which variant starts, and the time the ones left should take.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepProgress<'a> {
    /// 0-based index of the variant starting.
    pub index: usize,
    /// Variants in all.
    pub total: usize,
    /// The variant.
    pub variant: &'a Variant,
    /// Resumed from this checkpoint, or skipped because it finished before.
    pub resumed_from: Option<PathBuf>,
    pub skipped: bool,
    /// Seconds left, from the mean of the variants trained so far in this invocation.
    pub eta_s: Option<f64>,
}

/// The results so far, and whether the sweep stopped on the interrupt flag.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepReport {
    /// One per variant reached, in sweep order.
    pub results: Vec<VariantResult>,
    /// Stopped early by the interrupt flag (rerun to continue).
    pub interrupted: bool,
}

/// Trains every variant over `sources` (skipping finished ones, resuming interrupted ones),
/// then writes `results.csv`, `results.md` and `eval_loss.png` into the sweep's directory.
pub fn run_sweep(
    variants: &[Variant],
    sources: &RunSources,
    options: &SweepOptions,
    on_progress: &mut dyn FnMut(&SweepProgress<'_>),
) -> Result<SweepReport> {
    std::fs::create_dir_all(&options.out_dir).map_err(io_err(&options.out_dir))?;
    let mut results = Vec::new();
    let mut trained_s = Vec::new();
    let mut interrupted = false;
    for (index, variant) in variants.iter().enumerate() {
        let dir = options.out_dir.join(&variant.name);
        let recorded = dir.join(CONFIG_FILE);
        if recorded.is_file() && read_json::<FinetuneConfig>(&recorded)? != variant.config {
            // Neither skipped nor resumed: its results would not be this variant's.
            return Err(invalid(
                format!("variant {}", variant.name),
                format!(
                    "{} holds a run with other settings (the sweep file changed?); give the \
                     sweep another output directory or remove that directory",
                    dir.display()
                ),
            ));
        }
        let finished: Option<TrainSummary> = match dir.join(SUMMARY_FILE) {
            p if p.is_file() => Some(read_json::<TrainSummary>(&p)?).filter(|s| !s.interrupted),
            _ => None,
        };
        let resume = if finished.is_none() {
            latest_checkpoint(&dir)
        } else {
            None
        };
        let left = (variants.len() - index) as f64;
        let eta_s = (!trained_s.is_empty())
            .then(|| left * trained_s.iter().sum::<f64>() / trained_s.len() as f64);
        on_progress(&SweepProgress {
            index,
            total: variants.len(),
            variant,
            resumed_from: resume.clone(),
            skipped: finished.is_some(),
            eta_s,
        });
        let (summary, skipped) = match finished {
            Some(s) => (s, true),
            None => {
                let t = Instant::now();
                let trainer_options = TrainerOptions {
                    out_dir: dir.clone(),
                    // The variant's own directory: what a crash before its first checkpoint
                    // left there is the trainer's own output.
                    overwrite: resume.is_none(),
                    progress: options.progress,
                    interrupt: options.interrupt.clone(),
                    sources: None,
                };
                let mut run = start_run(
                    &variant.config,
                    sources.clone(),
                    &options.device,
                    trainer_options,
                    resume.as_deref(),
                )?;
                let summary = run.trainer.train()?;
                trained_s.push(t.elapsed().as_secs_f64());
                (summary, false)
            }
        };
        let mut result = result_of(variant, &dir, &summary, skipped)?;
        if summary.interrupted {
            results.push(result);
            interrupted = true;
            break;
        }
        if let Some(spec) = &options.generate {
            result.answers = Some(variant_answers(
                variant,
                &dir,
                sources,
                &options.device,
                spec,
            )?);
        }
        results.push(result);
    }
    write_results(&options.out_dir, variants, &results)?;
    Ok(SweepReport {
        results,
        interrupted,
    })
}

/// The variant's answer scores: from its run directory when they were made with `spec`,
/// otherwise by loading its adapter over the base and answering its held-out chat records.
fn variant_answers(
    variant: &Variant,
    dir: &Path,
    sources: &RunSources,
    device: &Device,
    spec: &GenerateSpec,
) -> Result<TextScores> {
    let saved = dir.join(ANSWERS_FILE);
    if saved.is_file()
        && let Ok(s) = read_json::<SavedAnswers>(&saved)
        && s.settings == *spec
    {
        return Ok(s.report.scores);
    }
    let config = &variant.config;
    // The variant's own record (its settings and its base's 4-bit form) says how to load it.
    let options = FinetunedOptions {
        model: Some(sources.model.path.clone()),
        ..FinetunedOptions::default()
    };
    let base = FinetunedModel::load(dir, device, &options)?.base;
    let mut model = base.model.valid();
    model.set_adapters_training(false);
    let encoder = base
        .encoder
        .clone()
        .with_system_prompt(config.system_prompt.clone());
    // The validation split the trainer held out, in its order, as chat cases: records, or
    // the prompts of pairs (answered against the chosen answer).
    let mut cases = if config.method.is_preference() {
        let crate::training::run::PreparedPairSources {
            pairs, prepared, ..
        } = crate::training::run::prepare_pair_sources(
            &sources.data,
            &encoder,
            config.dataset_config(),
            config.pair_truncation,
        )?;
        let origins: Vec<&str> = prepared
            .validation
            .iter()
            .map(|p| p.origin.as_str())
            .collect();
        AnswerCase::from_pairs(&held_out(&pairs, |p| &p.origin, &origins))
    } else {
        let crate::training::run::PreparedSources {
            records, prepared, ..
        } = crate::training::run::prepare_sources(
            &sources.data,
            &encoder,
            config.dataset_config(),
        )?;
        let origins: Vec<&str> = prepared
            .validation
            .iter()
            .map(|e| e.origin.as_str())
            .collect();
        AnswerCase::from_records(&held_out(&records, |r| &r.origin, &origins))
    };
    cases.truncate(spec.max_records);
    if cases.is_empty() {
        return Err(FinetuneError::NoData(format!(
            "variant {}: no held-out chat record to answer (generate needs a validation split              of conversations or Q&A pairs)",
            variant.name
        )));
    }
    let chat = Chat::new(&model, &base.tokenizer, &encoder)
        .with_disclaimer(false)
        .with_generation(GenerationConfig {
            max_new_tokens: spec.max_new_tokens,
            repetition_penalty: spec.repetition_penalty,
            ..GenerationConfig::default()
        });
    let report = score_generated_answers(&chat, &cases, &mut |_, _| {})?;
    let scores = report.scores;
    crate::training::checkpoints::write_json(
        &saved,
        &SavedAnswers {
            settings: spec.clone(),
            report,
        },
    )?;
    Ok(scores)
}

/// The items of `read` whose origins `validation` lists, in that order: the held-out records
/// or pairs as they were read.
fn held_out<T: Clone>(read: &[T], origin: impl Fn(&T) -> &String, validation: &[&str]) -> Vec<T> {
    let by_origin: std::collections::HashMap<&str, &T> =
        read.iter().map(|r| (origin(r).as_str(), r)).collect();
    validation
        .iter()
        .filter_map(|o| by_origin.get(o).map(|r| (*r).clone()))
        .collect()
}

fn result_of(
    variant: &Variant,
    dir: &Path,
    s: &TrainSummary,
    skipped: bool,
) -> Result<VariantResult> {
    let metrics = dir.join(METRICS_FILE);
    let (mut last_loss, mut rates, mut peak) = (None, Vec::new(), None::<u64>);
    if metrics.is_file() {
        for record in read_metrics(&metrics)? {
            if let MetricsRecord::Step(step) = record {
                last_loss = Some(step.loss);
                rates.push(step.tokens_per_s);
                if let Some(p) = step.peak_rss_bytes {
                    peak = Some(peak.map_or(p, |q| q.max(p)));
                }
            }
        }
    }
    Ok(VariantResult {
        name: variant.name.clone(),
        overrides: variant.overrides.clone(),
        steps: s.steps,
        final_train_loss: last_loss.or(s.last_loss),
        best_eval: s.best_eval,
        eval_perplexity: s.eval_after.as_ref().map(|e| e.perplexity),
        tokens_per_s: (!rates.is_empty()).then(|| rates.iter().sum::<f64>() / rates.len() as f64),
        wall_s: s.seconds,
        peak_rss_bytes: peak,
        answers: None,
        eval_rewards: s.preference_after,
        skipped,
    })
}

fn write_results(dir: &Path, variants: &[Variant], results: &[VariantResult]) -> Result<()> {
    let mut keys: Vec<String> = variants
        .iter()
        .flat_map(|v| v.overrides.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    let mut sorted: Vec<(usize, &VariantResult)> = results.iter().enumerate().collect();
    sorted.sort_by(|a, b| {
        let key = |r: &VariantResult| r.best_eval.map_or(f64::INFINITY, |(_, l)| l);
        key(a.1).total_cmp(&key(b.1))
    });
    let opt = |v: Option<f64>, digits: usize| v.map_or(String::new(), |x| format!("{x:.digits$}"));
    let mut header = vec!["curve".to_string(), "variant".to_string()];
    header.extend(keys.iter().cloned());
    header.extend(
        [
            "steps",
            "final_train_loss",
            "best_eval_loss",
            "best_eval_step",
            "eval_perplexity",
            "tokens_per_s",
            "wall_s",
            "peak_rss_mib",
        ]
        .map(String::from),
    );
    let rewarded = results.iter().any(|r| r.eval_rewards.is_some());
    if rewarded {
        header.extend(["eval_reward_accuracy", "eval_reward_margin"].map(String::from));
    }
    let answered = results.iter().any(|r| r.answers.is_some());
    if answered {
        header.extend(["bleu", "rouge1", "rouge2", "rougeL"].map(String::from));
    }
    let rows: Vec<Vec<String>> = sorted
        .iter()
        .map(|(i, r)| {
            let mut row = vec![(i + 1).to_string(), r.name.clone()];
            // Every varied setting's value in this variant, its own or the base's.
            let config = variants
                .iter()
                .find(|v| v.name == r.name)
                .and_then(|v| serde_json::to_value(&v.config).ok())
                .unwrap_or(Value::Null);
            row.extend(keys.iter().map(|k| {
                r.overrides
                    .get(k)
                    .or_else(|| config.get(k))
                    .map(short)
                    .unwrap_or_default()
            }));
            row.extend([
                r.steps.to_string(),
                opt(r.final_train_loss, 4),
                opt(r.best_eval.map(|(_, l)| l), 4),
                r.best_eval.map_or(String::new(), |(s, _)| s.to_string()),
                opt(r.eval_perplexity, 2),
                opt(r.tokens_per_s, 1),
                format!("{:.1}", r.wall_s),
                r.peak_rss_bytes.map_or(String::new(), |b| {
                    format!("{:.0}", b as f64 / (1 << 20) as f64)
                }),
            ]);
            if rewarded {
                let p = r.eval_rewards.as_ref();
                row.extend([
                    opt(p.map(|p| p.rewards_accuracies), 3),
                    opt(p.map(|p| p.rewards_margins), 4),
                ]);
            }
            if answered {
                let a = r.answers.as_ref();
                row.extend([
                    opt(a.map(|a| a.bleu), 4),
                    opt(a.map(|a| a.rouge1), 4),
                    opt(a.map(|a| a.rouge2), 4),
                    opt(a.map(|a| a.rouge_l), 4),
                ]);
            }
            row
        })
        .collect();
    let csv_field = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut csv = header
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for row in &rows {
        csv += &(row
            .iter()
            .map(|c| csv_field(c))
            .collect::<Vec<_>>()
            .join(",")
            + "\n");
    }
    write_atomic(&dir.join("results.csv"), csv.as_bytes())?;
    let mut md = String::from(
        "# Sweep results\n\nSorted by best validation loss; `curve` is the variant's number in \
         `eval_loss.png`.\n\n",
    );
    md += &format!(
        "| {} |\n|{}\n",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for row in &rows {
        md += &format!(
            "| {} |\n",
            row.iter()
                .map(|c| c.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    write_atomic(&dir.join("results.md"), md.as_bytes())?;
    let metrics: Vec<PathBuf> = results
        .iter()
        .map(|r| dir.join(&r.name).join(METRICS_FILE))
        .collect();
    let refs: Vec<&Path> = metrics.iter().map(PathBuf::as_path).collect();
    crate::training::plot::write_curves_plot(&refs, &dir.join("eval_loss.png"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_list_make_named_checked_variants() {
        let spec: SweepSpec = serde_json::from_str(
            r#"{"base": {"max_steps": 3}, "grid": {"learning_rate": [0.0001, 0.0002], "lora_r": [8, 16]},
                "variants": [{"name": "dora", "use_dora": true}]}"#,
        )
        .unwrap();
        let v = spec.variants(&FinetuneConfig::default()).unwrap();
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "01-learning_rate=0.0001_lora_r=8",
                "02-learning_rate=0.0001_lora_r=16",
                "03-learning_rate=0.0002_lora_r=8",
                "04-learning_rate=0.0002_lora_r=16",
                "dora"
            ]
        );
        assert_eq!((v[3].config.learning_rate, v[3].config.lora_r), (2e-4, 16));
        assert!(v.iter().all(|v| v.config.max_steps == Some(3)));
        assert!(v[4].config.use_dora);

        let bad = |json: &str| {
            let spec: SweepSpec = serde_json::from_str(json).unwrap();
            spec.variants(&FinetuneConfig::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(r#"{"grid": {"learnig_rate": [1]}}"#).contains("learnig_rate"));
        assert!(bad(r#"{"variants": [{"lora_r": "big"}]}"#).contains("variant 01-lora_r=big"));
        assert!(bad(r#"{"variants": [{"name": "a"}, {"name": "a"}]}"#).contains("two variants"));
        assert!(bad(r#"{}"#).contains("no variants"));
        assert!(serde_json::from_str::<SweepSpec>(r#"{"grid": {}, "extra": 1}"#).is_err());
    }
}
