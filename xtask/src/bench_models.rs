//! `cargo xtask bench-models`: prefill and decode throughput and load memory of a model held
//! dense versus in NF4, measured in one run so the ratios are comparable.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args as ClapArgs;
use medify_qlora::models::{
    CausalLm, DecodeOptions, GenerationConfig, HeadPrecision, HostDecoder, KvCache, LoadOptions,
    TokenBatch, load_pretrained,
};
use medify_qlora::quant::QuantConfig;
use serde_json::{Value, json};

use crate::device::device_named;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory or .gguf file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long)]
    model: PathBuf,
    /// Device to measure on.
    #[arg(long, default_value = "flex")]
    device: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 256)]
    prefill_tokens: usize,
    /// Tokens decoded one at a time (KV cache) for the decode measurement.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Repetitions of each measurement (the best is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The output head the headline decode figure uses (every precision is measured):
    /// `int8` (what chat and serve use by default), `bf16` or `exact`.
    #[arg(long, default_value = "int8")]
    lm_head: HeadPrecision,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
    /// Also run llama.cpp (llama-cpp-python, through
    /// fixtures/scripts/bench_models_reference.py) on the same GGUF file, prompt and threads, when
    /// python can import it. `MEDIFY_PYTHON` names the interpreter (default python3).
    #[arg(long)]
    reference: bool,
    /// Internal: load once with this holding ("dense" or "nf4") and print peak memory.
    #[arg(long, hide = true)]
    load_only: Option<String>,
}

fn options(holding: &str) -> LoadOptions {
    if holding == "nf4" {
        LoadOptions::quantized(QuantConfig::default())
    } else {
        LoadOptions::dense()
    }
}

/// Peak resident set size of this process so far, in bytes (Linux `VmHWM`).
pub(crate) fn peak_rss() -> Option<u64> {
    medify_qlora::peak_rss_bytes()
}

/// Runs this xtask again with `args` (a measurement that needs a fresh process, e.g. for its
/// peak memory) and parses the JSON it prints.
pub(crate) fn json_child<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    what: &str,
) -> anyhow::Result<Value> {
    let exe = std::env::current_exe()?;
    let out = std::process::Command::new(exe).args(args).output()?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "{what} in a child process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn load_child(args: &Args, holding: &str) -> anyhow::Result<Value> {
    let model = args.model.as_os_str();
    json_child(
        &[
            "bench-models".as_ref(),
            "--model".as_ref(),
            model,
            "--device".as_ref(),
            args.device.as_ref(),
            "--load-only".as_ref(),
            holding.as_ref(),
        ],
        "load",
    )
}

/// The llama.cpp script, found beside this crate in the source tree.
const REFERENCE_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/scripts/bench_models_reference.py"
);

/// llama.cpp's prefill and decode on the same file, or why it was skipped.
fn reference(args: &Args) -> anyhow::Result<Value> {
    if args.model.extension().is_none_or(|e| e != "gguf") {
        return Ok(json!({"skipped": "llama.cpp reads GGUF files; --model is not one"}));
    }
    let mut argv: Vec<std::ffi::OsString> = vec!["--model".into(), args.model.clone().into()];
    for (flag, value) in [
        ("--prefill-tokens", args.prefill_tokens),
        ("--decode-tokens", args.decode_tokens),
        ("--repeats", args.repeats),
        ("--threads", rayon::current_num_threads()),
    ] {
        argv.extend([flag.into(), value.to_string().into()]);
    }
    python_reference(
        REFERENCE_SCRIPT,
        &["llama_cpp"],
        "pip install llama-cpp-python",
        &argv,
        "llama.cpp",
    )
}

