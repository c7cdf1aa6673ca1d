//! `Quant4Ops` for every CubeCL runtime (wgpu/Vulkan/Metal, CUDA): JIT kernels.
//!
//! WGSL has no 8-bit arithmetic, so codes are read as `u32` words (8 codes per word).

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

use super::ops::Quant4Ops;

/// Batches up to this many rows run the fused kernel; larger ones dequantize and call the
/// backend's tuned matmul (what bitsandbytes does for prefill and training).
const FUSED_MAX_ROWS: usize = 16;

#[cube(launch)]
fn decode_absmax_kernel(
    codes: &Tensor<u32>,
    nested_absmax: &Tensor<f32>,
    nested_code: &Tensor<f32>,
    out: &mut Tensor<f32>,
    offset: f32,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let word = codes[i / 4];
    let shift = ((i % 4) * 8) as u32;
    let q = (word >> shift) & 255u32;
    let scaled = nested_code[q as usize] * nested_absmax[i / 256];
    out[i] = scaled + offset;
}

/// Decodes into any float type: the 4-bit matmul's wide path writes the compute dtype directly.
#[cube(launch)]
fn dequantize_kernel<F: Float>(
    packed: &Tensor<u32>,
    absmax: &Tensor<f32>,
    code: &Tensor<f32>,
    out: &mut Tensor<F>,
    blocksize: u32,
    #[define(F)] _dtype: ElemType,
) {
    let w = ABSOLUTE_POS;
    let n = out.len();
    let base = w * 8;
    if base >= n {
        terminate!();
    }
    let word = packed[w];
    let bs = blocksize as usize;
    #[unroll]
    for j in 0..8u32 {
        let e = base + j as usize;
        if e < n {
            let nib = (word >> ((j ^ 1u32) * 4u32)) & 15u32;
            out[e] = F::cast_from(code[nib as usize] * absmax[e / bs]);
        }
    }
}

/// One unit per output element; each streams its weight row word by word.
#[cube(launch)]
fn matmul_kernel<F: Float>(
    x: &Tensor<F>,
    packed: &Tensor<u32>,
    absmax: &Tensor<f32>,
    code: &Tensor<f32>,
    out: &mut Tensor<F>,
    in_features: u32,
    out_features: u32,
    blocksize: u32,
    #[define(F)] _dtype: ElemType,
) {
    let pos = ABSOLUTE_POS;
    if pos >= out.len() {
        terminate!();
    }
    let n = out_features as usize;
    let k = in_features as usize;
    let bs = blocksize as usize;
    let mi = pos / n;
    let ni = pos % n;
    let words = k / 8;
    let wrow = ni * words;
    let xrow = mi * k;
    let mut acc = 0.0f32;
    for w in 0..words {
        let word = packed[wrow + w];
        let scale = absmax[(wrow + w) * 8 / bs];
        let xb = xrow + w * 8;
        let mut part = 0.0f32;
        #[unroll]
        for j in 0..8u32 {
            let nib = (word >> ((j ^ 1u32) * 4u32)) & 15u32;
            part += code[nib as usize] * f32::cast_from(x[xb + j as usize]);
        }
        acc += part * scale;
    }
    out[pos] = F::cast_from(acc);
}

/// The dense `[rows, cols]` weight in `dtype`, decoded on the device.
fn dequantize_as(
    packed: CubeTensor,
    absmax: CubeTensor,
    code: CubeTensor,
    rows: usize,
    cols: usize,
    blocksize: usize,
    dtype: DType,
) -> CubeTensor {
    let out = empty_device_dtype(
        packed.client.clone(),
        packed.device.clone(),
        Shape::new([rows, cols]),
        dtype,
    );
    let units = (rows * cols).div_ceil(8);
    let cube_dim = CubeDim::new(&out.client, units.max(1));
    let cube_count = calculate_cube_count_elemwise(&out.client, units.max(1), cube_dim);
    dequantize_kernel::launch(
        &out.client,
        cube_count,
        cube_dim,
        into_contiguous(packed).into_tensor_arg(),
        into_contiguous(absmax).into_tensor_arg(),
        into_contiguous(code).into_tensor_arg(),
        out.clone().into_tensor_arg(),
        blocksize as u32,
        dtype_to_storage_type(dtype),
    );
    out
}

