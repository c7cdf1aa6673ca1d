//! `cargo xtask merge`: a base model plus a PEFT adapter written as one dense Hugging Face
//! directory (model.safetensors, config.json, tokenizer files).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::load_base;
use medify_qlora::lora::LoraExt;
use medify_qlora::models::SaveDtype;

use crate::device::device_named;
use crate::models::Quant;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Base model: Hugging Face directory or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// Output directory (must not exist or be empty, unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype of the merged model: f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// The base the adapter was trained over: nf4/fp4 merges into the dequantized 4-bit
    /// weights (what QLoRA trained against), none into the original dense weights.
    #[arg(long, value_enum, default_value = "nf4")]
    quant: Quant,
    /// Replace an existing non-empty output directory.
    #[arg(long)]
    overwrite: bool,
    /// flex, wgpu, cuda or auto.
    #[arg(long, default_value = "flex")]
    device: String,
}

pub fn run(a: &Args) -> Result<(), String> {
    let dtype = SaveDtype::parse(&a.dtype)
        .ok_or_else(|| format!("unknown --dtype {:?} (f32, f16, bf16)", a.dtype))?;
    let device = device_named(&a.device)?;
    let mut base =
        load_base(&a.model, &device, a.quant.config(), None).map_err(|e| e.to_string())?;
    let (_, summary) = base
        .model
        .load_adapter(&a.adapter)
        .map_err(|e| e.to_string())?;
    eprintln!("{summary}");
    if a.overwrite {
        // Only what a merge writes; anything else in the directory is left alone (and then
        // the save refuses the non-empty directory with a clear message).
        for f in [
            "model.safetensors",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            let p = a.out.join(f);
            if p.is_file() {
                std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
        }
    }
    base.save_merged(&a.out, dtype, false)
        .map_err(|e| e.to_string())?;
    eprintln!("merged model written to {}", a.out.display());
    Ok(())
}
