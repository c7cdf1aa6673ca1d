//! `cargo xtask bench-lora`: training memory and speed of LoRA over a dense base versus QLoRA
//! (the same adapters over an NF4 + DQ base), and with `--int8` over an LLM.int8 base. Each variant trains in its own child process, so
//! its peak memory is its own; both run in one invocation so the ratio is comparable.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args as ClapArgs;
use medify_qlora::FinetuneConfig;
use medify_qlora::data::PairTruncation;
use medify_qlora::lora::{LoraConfig, LoraExt, TargetModules};
use medify_qlora::models::{
    CausalLm, Checkpointing, LinearQuant, LoadOptions, RandomWeights, load_pretrained,
};
use medify_qlora::optim::PagedAdamW;
use medify_qlora::quant::QuantConfig;
use medify_qlora::training::memory_model::{Architecture, synthetic_batch, synthetic_pairs};
use medify_qlora::training::{DataParallel, DeviceSpec};
use medify_qlora::training::{
    Method, PairMicroBatch, PreferenceObjective, Reference, preference_step_gradients,
    reference_model, train_step,
};
use serde_json::{Value, json};

use crate::bench_models::{json_child, peak_rss, python_reference};
use crate::device::device_named;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Model directory or .gguf file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, required_unless_present = "arch", conflicts_with = "arch")]
    pub(crate) model: Option<PathBuf>,
    /// Instead of --model: random weights in a preset's real shapes (tinyllama-1.1b,
    /// llama-3.2-1b, gemma-2b, llama-2-7b, llama-3-8b, mistral-7b); the reference builds the same
    /// config with random weights and quantizes it the same way.
    #[arg(long)]
    pub(crate) arch: Option<Architecture>,
    /// Device to train on.
    #[arg(long, default_value = "flex")]
    pub(crate) device: String,
    /// LoRA rank (all linear layers are adapted).
    #[arg(long = "lora-r", alias = "rank", default_value_t = 16)]
    pub(crate) rank: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 2)]
    pub(crate) batch_size: usize,
    /// Tokens per sequence.
    #[arg(long = "max-len", alias = "seq-len", default_value_t = 128)]
    pub(crate) seq_len: usize,
    /// Optimizer steps measured (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub(crate) steps: usize,
    /// Rounds over all variants, alternating; each variant reports its fastest round.
    #[arg(long, default_value_t = 1)]
    pub(crate) repeats: usize,
    /// Print JSON only.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also run the reference stack (PyTorch + PEFT + bitsandbytes QLoRA, through
    /// fixtures/scripts/bench_train_reference.py) on the same batch, when python can import it.
    /// `MEDIFY_PYTHON` names the interpreter (default python3).
    #[arg(long)]
    pub(crate) reference: bool,
    /// Also train QLoRA with layer-level gradient checkpointing, and measure evaluation (forward
    /// and loss only); the reference then runs with checkpointing too (PEFT's QLoRA recipe).
    #[arg(long)]
    pub(crate) gradient_checkpointing: bool,
    /// Also train the same adapters over an LLM.int8 base (bitsandbytes' `load_in_8bit`).
    #[arg(long)]
    pub(crate) int8: bool,
    /// Also take DPO steps (policy and reference passes, TRL's sigmoid loss) over pairs whose
    /// chosen and rejected rows hold the same tokens as the supervised step's batch.
    #[arg(long)]
    pub(crate) dpo: bool,
    /// Also train data-parallel over these devices (e.g. wgpu:0,wgpu:1): each step's
    /// --batch-size rows split into one micro-batch per device, trained on all of them and on
    /// the first device alone (the scaling). `flex,flex` runs two micro-batches at once on the
    /// one CPU, sharing its base.
    #[arg(long)]
    pub(crate) devices: Option<String>,
    /// Internal: run this variant ("dense", "nf4", "int8", "nf4-checkpointed" or "nf4-eval") and print
    /// the measurements.
    #[arg(long, hide = true)]
    pub(crate) child: Option<String>,
}

/// The reference script, found beside this crate in the source tree.
const REFERENCE_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/scripts/bench_train_reference.py"
);

