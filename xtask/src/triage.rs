//! `cargo xtask triage`: how the safety triage does on a labelled set (per-flag recall, false
//! alarms on near-misses, a confusion table, the misses), or what it says of one message.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use medify_qlora::safety::{Triager, evaluate_triage, held_out_messages, read_labelled};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// JSONL of {"text", "label"} (a flag name or "none"); default: the embedded held-out set
    /// (crates/medify-safety/data/heldout.jsonl).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print the report (or the message's triage) as JSON.
    #[arg(long)]
    json: bool,
    /// Add the n-gram classifier (trained on crates/medify-safety/data/train.jsonl) to the rules, raising its
    /// flags at this probability or above (for comparison; the standard triage is rules only).
    #[arg(long)]
    classifier: Option<f32>,
    /// Triage this message instead of scoring a set.
    #[arg(long, conflicts_with = "data")]
    message: Option<String>,
    /// Exit with status 1 when a target (emergency recall >= 98 %, 100 % for self-harm and
    /// poisoning, false alarms <= 3 %, urgent recall >= 90 %) is not met.
    #[arg(long)]
    check: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let with_classifier;
    let triager = match a.classifier {
        Some(threshold) if !(0.0..=1.0).contains(&threshold) => {
            return Err(anyhow::anyhow!(
                "--classifier {threshold}: a probability between 0 and 1"
            ));
        }
        Some(threshold) => {
            with_classifier = Triager::with_trained_classifier(threshold);
            &with_classifier
        }
        None => Triager::standard(),
    };
    if let Some(message) = &a.message {
        let t = triager.assess(message);
        if a.json {
            println!("{}", serde_json::to_string(&t)?);
        } else {
            match t {
                Some(t) => println!(
                    "{} {:?}\n{}",
                    t.level.name(),
                    t.flags.iter().map(|f| f.name()).collect::<Vec<_>>(),
                    t.message
                ),
                None => println!("no red flag"),
            }
        }
        return Ok(());
    }
    let set = match &a.data {
        Some(path) => read_labelled(path)?,
        None => held_out_messages(),
    };
    let report = evaluate_triage(triager, &set);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    let unmet = report.unmet_targets();
    if a.check && !unmet.is_empty() {
        return Err(anyhow::anyhow!("targets not met: {}", unmet.join("; ")));
    }
    Ok(())
}