/// Runs a reference `script` under `MEDIFY_PYTHON` (default python3) with `args` and parses
/// the last JSON line it prints. When the interpreter cannot import `modules`, the answer is
/// `{"skipped": ...}` naming them and how to `install` them, so the bench still prints ours.
pub(crate) fn python_reference(
    script: &str,
    modules: &[&str],
    install: &str,
    args: &[std::ffi::OsString],
    what: &str,
) -> anyhow::Result<Value> {
    let python = std::env::var("MEDIFY_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python)
        .args(["-c", &format!("import {}", modules.join(", "))])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        return Ok(json!({
            "skipped": format!(
                "{python} cannot import {} ({install}; MEDIFY_PYTHON names another interpreter)",
                modules.join(", ")
            )
        }));
    }
    let out = std::process::Command::new(&python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {script}"))?;
    if !out.status.success() {
        return Err(anyhow::anyhow!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(last).with_context(|| format!("reading {what}'s JSON: {stdout}"))
}

fn best<F: FnMut() -> anyhow::Result<f64>>(repeats: usize, mut f: F) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        best = best.min(f()?);
    }
    Ok(best)
}

fn measure(model: &CausalLm, args: &Args) -> anyhow::Result<Value> {
    let vocab = model.config().vocab_size as u32;
    let prompt: Vec<u32> = (0..args.prefill_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab)
        .collect();
    let batch = TokenBatch::new(vec![prompt.clone()]);
    // warm-up: kernels, autotune, allocator
    let _ = model.next_token_logits(&batch, None)?.into_data();
    let prefill = best(args.repeats, || {
        let t = Instant::now();
        let logits = model.next_token_logits(&batch, None)?;
        let _ = logits.into_data();
        Ok(t.elapsed().as_secs_f64())
    })?;
    let short = TokenBatch::new(vec![prompt[..16.min(prompt.len())].to_vec()]);
    let step_ids = |i: usize| (i as u32 * 31 + 5) % vocab;
    // The host decoder (what generate, chat and serve run on the CPU), one token at a time
    // after a 16-token prefill, with each head precision.
    let mut host = serde_json::Map::new();
    // The headline precision last: its compact head is the one the model keeps for generate.
    let mut heads = vec![
        HeadPrecision::Exact,
        HeadPrecision::Bf16,
        HeadPrecision::Int8,
    ];
    heads.retain(|h| *h != args.lm_head);
    heads.push(args.lm_head);
    for head in heads {
        let Some(decoder) = HostDecoder::new(model, &DecodeOptions { head })? else {
            break;
        };
        let rate = best(args.repeats, || {
            let mut cache = KvCache::new();
            let _ = model
                .next_token_logits(&short, Some(&mut cache))?
                .into_data();
            let mut seqs = decoder.sequences_from(&cache)?;
            let mut logits = Vec::new();
            let t = Instant::now();
            for i in 0..args.decode_tokens {
                decoder.step(&mut [&mut seqs[0]], &[step_ids(i)], &mut logits)?;
            }
            Ok(t.elapsed().as_secs_f64())
        })?;
        // 16 sequences stepping together (continuous batching): tokens of all of them per s.
        let rows = 16;
        let prompts: Vec<Vec<u32>> = (0..rows)
            .map(|r| prompt[r..r + 16.min(prompt.len() - r)].to_vec())
            .collect();
        let batched = best(args.repeats, || {
            let mut cache = KvCache::new();
            let _ = model
                .next_token_logits(&TokenBatch::left_padded(&prompts, 0), Some(&mut cache))?
                .into_data();
            let mut seqs = decoder.sequences_from(&cache)?;
            let mut logits = Vec::new();
            let t = Instant::now();
            for i in 0..args.decode_tokens {
                let ids: Vec<u32> = (0..rows).map(|r| step_ids(i + r)).collect();
                let mut refs: Vec<_> = seqs.iter_mut().collect();
                decoder.step(&mut refs, &ids, &mut logits)?;
            }
            Ok(t.elapsed().as_secs_f64())
        })?;
        host.insert(
            head.as_str().to_string(),
            json!({
                "tokens_per_s": args.decode_tokens as f64 / rate,
                "batch16_tokens_per_s": (rows * args.decode_tokens) as f64 / batched,
                "weight_bytes_per_token": decoder.weight_bytes_per_step(),
            }),
        );
    }
    let decode_ops = best(args.repeats, || {
        let mut cache = KvCache::new();
        let _ = model
            .next_token_logits(&short, Some(&mut cache))?
            .into_data();
        let t = Instant::now();
        for i in 0..args.decode_tokens {
            let step = TokenBatch::new(vec![vec![step_ids(i)]]);
            let _ = model
                .next_token_logits(&step, Some(&mut cache))?
                .into_data();
        }
        Ok(t.elapsed().as_secs_f64())
    })?;
    // a real generate call too, so sampling overhead is part of the picture
    let cfg = GenerationConfig {
        max_new_tokens: args.decode_tokens,
        ..Default::default()
    };
    let t = Instant::now();
    model.generate(
        &[prompt[..16.min(prompt.len())].to_vec()],
        &cfg,
        &mut |_, _| true,
    )?;
    let generate = t.elapsed().as_secs_f64();
    let head = args.lm_head.as_str();
    let decode = host
        .get(head)
        .and_then(|h| h["tokens_per_s"].as_f64())
        .unwrap_or(args.decode_tokens as f64 / decode_ops);
    Ok(json!({
        "prefill_tokens_per_s": args.prefill_tokens as f64 / prefill,
        "decode_tokens_per_s": decode,
        "decode_head": if host.contains_key(head) { head } else { "burn ops (no host decoder)" },
        "decode_host_by_head": host,
        "decode_burn_ops_tokens_per_s": args.decode_tokens as f64 / decode_ops,
        "generate_tokens_per_s_incl_prefill_16": args.decode_tokens as f64 / generate,
    }))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let device = device_named(&args.device)?;
    if let Some(holding) = &args.load_only {
        let t = Instant::now();
        let (_, _, report) = load_pretrained(&args.model, &device, &options(holding))?;
        println!(
            "{}",
            json!({
                "seconds": t.elapsed().as_secs_f64(),
                "peak_rss_bytes": peak_rss(),
                "weight_bytes_on_device": report.device_bytes,
                "quantized_linears": report.quantized_linears,
            })
        );
        return Ok(());
    }
    let mut results = serde_json::Map::new();
    for holding in ["dense", "nf4"] {
        let load = load_child(args, holding)?;
        let (mut model, _, _) = load_pretrained(&args.model, &device, &options(holding))?;
        model.set_decode_options(DecodeOptions { head: args.lm_head });
        let mut m = measure(&model, args)?;
        m["load"] = load;
        if !args.json {
            eprintln!("{holding}: {m}");
        }
        results.insert(holding.to_string(), m);
    }
    let ratio = |k: &str| {
        results["nf4"][k].as_f64().unwrap_or(0.0) / results["dense"][k].as_f64().unwrap_or(1.0)
    };
    let mem = |h: &str, k: &str| results[h]["load"][k].as_f64().unwrap_or(0.0);
    let summary = json!({
        "prefill_nf4_over_dense": ratio("prefill_tokens_per_s"),
        "decode_nf4_over_dense": ratio("decode_tokens_per_s"),
        "load_peak_rss_nf4_over_dense": mem("nf4", "peak_rss_bytes") / mem("dense", "peak_rss_bytes"),
        "weights_on_device_nf4_over_dense": mem("nf4", "weight_bytes_on_device") / mem("dense", "weight_bytes_on_device"),
    });
    let mut out = json!({
        "model": args.model.display().to_string(),
        "device": args.device,
        "threads": rayon::current_num_threads(),
        "prefill_tokens": args.prefill_tokens,
        "decode_tokens": args.decode_tokens,
        "results": results,
        "ratios": summary,
    });
    if args.reference {
        let r = reference(args)?;
        if !args.json {
            eprintln!("llama.cpp: {r}");
        }
        for (ours, key) in [("nf4", "prefill"), ("nf4", "decode"), ("dense", "decode")] {
            let field = format!("{key}_tokens_per_s");
            if let (Some(a), Some(b)) = (out["results"][ours][&field].as_f64(), r[&field].as_f64())
            {
                out["ratios"][format!("{key}_{ours}_over_llama_cpp")] = json!(a / b);
            }
        }
        out["reference"] = r;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
