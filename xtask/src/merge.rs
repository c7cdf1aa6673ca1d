//! `cargo xtask merge`: a base model plus a PEFT adapter written as one dense Hugging Face
//! directory (model.safetensors, config.json, tokenizer files), or as one GGUF file for
//! llama.cpp / Ollama (`--gguf`).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::models::{GgufType, SaveDtype};

use crate::models::ModelArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    base: ModelArgs,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors). Without one,
    /// `--model` is converted as it is (e.g. a Hugging Face directory to GGUF).
    #[arg(long, required_unless_present = "model")]
    adapter: Option<PathBuf>,
    /// Output directory (must not exist or be empty, unless --overwrite).
    #[arg(long, required_unless_present = "gguf", conflicts_with = "gguf")]
    out: Option<PathBuf>,
    /// Write one GGUF file instead (llama.cpp, Ollama, LM Studio), with the tokenizer and the
    /// chat template the adapter was trained with.
    #[arg(long, value_name = "FILE.gguf")]
    gguf: Option<PathBuf>,
    /// With --gguf: the matrices' type, f16 (default), bf16, f32, q8_0, q4_0 or q4_k_m
    /// (llama.cpp's mixture: Q4_K, Q6_K for the output and some attn_v/ffn_down).
    #[arg(long = "type", value_name = "TYPE", requires = "gguf")]
    gguf_type: Option<GgufType>,
    /// With --gguf: also write an Ollama `Modelfile` beside it (FROM, TEMPLATE, stop
    /// parameters, the run's system prompt and the disclaimer): `ollama create NAME -f Modelfile`.
    #[arg(long, requires = "gguf")]
    ollama: bool,
    /// Weight dtype of the merged model: f32, f16 or bf16. Default: the base's own (its
    /// config.json's dtype), bf16 when it names none (GGUF).
    #[arg(long, conflicts_with = "gguf")]
    dtype: Option<String>,
    /// Replace the merged model in an existing output directory (one that holds only the files a
    /// merge writes; anything else there is refused), or an existing GGUF file.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    // nf4/fp4 merges into the dequantized 4-bit weights (what QLoRA trained against), none
    // into the original dense weights; by default the base the adapter's record names.
    let (base, from, tuned) = a.base.load(a.adapter.as_deref(), None)?;
    if let Some(t) = &tuned {
        eprintln!("{}", t.adapter);
    }
    if let Some(path) = &a.gguf {
        let ty = a.gguf_type.unwrap_or_default();
        base.save_gguf(path, ty, a.overwrite)?;
        eprintln!("merged model written to {} ({ty:?})", path.display());
        if a.ollama {
            let system = tuned.as_ref().and_then(|t| t.system_prompt.as_deref());
            let modelfile = path.with_file_name("Modelfile");
            base.ollama_modelfile(path, system).write(&modelfile)?;
            eprintln!(
                "Modelfile written to {} (ollama create NAME -f {})",
                modelfile.display(),
                modelfile.display()
            );
        }
        return Ok(());
    }
    let out = a
        .out
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--out or --gguf is needed"))?;
    let dtype = match &a.dtype {
        Some(d) => SaveDtype::parse(d)
            .ok_or_else(|| anyhow::anyhow!("unknown --dtype {d:?} (f32, f16, bf16)"))?,
        None => SaveDtype::of_checkpoint(&from.model).unwrap_or(SaveDtype::BF16),
    };
    base.save_merged(out, dtype, a.overwrite)?;
    eprintln!("merged model written to {}", out.display());
    Ok(())
}
