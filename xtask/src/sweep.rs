//! `cargo xtask sweep`: train every variant of a sweep file, each in its own run directory,
//! and tabulate them (`results.md`, `results.csv`, `eval_loss.png`). Rerunning skips finished
//! variants and resumes an interrupted one.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::data::ReadOptions;
use medify_qlora::{
    DataSource, FinetuneConfig, GenerateSpec, RunSources, SweepOptions, SweepSpec, run_sweep,
};

use crate::device::device_named;
use crate::finetune::{interrupt_flag, model_source};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The sweep file: {"base": {...}, "grid": {"field": [values]}, "variants": [{...}]} over
    /// finetune_config.json's fields.
    #[arg(long)]
    config: PathBuf,
    /// The sweep's directory (one run directory per variant inside).
    #[arg(long)]
    out: PathBuf,
    /// Base model (default: SmolLM2-135M-Instruct, as for finetune).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training data, as finetune's --data (repeatable, PATH?format=..&fields=..&weight=..;
    /// default: the embedded medical Q&A set).
    #[arg(long, value_name = "PATH[?format=..&fields=..&weight=..]")]
    data: Vec<String>,
    /// Device: flex (CPU), wgpu, cuda, or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
    /// Also answer each variant's held-out chat records and add BLEU and ROUGE-1/2/L columns
    /// (the sweep file's "generate": {"max_records", "max_new_tokens", "repetition_penalty"}
    /// sets how; this flag uses its defaults: 20 records, 128 tokens).
    #[arg(long)]
    generate: bool,
}

fn clock(s: f64) -> String {
    let s = s.round() as u64;
    format!("{}m{:02}s", s / 60, s % 60)
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let spec = SweepSpec::read(&a.config)?;
    // The variants start from finetune's defaults: the demo's on the embedded default.
    let start = if a.model.is_none() && a.data.is_empty() {
        medify_qlora::FinetuneConfig::demo()
    } else {
        FinetuneConfig::default()
    };
    let variants = spec.variants(&start)?;
    let data = if a.data.is_empty() {
        vec![DataSource::embedded()]
    } else {
        a.data
            .iter()
            .map(|spec| DataSource::parse(spec, &ReadOptions::default()))
            .collect::<Result<_, _>>()?
    };
    let sources = RunSources::new(model_source(a.model.as_ref())?, data);
    let options = SweepOptions {
        out_dir: a.out.clone(),
        device: device_named(&a.device)?.autodiff(),
        progress: !a.quiet,
        interrupt: Some(interrupt_flag()),
        generate: spec
            .generate
            .clone()
            .or_else(|| a.generate.then(GenerateSpec::default)),
    };
    let report = run_sweep(&variants, &sources, &options, &mut |p| {
        let how = match (&p.resumed_from, p.skipped) {
            (_, true) => " (finished before: skipped)".to_string(),
            (Some(c), _) => format!(" (resuming from {})", c.display()),
            (None, _) => String::new(),
        };
        let eta = p
            .eta_s
            .map_or(String::new(), |s| format!("; about {} left", clock(s)));
        eprintln!("[{}/{}] {}{how}{eta}", p.index + 1, p.total, p.variant.name);
    })?;
    if report.interrupted {
        eprintln!("interrupted; run the same command again to resume");
    }
    let md = std::fs::read_to_string(a.out.join("results.md"))?;
    println!("{md}");
    eprintln!(
        "results.md, results.csv and eval_loss.png written to {}",
        a.out.display()
    );
    Ok(())
}
