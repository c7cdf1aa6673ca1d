//! The backend extension for int8 weights: two ops every backend implements.
//!
//! Codes travel as `u32` words holding the int8 bytes in little-endian order (element `4w + j`
//! in bits `8j..8j+8` of word `w`), since WGSL has no 8-bit type. Scales are one f32 per row,
//! `SCB * (1 / 127)`.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;

use crate::device::ops::matmul_shape;

/// LLM.int8 operations over row-scaled int8 weights. Reach them through [`crate::Int8Tensor`].
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait Int8Ops: Backend {
    /// Dense `[rows, cols]` weight: `code[i] * scales[i / cols]`.
    #[fusion(dtype = scales, shape = Shape::new([*rows, *cols]))]
    fn i8_dequantize(
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self>;

    /// `x @ W^T` for an int8 `W` of shape `[out_features, in_features]` and `x` of shape
    /// `[m, in_features]`: the weight decoded (transiently) into `x`'s dtype, then the
    /// backend's matmul, as bitsandbytes' `MatMul8bitFp` does on the CPU.
    #[fusion(dtype = x, shape = matmul_shape(x, out_features))]
    fn i8_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        out_features: usize,
    ) -> FloatTensor<Self>;
}
