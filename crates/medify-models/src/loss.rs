//! The language-model loss without the `[tokens, vocab]` logits: lm_head matmul, log-softmax,
//! cross-entropy and its gradient computed in row chunks, in one pass.
//!
//! With a 49k–128k vocabulary the logits and their log-softmax are the largest tensors of a
//! training step (200 MB each at 1,024 tokens of SmolLM2), and an autodiff graph keeps several.
//! Here the forward pass computes each chunk's logits into a scratch buffer, turns them into the
//! loss and, when training, straight into the gradient `w·(softmax − onehot) · W` of the hidden
//! states; only that `[tokens, hidden]` gradient is kept for backward, which scales it by the
//! incoming gradient. Rows with weight 0 (prompt and padding tokens) are skipped entirely.
//!
//! On the Flex CPU backend this is one host kernel over `medify_quant::gemm_f32`. On every other
//! backend (CUDA, wgpu, the CubeCL CPU runtime) the same chunking runs as ordinary tensor ops
//! outside the autodiff graph, and the precomputed gradient enters the graph through a linear
//! surrogate (`loss + Σ h·G − stop_grad(Σ h·G)`), so backward also sees only `[tokens, hidden]`.

use burn::backend::Dispatch;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::activation::log_softmax;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};
use medify_quant::dtype::{cast_to, to_f32};

/// Bytes of logits one chunk may hold (the scratch buffer's size).
pub const CHUNK_BYTES: usize = 64 << 20;

