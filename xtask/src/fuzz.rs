//! `cargo xtask fuzz --minutes N`: the reader fuzzing of `tests/fuzz.rs`, run for longer than CI
//! does (the same properties, inputs and allocation check; only the time differs).

use std::process::Command;

use anyhow::Context;
use clap::Args as ClapArgs;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Minutes to fuzz (every reader runs the whole time, side by side).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Only the readers whose test name contains this (gguf, safetensors, bnb, quant_state,
    /// model_config, adapter_config, tokenizer, jsonl, csv, medquad).
    #[arg(long)]
    reader: Option<String>,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    if !(a.minutes > 0.0 && a.minutes.is_finite()) {
        return Err(anyhow::anyhow!("--minutes {} must be positive", a.minutes));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    // Building the test binary comes first; the deadline allows for it only when it is fresh.
    let until = now + a.minutes * 60.0;
    cmd.args(["test", "--release", "--workspace", "--test", "fuzz", "--"])
        .env("MEDIFY_FUZZ_UNTIL", until.to_string())
        .args(["--nocapture", "--test-threads", "16"]);
    if let Some(r) = &a.reader {
        cmd.arg(r);
    }
    eprintln!(
        "fuzzing the readers for {} minutes (tests/fuzz.rs)",
        a.minutes
    );
    let status = cmd.status().context("could not start cargo test")?;
    if status.success() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "a reader failed; its shrunk input is in target/fuzz-failures/"
        ))
    }
}
