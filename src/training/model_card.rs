//! Model cards and Hub-ready export of a run's adapter.
//!
//! [`ModelCard::from_run`] reads what a run directory records (`finetune_config.json`,
//! `run_sources.json`, `train_summary.json`, `adapter_config.json`) and renders a `README.md`
//! with the YAML header the Hugging Face Hub and PEFT read (`base_model`, `library_name: peft`,
//! `pipeline_tag`, `tags`, `datasets`, `license`), the training settings, the evaluation results
//! and the intended use with the medical disclaimer. The trainer writes it into every finished
//! run; [`export_hub`] lays out adapter, tokenizer and card so that `huggingface-cli upload` (or
//! a `git push` to a Hub repository) publishes the directory as it is. Nothing here touches the
//! network, and no local path goes into an exported file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{FinetuneError, Result, io_err};
use crate::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::safety::DISCLAIMER;
use crate::training::checkpoints::{CONFIG_FILE, PLOT_FILE, SUMMARY_FILE, read_json, write_atomic};
use crate::training::config::{BaseQuant, FinetuneConfig};
use crate::training::provenance::{DataOrigin, RunSources};
use crate::training::trainer::TrainSummary;

/// The card's file name (what the Hub shows).
pub const CARD_FILE: &str = "README.md";

/// The line after the YAML header of every card this crate writes (the header itself must open
/// the file for the Hub to read it): a card without it is a user's, and is never replaced.
pub const CARD_MARK: &str = "<!-- model card written by medify-qlora -->";

/// Hub metadata a run does not record.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CardOptions {
    /// The base model's Hub id (`org/name`), when the run recorded a local path.
    pub base_model: Option<String>,
    /// SPDX id or Hub license name of the adapter (default: the base's when it is known).
    pub license: Option<String>,
    /// Hub ids of the datasets trained on.
    pub datasets: Vec<String>,
    /// The card's title (default: the run directory's name).
    pub name: Option<String>,
}

/// Licenses of the bases this project fetches or documents, for the card's default.
const KNOWN_LICENSES: [(&str, &str); 3] = [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0"),
    ("TinyLlama/TinyLlama-1.1B-Chat-v1.0", "apache-2.0"),
    ("mistralai/Mistral-7B-Instruct-v0.2", "apache-2.0"),
];

/// A model card, from a run directory.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    name: String,
    base_model: Option<String>,
    base_file: String,
    license: Option<String>,
    datasets: Vec<String>,
    data: String,
    config: FinetuneConfig,
    adapter: Value,
    summary: Option<TrainSummary>,
    plot: bool,
}

