//! Fused host kernels for the element-wise parts of a decoder layer on the Flex CPU backend.
//!
//! burn-flex runs each element-wise op on one thread and an autodiff graph stores each op's
//! inputs, so the attention softmax (scale, mask, max, exp, sum, divide) and the SwiGLU gate
//! (sigmoid, two products) cost many single-threaded passes forward and backward. Here each is
//! one multi-threaded, vectorized pass, with a hand-written backward that keeps only what it
//! needs (the probabilities; the gate and up activations). Other backends keep burn's ops.

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::{Device, Tensor};

/// The fused ops as a backend extension. Reach them through [`masked_softmax`] and [`swiglu`].
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedOps: Backend {
    /// `softmax(scores · scale + mask)` over the last dim; `scores [b, h, g, s, t]`, `mask
    /// [b, 1, 1, s, t]` (broadcast over `h` and `g`).
    fn masked_softmax(
        scores: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// The gradient in the scores from the probabilities `p` and their gradient:
    /// `scale · p · (g − Σ g·p)`.
    fn masked_softmax_backward(
        probs: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self>;

    /// `silu(gate) · up`, element-wise.
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradients in `gate` and `up` of [`FusedOps::swiglu`] given the output's gradient.
    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Which implementation a forward pass uses for the ops that have a fused kernel (the attention
/// softmax, SwiGLU, the language-model loss).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelPath {
    /// The fused kernels where the device has them (Flex), and the chunked loss on every device.
    #[default]
    Fast,
    /// burn's own ops on every device, with the full `[tokens, vocab]` logits: the reference the
    /// fast path is tested against.
    Reference,
}

impl KernelPath {
    /// Whether this path runs the fused kernels on `device`.
    pub fn fused_on(self, device: &Device) -> bool {
        self == KernelPath::Fast && supports_fused(device)
    }
}

/// Whether the fused kernels run on `device` (Flex, with or without autodiff).
pub fn supports_fused(device: &Device) -> bool {
    medify_quant::is_flex(device)
}

/// `softmax(scores · scale + mask, dim 4)`. Requires [`supports_fused`].
pub fn masked_softmax(scores: Tensor<5>, mask: Tensor<5>, scale: f32) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::masked_softmax(
        scores.into_dispatch(),
        mask.into_dispatch(),
        scale,
    ))
}

/// `silu(gate) · up`. Requires [`supports_fused`].
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as FusedOps>::swiglu(
        gate.into_dispatch(),
        up.into_dispatch(),
    ))
}

pub(crate) use host::{silu_times, softmax_scaled};

/// Host kernels over row-major slices (shared by the Flex impl, the host decoder and the tests).
mod host {
    use medify_quant::multiversion;
    use medify_quant::simd::{dot, exp_nonpositive, flush_subnormal, max_of, sum_of};
    use rayon::prelude::*;

    /// Rows per parallel task.
    const ROWS: usize = 16;
    /// Elements per parallel task of the element-wise kernels.
    const CHUNK: usize = 1 << 14;

    /// `out = softmax(scores · scale + mask)` per row of `t`; row `r` uses mask row
    /// `(r / (heads · s)) · s + r % s`, where `heads_x_s = h · g · s`.
    pub fn softmax(
        scores: &[f32],
        mask: &[f32],
        t: usize,
        s: usize,
        heads_x_s: usize,
        scale: f32,
    ) -> Vec<f32> {
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(ROWS * t)
            .enumerate()
            .for_each(|(task, rows)| {
                for (i, row) in rows.chunks_mut(t).enumerate() {
                    let r = task * ROWS + i;
                    let m = ((r / heads_x_s) * s + r % s) * t;
                    let (x, mk) = (&scores[r * t..(r + 1) * t], &mask[m..m + t]);
                    softmax_row(row, x, mk, scale);
                }
            });
        out
    }

    /// `scale · p · (g − Σ g·p)` per row of `t`.
    pub fn softmax_backward(p: &[f32], g: &[f32], t: usize, scale: f32) -> Vec<f32> {
        let mut out = vec![0f32; p.len()];
        out.par_chunks_mut(ROWS * t)
            .zip(p.par_chunks(ROWS * t).zip(g.par_chunks(ROWS * t)))
            .for_each(|(o, (p, g))| {
                for ((o, p), g) in o.chunks_mut(t).zip(p.chunks(t)).zip(g.chunks(t)) {
                    softmax_backward_row(o, p, g, scale);
                }
            });
        out
    }

    // Loop bodies are compiled for AVX-512 / AVX2 + FMA / baseline and picked at run time.

    multiversion! {
        fn softmax_row(row: &mut [f32], x: &[f32], mask: &[f32], scale: f32) {
            for ((o, &x), &mk) in row.iter_mut().zip(x).zip(mask) {
                *o = x * scale + mk;
            }
            normalize(row);
        }
    }

