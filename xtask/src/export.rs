//! `cargo xtask export --hub DIR`: a run's adapter, tokenizer and model card laid out for the
//! Hugging Face Hub (`huggingface-cli upload ORG/NAME DIR` publishes it as is; no network here).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::{CardOptions, export_hub};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Directory to write (empty or absent; with --overwrite, one an earlier export wrote).
    #[arg(long)]
    hub: PathBuf,
    /// The run directory (or a checkpoint's or best/) whose adapter to export.
    #[arg(long)]
    adapter: PathBuf,
    /// The base model's Hub id (org/name), needed when the run trained over a local file.
    #[arg(long)]
    base_model: Option<String>,
    /// License of the adapter for the card (default: the base's, when known).
    #[arg(long)]
    license: Option<String>,
    /// Hub id of a dataset trained on (repeatable).
    #[arg(long = "dataset")]
    datasets: Vec<String>,
    /// Title of the card (default: the run directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Replace the files of an earlier export in --hub.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let options = CardOptions {
        base_model: a.base_model.clone(),
        license: a.license.clone(),
        datasets: a.datasets.clone(),
        name: a.name.clone(),
    };
    let export = export_hub(&a.adapter, &a.hub, &options, a.overwrite)?;
    println!(
        "wrote {} ({}), an adapter over {}; publish with: huggingface-cli upload ORG/NAME {}",
        export.dir.display(),
        export.files.join(", "),
        export.base_model,
        export.dir.display()
    );
    Ok(())
}
