//! `cargo xtask quantize`: a dense (or GGUF) model written as a bitsandbytes 4-bit or 8-bit
//! Hugging Face directory that transformers loads with `from_pretrained`.

use std::path::PathBuf;

use burn::tensor::Device;
use clap::Args as ClapArgs;
use medify_qlora::BaseQuant;
use medify_qlora::models::{LinearQuant, LoadOptions, load_pretrained};
use medify_qlora::quant::QuantConfig;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Source model: Hugging Face directory or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (must not exist or be empty, unless --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// nf4, fp4 (bitsandbytes 4-bit, `load_in_4bit`) or int8 (LLM.int8, `load_in_8bit`).
    #[arg(long, default_value = "nf4")]
    quant: BaseQuant,
    /// Values per absmax block (4-bit).
    #[arg(long, default_value_t = 64)]
    blocksize: usize,
    /// Turn double quantization (absmax values quantized again, QLoRA's default and finetune's)
    /// off.
    #[arg(long)]
    no_double_quant: bool,
    /// The default; accepted for scripts written when it was opt-in.
    #[arg(long, hide = true, conflicts_with = "no_double_quant")]
    double_quant: bool,
    /// Replace the model files in a non-empty --out.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let _ = a.double_quant; // the default either way
    let quant = match (a.quant, a.quant.quant_type()) {
        (BaseQuant::Int8, _) => LinearQuant::Int8,
        (_, Some(quant_type)) => LinearQuant::Bits4(QuantConfig {
            quant_type,
            blocksize: a.blocksize,
            double_quant: !a.no_double_quant,
        }),
        (_, None) => {
            anyhow::bail!("--quant none writes nothing to quantize; use `merge` for a dense copy")
        }
    };
    // Dense on the CPU: each weight is quantized once, on the host, from its original values.
    let (model, tokenizer, _) = load_pretrained(&a.model, &Device::flex(), &LoadOptions::dense())?;
    model.save_pretrained_quantized(&a.out, &quant, a.overwrite)?;
    tokenizer.save_pretrained(&a.out)?;
    eprintln!("{quant} written to {}", a.out.display());
    Ok(())
}
