//! `cargo xtask bench-memory`: the predicted QLoRA training peak of a real architecture, from
//! real training steps of its exact layer shapes (random NF4 weights) at one and two decoder
//! layers, each in its own process; `--validate` also runs the whole depth and compares.

use clap::Args as ClapArgs;
use medify_qlora::models::ComputeDtype;
use medify_qlora::training::memory_model::{
    Architecture, MemoryProbe, StepPeak, measure_step_peak, predict,
};
use serde_json::{Value, json};

use crate::bench_models::json_child;
use crate::device::device_named;
use crate::memory_flags::MemoryFlags;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// tinyllama-1.1b, llama-2-7b, llama-3-8b, mistral-7b or gemma-2b.
    #[arg(long)]
    arch: String,
    /// Tokens per sequence.
    #[arg(long = "max-len", alias = "seq-len", default_value_t = 512)]
    seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 1)]
    batch_size: usize,
    /// LoRA rank (all linear layers).
    #[arg(long, default_value_t = 16)]
    lora_r: usize,
    #[command(flatten)]
    memory: MemoryFlags,
    /// Training steps per measurement.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Device to measure on.
    #[arg(long, default_value = "flex")]
    device: String,
    /// Also train the whole depth and compare the prediction with it.
    #[arg(long)]
    validate: bool,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
    /// Internal: measure this many layers and print the measurement.
    #[arg(long, hide = true)]
    child_layers: Option<usize>,
}

fn probe(a: &Args) -> anyhow::Result<MemoryProbe> {
    let device = device_named(&a.device)?;
    let compute_dtype = a
        .memory
        .compute_dtype
        .unwrap_or_else(|| ComputeDtype::default_for(&device));
    compute_dtype.check(&device)?;
    if a.seq_len < 2 || a.batch_size == 0 {
        return Err(anyhow::anyhow!(
            "--max-len must be at least 2 and --batch-size at least 1"
        ));
    }
    Ok(MemoryProbe {
        architecture: a.arch.parse::<Architecture>()?,
        batch_size: a.batch_size,
        seq_len: a.seq_len,
        lora_r: a.lora_r,
        compute_dtype,
        checkpointing: a.memory.checkpointing(true),
        steps: a.steps,
    })
}

fn measure(a: &Args, probe: &MemoryProbe, layers: usize) -> anyhow::Result<StepPeak> {
    let mut argv: Vec<String> = vec!["bench-memory".into()];
    for (flag, value) in [
        ("--arch", a.arch.clone()),
        ("--max-len", a.seq_len.to_string()),
        ("--batch-size", a.batch_size.to_string()),
        ("--lora-r", a.lora_r.to_string()),
        ("--compute-dtype", probe.compute_dtype.to_string()),
        ("--steps", a.steps.to_string()),
        ("--device", a.device.clone()),
        ("--child-layers", layers.to_string()),
    ] {
        argv.push(flag.into());
        argv.push(value);
    }
    argv.extend(a.memory.checkpoint_args());
    let v = json_child(&argv, &format!("{layers}-layer measurement"))?;
    Ok(serde_json::from_value(v)?)
}

const GIB: f64 = (1u64 << 30) as f64;

pub fn run(a: &Args) -> anyhow::Result<()> {
    let probe = probe(a)?;
    if let Some(layers) = a.child_layers {
        let device = device_named(&a.device)?;
        let peak = measure_step_peak(&probe, layers, &device)?;
        println!("{}", serde_json::to_string(&peak)?);
        return Ok(());
    }
    let one = measure(a, &probe, 1)?;
    let two = measure(a, &probe, 2)?;
    let prediction = predict(&probe, &one, &two)?;
    let mut out = json!({
        "probe": probe,
        "device": a.device,
        "measured": [one, two],
        "prediction": prediction,
        "predicted_peak_gib": prediction.predicted_peak_bytes / GIB,
        "accelerator_peak_gib": prediction.accelerator_peak_bytes / GIB,
    });
    if a.validate {
        let full = measure(a, &probe, prediction.layers)?;
        let error = prediction.predicted_peak_bytes / full.peak_bytes as f64 - 1.0;
        out["full_depth"] = serde_json::to_value(&full)?;
        out["full_depth_peak_gib"] = json!(full.peak_bytes as f64 / GIB);
        out["prediction_error"] = Value::from(error);
    }
    if !a.json {
        let p = &prediction;
        eprintln!(
            "{} at {} x {}, r {}, {:?}, {}: predicted peak {:.2} GiB = base weights {:.2} + adapters and grads {:.2} + optimizer state {:.2} + checkpoints {:.2} + working set and runtime {:.2}",
            probe.architecture.name(),
            probe.batch_size,
            probe.seq_len,
            probe.lora_r,
            probe.checkpointing,
            probe.compute_dtype,
            p.predicted_peak_bytes / GIB,
            p.base_weight_bytes / GIB,
            p.adapter_and_grad_bytes / GIB,
            p.optimizer_state_bytes / GIB,
            p.checkpoint_bytes / GIB,
            p.other_bytes / GIB,
        );
        if one.host_is_device {
            eprintln!(
                "on an accelerator (paged AdamW's state{} in host memory): {:.2} GiB",
                if probe.checkpointing == medify_qlora::models::Checkpointing::LayersOffloaded {
                    " and the offloaded checkpoints"
                } else {
                    ""
                },
                p.accelerator_peak_bytes / GIB
            );
        }
        if let Some(e) = out["prediction_error"].as_f64() {
            eprintln!(
                "full depth measured {:.2} GiB: prediction off by {:+.1} %",
                out["full_depth_peak_gib"].as_f64().unwrap_or(f64::NAN),
                100.0 * e
            );
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
