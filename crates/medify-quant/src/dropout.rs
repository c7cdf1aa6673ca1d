//! Counter-based dropout: the keep mask is a hash of (key, element index), so it costs one pass
//! over the input, needs no generator state, is the same on every backend, and backward
//! re-applies the same op to the gradient instead of saving a mask.
//!
//! Element `i` (row-major position in the tensor) is kept when
//! `mix(i, k1, k2) >= threshold`, with `threshold = round(p · 2³²)`; kept values are scaled by
//! `1 / (1 - p)` as `torch.nn.Dropout` does. `mix` is two rounds of MurmurHash3's 32-bit
//! finalizer, a bijection of `i` for each key, so masks of different keys are independent.

use burn::backend::Dispatch;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Tensor;

/// Which mask a dropout call draws: a pure function of the run's seed, the stream (one per
/// adapted layer) and a counter (one per call), so masks repeat exactly on resume and two runs in
/// one process never share a generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropoutKey {
    /// The run's seed.
    pub seed: u64,
    /// One stream per call site (e.g. the adapted layer's index).
    pub stream: u64,
    /// Calls made so far on this stream.
    pub counter: u64,
}

impl DropoutKey {
    /// The two 32-bit keys the kernels hash with.
    pub fn words(&self) -> (u32, u32) {
        let h = splitmix64(
            splitmix64(splitmix64(self.seed) ^ self.stream.wrapping_mul(0xD6E8_FEB8_6659_FD93))
                ^ self.counter,
        );
        (h as u32, (h >> 32) as u32)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// MurmurHash3's 32-bit finalizer.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// The hash deciding element `i`'s fate (the same on every backend).
#[inline(always)]
pub fn dropout_hash(i: u32, k1: u32, k2: u32) -> u32 {
    fmix32(fmix32(i ^ k1).wrapping_add(k2))
}

/// `round(p · 2³²)`: elements whose hash falls below it are dropped.
pub fn dropout_threshold(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 4_294_967_296.0)
        .round()
        .min(u32::MAX as f64) as u32
}

/// Dropout as a backend extension. Reach it through [`dropout`].
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Fusion: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait DropoutOps: Backend {
    /// `x · mask · scale`, the mask from [`dropout_hash`] against `threshold`, element `i`
    /// hashed as `offset + i` (so a slice of a tensor can draw its part of the whole's mask).
    #[fusion(dtype = x, shape = x)]
    fn hashed_dropout(
        x: FloatTensor<Self>,
        k1: u32,
        k2: u32,
        threshold: u32,
        scale: f32,
        offset: u32,
    ) -> FloatTensor<Self>;
}

/// Drops each element of `x` with probability `p` (and scales the rest by `1 / (1 - p)`), the
/// mask drawn from `key`. Differentiable; backward recomputes the mask from the key.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{DropoutKey, dropout};
/// let x = Tensor::<2>::ones([64, 64], &Device::flex());
/// let key = DropoutKey { seed: 7, stream: 0, counter: 0 };
/// let y: Vec<f32> = dropout(x.clone(), 0.25, key).into_data().try_into_vec().unwrap();
/// let kept = y.iter().filter(|&&v| v != 0.0).count();
/// assert!((2900..3250).contains(&kept)); // ~75 % of 4096, each scaled to 1 / 0.75
/// assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
/// assert_eq!(dropout(x, 0.25, key).into_data().try_into_vec::<f32>().unwrap(), y); // same key, same mask
/// ```
pub fn dropout<const D: usize>(x: Tensor<D>, p: f64, key: DropoutKey) -> Tensor<D> {
    dropout_at(x, p, key, 0)
}

/// [`dropout`] for a contiguous slice of a larger tensor that starts at (row-major) element
/// `offset` of it: the slice gets exactly its part of the whole tensor's mask, so a
/// recomputation can run in row chunks and still draw the masks the full pass drew.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{DropoutKey, dropout, dropout_at};
/// let x = Tensor::<2>::ones([8, 16], &Device::flex());
/// let key = DropoutKey { seed: 3, stream: 1, counter: 4 };
/// let whole = dropout(x.clone(), 0.5, key).narrow(0, 5, 3);
/// let part = dropout_at(x.narrow(0, 5, 3), 0.5, key, 5 * 16);
/// assert_eq!(part.into_data(), whole.into_data());
/// ```
pub fn dropout_at<const D: usize>(x: Tensor<D>, p: f64, key: DropoutKey, offset: u64) -> Tensor<D> {
    if p <= 0.0 {
        return x;
    }
    let (k1, k2) = key.words();
    let scale = (1.0 / (1.0 - p.min(1.0 - 1e-7))) as f32;
    Tensor::from_dispatch(<Dispatch as DropoutOps>::hashed_dropout(
        x.into_dispatch(),
        k1,
        k2,
        dropout_threshold(p),
        scale,
        // Indices wrap at 2^32 in the kernels, so the offset does too.
        offset as u32,
    ))
}

#[cfg(feature = "flex")]
mod flex {
    use burn_flex::{Flex, FlexTensor};
    use rayon::prelude::*;

