//! Criterion benches of the 4-bit kernels (`cargo bench`):
//! host quantize / dequantize, and the fused 4-bit matmul next to the dense f32 matmul of the
//! same shape on the same device, for Llama shapes at 1 and 256 tokens, on flex and wgpu.
//! `cargo xtask bench-quant --json` prints the same figures as one JSON document.

use std::time::Duration;

use burn::tensor::Device;
#[cfg(feature = "wgpu")]
use burn::tensor::DeviceKind;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use medify_qlora::quant::bench::{MatmulFixture, TOKEN_COUNTS, shapes_for, sync, weight_values};
use medify_qlora::quant::{Packed4Bit, QuantConfig};

fn host_codec(c: &mut Criterion) {
    let (rows, cols) = (4096, 4096);
    let values = weight_values(rows * cols, 3);
    let cfg = QuantConfig::default();
    let mut g = c.benchmark_group("host_codec_4096x4096");
    g.throughput(Throughput::Bytes((values.len() * 4) as u64));
    g.sample_size(10);
    g.bench_function("quantize_nf4_dq", |b| {
        b.iter(|| Packed4Bit::quantize(&values, &[rows, cols], &cfg).unwrap())
    });
    let packed = Packed4Bit::quantize(&values, &[rows, cols], &cfg).unwrap();
    let mut out = vec![0f32; values.len()];
    g.bench_function("dequantize_nf4_dq", |b| {
        b.iter(|| packed.dequantize_into(&mut out))
    });
    let mut copy = vec![0f32; values.len()];
    g.bench_function("baseline_f32_copy", |b| {
        b.iter(|| copy.copy_from_slice(&values))
    });
    g.finish();
}

fn matmul_on(c: &mut Criterion, name: &str, device: Device) {
    let mut g = c.benchmark_group(format!("matmul_{name}"));
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(3));
    for (label, out_f, in_f) in shapes_for(name) {
        for tokens in TOKEN_COUNTS {
            let fx = MatmulFixture::new(&device, out_f, in_f, tokens);
            let id = format!("{label}/tokens{tokens}");
            g.bench_function(BenchmarkId::new("fused_4bit", &id), |b| {
                b.iter(|| {
                    let y = fx.fused();
                    sync(&device);
                    y
                })
            });
            g.bench_function(BenchmarkId::new("dense_f32", &id), |b| {
                b.iter(|| {
                    let y = fx.dense();
                    sync(&device);
                    y
                })
            });
        }
    }
    g.finish();
}

fn matmul(c: &mut Criterion) {
    #[cfg(feature = "flex")]
    matmul_on(c, "flex", Device::flex());
    #[cfg(feature = "wgpu")]
    matmul_on(c, "wgpu", Device::wgpu(DeviceKind::DefaultDevice));
}

criterion_group!(benches, host_codec, matmul);
criterion_main!(benches);
