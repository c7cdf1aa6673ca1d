//! `Quant4Ops` under autodiff: the 4-bit weight is frozen, so only `x` gets a gradient.
//!
//! The backward of `y = x @ W^T` is `dx = dy @ W`. The saved state is the packed weight and its
//! scales, never a dense copy: backward dequantizes again and drops the dense weight when done,
//! which is what bitsandbytes' `MatMul4Bit` does.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata};

use super::ops::Quant4Ops;

/// Scales as saved for backward: still compressed when they were double-quantized.
#[derive(Debug, Clone)]
enum SavedScales<B: Backend> {
    Plain(FloatTensor<B>),
    Nested {
        codes: IntTensor<B>,
        nested_absmax: FloatTensor<B>,
        nested_code: FloatTensor<B>,
        offset: f32,
    },
}

/// What backward needs: packed codes, scales, code table and the weight's shape.
#[derive(Debug, Clone)]
struct PackedState<B: Backend> {
    packed: IntTensor<B>,
    scales: SavedScales<B>,
    code: FloatTensor<B>,
    out_features: usize,
    in_features: usize,
    blocksize: usize,
}

#[derive(Debug)]
struct Q4MatmulBackward;

impl<B: Backend + Quant4Ops> Backward<B, 1> for Q4MatmulBackward {
    type State = PackedState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = node_x else { return };
        let s = ops.state;
        let absmax = match s.scales {
            SavedScales::Plain(a) => a,
            SavedScales::Nested {
                codes,
                nested_absmax,
                nested_code,
                offset,
            } => {
                let blocks = (s.out_features * s.in_features).div_ceil(s.blocksize);
                B::q4_decode_absmax(codes, nested_absmax, nested_code, offset, blocks)
            }
        };
        let dx = B::q4_input_gradient(grad, s.packed, absmax, s.code, s.in_features, s.blocksize);
        grads.register::<B>(node.id, dx);
    }
}

/// `dy @ W` for a frozen weight `W [out, in]` decoded for backward, over the last dim of `dy`
/// (`[.., out]` → `[.., in]`), in `dy`'s dtype: the input gradient of every frozen quantized
/// matmul (4-bit and int8).
pub(crate) fn input_gradient<B: Backend>(
    grad: FloatTensor<B>,
    dense: FloatTensor<B>,
    in_features: usize,
) -> FloatTensor<B> {
    let dense = B::float_cast(dense, grad.dtype().into());
    let out_features = dense.shape().to_vec()[0];
    let dims = grad.shape().to_vec();
    let rank = dims.len();
    let m: usize = dims[..rank - 1].iter().product();
    let grad2 = B::float_reshape(grad, [m, out_features].into());
    let dx = B::float_matmul(grad2, dense);
    let mut out_dims = dims;
    out_dims[rank - 1] = in_features;
    B::float_reshape(dx, out_dims.into())
}

impl<B: Backend + Quant4Ops, C: CheckpointStrategy> Quant4Ops for Autodiff<B, C> {
    fn q4_decode_absmax(
        codes: IntTensor<Self>,
        nested_absmax: FloatTensor<Self>,
        nested_code: FloatTensor<Self>,
        offset: f32,
        num_blocks: usize,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q4_decode_absmax(
            codes,
            nested_absmax.into_primitive(),
            nested_code.into_primitive(),
            offset,
            num_blocks,
        ))
    }

    fn q4_dequantize(
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        rows: usize,
        cols: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q4_dequantize(
            packed,
            absmax.into_primitive(),
            code.into_primitive(),
            rows,
            cols,
            blocksize,
        ))
    }

    fn q4_input_gradient(
        dy: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        // Used by backward passes, on the inner backend; not itself differentiated.
        <Self as AutodiffBackend>::from_inner(B::q4_input_gradient(
            dy.into_primitive(),
            packed,
            absmax.into_primitive(),
            code.into_primitive(),
            in_features,
            blocksize,
        ))
    }

    fn q4_matmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax: FloatTensor<Self>,
        code: FloatTensor<Self>,
        out_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let absmax = absmax.into_primitive();
        let code = code.into_primitive();
        tracked_matmul::<B, C>(
            x,
            |x| {
                B::q4_matmul(
                    x,
                    packed.clone(),
                    absmax.clone(),
                    code.clone(),
                    out_features,
                    blocksize,
                )
            },
            |in_features| PackedState {
                packed: packed.clone(),
                scales: SavedScales::Plain(absmax.clone()),
                code: code.clone(),
                out_features,
                in_features,
                blocksize,
            },
        )
    }

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
    ) -> FloatTensor<Self> {
        let nested_absmax = nested_absmax.into_primitive();
        let nested_code = nested_code.into_primitive();
        let code = code.into_primitive();
        tracked_matmul::<B, C>(
            x,
            |x| {
                B::q4_matmul_dq(
                    x,
                    packed.clone(),
                    codes.clone(),
                    nested_absmax.clone(),
                    nested_code.clone(),
                    code.clone(),
                    offset,
                    out_features,
                    blocksize,
                )
            },
            |in_features| PackedState {
                packed: packed.clone(),
                scales: SavedScales::Nested {
                    codes: codes.clone(),
                    nested_absmax: nested_absmax.clone(),
                    nested_code: nested_code.clone(),
                    offset,
                },
                code: code.clone(),
                out_features,
                in_features,
                blocksize,
            },
        )
    }
}

/// Runs a 4-bit matmul forward and, when `x` is tracked, registers the backward with the
/// packed state `saved` builds (given `in_features`).
fn tracked_matmul<B: Backend + Quant4Ops, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    forward: impl Fn(FloatTensor<B>) -> FloatTensor<B>,
    saved: impl FnOnce(usize) -> PackedState<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match Q4MatmulBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let in_features = *x.primitive().shape().to_vec().last().expect("feature dim");
            let out = forward(x.primitive().clone());
            prep.finish(saved(in_features), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.into_primitive())),
    }
}
