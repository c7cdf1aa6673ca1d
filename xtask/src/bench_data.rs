//! `cargo xtask bench-data`: records per second for reading, rendering with the chat template
//! and tokenizing a data file (MedQuAD by default), on all cores versus one core in the same run.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args as ClapArgs;
use medify_qlora::data::{DatasetConfig, ReadOptions, prepare, read_records};
use serde_json::json;

use crate::preview::encoder_for;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Tokenizer or model directory, or a .gguf file.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Data file (e.g. ../shared/data/medquad/medquad.jsonl).
    #[arg(long)]
    data: PathBuf,
    /// Built-in template instead of the tokenizer's.
    #[arg(long)]
    template: Option<String>,
    /// Longest sequence in tokens.
    #[arg(long, alias = "max-length", default_value_t = 1024)]
    max_len: usize,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let encoder = encoder_for(&args.tokenizer, args.template.as_deref())?;
    let t = Instant::now();
    let read = read_records(&args.data, &ReadOptions::default())?;
    let read_s = t.elapsed().as_secs_f64();
    let records = read.records;
    let n = records.len();
    let config = DatasetConfig {
        max_len: args.max_len,
        ..DatasetConfig::default()
    };
    let time_prepare = |threads: Option<usize>| -> anyhow::Result<(f64, usize, usize)> {
        let run = || -> anyhow::Result<(f64, usize, usize)> {
            let t = Instant::now();
            let p = prepare(records.clone(), &encoder, &config)?;
            let tokens = p.train.iter().map(|e| e.encoded.len()).sum();
            Ok((t.elapsed().as_secs_f64(), p.train.len(), tokens))
        };
        match threads {
            None => run(),
            Some(k) => rayon::ThreadPoolBuilder::new()
                .num_threads(k)
                .build()?
                .install(run),
        }
    };
    let (parallel_s, kept, tokens) = time_prepare(None)?;
    let (single_s, _, _) = time_prepare(Some(1))?;
    let out = json!({
        "data": args.data.display().to_string(),
        "tokenizer": args.tokenizer.display().to_string(),
        "records": n,
        "records_kept": kept,
        "tokens": tokens,
        "threads": rayon::current_num_threads(),
        "read_seconds": read_s,
        "prepare_seconds": parallel_s,
        "prepare_seconds_one_thread": single_s,
        "records_per_s": n as f64 / parallel_s,
        "records_per_s_one_thread": n as f64 / single_s,
        "speedup_over_one_thread": single_s / parallel_s,
        "total_seconds": read_s + parallel_s,
        "target_total_seconds": 10.0,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
