//! `Int8Ops` for every CubeCL runtime (wgpu/Vulkan/Metal, CUDA): a decode kernel, then the
//! backend's tuned matmul.

use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl;
use burn_cubecl::cubecl::calculate_cube_count_elemwise;
use burn_cubecl::cubecl::prelude::*;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;

use super::ops::Int8Ops;

/// One unit per word: four codes, sign-extended from their byte, times their row's scale.
#[cube(launch)]
fn dequantize_kernel<F: Float>(
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    out: &mut Tensor<F>,
    cols: u32,
    #[define(F)] _dtype: ElemType,
) {
    let w = ABSOLUTE_POS;
    let n = out.len();
    let base = w * 4;
    if base >= n {
        terminate!();
    }
    let word = codes[w];
    let c = cols as usize;
    #[unroll]
    for j in 0..4u32 {
        let e = base + j as usize;
        if e < n {
            let byte = (word >> (j * 8u32)) & 255u32;
            // two's complement: bytes from 128 up are negative
            let v = f32::cast_from(byte) - f32::cast_from((byte >> 7u32) * 256u32);
            out[e] = F::cast_from(v * scales[e / c]);
        }
    }
}

fn dequantize_as(
    codes: CubeTensor,
    scales: CubeTensor,
    rows: usize,
    cols: usize,
    dtype: DType,
) -> CubeTensor {
    let out = empty_device_dtype(
        codes.client.clone(),
        codes.device.clone(),
        Shape::new([rows, cols]),
        dtype,
    );
    let units = (rows * cols).div_ceil(4).max(1);
    let cube_dim = CubeDim::new(&out.client, units);
    let cube_count = calculate_cube_count_elemwise(&out.client, units, cube_dim);
    dequantize_kernel::launch(
        &out.client,
        cube_count,
        cube_dim,
        into_contiguous(codes).into_tensor_arg(),
        into_contiguous(scales).into_tensor_arg(),
        out.clone().into_tensor_arg(),
        cols as u32,
        dtype_to_storage_type(dtype),
    );
    out
}

impl Int8Ops for CubeBackend {
    fn i8_dequantize(
        codes: CubeTensor,
        scales: CubeTensor,
        rows: usize,
        cols: usize,
    ) -> CubeTensor {
        dequantize_as(codes, scales, rows, cols, DType::F32)
    }

    fn i8_matmul(
        x: CubeTensor,
        codes: CubeTensor,
        scales: CubeTensor,
        out_features: usize,
    ) -> CubeTensor {
        let dims = x.meta.shape().to_vec();
        let rank = dims.len();
        let k = dims[rank - 1];
        let m: usize = dims[..rank - 1].iter().product();
        let mut out_dims = dims.clone();
        out_dims[rank - 1] = out_features;
        let dense = dequantize_as(codes, scales, out_features, k, x.dtype);
        let x2 = Self::float_reshape(x, Shape::new([m, k]));
        let y = Self::float_matmul(x2, Self::float_transpose(dense));
        Self::float_reshape(y, Shape::from(out_dims))
    }
}