/// The fused loss as a backend extension. Reach it through [`chunked_lm_loss`].
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait LmLossOps: Backend {
    /// `Σᵢ wᵢ · (logsumexp(hᵢ Wᵀ) − (hᵢ Wᵀ)[tᵢ])` as a `[1]` tensor, for `hidden [n, d]`,
    /// `weight [vocab, d]`, `targets [n]` and `weights [n]`.
    fn lm_loss(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`LmLossOps::lm_loss`] and its gradient in `hidden` (`[n, d]`).
    fn lm_loss_with_grad(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
        weights: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The weighted cross-entropy sum of next-token predictions from final hidden states, never
/// forming the logits. `weight` is the (frozen) output embedding `[vocab, d]`; the result is
/// differentiable in `hidden` only. Runs on every device: a fused host kernel on Flex in f32,
/// chunked tensor ops otherwise; at most [`CHUNK_BYTES`] of logits exist at once either way.
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData, activation::log_softmax};
/// use medify_models::chunked_lm_loss;
/// let device = Device::flex();
/// let h = Tensor::<2>::from_data(TensorData::new(vec![0.1f32, -0.2, 0.3, 0.5, 0.0, -0.4], [2, 3]), &device);
/// let w = Tensor::<2>::from_data(TensorData::new((0..15).map(|i| i as f32 / 10.0 - 0.7).collect::<Vec<_>>(), [5, 3]), &device);
/// let loss = chunked_lm_loss(h.clone(), w.clone(), &[4, 1], &[1.0, 0.5]).into_scalar::<f32>();
/// let logp: Vec<f32> = log_softmax(h.matmul(w.transpose()), 1).into_data().try_into_vec().unwrap();
/// let want = -(logp[4] + 0.5 * logp[5 + 1]);
/// assert!((loss - want).abs() < 1e-6);
/// ```
pub fn chunked_lm_loss(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: &[i64],
    weights: &[f32],
) -> Tensor<1> {
    let device = hidden.device();
    // The host kernel reads f32: a 16-bit head would be copied to f32 whole (2 GB for Llama 3's),
    // so 16-bit compute takes the tensor path, which upcasts one logits chunk at a time.
    if !medify_quant::is_flex(&device) || weight.dtype() != burn::tensor::DType::F32 {
        return tensor_lm_loss(hidden, weight, targets, weights);
    }
    let n = targets.len();
    let t = Tensor::<1, Int>::from_data(TensorData::new(targets.to_vec(), [n]), &device);
    let w = Tensor::<1>::from_data(TensorData::new(weights.to_vec(), [n]), &device);
    Tensor::from_dispatch(<Dispatch as LmLossOps>::lm_loss(
        hidden.into_dispatch(),
        weight.into_dispatch(),
        t.into_dispatch(),
        w.into_dispatch(),
    ))
}

/// Rows per chunk: as many as fit [`CHUNK_BYTES`] of f32 logits, between 8 and 1024.
fn chunk_rows(vocab: usize) -> usize {
    (CHUNK_BYTES / (4 * vocab.max(1))).clamp(8, 1024)
}

/// The output embedding's two products with a chunk of rows. Flex multiplies 16-bit matrices by
/// converting both to f32 first, which for a whole head is a transient copy of 2 GB (Llama 3's
/// 128k × 4096) per chunk; there the products run over vocabulary slices of [`CHUNK_BYTES`] of
/// f32 weight each, so only one slice is converted at a time. Devices with native 16-bit
/// matmuls use the whole head.
struct Head {
    w: Tensor<2>,
    /// Vocabulary rows per slice; the whole vocabulary where no conversion happens.
    slice: usize,
}

impl Head {
    fn new(w: Tensor<2>) -> Head {
        let [vocab, d] = w.dims();
        let converts = medify_quant::is_flex(&w.device()) && w.dtype() != burn::tensor::DType::F32;
        let slice = if converts {
            (CHUNK_BYTES / (4 * d.max(1))).clamp(1, vocab.max(1))
        } else {
            vocab.max(1)
        };
        Head { w, slice }
    }

    fn slices(&self) -> impl Iterator<Item = (usize, usize)> {
        crate::tiled::tiles(self.w.dims()[0], self.slice)
    }

    /// `h Wᵀ` `[m, vocab]`, in f32 when sliced (the dtype flex would compute in anyway).
    fn logits(&self, h: Tensor<2>) -> Tensor<2> {
        if self.slice >= self.w.dims()[0] {
            return h.matmul(self.w.clone().transpose());
        }
        let h = to_f32(h);
        let parts = self
            .slices()
            .map(|(start, len)| {
                h.clone()
                    .matmul(to_f32(self.w.clone().narrow(0, start, len)).transpose())
            })
            .collect();
        Tensor::cat(parts, 1)
    }

    /// `dz W` `[m, d]` in f32.
    fn input_gradient(&self, dz: Tensor<2>) -> Tensor<2> {
        if self.slice >= self.w.dims()[0] {
            return to_f32(dz.matmul(self.w.clone()));
        }
        let (m, d) = (dz.dims()[0], self.w.dims()[1]);
        let dz = to_f32(dz);
        self.slices()
            .map(|(start, len)| {
                dz.clone()
                    .narrow(1, start, len)
                    .matmul(to_f32(self.w.clone().narrow(0, start, len)))
            })
            .reduce(|a, b| a + b)
            .unwrap_or_else(|| Tensor::zeros([m, d], &self.w.device()))
    }
}

/// [`chunked_lm_loss`] from burn's tensor ops, for backends without the host kernel: each chunk's
/// logits, log-softmax and gradient `w·(softmax − onehot)·W` are computed off the autodiff graph
/// and dropped before the next chunk; only the `[n, d]` gradient is kept.
fn tensor_lm_loss(
    hidden: Tensor<2>,
    weight: Tensor<2>,
    targets: &[i64],
    weights: &[f32],
) -> Tensor<1> {
    let [n, d] = hidden.dims();
    let vocab = weight.dims()[0];
    let tracked = hidden.is_tracked();
    let autodiff = hidden.is_autodiff();
    let dtype = hidden.dtype();
    let h = hidden.clone().inner();
    let head = Head::new(weight.inner());
    let active: Vec<usize> = (0..n).filter(|&i| weights[i] != 0.0).collect();
    let mut sum = Tensor::<1>::zeros([1], &h.device());
    let mut grad = tracked.then(|| Tensor::<2>::zeros([n, d], &h.device()));
    for ids in active.chunks(chunk_rows(vocab)) {
        let m = ids.len();
        let rows: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let picked: Vec<i64> = ids.iter().map(|&i| targets[i]).collect();
        let scale: Vec<f32> = ids.iter().map(|&i| weights[i]).collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [m]), &h.device());
        let t = Tensor::<2, Int>::from_data(TensorData::new(picked, [m, 1]), &h.device());
        let s = Tensor::<2>::from_data(TensorData::new(scale, [m, 1]), &h.device());
        // Logits in the compute dtype, their log-softmax and gradient in f32.
        let z = head.logits(h.clone().select(0, rows.clone()));
        let logp = log_softmax(to_f32(z), 1);
        sum = sum + (logp.clone().gather(1, t.clone()) * s.clone()).sum().neg();
        if let Some(g) = grad.take() {
            let dz = (logp.exp() * s.clone()).scatter(1, t, s.neg(), IndexingUpdateOp::Add);
            let dh = head.input_gradient(cast_to(dz, dtype));
            grad = Some(g.select_assign(0, rows, dh, IndexingUpdateOp::Add));
        }
    }
    let sum = if autodiff { sum.autodiff() } else { sum };
    match grad {
        Some(g) => {
            let surrogate = (hidden * cast_to(g, dtype)).sum();
            // Exactly zero, with the gradient G in `hidden`.
            sum + to_f32(surrogate.clone() - surrogate.detach())
        }
        None => sum,
    }
}

