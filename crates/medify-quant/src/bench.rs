//! Fixtures shared by the criterion benches (`cargo bench`) and `cargo xtask bench-quant`, so
//! both measure exactly the same work.

use burn::tensor::{Device, Tensor, TensorData};

use crate::{Nf4Tensor, QuantConfig};

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
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            // Sum of four uniforms: close enough to a bell curve for a benchmark.
            let mut acc = 0f32;
            for _ in 0..4 {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
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
        let dense = Tensor::<2>::from_data(TensorData::new(values, [out_features, in_features]), device);
        let weight = Nf4Tensor::quantize(dense, &QuantConfig::default()).expect("valid weights");
        let dense_t = weight.dequantize().transpose();
        // Materialise the transposed layout once, outside the timed region.
        let dense_t = Tensor::<2>::from_data(dense_t.into_data(), device);
        let x = Tensor::<2>::from_data(
            TensorData::new(weight_values(tokens * in_features, 11), [tokens, in_features]),
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

/// Waits for queued work on `device` (a no-op on synchronous backends).
pub fn sync(device: &Device) {
    device.sync().expect("device sync");
}
