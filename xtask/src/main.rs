//! `cargo xtask`: a thin command line over the medify-qlora libraries.

mod bench_lora;
mod bench_models;
mod bench_quant;
mod device;
mod models;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "medify-qlora project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmark the 4-bit codec and the fused 4-bit matmul against dense f32.
    BenchQuant(bench_quant::Args),
    /// Prefill/decode tokens per second and load memory of a model, dense versus NF4.
    BenchModels(bench_models::Args),
    /// Training memory and speed: LoRA over a dense base versus QLoRA over NF4.
    BenchLora(bench_lora::Args),
    /// Continue a prompt with a model (raw completion, no chat template).
    Generate(models::GenerateArgs),
    /// Loss and perplexity of a model on {"text"} JSONL records.
    Eval(models::EvalArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::BenchQuant(args) => bench_quant::run(&args),
        Command::BenchModels(args) => bench_models::run(&args),
        Command::BenchLora(args) => bench_lora::run(&args),
        Command::Generate(args) => models::generate(&args),
        Command::Eval(args) => models::eval(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
