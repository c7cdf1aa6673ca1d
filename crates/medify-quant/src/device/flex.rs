//! `Quant4Ops` for the Flex CPU backend: the host kernels, over Flex's own buffers.

use std::borrow::Cow;

use burn::tensor::TensorData;
use burn_flex::{Flex, FlexTensor};

use super::ops::Quant4Ops;
use crate::host_kernels::{PackedView, Scales, matmul_4bit, matmul_4bit_input_grad};
use crate::host_tensor::{f32s, from_f32, values};
use crate::quant_state::decode_nested;

fn u32s(t: &FlexTensor) -> Cow<'_, [u32]> {
    values::<u32>(t)
}

fn code16(t: &FlexTensor) -> [f32; 16] {
    let v = f32s(t);
    std::array::from_fn(|i| v[i])
}

/// Backend ops return tensors, not results, as burn's own do: buffers that do not fit the
/// shape they are given stop here with the reason, before any kernel reads them.
fn checked<T>(view: Result<T, crate::QuantError>) -> T {
    view.unwrap_or_else(|e| panic!("4-bit kernel given inconsistent buffers: {e}"))
}

impl Quant4Ops for Flex {
    fn q4_decode_absmax(
        codes: FlexTensor,
        nested_absmax: FlexTensor,
        nested_code: FlexTensor,
        offset: f32,
        num_blocks: usize,
    ) -> FlexTensor {
        let words = u32s(&codes);
        let bytes: &[u8] = bytemuck::cast_slice(&words);
        let mut out = vec![0f32; num_blocks];
        decode_nested(
            &bytes[..num_blocks],
            &f32s(&nested_absmax),
            &f32s(&nested_code),
            offset,
            &mut out,
        );
        FlexTensor::from_data(TensorData::new(out, [num_blocks]))
    }

    fn q4_dequantize(
        packed: FlexTensor,
        absmax: FlexTensor,
        code: FlexTensor,
        rows: usize,
        cols: usize,
        blocksize: usize,
    ) -> FlexTensor {
        let words = u32s(&packed);
        let absmax = f32s(&absmax);
        let code = code16(&code);
        let view = checked(PackedView::new(
            &words,
            Scales::F32(&absmax),
            &code,
            rows,
            cols,
            blocksize,
        ));
        let mut out = vec![0f32; rows * cols];
        view.decode_all(&mut out);
        FlexTensor::from_data(TensorData::new(out, [rows, cols]))
    }

    fn q4_matmul(
        x: FlexTensor,
        packed: FlexTensor,
        absmax: FlexTensor,
        code: FlexTensor,
        out_features: usize,
        blocksize: usize,
    ) -> FlexTensor {
        let absmax = f32s(&absmax);
        matmul(
            x,
            &packed,
            Scales::F32(&absmax),
            &code,
            out_features,
            blocksize,
        )
    }

    fn q4_input_gradient(
        dy: FlexTensor,
        packed: FlexTensor,
        absmax: FlexTensor,
        code: FlexTensor,
        in_features: usize,
        blocksize: usize,
    ) -> FlexTensor {
        let words = u32s(&packed);
        let absmax = f32s(&absmax);
        let code = code16(&code);
        frozen_rows_matmul(dy, in_features, |dys, m, out_features, dx| {
            let view = checked(PackedView::new(
                &words,
                Scales::F32(&absmax),
                &code,
                out_features,
                in_features,
                blocksize,
            ));
            matmul_4bit_input_grad(dys, m, &view, dx);
        })
    }

    fn q4_matmul_dq(
        x: FlexTensor,
        packed: FlexTensor,
        codes: FlexTensor,
        nested_absmax: FlexTensor,
        nested_code: FlexTensor,
        code: FlexTensor,
        offset: f32,
        out_features: usize,
        blocksize: usize,
    ) -> FlexTensor {
        let words = u32s(&codes);
        let nabs = f32s(&nested_absmax);
        let ncode = f32s(&nested_code);
        let table: [f32; 256] = std::array::from_fn(|i| ncode[i]);
        let scales = Scales::Nested {
            codes: bytemuck::cast_slice(&words),
            nested_absmax: &nabs,
            code: &table,
            offset,
        };
        matmul(x, &packed, scales, &code, out_features, blocksize)
    }
}

fn matmul(
    x: FlexTensor,
    packed: &FlexTensor,
    absmax: Scales<'_>,
    code: &FlexTensor,
    out_features: usize,
    blocksize: usize,
) -> FlexTensor {
    let words = u32s(packed);
    let code = code16(code);
    frozen_rows_matmul(x, out_features, |xs, m, k, out| {
        let view = checked(PackedView::new(
            &words,
            absmax,
            &code,
            out_features,
            k,
            blocksize,
        ));
        matmul_4bit(xs, m, &view, out);
    })
}

/// A frozen weight's matmul on Flex: `x [.., k]` read as f32 rows, `kernel(x, m, k, out)`
/// filling `out [m, out_features]`, and the result in `x`'s shape (last dim `out_features`)
/// and dtype.
pub(crate) fn frozen_rows_matmul(
    x: FlexTensor,
    out_features: usize,
    kernel: impl FnOnce(&[f32], usize, usize, &mut [f32]),
) -> FlexTensor {
    let dims = x.layout().shape().to_vec();
    let k = *dims.last().expect("x has a feature dim");
    let m = dims.iter().product::<usize>() / k.max(1);
    let dtype = x.dtype();
    let xs = f32s(&x);
    let mut out = vec![0f32; m * out_features];
    kernel(&xs, m, k, &mut out);
    let mut shape = dims;
    *shape.last_mut().expect("non-empty") = out_features;
    from_f32(out, shape, dtype)
}