medify_quant::multiversion! {
    /// `row = exp(row - max(row))`; returns the max and the sum (partial sums per 1024, in f64).
    fn exp_shifted(row: &mut [f32]) -> (f32, f64) {
        use medify_quant::simd::{exp_nonpositive, max_of, sum_of};
        let max = max_of(row);
        let mut sum = 0f64;
        for chunk in row.chunks_mut(1024) {
            chunk.iter_mut().for_each(|v| *v = exp_nonpositive(*v - max));
            sum += sum_of(chunk) as f64;
        }
        (max, sum)
    }
}

medify_quant::multiversion! {
    /// `row *= scale`, subnormal products flushed: the row is the next matmul's operand.
    fn scale_all(row: &mut [f32], scale: f32) {
        use medify_quant::simd::flush_subnormal;
        row.iter_mut().for_each(|v| *v = flush_subnormal(*v * scale));
    }
}

/// The host kernel: returns the loss sum and fills `grad` (`[n, d]`, zeroed by the caller).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
fn host_loss(
    hidden: &[f32],
    weight: &[f32],
    d: usize,
    targets: &[i64],
    weights: &[f32],
    mut grad: Option<&mut [f32]>,
) -> f64 {
    use medify_quant::{Rhs, gemm_f32};
    use rayon::prelude::*;

    let vocab = weight.len() / d.max(1);
    let active: Vec<usize> = (0..targets.len()).filter(|&i| weights[i] != 0.0).collect();
    let chunk = chunk_rows(vocab);
    let mut logits = vec![0f32; chunk.min(active.len()) * vocab];
    let mut rows_h = vec![0f32; chunk.min(active.len()) * d];
    let mut rows_g = vec![0f32; chunk.min(active.len()) * d];
    let mut total = 0f64;
    for ids in active.chunks(chunk) {
        let m = ids.len();
        for (r, &i) in ids.iter().enumerate() {
            rows_h[r * d..(r + 1) * d].copy_from_slice(&hidden[i * d..(i + 1) * d]);
        }
        let z = &mut logits[..m * vocab];
        gemm_f32(z, &rows_h, weight, m, vocab, d, Rhs::Transposed);
        let want_grad = grad.is_some();
        let losses: Vec<f64> = z
            .par_chunks_mut(vocab)
            .zip(ids.par_iter())
            .map(|(row, &i)| {
                let w = weights[i];
                let t = targets[i] as usize;
                let target_logit = row[t];
                let (max, sum) = exp_shifted(row);
                let lse = sum.ln() + max as f64;
                if want_grad {
                    let scale = (w as f64 / sum) as f32;
                    scale_all(row, scale);
                    row[t] -= w;
                }
                w as f64 * (lse - target_logit as f64)
            })
            .collect();
        total += losses.iter().sum::<f64>();
        if let Some(grad) = grad.as_deref_mut() {
            let g = &mut rows_g[..m * d];
            gemm_f32(g, z, weight, m, d, vocab, Rhs::Plain);
            for (r, &i) in ids.iter().enumerate() {
                grad[i * d..(i + 1) * d].copy_from_slice(&g[r * d..(r + 1) * d]);
            }
        }
    }
    total
}

