//! `cargo xtask merge`: a base model plus a PEFT adapter written as one dense Hugging Face
//! directory (model.safetensors, config.json, tokenizer files).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::models::SaveDtype;

use crate::models::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    base: ModelArgs,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory (must not exist or be empty, unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype of the merged model: f32, f16 or bf16. Default: the base's own (its
    /// config.json's dtype), bf16 when it names none (GGUF).
    #[arg(long)]
    dtype: Option<String>,
    /// Replace the merged model in an existing output directory (one that holds only the files a
    /// merge writes; anything else there is refused).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    // nf4/fp4 merges into the dequantized 4-bit weights (what QLoRA trained against), none
    // into the original dense weights; by default the base the adapter's record names.
    let (base, from, summary) = a.base.load(Some(&a.adapter), None)?;
    let dtype = match &a.dtype {
        Some(d) => SaveDtype::parse(d)
            .ok_or_else(|| anyhow::anyhow!("unknown --dtype {d:?} (f32, f16, bf16)"))?,
        None => SaveDtype::of_checkpoint(&from.model).unwrap_or(SaveDtype::BF16),
    };
    if let Some(summary) = summary {
        eprintln!("{summary}");
    }
    base.save_merged(&a.out, dtype, a.overwrite)?;
    eprintln!("merged model written to {}", a.out.display());
    Ok(())
}