/// Whether `s` reads as a Hub repository id (`org/name`), not a path.
pub fn is_hub_id(s: &str) -> bool {
    let mut parts = s.split('/');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// A YAML scalar: JSON's double-quoted strings are valid YAML and escape everything.
fn yaml(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl ModelCard {
    /// Reads the run in `dir` (a finished run, or a checkpoint directory).
    pub fn from_run(dir: &Path, options: &CardOptions) -> Result<ModelCard> {
        let need = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(FinetuneError::Config {
                    field: "adapter".into(),
                    reason: format!(
                        "{} has no {name}: not a run or adapter directory",
                        dir.display()
                    ),
                })
            }
        };
        let config: FinetuneConfig = read_json(&need(CONFIG_FILE)?)?;
        let adapter: Value = read_json(&need(ADAPTER_CONFIG)?)?;
        let sources = RunSources::read(dir)?;
        let summary_path = dir.join(SUMMARY_FILE);
        let summary: Option<TrainSummary> = if summary_path.is_file() {
            Some(read_json(&summary_path)?)
        } else {
            None
        };
        let recorded = sources
            .as_ref()
            .map(|s| s.model.name_or_path.clone())
            .or_else(|| {
                adapter["base_model_name_or_path"]
                    .as_str()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        let base_model = options
            .base_model
            .clone()
            .or_else(|| is_hub_id(&recorded).then(|| recorded.clone()));
        if let Some(id) = &base_model
            && !is_hub_id(id)
        {
            return Err(FinetuneError::Config {
                field: "base_model".into(),
                reason: format!("{id:?} is not a Hub id (org/name)"),
            });
        }
        let base_file = sources.as_ref().map_or_else(
            || file_name(Path::new(&recorded)),
            |s| file_name(&s.model.path),
        );
        let data = match sources.as_ref().map(|s| s.data.as_slice()) {
            Some(data) if !data.is_empty() => {
                let names: Vec<String> = data
                    .iter()
                    .map(|d| {
                        let name = match &d.origin {
                            DataOrigin::Embedded => {
                                "the medical Q&A set embedded in medify-qlora".into()
                            }
                            DataOrigin::EmbeddedPreferences => {
                                "the medical-safety preference set embedded in medify-qlora".into()
                            }
                            DataOrigin::File { path } => format!("`{}`", file_name(path)),
                        };
                        if d.weight == 1.0 {
                            name
                        } else {
                            format!("{name} (weight {})", d.weight)
                        }
                    })
                    .collect();
                match names.split_last() {
                    Some((last, rest)) if !rest.is_empty() => {
                        format!("{} and {last}", rest.join(", "))
                    }
                    _ => names.join(""),
                }
            }
            _ => "data the run did not record".into(),
        };
        let license = options.license.clone().or_else(|| {
            let id = base_model.as_deref()?;
            KNOWN_LICENSES
                .iter()
                .find(|(m, _)| *m == id)
                .map(|(_, l)| l.to_string())
        });
        let name = options.name.clone().unwrap_or_else(|| {
            std::path::absolute(dir)
                .ok()
                .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "medify-qlora adapter".into())
        });
        Ok(ModelCard {
            name,
            base_model,
            base_file,
            license,
            datasets: options.datasets.clone(),
            data,
            config,
            adapter,
            summary,
            plot: dir.join(PLOT_FILE).is_file(),
        })
    }

    /// The base model's Hub id, when known.
    pub fn base_model(&self) -> Option<&str> {
        self.base_model.as_deref()
    }

    /// The card as Markdown with its YAML header.
    pub fn render(&self) -> String {
        let c = &self.config;
        let a = &self.adapter;
        let mut y = vec!["---".to_string()];
        if let Some(b) = &self.base_model {
            y.push(format!("base_model: {}", yaml(b)));
        }
        y.push("library_name: peft".into());
        y.push("pipeline_tag: text-generation".into());
        if let Some(l) = &self.license {
            y.push(format!("license: {}", yaml(l)));
        }
        y.push("language:\n- en".into());
        let mut tags = Vec::new();
        if let Some(b) = &self.base_model {
            tags.push(format!("base_model:adapter:{b}"));
        }
        tags.extend(["lora", "qlora", "peft", "medical", "medify-qlora"].map(String::from));
        if c.use_dora {
            tags.push("dora".into());
        }
        y.push(format!(
            "tags:\n{}",
            tags.iter()
                .map(|t| format!("- {}", yaml(t)))
                .collect::<Vec<_>>()
                .join("\n")
        ));
        if !self.datasets.is_empty() {
            y.push(format!(
                "datasets:\n{}",
                self.datasets
                    .iter()
                    .map(|d| format!("- {}", yaml(d)))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
        y.push("---".into());

        let base = self.base_model.as_deref().map_or_else(
            || format!("`{}`", self.base_file),
            |b| format!("[{b}](https://huggingface.co/{b})"),
        );
        let method = match (c.use_dora, c.quantization.quant) {
            (true, BaseQuant::Int8) => "DoRA (over an 8-bit base)",
            (false, BaseQuant::Int8) => "LoRA (over an 8-bit base, LLM.int8)",
            (true, q) if q.quant_type().is_some() => "QDoRA (DoRA over a 4-bit base)",
            (true, _) => "DoRA",
            (false, q) if q.quant_type().is_some() => "QLoRA",
            (false, _) => "LoRA",
        };
        let mut md = format!(
            "{}\n{CARD_MARK}\n\n# {}\n\nA {method} adapter for {base}, fine-tuned with \
             [medify-qlora](https://github.com/medify-qlora/medify-qlora) on {} to answer \
             medical questions in plain language.\n\n",
            y.join("\n"),
            self.name,
            self.data
        );
        md.push_str(&format!(
            "## Intended use\n\nEducational answers to general health questions, for research \
             and for building assistants that send people to professionals. It is not a medical \
             device and must not be used to diagnose, treat or decide on care. Its answers can be \
             wrong, incomplete or out of date, and it has not been evaluated clinically. Shown \
             to users, every answer should carry a disclaimer such as:\n\n> {DISCLAIMER}\n\n\
             medify-qlora's `chat` and `serve` add it, and put an emergency message before the \
             answer when a question names red-flag symptoms (chest pain, stroke signs, trouble \
             breathing, suicidal thoughts, …).\n\n"
        ));
        let base_id = self.base_model.as_deref().unwrap_or("BASE_MODEL_ID");
        md.push_str(&format!(
            "## How to use\n\nWith PEFT:\n\n```python\nfrom peft import PeftModel\nfrom \
             transformers import AutoModelForCausalLM, AutoTokenizer\n\nbase = \
             AutoModelForCausalLM.from_pretrained(\"{base_id}\")\nmodel = \
             PeftModel.from_pretrained(base, \"THIS_REPO\")\ntokenizer = \
             AutoTokenizer.from_pretrained(\"THIS_REPO\")\n```\n\nWith medify-qlora, from \
             this directory: `cargo xtask chat --adapter DIR --model BASE` or `cargo xtask \
             serve --adapter DIR --model BASE`.\n\n"
        ));

        let num = |v: &Value| match v {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Array(xs) => xs
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Bool(b) => b.to_string(),
            _ => "-".into(),
        };
        let quant = match c.quantization.quant.quant_type() {
            Some(_) => format!(
                "{} blocksize {}{}",
                c.quantization.quant.as_str().to_uppercase(),
                c.quantization.blocksize,
                if c.quantization.double_quant {
                    ", double quantization"
                } else {
                    ""
                }
            ),
            None if c.quantization.quant == BaseQuant::Int8 => {
                "INT8 (LLM.int8, row-wise absmax)".into()
            }
            None => "none (dense base)".into(),
        };
        let objective = match c.objective() {
            None => "supervised fine-tuning (next-token loss on the replies)".to_string(),
            Some(o) => {
                let mut text = format!("{} on preference pairs, beta {}", o.method, o.beta);
                if o.label_smoothing > 0.0 {
                    text.push_str(&format!(", label smoothing {}", o.label_smoothing));
                }
                if o.method == crate::training::Method::Simpo {
                    text.push_str(&format!(", gamma {}", o.simpo_gamma));
                }
                if o.method.needs_reference() {
                    text.push_str(if c.precompute_ref_logps {
                        ", reference log-probabilities precomputed"
                    } else {
                        ", reference computed every step"
                    });
                }
                text
            }
        };
        let rows: Vec<(&str, String)> = vec![
            ("base model", base.clone()),
            ("base quantization", quant),
            ("objective", objective),
            (
                "LoRA rank / alpha / dropout",
                format!(
                    "{} / {} / {}",
                    num(&a["r"]),
                    num(&a["lora_alpha"]),
                    num(&a["lora_dropout"])
                ),
            ),
            ("target modules", num(&a["target_modules"])),
            (
                "rsLoRA / DoRA",
                format!("{} / {}", c.use_rslora, c.use_dora),
            ),
            (
                "optimizer",
                format!(
                    "{:?}, weight decay {}, max grad norm {}",
                    c.optimizer, c.weight_decay, c.max_grad_norm
                ),
            ),
            (
                "learning rate",
                format!(
                    "{} ({:?}, warmup {})",
                    c.learning_rate,
                    c.lr_schedule,
                    c.warmup_steps.map_or_else(
                        || format!("{} of the steps", c.warmup_ratio),
                        |s| format!("{s} steps")
                    )
                ),
            ),
            (
                "batch",
                format!("{} x {} accumulation", c.batch_size, c.grad_accum),
            ),
            (
                "sequence length / packing",
                format!("{} / {}", c.max_len, c.packing),
            ),
            (
                "epochs / max steps",
                format!(
                    "{} / {}",
                    c.epochs,
                    c.max_steps.map_or("-".into(), |s| s.to_string())
                ),
            ),
            (
                "gradient checkpointing",
                c.gradient_checkpointing.to_string(),
            ),
            ("seed", c.seed.to_string()),
            (
                "chat template",
                c.template
                    .clone()
                    .unwrap_or_else(|| "the base model's".into()),
            ),
            ("loss", "on the assistant's replies only".into()),
        ];
        md.push_str("## Training\n\n| setting | value |\n|---|---|\n");
        for (k, v) in rows {
            md.push_str(&format!("| {k} | {} |\n", v.replace('|', "\\|")));
        }
        md.push('\n');

        md.push_str("## Evaluation\n\n");
        match &self.summary {
            Some(s) => {
                md.push_str(&format!(
                    "{} optimizer steps over {} labelled tokens in {:.0} s{}.\n\n",
                    s.steps,
                    s.tokens,
                    s.seconds,
                    if s.interrupted { " (interrupted)" } else { "" }
                ));
                let mut t = String::from("| | validation loss | perplexity |\n|---|---|---|\n");
                let mut any = false;
                if let Some(e) = &s.eval_before {
                    t.push_str(&format!(
                        "| base model | {:.4} | {:.2} |\n",
                        e.loss, e.perplexity
                    ));
                    any = true;
                }
                if let Some(e) = &s.eval_after {
                    t.push_str(&format!(
                        "| with this adapter | {:.4} | {:.2} |\n",
                        e.loss, e.perplexity
                    ));
                    any = true;
                }
                if let Some((step, loss)) = s.best_eval {
                    t.push_str(&format!(
                        "| best (step {step}) | {loss:.4} | {:.2} |\n",
                        loss.exp()
                    ));
                    any = true;
                }
                if let (Some(b), Some(a)) = (&s.preference_before, &s.preference_after) {
                    md.push_str(&format!(
                        "| held-out pairs ({}) | reward accuracy | reward margin | chosen log-prob | rejected log-prob |\n|---|---|---|---|---|\n",
                        a.pairs
                    ));
                    for (who, p) in [("before training", b), ("with this adapter", a)] {
                        md.push_str(&format!(
                            "| {who} | {:.3} | {:.4} | {:.2} | {:.2} |\n",
                            p.rewards_accuracies,
                            p.rewards_margins,
                            p.logps_chosen,
                            p.logps_rejected
                        ));
                    }
                    md.push_str(
                        "\nRewards as TRL logs them: beta times the policy's log-probability \
                         ratio to the reference (SimPO, ORPO: to none); the validation loss \
                         below is the preference objective's.\n\n",
                    );
                }
                if any {
                    md.push_str(&t);
                    md.push_str(
                        "\nOn the run's held-out validation split (assistant tokens only).\n\n",
                    );
                } else {
                    md.push_str("The run had no validation split.\n\n");
                }
            }
            None => md.push_str("The run has not finished: no results yet.\n\n"),
        }
        if self.plot {
            md.push_str(&format!("![training and validation loss]({PLOT_FILE})\n\n"));
        }
        md.push_str(&format!(
            "## Limitations\n\nA small fine-tune inherits the base model's knowledge, errors and \
             biases; medical Q&A data covers some conditions far better than others, and the \
             model can state wrong facts fluently. Check anything it says with a professional \
             or an authoritative source.\n\n## Framework\n\nmedify-qlora {} (Rust, burn); the \
             adapter is in PEFT's format (`{ADAPTER_CONFIG}`, `{ADAPTER_WEIGHTS}`).\n",
            env!("CARGO_PKG_VERSION")
        ));
        md
    }
}

/// Writes the card of the run in `dir` as its `README.md`, unless a `README.md` that this crate
/// did not write is there (that one is kept, and `None` returned).
pub fn write_model_card(dir: &Path, options: &CardOptions) -> Result<Option<PathBuf>> {
    let path = dir.join(CARD_FILE);
    if !card_is_ours(&path)? {
        return Ok(None);
    }
    let card = ModelCard::from_run(dir, options)?;
    write_atomic(&path, card.render().as_bytes())?;
    Ok(Some(path))
}

/// True when `path` is absent or a card this crate wrote.
fn card_is_ours(path: &Path) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.lines().take(100).any(|l| l == CARD_MARK)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// What [`export_hub`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubExport {
    /// The directory.
    pub dir: PathBuf,
    /// The files in it, by name.
    pub files: Vec<String>,
    /// The base model the adapter names.
    pub base_model: String,
}

/// The files an export writes; with `overwrite`, a directory holding only these is refreshed.
pub const HUB_FILES: [&str; 9] = [
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    CARD_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    PLOT_FILE,
    SUMMARY_FILE,
];

/// Lays out the run in `run` for the Hub in `out`: the adapter (its `base_model_name_or_path`
/// set to the base's Hub id), the base's tokenizer with the chat template the run trained with,
/// the model card, the loss plot and the run summary. A run over a local base needs
/// `options.base_model`. `out` must be empty or absent unless `overwrite`, and then it may hold
/// only [`HUB_FILES`].
pub fn export_hub(
    run: &Path,
    out: &Path,
    options: &CardOptions,
    overwrite: bool,
) -> Result<HubExport> {
    let card = ModelCard::from_run(run, options)?;
    let Some(base_model) = card.base_model().map(str::to_string) else {
        return Err(FinetuneError::Config {
            field: "base_model".into(),
            reason: format!(
                "the run trained over the local file `{}`, whose Hub id is unknown; give the \
                 base model's Hub id (org/name) so the adapter names it",
                card.base_file
            ),
        });
    };
    let mut ours = HUB_FILES.to_vec();
    ours.extend([".git", ".gitattributes"]); // a clone of the Hub repository to push from
    crate::loading::base::check_output_dir(out, overwrite, &ours)?;
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let mut files = Vec::new();

    let mut adapter = card.adapter.clone();
    adapter["base_model_name_or_path"] = Value::String(base_model.clone());
    let text = serde_json::to_string_pretty(&adapter).map_err(|e| FinetuneError::Checkpoint {
        path: out.join(ADAPTER_CONFIG),
        reason: e.to_string(),
    })?;
    write_atomic(&out.join(ADAPTER_CONFIG), text.as_bytes())?;
    files.push(ADAPTER_CONFIG.to_string());
    for name in [ADAPTER_WEIGHTS, PLOT_FILE] {
        let from = run.join(name);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(io_err(&from))?;
            write_atomic(&out.join(name), &bytes)?;
            files.push(name.to_string());
        }
    }
    if let Some(summary) = &card.summary {
        // Without the local path of the run's last checkpoint.
        let summary = TrainSummary {
            last_checkpoint: None,
            ..summary.clone()
        };
        crate::training::checkpoints::write_json(&out.join(SUMMARY_FILE), &summary)?;
        files.push(SUMMARY_FILE.to_string());
    }

    // The tokenizer the adapter was trained with, from the base it recorded.
    if let Some(sources) = RunSources::read(run)? {
        let base = &sources.model.path;
        let copied = if base.is_dir() && card.config.template.is_none() {
            let mut any = false;
            for name in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "tokenizer.model",
            ] {
                let from = base.join(name);
                if from.is_file() {
                    let bytes = std::fs::read(&from).map_err(io_err(&from))?;
                    write_atomic(&out.join(name), &bytes)?;
                    files.push(name.to_string());
                    any = true;
                }
            }
            any
        } else {
            false
        };
        if !copied && base.exists() {
            let mut tok = crate::models::ModelTokenizer::load(base)?;
            if let Some(t) = &card.config.template {
                tok.chat_template = Some(crate::data::ChatTemplate::builtin_source(t)?.to_string());
            }
            tok.save_pretrained(out)?;
            files.extend([
                "tokenizer.json".to_string(),
                "tokenizer_config.json".to_string(),
            ]);
        }
    }

    write_atomic(&out.join(CARD_FILE), card.render().as_bytes())?;
    files.push(CARD_FILE.to_string());
    crate::quant::atomic::sync_parent(&out.join(CARD_FILE)).map_err(io_err(out))?;
    files.sort();
    files.dedup();
    Ok(HubExport {
        dir: out.to_path_buf(),
        files,
        base_model,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        for id in [
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "org/model.v2",
            "a/b_c-d",
        ] {
            assert!(is_hub_id(id), "{id}");
        }
        for p in [
            "/root/x.gguf",
            "model.gguf",
            "runs/x/y",
            "./m",
            "org/",
            "../x",
            "a b/c",
            "",
        ] {
            assert!(!is_hub_id(p), "{p}");
        }
    }

    /// A run over a local file: the card names the file (not its path) and has no
    /// `base_model`; export needs the Hub id; a user's README.md is never replaced.
    #[test]
    fn a_local_base_needs_its_hub_id() {
        use crate::training::provenance::{DataSource, ModelSource};
        let dir = std::env::temp_dir().join(format!("medify-card-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = dir.join("my-base.gguf");
        std::fs::write(&base, b"weights").unwrap();
        crate::training::checkpoints::write_json(
            &dir.join(CONFIG_FILE),
            &FinetuneConfig::default(),
        )
        .unwrap();
        let adapter = serde_json::json!({"r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
            "target_modules": ["q_proj"], "base_model_name_or_path": base.display().to_string()});
        crate::training::checkpoints::write_json(&dir.join(ADAPTER_CONFIG), &adapter).unwrap();
        RunSources::new(
            ModelSource::new(&base, None).unwrap(),
            vec![DataSource::embedded()],
        )
        .write(&dir)
        .unwrap();

        let card = ModelCard::from_run(&dir, &CardOptions::default()).unwrap();
        let text = card.render();
        assert!(text.starts_with("---\nlibrary_name: peft\n"), "{text}");
        assert!(text.contains("`my-base.gguf`") && !text.contains(&dir.display().to_string()));
        assert!(text.contains("The run has not finished"));
        let out = dir.join("hub");
        let err = export_hub(&dir, &out, &CardOptions::default(), false).unwrap_err();
        assert!(err.to_string().contains("my-base.gguf"), "{err}");
        assert!(!out.exists(), "nothing written");
        let bad = CardOptions {
            base_model: Some("/abs/path".into()),
            ..CardOptions::default()
        };
        assert!(ModelCard::from_run(&dir, &bad).is_err());

        let named = CardOptions {
            base_model: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
            ..CardOptions::default()
        };
        let card = ModelCard::from_run(&dir, &named).unwrap().render();
        assert!(
            card.contains("license: \"apache-2.0\""),
            "a known base's license: {card}"
        );

        assert!(write_model_card(&dir, &named).unwrap().is_some());
        std::fs::write(dir.join(CARD_FILE), "# my own notes").unwrap();
        assert_eq!(write_model_card(&dir, &named).unwrap(), None);
        assert_eq!(
            std::fs::read_to_string(dir.join(CARD_FILE)).unwrap(),
            "# my own notes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn yaml_scalars_are_quoted() {
        assert_eq!(yaml("apache-2.0"), "\"apache-2.0\"");
        assert_eq!(yaml("a: \"b\"\n"), "\"a: \\\"b\\\"\\n\"");
    }
}