    multiversion! {
        /// `softmax(row · scale)` in place (unmasked: a decode step's scores).
        pub fn softmax_scaled(row: &mut [f32], scale: f32) {
            row.iter_mut().for_each(|o| *o *= scale);
            normalize(row);
        }
    }

    /// `exp(row − max) / Σ`, in place: the softmax of already scaled and masked scores.
    #[inline(always)]
    fn normalize(row: &mut [f32]) {
        let max = max_of(row);
        row.iter_mut().for_each(|o| *o = exp_nonpositive(*o - max));
        let inv = 1.0 / sum_of(row);
        row.iter_mut().for_each(|o| *o = flush_subnormal(*o * inv));
    }

    multiversion! {
        fn softmax_backward_row(out: &mut [f32], p: &[f32], g: &[f32], scale: f32) {
            let dot = dot(p, g);
            for ((o, &p), &g) in out.iter_mut().zip(p).zip(g) {
                *o = flush_subnormal(scale * p * (g - dot));
            }
        }
    }

    multiversion! {
        fn swiglu_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = silu_times(g, u);
            }
        }
    }

    multiversion! {
        fn swiglu_backward_chunk(dg: &mut [f32], du: &mut [f32], gate: &[f32], up: &[f32], d: &[f32]) {
            for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(gate).zip(up).zip(d)
            {
                let s = sigmoid(g);
                *dg = flush_subnormal(d * u * s * (1.0 + g * (1.0 - s)));
                *du = flush_subnormal(d * g * s);
            }
        }
    }

    /// `silu(g) · u` for one element.
    #[inline(always)]
    pub fn silu_times(g: f32, u: f32) -> f32 {
        flush_subnormal(g * sigmoid(g) * u)
    }

    #[inline(always)]
    fn sigmoid(x: f32) -> f32 {
        let e = exp_nonpositive(-x.abs());
        let s = 1.0 / (1.0 + e);
        if x >= 0.0 { s } else { e * s }
    }

    /// `silu(gate) · up`.
    pub fn swiglu(gate: &[f32], up: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; gate.len()];
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| swiglu_chunk(o, g, u));
        out
    }

    /// `(d·u·σ(g)(1 + g(1 − σ(g))), d·g·σ(g))`.
    pub fn swiglu_backward(gate: &[f32], up: &[f32], d: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut dg = vec![0f32; gate.len()];
        let mut du = vec![0f32; gate.len()];
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .zip(
                gate.par_chunks(CHUNK)
                    .zip(up.par_chunks(CHUNK))
                    .zip(d.par_chunks(CHUNK)),
            )
            .for_each(|((dg, du), ((g, u), d))| swiglu_backward_chunk(dg, du, g, u, d));
        (dg, du)
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn_flex::{Flex, FlexTensor};
    use medify_quant::host_tensor::{f32s, from_f32};

    use super::{FusedOps, host};

    fn like(values: Vec<f32>, t: &FlexTensor) -> FlexTensor {
        from_f32(values, t.layout().shape().to_vec(), t.dtype())
    }

    impl FusedOps for Flex {
        fn masked_softmax(scores: FlexTensor, mask: FlexTensor, scale: f32) -> FlexTensor {
            let dims = scores.layout().shape().to_vec();
            let (s, t) = (dims[3], dims[4]);
            let heads_x_s = dims[1] * dims[2] * s;
            let out = host::softmax(&f32s(&scores), &f32s(&mask), t, s, heads_x_s, scale);
            like(out, &scores)
        }

        fn masked_softmax_backward(probs: FlexTensor, grad: FlexTensor, scale: f32) -> FlexTensor {
            let t = *probs.layout().shape().to_vec().last().expect("rank 5");
            let out = host::softmax_backward(&f32s(&probs), &f32s(&grad), t, scale);
            like(out, &probs)
        }

        fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
            let out = host::swiglu(&f32s(&gate), &f32s(&up));
            like(out, &gate)
        }

        fn swiglu_backward(
            gate: FlexTensor,
            up: FlexTensor,
            grad: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            let (dg, du) = host::swiglu_backward(&f32s(&gate), &f32s(&up), &f32s(&grad));
            (like(dg, &gate), like(du, &up))
        }
    }
}

mod autodiff {
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;
    use burn::backend::{AutodiffBackend, Backend};

    use super::FusedOps;

    #[derive(Debug)]
    struct SoftmaxBackward;