#[cfg(feature = "flex")]
mod flex {
    use burn_flex::{Flex, FlexTensor};
    use medify_quant::host_tensor::{f32s, from_f32};

    use super::{LmLossOps, host_loss};

    fn run(
        hidden: FlexTensor,
        weight: FlexTensor,
        targets: FlexTensor,
        weights: FlexTensor,
        with_grad: bool,
    ) -> (FlexTensor, Option<FlexTensor>) {
        let dims = hidden.layout().shape().to_vec();
        let (n, d) = (dims[0], dims[1]);
        let dtype = hidden.dtype();
        let targets = targets
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .expect("converted to i64");
        let (h, w, wt) = (f32s(&hidden), f32s(&weight), f32s(&weights));
        let mut grad = with_grad.then(|| vec![0f32; n * d]);
        let loss = host_loss(&h, &w, d, &targets, &wt, grad.as_deref_mut());
        // The sum stays f32 whatever the compute dtype (a 16-bit sum would lose whole units).
        let loss = from_f32(vec![loss as f32], vec![1], burn::tensor::DType::F32);
        (loss, grad.map(|g| from_f32(g, vec![n, d], dtype)))
    }

    impl LmLossOps for Flex {
        fn lm_loss(
            hidden: FlexTensor,
            weight: FlexTensor,
            targets: FlexTensor,
            weights: FlexTensor,
        ) -> FlexTensor {
            run(hidden, weight, targets, weights, false).0
        }

        fn lm_loss_with_grad(
            hidden: FlexTensor,
            weight: FlexTensor,
            targets: FlexTensor,
            weights: FlexTensor,
        ) -> (FlexTensor, FlexTensor) {
            let (loss, grad) = run(hidden, weight, targets, weights, true);
            (loss, grad.expect("gradient requested"))
        }
    }
}

mod autodiff {
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::{FloatTensor, IntTensor};
    use burn::backend::{Backend, TensorMetadata};

    use super::LmLossOps;

    #[derive(Debug)]
    struct LossBackward;

