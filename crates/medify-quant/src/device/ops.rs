//! The backend extension: three primitive ops every backend implements for 4-bit weights.
//!
//! Packed codes travel as `u32` words holding bitsandbytes' bytes in little-endian order, so
//! element `8w + j` of the flat weight sits at bits `4 * (j ^ 1)` of word `w`. Scales are f32.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::Shape;

/// Output shape of `q4_matmul`: the input's shape with its last dim replaced.
pub fn matmul_shape(x: &Shape, out_features: &usize) -> Shape {
    let mut dims = x.to_vec();
    let last = dims.len() - 1;
    dims[last] = *out_features;
    Shape::from(dims)
}

/// 4-bit operations over packed weights. Reach them through [`crate::Nf4Tensor`].
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait Quant4Ops: Backend {
    /// One f32 scale per block from double-quantized absmax:
    /// `nested_code[q] * nested_absmax[i / 256] + offset`, unfused like bitsandbytes.
    #[fusion(dtype = nested_absmax, shape = Shape::new([*num_blocks]))]
    fn q4_decode_absmax(
        codes: IntTensor<Self>,
        nested_absmax: FloatTensor<Self>,
        nested_code: FloatTensor<Self>,
        offset: f32,
        num_blocks: usize,
    ) -> FloatTensor<Self>;

    /// Dense `[rows, cols]` weight: `code[nibble] * absmax[i / blocksize]`.
    #[fusion(dtype = absmax, shape = Shape::new([*rows, *cols]))]
    fn q4_dequantize(
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        rows: usize,
        cols: usize,
        blocksize: usize,
    ) -> FloatTensor<Self>;

    /// `x @ W^T` for a 4-bit `W` of shape `[out_features, in_features]`, `x` of shape
    /// `[m, in_features]`, without materialising the dense weight where the backend can.
    #[fusion(dtype = x, shape = matmul_shape(x, out_features))]
    fn q4_matmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        out_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self>;

    /// `dy @ W` for a 4-bit `W [out_features, in_features]` over the last dim of `dy`
    /// (`[.., out_features]` → `[.., in_features]`), in `dy`'s dtype: the input gradient of
    /// [`Quant4Ops::q4_matmul`]. Flex decodes a panel of rows at a time instead of the whole
    /// weight.
    #[fusion(dtype = dy, shape = matmul_shape(dy, in_features))]
    fn q4_input_gradient(
        dy: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self>;

    /// [`Quant4Ops::q4_matmul`] with double-quantized scales, decoded inside the kernel where
    /// the backend can (Flex), so no decoded absmax is allocated per call.
    #[fusion(dtype = x, shape = matmul_shape(x, out_features))]
    #[allow(clippy::too_many_arguments)]
    fn q4_matmul_dq(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        codes: IntTensor<Self>,
        nested_absmax: FloatTensor<Self>,
        nested_code: FloatTensor<Self>,
        code: FloatTensor<Self>,
        offset: f32,
        out_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self>;
}