fn threads() -> usize {
    rayon::current_num_threads()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Runs the reference stack on the same batch (with `dpo`: TRL's DPOTrainer on the same
/// pairs), or says why it was skipped.
fn reference(args: &Args, dpo: bool) -> anyhow::Result<Value> {
    let config_file;
    let model_args: Vec<std::ffi::OsString> = match (&args.arch, &args.model) {
        (Some(arch), _) => {
            config_file = tempfile::Builder::new()
                .prefix("medify-bench-arch-")
                .suffix(".json")
                .tempfile()?;
            std::fs::write(config_file.path(), arch.config_json().to_string())?;
            vec!["--config-json".into(), config_file.path().into()]
        }
        (None, Some(model)) => vec!["--model".into(), model.into()],
        (None, None) => return Err(anyhow::anyhow!("--model or --arch is needed")),
    };
    let mut argv = model_args;
    for (flag, value) in [
        ("--rank", args.rank),
        ("--batch-size", args.batch_size),
        ("--seq-len", args.seq_len),
        ("--steps", args.steps),
        ("--threads", threads()),
    ] {
        argv.extend([flag.into(), value.to_string().into()]);
    }
    // A GPU run compares GPU with GPU: the reference then runs bitsandbytes' CUDA kernels.
    use medify_qlora::loading::DeviceChoice;
    if matches!(
        args.device.parse::<DeviceChoice>(),
        Ok(DeviceChoice::Wgpu | DeviceChoice::Cuda)
    ) {
        argv.extend(["--device".into(), "cuda".into()]);
    }
    for (on, flag) in [
        (args.gradient_checkpointing, "--gradient-checkpointing"),
        (dpo, "--dpo"),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    let mut modules = vec!["torch", "peft", "bitsandbytes", "transformers"];
    if dpo {
        modules.push("trl");
    }
    python_reference(
        REFERENCE_SCRIPT,
        &modules,
        "pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2 bitsandbytes==0.50.2 gguf \
         trl==1.16.0",
        &argv,
        "the reference stack",
    )
}

/// One measured variant: the base's quantization and what the step keeps for backward.
fn variant(name: &str) -> anyhow::Result<(Option<LinearQuant>, Option<Checkpointing>)> {
    let nf4 = Some(LinearQuant::Bits4(QuantConfig::default()));
    Ok(match name {
        "dense" => (None, Some(Checkpointing::Off)),
        "nf4" => (nf4, Some(Checkpointing::Off)),
        "int8" => (Some(LinearQuant::Int8), Some(Checkpointing::Off)),
        "nf4-checkpointed" => (nf4, Some(Checkpointing::Layers)),
        "nf4-eval" => (nf4, None),
        "nf4-dpo" => (nf4, Some(Checkpointing::Off)),
        "nf4-dpo-checkpointed" => (nf4, Some(Checkpointing::Layers)),
        "nf4-devices" | "nf4-first-device" => (nf4, Some(Checkpointing::Off)),
        other => return Err(anyhow::anyhow!("unknown bench variant {other}")),
    })
}

fn train(args: &Args, name: &str) -> anyhow::Result<Value> {
    let (quantize, checkpointing) = variant(name)?;
    // The data-parallel variants run on --devices (the first alone, or all of them).
    let specs = match &args.devices {
        Some(list) if matches!(name, "nf4-devices" | "nf4-first-device") => {
            DeviceSpec::parse_list(list)?
        }
        _ => Vec::new(),
    };
    let device = match specs.first() {
        Some(first) => first.open()?,
        None => device_named(&args.device)?,
    };
    // Evaluation runs without autodiff, as `eval` and the trainer's evaluation do.
    let device = if checkpointing.is_some() {
        device.autodiff()
    } else {
        device
    };
    let options = LoadOptions {
        quantize,
        ..LoadOptions::dense()
    };
    let load = |device: &burn::tensor::Device| -> anyhow::Result<_> {
        Ok(match (&args.arch, &args.model) {
            (Some(arch), _) => {
                let config = arch.config();
                let source = RandomWeights::new(config.clone(), 17);
                CausalLm::load(&source, &config, device, &options)?
            }
            (None, Some(path)) => {
                let (model, _, report) = load_pretrained(path, device, &options)?;
                (model, report)
            }
            (None, None) => return Err(anyhow::anyhow!("--model or --arch is needed")),
        })
    };
    let (mut model, report) = load(&device)?;
    let load_peak = peak_rss();
    let config = LoraConfig::new(args.rank, 2.0 * args.rank as f64)
        .with_target_modules(TargetModules::AllLinear)
        .with_dropout(0.05);
    let summary = model.add_adapters(&config)?;
    // One micro-batch, or the same rows split into one per device for the data-parallel
    // variants (all of them on the first device for "nf4-first-device").
    let parts = specs.len().max(1);
    if !args.batch_size.is_multiple_of(parts) {
        return Err(anyhow::anyhow!(
            "--batch-size {} does not split into {parts} micro-batches, one per device",
            args.batch_size
        ));
    }
    let micro_batches = vec![
        synthetic_batch(
            model.config().vocab_size,
            args.batch_size / parts,
            args.seq_len
        );
        parts
    ];
    let mut parallel = match name {
        "nf4-devices" => {
            // A device named again shares the first one's base, as the trainer does.
            let replicas = specs[1..]
                .iter()
                .map(|spec| match *spec == specs[0] {
                    true => Ok(model.clone()),
                    false => Ok(load(&spec.open()?.autodiff())?.0),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(DataParallel::new(&model, replicas, &specs)?)
        }
        _ => None,
    };
    // The trainer's step, optimizer and learning rate (QLoRA's recipe: FinetuneConfig's
    // defaults): paged AdamW 32-bit, no decay, clip 0.3, lr 2e-4.
    let recipe = FinetuneConfig::default();
    let mut optim = PagedAdamW::new(recipe.adamw_config()?)?;
    let mut losses = Vec::new();
    let mut seconds = 0.0;
    let dpo = name.starts_with("nf4-dpo").then(|| {
        let pairs = synthetic_pairs(
            model.config().vocab_size,
            (args.batch_size / 2).max(1),
            args.seq_len,
        );
        PairMicroBatch::new(&pairs, 0, None, PairTruncation::KeepStart)
    });
    let reference = match dpo {
        Some(_) => Some(reference_model(&model, false)?),
        None => None,
    };
    let objective = PreferenceObjective::new(Method::Dpo);
    for step in 0..=args.steps {
        let t = Instant::now();
        if let (Some(mb), Some(reference)) = (&dpo, &reference) {
            let g = preference_step_gradients(
                &model,
                std::slice::from_ref(mb),
                &objective,
                Reference::Model(reference),
                recipe.seed,
                step as u64 + 1,
                checkpointing.unwrap_or(Checkpointing::Off),
            )?;
            let (next, _) = optim.step(recipe.learning_rate, model, g.grads)?;
            model = next;
            if step > 0 {
                seconds += t.elapsed().as_secs_f64();
                losses.push(g.loss);
            }
            continue;
        }
        let loss = match (checkpointing, &mut parallel) {
            (Some(mode), Some(dp)) => {
                let g =
                    dp.step_gradients(&model, &micro_batches, recipe.seed, step as u64 + 1, mode)?;
                let (next, _) = optim.step(recipe.learning_rate, model, g.step.grads)?;
                dp.sync(&next)?;
                model = next;
                g.step.loss
            }
            (Some(mode), None) => {
                let (next, loss, _) = train_step(
                    model,
                    &mut optim,
                    &micro_batches,
                    recipe.seed,
                    step as u64 + 1,
                    recipe.learning_rate,
                    mode,
                )?;
                model = next;
                loss
            }
            (None, _) => {
                let (batch, labels) = &micro_batches[0];
                let out = model.loss(batch, labels)?;
                out.sum.into_scalar::<f64>() / out.tokens.max(1) as f64
            }
        };
        if step > 0 {
            seconds += t.elapsed().as_secs_f64();
            losses.push(loss);
        }
    }
    // Tokens through the policy: a DPO step's pairs hold as many as the supervised batch.
    let rows = match &dpo {
        Some(mb) => 2 * mb.pairs,
        None => args.batch_size,
    };
    let tokens = (rows * args.seq_len * args.steps) as f64;
    Ok(json!({
        "peak_rss_bytes": peak_rss(),
        "load_peak_rss_bytes": load_peak,
        "base_weight_bytes_on_device": report.device_bytes,
        "trainable_params": summary.trainable,
        "total_params": summary.total,
        "trainable_percent": summary.trainable_percent(),
        "tokens_per_s": tokens / seconds.max(1e-9),
        "seconds_per_step": seconds / args.steps.max(1) as f64,
        "losses": losses,
        "optimizer_state_bytes": optim.memory().state_bytes,
    }))
}

fn child(args: &Args, base: &str) -> anyhow::Result<Value> {
    let mut argv: Vec<std::ffi::OsString> = vec!["bench-lora".into()];
    match (&args.arch, &args.model) {
        (Some(arch), _) => argv.extend(["--arch".into(), arch.name().into()]),
        (None, Some(model)) => argv.extend(["--model".into(), model.clone().into()]),
        (None, None) => return Err(anyhow::anyhow!("--model or --arch is needed")),
    }
    for (flag, value) in [
        ("--device", args.device.clone()),
        ("--child", base.to_string()),
        ("--lora-r", args.rank.to_string()),
        ("--batch-size", args.batch_size.to_string()),
        ("--max-len", args.seq_len.to_string()),
        ("--steps", args.steps.to_string()),
    ] {
        argv.push(flag.into());
        argv.push(value.into());
    }
    if let Some(devices) = &args.devices {
        argv.extend(["--devices".into(), devices.into()]);
    }
    json_child(&argv, &format!("{base} training"))
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(base) = &args.child {
        println!("{}", train(args, base)?);
        return Ok(());
    }
    // Rounds alternate the variants (dense, nf4, reference, dense, ...) so that a slow spell of
    // a shared machine hits them alike; each variant reports its fastest round.
    let mut results = serde_json::Map::new();
    let mut reference_best: Option<Value> = None;
    let mut reference_dpo_best: Option<Value> = None;
    let faster = |best: &Option<Value>, r: &Value| {
        best.as_ref().is_none_or(|b| {
            r["tokens_per_s"].as_f64().unwrap_or(0.0) > b["tokens_per_s"].as_f64().unwrap_or(0.0)
        })
    };
    let mut variants = vec!["dense", "nf4"];
    if args.int8 {
        variants.push("int8");
    }
    if args.gradient_checkpointing {
        variants.extend(["nf4-checkpointed", "nf4-eval"]);
    }
    if args.dpo {
        variants.push("nf4-dpo");
        if args.gradient_checkpointing {
            variants.push("nf4-dpo-checkpointed");
        }
    }
    if args.devices.is_some() {
        variants.extend(["nf4-first-device", "nf4-devices"]);
    }
    for round in 0..args.repeats.max(1) {
        for &base in &variants {
            let r = child(args, base)?;
            if !args.json {
                eprintln!("round {round} {base}: {r}");
            }
            let best = results.get(base).cloned();
            if faster(&best, &r) {
                results.insert(base.to_string(), r);
            }
        }
        if args.reference {
            let r = reference(args, false)?;
            if !args.json {
                eprintln!("round {round} reference: {r}");
            }
            if r.get("skipped").is_some() || faster(&reference_best, &r) {
                reference_best = Some(r);
            }
            if args.dpo {
                let r = reference(args, true)?;
                if !args.json {
                    eprintln!("round {round} reference DPO: {r}");
                }
                if r.get("skipped").is_some() || faster(&reference_dpo_best, &r) {
                    reference_dpo_best = Some(r);
                }
            }
        }
    }
    let reference = reference_best;
    let get = |b: &str, k: &str| results[b][k].as_f64().unwrap_or(f64::NAN);
    let ref_tps = reference.as_ref().and_then(|r| r["tokens_per_s"].as_f64());
    let mut out = json!({
        "model": match (&args.arch, &args.model) {
            (Some(arch), _) => format!("{} (random weights)", arch.name()),
            (_, Some(model)) => model.display().to_string(),
            (None, None) => String::new(),
        },
        "device": args.device,
        "threads": threads(),
        "cpu": cpu_model(),
        "rank": args.rank,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "repeats": args.repeats.max(1),
        "gradient_checkpointing": args.gradient_checkpointing,
        "lora": results["dense"],
        "qlora": results["nf4"],
        "ratios": {
            "peak_rss_qlora_over_lora": get("nf4", "peak_rss_bytes") / get("dense", "peak_rss_bytes"),
            "base_weights_qlora_over_lora": get("nf4", "base_weight_bytes_on_device") / get("dense", "base_weight_bytes_on_device"),
            "tokens_per_s_qlora_over_lora": get("nf4", "tokens_per_s") / get("dense", "tokens_per_s"),
        },
    });
    if args.int8 {
        out["lora_int8"] = results["int8"].clone();
        out["ratios"]["peak_rss_int8_over_nf4"] =
            json!(get("int8", "peak_rss_bytes") / get("nf4", "peak_rss_bytes"));
        out["ratios"]["base_weights_int8_over_nf4"] = json!(
            get("int8", "base_weight_bytes_on_device") / get("nf4", "base_weight_bytes_on_device")
        );
        out["ratios"]["tokens_per_s_int8_over_nf4"] =
            json!(get("int8", "tokens_per_s") / get("nf4", "tokens_per_s"));
    }
    if args.dpo {
        out["qlora_dpo"] = results["nf4-dpo"].clone();
        out["ratios"]["tokens_per_s_dpo_over_sft"] =
            json!(get("nf4-dpo", "tokens_per_s") / get("nf4", "tokens_per_s"));
        out["ratios"]["peak_rss_dpo_over_sft"] =
            json!(get("nf4-dpo", "peak_rss_bytes") / get("nf4", "peak_rss_bytes"));
        if args.gradient_checkpointing {
            out["qlora_dpo_checkpointed"] = results["nf4-dpo-checkpointed"].clone();
            out["ratios"]["tokens_per_s_dpo_checkpointed_over_sft_checkpointed"] = json!(
                get("nf4-dpo-checkpointed", "tokens_per_s")
                    / get("nf4-checkpointed", "tokens_per_s")
            );
            out["ratios"]["peak_rss_dpo_checkpointed_over_sft_checkpointed"] = json!(
                get("nf4-dpo-checkpointed", "peak_rss_bytes")
                    / get("nf4-checkpointed", "peak_rss_bytes")
            );
        }
    }
    if args.gradient_checkpointing {
        out["qlora_checkpointed"] = results["nf4-checkpointed"].clone();
        out["evaluation"] = results["nf4-eval"].clone();
        out["ratios"]["tokens_per_s_checkpointed_over_plain"] =
            json!(get("nf4-checkpointed", "tokens_per_s") / get("nf4", "tokens_per_s"));
        out["ratios"]["peak_rss_checkpointed_over_plain"] =
            json!(get("nf4-checkpointed", "peak_rss_bytes") / get("nf4", "peak_rss_bytes"));
    }
    if let Some(devices) = &args.devices {
        out["data_parallel"] = json!({
            "devices": devices,
            "all_devices": results["nf4-devices"],
            "first_device_alone": results["nf4-first-device"],
            "scaling": get("nf4-devices", "tokens_per_s") / get("nf4-first-device", "tokens_per_s"),
            "over_one_micro_batch": get("nf4-devices", "tokens_per_s") / get("nf4", "tokens_per_s"),
        });
        if let Some(t) = ref_tps {
            out["ratios"]["tokens_per_s_devices_over_reference"] =
                json!(get("nf4-devices", "tokens_per_s") / t);
        }
    }
    if let Some(r) = reference_dpo_best {
        // With --gradient-checkpointing the reference ran with it: compare like with like.
        let ours = if args.gradient_checkpointing {
            "nf4-dpo-checkpointed"
        } else {
            "nf4-dpo"
        };
        if let Some(t) = r["tokens_per_s"].as_f64() {
            out["ratios"]["tokens_per_s_dpo_over_reference_dpo"] =
                json!(get(ours, "tokens_per_s") / t);
        }
        if let Some(p) = r["peak_rss_bytes"].as_f64() {
            out["ratios"]["peak_rss_dpo_over_reference_dpo"] =
                json!(get(ours, "peak_rss_bytes") / p);
        }
        out["reference_dpo"] = r;
    }
    if let Some(r) = reference {
        out["reference"] = r;
        if let Some(t) = ref_tps {
            out["ratios"]["tokens_per_s_qlora_over_reference"] =
                json!(get("nf4", "tokens_per_s") / t);
            out["ratios"]["tokens_per_s_lora_over_reference"] =
                json!(get("dense", "tokens_per_s") / t);
        }
        if let Some(p) = out["reference"]["peak_rss_bytes"].as_f64() {
            out["ratios"]["peak_rss_qlora_over_reference"] =
                json!(get("nf4", "peak_rss_bytes") / p);
        }
        if args.gradient_checkpointing
            && let (Some(t), Some(p)) = (ref_tps, out["reference"]["peak_rss_bytes"].as_f64())
        {
            // The reference ran with checkpointing: compare like with like.
            out["ratios"]["tokens_per_s_checkpointed_over_reference"] =
                json!(get("nf4-checkpointed", "tokens_per_s") / t);
            out["ratios"]["peak_rss_checkpointed_over_reference"] =
                json!(get("nf4-checkpointed", "peak_rss_bytes") / p);
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `cargo xtask bench-train`: the same measurement at the trainer's scale (batch 4 x 256
/// tokens, QLoRA's r = 64 on all linear layers).
#[derive(ClapArgs, Debug)]
pub struct TrainArgs {
    /// Model directory or .gguf file (e.g. SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, required_unless_present = "arch", conflicts_with = "arch")]
    model: Option<PathBuf>,
    /// Instead of --model: random weights in a preset's real shapes (see `bench-lora --arch`).
    #[arg(long)]
    arch: Option<Architecture>,
    /// Device to train on.
    #[arg(long, default_value = "flex")]
    device: String,
    /// LoRA rank (all linear layers are adapted).
    #[arg(long = "lora-r", alias = "rank", default_value_t = 64)]
    rank: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Tokens per sequence.
    #[arg(long = "max-len", alias = "seq-len", default_value_t = 256)]
    seq_len: usize,
    /// Optimizer steps measured (after one warm-up step).
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Rounds over all variants, alternating; each variant reports its fastest round.
    #[arg(long, default_value_t = 1)]
    repeats: usize,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
    /// Also run the reference stack on the same batch (see `bench-lora --reference`).
    #[arg(long)]
    reference: bool,
    /// Also train with layer-level gradient checkpointing and measure evaluation (see
    /// `bench-lora --gradient-checkpointing`).
    #[arg(long)]
    gradient_checkpointing: bool,
    /// Also train over an LLM.int8 base (see `bench-lora --int8`).
    #[arg(long)]
    int8: bool,
    /// Also take DPO steps over the same tokens (see `bench-lora --dpo`).
    #[arg(long)]
    dpo: bool,
    /// Also train data-parallel over these devices and report the scaling against the first
    /// alone (see `bench-lora --devices`).
    #[arg(long)]
    devices: Option<String>,
}

pub fn run_train(a: &TrainArgs) -> anyhow::Result<()> {
    run(&Args {
        model: a.model.clone(),
        arch: a.arch,
        device: a.device.clone(),
        rank: a.rank,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        steps: a.steps,
        repeats: a.repeats,
        json: a.json,
        reference: a.reference,
        gradient_checkpointing: a.gradient_checkpointing,
        int8: a.int8,
        dpo: a.dpo,
        devices: a.devices.clone(),
        child: None,
    })
}