    impl<B: Backend + LmLossOps> Backward<B, 1> for LossBackward {
        /// The gradient of the loss sum in the hidden states, computed in forward.
        type State = FloatTensor<B>;

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let upstream = grads.consume::<B>(&ops.node);
            let Some(node) = node else { return };
            let grad = ops.state;
            let shape = grad.shape();
            let upstream = B::float_cast(upstream, grad.dtype().into());
            let upstream = B::float_expand(B::float_reshape(upstream, [1, 1].into()), shape);
            grads.register::<B>(node.id, B::float_mul(grad, upstream));
        }
    }

    impl<B: Backend + LmLossOps, C: CheckpointStrategy> LmLossOps for Autodiff<B, C> {
        fn lm_loss(
            hidden: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            targets: IntTensor<Self>,
            weights: FloatTensor<Self>,
        ) -> FloatTensor<Self> {
            // The output embedding is frozen: it takes no gradient here.
            let weight = weight.into_primitive();
            let weights = weights.into_primitive();
            match LossBackward
                .prepare::<C>([hidden.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let (loss, grad) =
                        B::lm_loss_with_grad(hidden.into_primitive(), weight, targets, weights);
                    prep.finish(grad, loss)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::lm_loss(
                    hidden.into_primitive(),
                    weight,
                    targets,
                    weights,
                )),
            }
        }

        fn lm_loss_with_grad(
            hidden: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            targets: IntTensor<Self>,
            weights: FloatTensor<Self>,
        ) -> (FloatTensor<Self>, FloatTensor<Self>) {
            let (loss, grad) = B::lm_loss_with_grad(
                hidden.into_primitive(),
                weight.into_primitive(),
                targets,
                weights.into_primitive(),
            );
            (
                <Self as burn::backend::AutodiffBackend>::from_inner(loss),
                <Self as burn::backend::AutodiffBackend>::from_inner(grad),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_slices_give_the_whole_heads_products() {
        use burn::tensor::{DType, Device};
        let (m, d, v) = (6, 8, 37);
        let device = Device::flex();
        let make = |n: usize, cols: usize, k: usize| {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * k % 13) as f32 - 6.0) / 7.0)
                .collect();
            Tensor::<2>::from_data(TensorData::new(x, [n, cols]), &device)
        };
        let w = make(v, d, 29);
        let (h, dz) = (make(m, d, 31), make(m, v, 17));
        let whole = Head {
            w: w.clone(),
            slice: v,
        };
        for (slice, dtype) in [(5, DType::F32), (37, DType::F32), (4, DType::BF16)] {
            let sliced = Head {
                w: cast_to(w.clone(), dtype),
                slice,
            };
            let z = to_f32(sliced.logits(cast_to(h.clone(), dtype)));
            let g = to_f32(sliced.input_gradient(cast_to(dz.clone(), dtype)));
            let tol = if dtype == DType::F32 { 1e-5 } else { 5e-2 };
            for (got, want) in [
                (z, whole.logits(h.clone())),
                (g, whole.input_gradient(dz.clone())),
            ] {
                let diff = (got - want).abs().max().into_scalar::<f32>();
                assert!(diff <= tol, "slice {slice} {dtype:?}: {diff}");
            }
        }
    }

    #[test]
    fn host_kernel_matches_a_direct_computation() {
        let (n, d, v) = (7, 5, 300);
        let h: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let w: Vec<f32> = (0..v * d)
            .map(|i| ((i * 53 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let targets: Vec<i64> = (0..n as i64).map(|i| (i * 41) % v as i64).collect();
        let weights = [1.0f32, 0.0, 1.0, 0.5, 1.0, 0.0, 2.0];
        let mut grad = vec![0f32; n * d];
        let got = host_loss(&h, &w, d, &targets, &weights, Some(&mut grad));
        let mut want = 0f64;
        let mut want_grad = vec![0f64; n * d];
        for i in 0..n {
            let z: Vec<f64> = (0..v)
                .map(|j| {
                    (0..d)
                        .map(|k| h[i * d + k] as f64 * w[j * d + k] as f64)
                        .sum()
                })
                .collect();
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = z.iter().map(|x| (x - max).exp()).sum();
            let lse = sum.ln() + max;
            let wi = weights[i] as f64;
            want += wi * (lse - z[targets[i] as usize]);
            for j in 0..v {
                let p = (z[j] - lse).exp() - if j == targets[i] as usize { 1.0 } else { 0.0 };
                for k in 0..d {
                    want_grad[i * d + k] += wi * p * w[j * d + k] as f64;
                }
            }
        }
        assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
        for (a, b) in grad.iter().zip(&want_grad) {
            assert!((*a as f64 - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // Weight-0 rows have no gradient.
        assert!(grad[d..2 * d].iter().all(|&g| g == 0.0));
    }
}