impl Quant4Ops for CubeBackend {
    fn q4_decode_absmax(
        codes: CubeTensor,
        nested_absmax: CubeTensor,
        nested_code: CubeTensor,
        offset: f32,
        num_blocks: usize,
    ) -> CubeTensor {
        let out = empty_device_dtype(
            codes.client.clone(),
            codes.device.clone(),
            Shape::new([num_blocks]),
            DType::F32,
        );
        let cube_dim = CubeDim::new(&out.client, num_blocks);
        let cube_count = calculate_cube_count_elemwise(&out.client, num_blocks, cube_dim);
        decode_absmax_kernel::launch(
            &out.client,
            cube_count,
            cube_dim,
            into_contiguous(codes).into_tensor_arg(),
            into_contiguous(nested_absmax).into_tensor_arg(),
            into_contiguous(nested_code).into_tensor_arg(),
            out.clone().into_tensor_arg(),
            offset,
        );
        out
    }

    fn q4_dequantize(
        packed: CubeTensor,
        absmax: CubeTensor,
        code: CubeTensor,
        rows: usize,
        cols: usize,
        blocksize: usize,
    ) -> CubeTensor {
        dequantize_as(packed, absmax, code, rows, cols, blocksize, DType::F32)
    }

    fn q4_matmul(
        x: CubeTensor,
        packed: CubeTensor,
        absmax: CubeTensor,
        code: CubeTensor,
        out_features: usize,
        blocksize: usize,
    ) -> CubeTensor {
        let dims = x.meta.shape().to_vec();
        let rank = dims.len();
        let k = dims[rank - 1];
        let m: usize = dims[..rank - 1].iter().product();
        let mut out_dims = dims.clone();
        out_dims[rank - 1] = out_features;
        if m > FUSED_MAX_ROWS || !k.is_multiple_of(8) {
            let dense = dequantize_as(packed, absmax, code, out_features, k, blocksize, x.dtype);
            let x2 = Self::float_reshape(x, Shape::new([m, k]));
            let y = Self::float_matmul(x2, Self::float_transpose(dense));
            return Self::float_reshape(y, Shape::from(out_dims));
        }
        let x = into_contiguous(x);
        let out = empty_device_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::from(out_dims),
            x.dtype,
        );
        let units = m * out_features;
        let cube_dim = CubeDim::new(&out.client, units.max(1));
        let cube_count = calculate_cube_count_elemwise(&out.client, units.max(1), cube_dim);
        let dtype = x.dtype;
        matmul_kernel::launch(
            &out.client,
            cube_count,
            cube_dim,
            x.into_tensor_arg(),
            into_contiguous(packed).into_tensor_arg(),
            into_contiguous(absmax).into_tensor_arg(),
            into_contiguous(code).into_tensor_arg(),
            out.clone().into_tensor_arg(),
            k as u32,
            out_features as u32,
            blocksize as u32,
            dtype_to_storage_type(dtype),
        );
        out
    }

    fn q4_input_gradient(
        dy: CubeTensor,
        packed: CubeTensor,
        absmax: CubeTensor,
        code: CubeTensor,
        in_features: usize,
        blocksize: usize,
    ) -> CubeTensor {
        let dims = dy.meta.shape().to_vec();
        let out_features = dims[dims.len() - 1];
        let dense = dequantize_as(
            packed,
            absmax,
            code,
            out_features,
            in_features,
            blocksize,
            dy.dtype,
        );
        crate::device::autodiff::input_gradient::<Self>(dy, dense, in_features)
    }

    fn q4_matmul_dq(
        x: CubeTensor,
        packed: CubeTensor,
        codes: CubeTensor,
        nested_absmax: CubeTensor,
        nested_code: CubeTensor,
        code: CubeTensor,
        offset: f32,
        out_features: usize,
        blocksize: usize,
    ) -> CubeTensor {
        let dims = x.meta.shape().to_vec();
        let num_blocks = (out_features * dims[dims.len() - 1]).div_ceil(blocksize);
        let absmax = Self::q4_decode_absmax(codes, nested_absmax, nested_code, offset, num_blocks);
        Self::q4_matmul(x, packed, absmax, code, out_features, blocksize)
    }
}
