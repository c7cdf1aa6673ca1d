//! `Int8Ops` for the Flex CPU backend: decode on all cores, then gemm.

use burn::tensor::TensorData;
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::ops::Int8Ops;
use crate::host_kernels::{Rhs, gemm_f32};
use crate::host_tensor::{f32s, values};

/// Decodes row-major int8 codes (packed in `u32` words) into `out` with one scale per row.
pub(crate) fn decode_rows(words: &[u32], scales: &[f32], cols: usize, out: &mut [f32]) {
    let bytes: &[u8] = bytemuck::cast_slice(words);
    assert!(
        bytes.len() >= out.len() && scales.len() * cols >= out.len(),
        "int8 kernel given {} codes and {} scales for {} values",
        bytes.len(),
        scales.len(),
        out.len()
    );
    out.par_chunks_mut(cols.max(1))
        .zip(bytes.par_chunks(cols.max(1)))
        .zip(scales.par_iter())
        .for_each(|((row, codes), &s)| {
            for (o, &c) in row.iter_mut().zip(codes) {
                *o = c as i8 as f32 * s;
            }
        });
}

impl Int8Ops for Flex {
    fn i8_dequantize(
        codes: FlexTensor,
        scales: FlexTensor,
        rows: usize,
        cols: usize,
    ) -> FlexTensor {
        let mut out = vec![0f32; rows * cols];
        decode_rows(&values::<u32>(&codes), &f32s(&scales), cols, &mut out);
        FlexTensor::from_data(TensorData::new(out, [rows, cols]))
    }

    fn i8_matmul(
        x: FlexTensor,
        codes: FlexTensor,
        scales: FlexTensor,
        out_features: usize,
    ) -> FlexTensor {
        crate::device::flex::frozen_rows_matmul(x, out_features, |xs, m, k, out| {
            let mut w = vec![0f32; out_features * k];
            decode_rows(&values::<u32>(&codes), &f32s(&scales), k, &mut w);
            gemm_f32(out, xs, &w, m, out_features, k, Rhs::Transposed);
        })
    }
}