    use super::{DropoutOps, dropout_hash};
    use crate::host_tensor::{f32s, from_f32};

    const CHUNK: usize = 1 << 14;

    crate::multiversion! {
        /// One chunk starting at flat index `base`.
        fn mask_chunk(out: &mut [f32], x: &[f32], base: u32, k1: u32, k2: u32, threshold: u32, scale: f32) {
            for (j, (o, &x)) in out.iter_mut().zip(x).enumerate() {
                let h = dropout_hash(base.wrapping_add(j as u32), k1, k2);
                *o = if h >= threshold { x * scale } else { 0.0 };
            }
        }
    }

    impl DropoutOps for Flex {
        fn hashed_dropout(
            x: FlexTensor,
            k1: u32,
            k2: u32,
            threshold: u32,
            scale: f32,
            offset: u32,
        ) -> FlexTensor {
            let shape = x.layout().shape().to_vec();
            let dtype = x.dtype();
            let xs = f32s(&x);
            let mut out = vec![0f32; xs.len()];
            out.par_chunks_mut(CHUNK)
                .zip(xs.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(c, (o, x))| {
                    let base = offset.wrapping_add((c * CHUNK) as u32);
                    mask_chunk(o, x, base, k1, k2, threshold, scale)
                });
            from_f32(out, shape, dtype)
        }
    }
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn_cubecl::CubeBackend;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::calculate_cube_count_elemwise;
    use burn_cubecl::cubecl::prelude::*;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::ops::numeric::empty_device_dtype;
    use burn_cubecl::tensor::CubeTensor;

    use super::DropoutOps;

    #[cube]
    fn fmix32(h: u32) -> u32 {
        let mut v = h ^ (h >> 16u32);
        v *= 0x85EB_CA6Bu32;
        v = v ^ (v >> 13u32);
        v *= 0xC2B2_AE35u32;
        v ^ (v >> 16u32)
    }

    #[cube(launch)]
    fn dropout_kernel<F: Float>(
        x: &Tensor<F>,
        out: &mut Tensor<F>,
        k1: u32,
        k2: u32,
        threshold: u32,
        scale: f32,
        offset: u32,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= out.len() {
            terminate!();
        }
        let h = fmix32(fmix32(((i as u32) + offset) ^ k1) + k2);
        if h >= threshold {
            out[i] = x[i] * F::cast_from(scale);
        } else {
            out[i] = F::cast_from(0.0f32);
        }
    }

    impl DropoutOps for CubeBackend {
        fn hashed_dropout(
            x: CubeTensor,
            k1: u32,
            k2: u32,
            threshold: u32,
            scale: f32,
            offset: u32,
        ) -> CubeTensor {
            let x = into_contiguous(x);
            let out = empty_device_dtype(
                x.client.clone(),
                x.device.clone(),
                x.meta.shape().clone(),
                x.dtype,
            );
            let n = out.meta.shape().num_elements().max(1);
            let cube_dim = CubeDim::new(&out.client, n);
            let cube_count = calculate_cube_count_elemwise(&out.client, n, cube_dim);
            let dtype = x.dtype;
            dropout_kernel::launch(
                &out.client,
                cube_count,
                cube_dim,
                x.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                k1,
                k2,
                threshold,
                scale,
                offset,
                dtype_to_storage_type(dtype),
            );
            out
        }
    }
}

mod autodiff {
    use burn::backend::Backend;
    use burn::backend::autodiff::Autodiff;
    use burn::backend::autodiff::checkpoint::base::Checkpointer;
    use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
    use burn::backend::autodiff::grads::Gradients;
    use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
    use burn::backend::tensor::FloatTensor;

