//! `Int8Ops` under autodiff: the int8 weight is frozen, so only `x` gets a gradient. Backward
//! decodes the weight again (`dx = dy @ W`) instead of keeping a dense copy from forward, as
//! bitsandbytes' `MatMul8bitFp` does.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata};

use super::ops::Int8Ops;

/// What backward needs: the codes, the row scales and the weight's shape.
#[derive(Debug, Clone)]
struct Int8State<B: Backend> {
    codes: IntTensor<B>,
    scales: FloatTensor<B>,
    out_features: usize,
    in_features: usize,
}

#[derive(Debug)]
struct I8MatmulBackward;

impl<B: Backend + Int8Ops> Backward<B, 1> for I8MatmulBackward {
    type State = Int8State<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let Some(node) = node_x else { return };
        let s = ops.state;
        let dense = B::i8_dequantize(s.codes, s.scales, s.out_features, s.in_features);
        grads.register::<B>(
            node.id,
            crate::device::autodiff::input_gradient::<B>(grad, dense, s.in_features),
        );
    }
}

impl<B: Backend + Int8Ops, C: CheckpointStrategy> Int8Ops for Autodiff<B, C> {
    fn i8_dequantize(
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        rows: usize,
        cols: usize,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::i8_dequantize(
            codes,
            scales.into_primitive(),
            rows,
            cols,
        ))
    }

    fn i8_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        out_features: usize,
    ) -> FloatTensor<Self> {
        let scales = scales.into_primitive();
        match I8MatmulBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let in_features = *x.primitive().shape().to_vec().last().expect("feature dim");
                let out = B::i8_matmul(
                    x.primitive().clone(),
                    codes.clone(),
                    scales.clone(),
                    out_features,
                );
                let state = Int8State {
                    codes,
                    scales,
                    out_features,
                    in_features,
                };
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::i8_matmul(
                x.into_primitive(),
                codes,
                scales,
                out_features,
            )),
        }
    }
}