    impl<B: Backend + FusedOps> Backward<B, 1> for SoftmaxBackward {
        /// The probabilities and the scale.
        type State = (FloatTensor<B>, f32);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let Some(node) = node else { return };
            let (probs, scale) = ops.state;
            grads.register::<B>(node.id, B::masked_softmax_backward(probs, grad, scale));
        }
    }

    #[derive(Debug)]
    struct SwigluBackward;

    impl<B: Backend + FusedOps> Backward<B, 2> for SwigluBackward {
        /// The gate and up activations.
        type State = (FloatTensor<B>, FloatTensor<B>);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_gate, node_up] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (gate, up) = ops.state;
            let (dg, du) = B::swiglu_backward(gate, up, grad);
            if let Some(node) = node_gate {
                grads.register::<B>(node.id, dg);
            }
            if let Some(node) = node_up {
                grads.register::<B>(node.id, du);
            }
        }
    }

    impl<B: Backend + FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
        fn masked_softmax(
            scores: FloatTensor<Self>,
            mask: FloatTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            let mask = mask.into_primitive();
            match SoftmaxBackward
                .prepare::<C>([scores.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let probs = B::masked_softmax(scores.into_primitive(), mask, scale);
                    prep.finish((probs.clone(), scale), probs)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::masked_softmax(scores.into_primitive(), mask, scale))
                }
            }
        }

        fn masked_softmax_backward(
            probs: FloatTensor<Self>,
            grad: FloatTensor<Self>,
            scale: f32,
        ) -> FloatTensor<Self> {
            <Self as AutodiffBackend>::from_inner(B::masked_softmax_backward(
                probs.into_primitive(),
                grad.into_primitive(),
                scale,
            ))
        }

        fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
            match SwigluBackward
                .prepare::<C>([gate.node(), up.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (g, u) = (gate.into_primitive(), up.into_primitive());
                    let out = B::swiglu(g.clone(), u.clone());
                    prep.finish((g, u), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::swiglu(gate.into_primitive(), up.into_primitive()))
                }
            }
        }

        fn swiglu_backward(
            gate: FloatTensor<Self>,
            up: FloatTensor<Self>,
            grad: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (dg, du) = B::swiglu_backward(
                gate.into_primitive(),
                up.into_primitive(),
                grad.into_primitive(),
            );
            (
                <Self as AutodiffBackend>::from_inner(dg),
                <Self as AutodiffBackend>::from_inner(du),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::host;

    #[test]
    fn softmax_kernels_match_a_direct_computation() {
        let (b, h, s, t) = (2, 3, 4, 4);
        let scores: Vec<f32> = (0..b * h * s * t)
            .map(|i| ((i * 29 % 17) as f32 - 8.0) / 3.0)
            .collect();
        // Causal mask per batch row; batch 1's first query sees nothing (left padding).
        let mut mask = vec![0f32; b * s * t];
        for bi in 0..b {
            for i in 0..s {
                for j in 0..t {
                    if j > i || (bi == 1 && i == 0) {
                        mask[(bi * s + i) * t + j] = -1.0e30;
                    }
                }
            }
        }
        let p = host::softmax(&scores, &mask, t, s, h * s, 0.5);
        for r in 0..b * h * s {
            let m = ((r / (h * s)) * s + r % s) * t;
            let x: Vec<f64> = (0..t)
                .map(|j| scores[r * t + j] as f64 * 0.5 + mask[m + j] as f64)
                .collect();
            let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = x.iter().map(|v| (v - max).exp()).sum();
            for j in 0..t {
                let want = (x[j] - max).exp() / sum;
                assert!(
                    (p[r * t + j] as f64 - want).abs() < 1e-6,
                    "row {r}: {} vs {want}",
                    p[r * t + j]
                );
            }
        }
        let g: Vec<f32> = (0..p.len())
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0)
            .collect();
        let ds = host::softmax_backward(&p, &g, t, 0.5);
        for r in 0..b * h * s {
            let dot: f64 = (0..t)
                .map(|j| p[r * t + j] as f64 * g[r * t + j] as f64)
                .sum();
            for j in 0..t {
                let want = 0.5 * p[r * t + j] as f64 * (g[r * t + j] as f64 - dot);
                assert!((ds[r * t + j] as f64 - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn swiglu_kernels_match_a_direct_computation() {
        let gate: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) / 40.0).collect();
        let up: Vec<f32> = (0..1000)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
            .collect();
        let d: Vec<f32> = (0..1000)
            .map(|i| ((i * 3 % 5) as f32 - 2.0) / 2.0)
            .collect();
        let out = host::swiglu(&gate, &up);
        let (dg, du) = host::swiglu_backward(&gate, &up, &d);
        for i in 0..1000 {
            let (g, u) = (gate[i] as f64, up[i] as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            assert!((out[i] as f64 - g * s * u).abs() < 1e-5 * (1.0 + (g * s * u).abs()));
            let want_dg = d[i] as f64 * u * s * (1.0 + g * (1.0 - s));
            assert!((dg[i] as f64 - want_dg).abs() < 1e-5 * (1.0 + want_dg.abs()));
            assert!((du[i] as f64 - d[i] as f64 * g * s).abs() < 1e-5 * (1.0 + (g * s).abs()));
        }
    }
}