    use super::DropoutOps;

    /// The mask's inputs; the mask itself is never stored.
    #[derive(Debug, Clone, Copy)]
    struct Keys {
        k1: u32,
        k2: u32,
        threshold: u32,
        scale: f32,
        offset: u32,
    }

    #[derive(Debug)]
    struct DropoutBackward;

    impl<B: Backend + DropoutOps> Backward<B, 1> for DropoutBackward {
        type State = Keys;

        fn backward(self, ops: Ops<Keys, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let Some(node) = node else { return };
            let k = ops.state;
            // d(x · mask · s)/dx = mask · s: the same op on the gradient.
            let dx = B::hashed_dropout(grad, k.k1, k.k2, k.threshold, k.scale, k.offset);
            grads.register::<B>(node.id, dx);
        }
    }

    impl<B: Backend + DropoutOps, C: CheckpointStrategy> DropoutOps for Autodiff<B, C> {
        fn hashed_dropout(
            x: FloatTensor<Self>,
            k1: u32,
            k2: u32,
            threshold: u32,
            scale: f32,
            offset: u32,
        ) -> FloatTensor<Self> {
            let keys = Keys {
                k1,
                k2,
                threshold,
                scale,
                offset,
            };
            match DropoutBackward
                .prepare::<C>([x.node()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let out =
                        B::hashed_dropout(x.primitive().clone(), k1, k2, threshold, scale, offset);
                    prep.finish(keys, out)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::hashed_dropout(
                    x.into_primitive(),
                    k1,
                    k2,
                    threshold,
                    scale,
                    offset,
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn keeps_the_expected_share_independently_of_the_key() {
        for p in [0.05, 0.1, 0.5] {
            let t = dropout_threshold(p);
            for counter in 0..4 {
                let (k1, k2) = DropoutKey {
                    seed: 42,
                    stream: 3,
                    counter,
                }
                .words();
                let n = 1 << 16;
                let dropped = (0..n).filter(|&i| dropout_hash(i, k1, k2) < t).count();
                let share = dropped as f64 / n as f64;
                assert!((share - p).abs() < 0.01, "p={p} got {share}");
            }
        }
        // Neighbouring keys give unrelated masks (about half the decisions differ at p = 0.5).
        let t = dropout_threshold(0.5);
        let key = |counter| {
            DropoutKey {
                seed: 1,
                stream: 0,
                counter,
            }
            .words()
        };
        let ((a1, a2), (b1, b2)) = (key(0), key(1));
        let differ = (0..4096u32)
            .filter(|&i| (dropout_hash(i, a1, a2) < t) != (dropout_hash(i, b1, b2) < t))
            .count();
        assert!((1800..2300).contains(&differ), "{differ}");
    }

    #[test]
    fn backward_applies_the_forward_mask() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..6 * 40).map(|i| i as f32 * 0.01 + 0.5).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [6, 40]), &device).require_grad();
        let key = DropoutKey {
            seed: 9,
            stream: 1,
            counter: 5,
        };
        let y = dropout(x.clone(), 0.3, key);
        let grads = y.clone().sum().backward();
        let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_into_vec().unwrap();
        let y: Vec<f32> = y.into_data().try_into_vec().unwrap();
        let scale = 1.0 / 0.7f32;
        for (gi, yi) in g.iter().zip(&y) {
            if *yi == 0.0 {
                assert_eq!(*gi, 0.0);
            } else {
                assert!((gi - scale).abs() < 1e-6);
            }
        }
        assert!(g.contains(&0.0) && g.iter().any(|&v| v != 0.0));
    }
}
