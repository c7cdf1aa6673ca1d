//! `cargo xtask bench-quant`: the figures of the criterion benches, as one JSON document.
//!
//! Every speed figure comes with its baseline from the same run: the host codec's throughput is
//! reported next to a plain f32 copy of the same data, and each fused 4-bit matmul next to the
//! dense f32 matmul of the same shape on the same device.

use std::time::{Duration, Instant};

use crate::device::device_named;
use medify_qlora::quant::bench::{MatmulFixture, TOKEN_COUNTS, shapes_for, sync, weight_values};
use medify_qlora::quant::{Packed4Bit, QuantConfig};
use serde_json::{Value, json};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    /// Devices to measure, comma-separated: flex, wgpu. wgpu is opt-in: on a machine without
    /// a GPU it runs on Mesa's software rasterizer, where the 256-token shapes take minutes.
    #[arg(long, default_value = "flex", value_delimiter = ',')]
    devices: Vec<String>,
    /// Fewer repetitions (for a smoke run; figures get noisier).
    #[arg(long)]
    quick: bool,
}

/// Median wall time of `iters` runs of `f` after one warm-up run.
fn median_time(iters: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn host_codec(iters: usize) -> Value {
    let (rows, cols) = (4096usize, 4096usize);
    let values = weight_values(rows * cols, 3);
    let gb = (values.len() * 4) as f64 / 1e9;
    let cfg = QuantConfig::default();
    let quantize = median_time(iters, || {
        std::hint::black_box(Packed4Bit::quantize(&values, &[rows, cols], &cfg).unwrap());
    });
    let packed = Packed4Bit::quantize(&values, &[rows, cols], &cfg).unwrap();
    let mut out = vec![0f32; values.len()];
    let dequantize = median_time(iters, || packed.dequantize_into(&mut out));
    let mut copy = vec![0f32; values.len()];
    let memcpy = median_time(iters, || {
        copy.copy_from_slice(std::hint::black_box(&values))
    });
    json!({
        "shape": [rows, cols],
        "config": "nf4, blocksize 64, double quant",
        "threads": rayon_threads(),
        "quantize_dq_gb_per_s": gb / quantize.as_secs_f64(),
        "dequantize_gb_per_s": gb / dequantize.as_secs_f64(),
        "baseline_f32_copy_gb_per_s": gb / memcpy.as_secs_f64(),
        "quantize_dq_over_copy": memcpy.as_secs_f64() / quantize.as_secs_f64(),
        "bits_per_weight": packed.bits_per_weight(),
    })
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn matmuls(device_name: &str, quick: bool) -> anyhow::Result<Vec<Value>> {
    let device = device_named(device_name)?;
    let mut rows = Vec::new();
    for (label, out_f, in_f) in shapes_for(device_name) {
        for tokens in TOKEN_COUNTS {
            let fx = MatmulFixture::new(&device, out_f, in_f, tokens);
            let iters = match (quick, tokens) {
                (true, _) => 3,
                (false, 1) => 21,
                (false, _) => 7,
            };
            let fused = median_time(iters, || {
                std::hint::black_box(fx.fused());
                sync(&device);
            });
            let dense = median_time(iters, || {
                std::hint::black_box(fx.dense());
                sync(&device);
            });
            let fused_ms = fused.as_secs_f64() * 1e3;
            let dense_ms = dense.as_secs_f64() * 1e3;
            rows.push(json!({
                "device": device_name,
                "shape": label,
                "out_features": out_f,
                "in_features": in_f,
                "tokens": tokens,
                "fused_4bit_ms": fused_ms,
                "dense_f32_ms": dense_ms,
                "fused_over_dense": fused_ms / dense_ms,
                "speedup_vs_dense": dense_ms / fused_ms,
            }));
        }
    }
    Ok(rows)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let host = host_codec(if args.quick { 3 } else { 9 });
    let mut matmul = Vec::new();
    for d in &args.devices {
        matmul.extend(matmuls(d, args.quick)?);
    }
    let min_speedup = |tokens: u64| {
        matmul
            .iter()
            .filter(|r| r["device"] == "flex" && r["tokens"] == tokens)
            .filter_map(|r| r["speedup_vs_dense"].as_f64())
            .reduce(f64::min)
    };
    let target = |measured: Option<f64>, target: f64| {
        json!({
            "target": target,
            "measured_min": measured,
            "met": measured.is_some_and(|m| m >= target),
        })
    };
    let host_gbps = host["quantize_dq_gb_per_s"].as_f64().unwrap_or(0.0);
    let report = json!({
        "host_codec": host,
        "matmul": matmul,
        "targets": {
            "host_quantize_dq_gb_per_s": {"target": 1.0, "measured": host_gbps, "met": host_gbps >= 1.0},
            "flex_decode_speedup_vs_dense": target(min_speedup(1), 3.0),
            "flex_prefill_speedup_vs_dense": target(min_speedup(256), 0.9),
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(report: &Value) {
    let h = &report["host_codec"];
    println!(
        "host codec (4096x4096, nf4+DQ, {} threads): quantize {:.2} GB/s, dequantize {:.2} GB/s, f32 copy {:.2} GB/s, {:.3} bits/weight",
        h["threads"],
        h["quantize_dq_gb_per_s"].as_f64().unwrap_or(0.0),
        h["dequantize_gb_per_s"].as_f64().unwrap_or(0.0),
        h["baseline_f32_copy_gb_per_s"].as_f64().unwrap_or(0.0),
        h["bits_per_weight"].as_f64().unwrap_or(0.0),
    );
    println!(
        "{:<6} {:<11} {:>6} {:>12} {:>12} {:>9}",
        "device", "shape", "tokens", "4-bit ms", "f32 ms", "speedup"
    );
    for r in report["matmul"].as_array().into_iter().flatten() {
        println!(
            "{:<6} {:<11} {:>6} {:>12.3} {:>12.3} {:>8.2}x",
            r["device"].as_str().unwrap_or(""),
            r["shape"].as_str().unwrap_or(""),
            r["tokens"],
            r["fused_4bit_ms"].as_f64().unwrap_or(0.0),
            r["dense_f32_ms"].as_f64().unwrap_or(0.0),
            r["speedup_vs_dense"].as_f64().unwrap_or(0.0),
        );
    }
    println!("targets: {}", report["targets"]);
}
