//! Fixtures shared by the criterion benches (`cargo bench`) and `cargo xtask bench-quant`, so
//! both measure exactly the same work.

use burn::tensor::{Device, Tensor, TensorData};

use crate::{Nf4Tensor, Packed4Bit, QuantConfig};

/// Llama-family projection shapes as `(label, out_features, in_features)`: Llama-7B attention
/// (4096x4096), Llama-7B MLP up/gate (4096 -> 11008), TinyLlama MLP up/gate (2048 -> 5632).
pub const LLAMA_SHAPES: [(&str, usize, usize); 3] = [
    ("4096x4096", 4096, 4096),
    ("4096x11008", 11008, 4096),
    ("2048x5632", 5632, 2048),
];

/// Token counts benchmarked: one decode step and a prefill / training micro-batch.
pub const TOKEN_COUNTS: [usize; 2] = [1, 256];

/// Deterministic weight-like values (roughly N(0, 0.02)), cheap to make on the host.
pub fn weight_values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            // Sum of four uniforms: close enough to a bell curve for a benchmark.
            let mut acc = 0f32;
            for _ in 0..4 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                acc += ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
            }
            acc * 0.035
        })
        .collect()
}

/// One matmul shape on one device: the 4-bit weight, its dense f32 twin and an input.
pub struct MatmulFixture {
    /// The 4-bit weight `[out, in]`.
    pub weight: Nf4Tensor,
    /// The same weight dequantized, stored transposed `[in, out]` so the dense baseline gets
    /// its best layout.
    pub dense_t: Tensor<2>,
    /// Activations `[tokens, in]`.
    pub x: Tensor<2>,
}

impl MatmulFixture {
    /// Builds the fixture (quantizes with the QLoRA default config).
    pub fn new(device: &Device, out_features: usize, in_features: usize, tokens: usize) -> Self {
        let values = weight_values(out_features * in_features, 7);
        let packed = Packed4Bit::quantize(
            &values,
            &[out_features, in_features],
            &QuantConfig::default(),
        )
        .expect("valid weights");
        let weight = Nf4Tensor::from_packed(&packed, device).expect("2-D weight");
        let dense_t = weight.dequantize().transpose();
        // Materialise the transposed layout once, outside the timed region.
        let dense_t = Tensor::<2>::from_data(dense_t.into_data(), device);
        let x = Tensor::<2>::from_data(
            TensorData::new(
                weight_values(tokens * in_features, 11),
                [tokens, in_features],
            ),
            device,
        );
        MatmulFixture { weight, dense_t, x }
    }

    /// The fused 4-bit matmul.
    pub fn fused(&self) -> Tensor<2> {
        self.weight.matmul(self.x.clone())
    }

    /// The dense f32 matmul of the same shape.
    pub fn dense(&self) -> Tensor<2> {
        self.x.clone().matmul(self.dense_t.clone())
    }
}

/// Largest dense f32 weight the wgpu baseline is run for: wgpu's default limit on one storage
/// binding is 128 MiB, which a dense 4096x11008 f32 weight (172 MiB) exceeds.
pub const WGPU_MAX_DENSE_BYTES: usize = 128 << 20;

/// Whether the dense baseline of `out x in` fits one wgpu storage binding.
pub fn fits_wgpu_binding(out_features: usize, in_features: usize) -> bool {
    out_features * in_features * 4 <= WGPU_MAX_DENSE_BYTES
}

/// The shapes to benchmark on a device: all of [`LLAMA_SHAPES`], less (on wgpu) those whose
/// dense baseline does not fit one storage binding, each skip reported on stderr.
pub fn shapes_for(device_name: &str) -> Vec<(&'static str, usize, usize)> {
    LLAMA_SHAPES
        .into_iter()
        .filter(|&(label, out_f, in_f)| {
            let fits = device_name != "wgpu" || fits_wgpu_binding(out_f, in_f);
            if !fits {
                eprintln!("{device_name} {label}: skipped, its dense f32 baseline exceeds wgpu's 128 MiB storage binding");
            }
            fits
        })
        .collect()
}

/// Waits for queued work on `device` (a no-op on synchronous backends).
pub fn sync(device: &Device) {
    device.sync().expect("device sync");
}
