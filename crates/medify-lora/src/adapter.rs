//! `LoraAdapter`: the trainable low-rank update `s · B A` (and DoRA's magnitude) of one layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::module::{Flag, Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use medify_quant::{DropoutKey, dropout_at};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::LoraInit;
use crate::error::{LoraError, Result};
use medify_quant::dtype::{cast_to, to_f32};

use crate::projection::{FrozenWeight, dense_matmul};

/// The adapter of one linear layer: `A [r, in]`, `B [out, r]`, an optional DoRA magnitude
/// `m [out]`, and the scaling `s`. Only these tensors are parameters; the base stays frozen.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_lora::LoraAdapter;
/// let device = Device::flex();
/// let a = Tensor::<2>::ones([2, 4], &device);
/// let b = Tensor::<2>::ones([3, 2], &device);
/// let adapter = LoraAdapter::new(a, b, None, 0.5, 0.0).unwrap();
/// assert_eq!((adapter.rank(), adapter.dims()), (2, [3, 4]));
/// // s · B A = 0.5 · 2 everywhere
/// assert_eq!(adapter.delta().into_data().try_into_vec::<f32>().unwrap(), vec![1.0; 12]);
/// ```
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// Down projection `[r, in]` (PEFT's `lora_A.weight`).
    pub lora_a: Param<Tensor<2>>,
    /// Up projection `[out, r]` (PEFT's `lora_B.weight`).
    pub lora_b: Param<Tensor<2>>,
    /// DoRA's per-output-row magnitude `[out]` (PEFT's `lora_magnitude_vector`).
    pub magnitude: Option<Param<Tensor<1>>>,
    /// Whether dropout is active; off after `Module::valid`.
    pub training: Param<Flag>,
    #[module(skip)]
    scaling: f64,
    #[module(skip)]
    dropout: f64,
    #[module(skip)]
    masks: DropoutStream,
}

/// Where an adapter's dropout masks come from: a counter-based hash of (seed, stream, call), so
/// masks cost one pass over the input, repeat exactly after [`LoraAdapter::seek_dropout`], and
/// adapters of different runs in one process never share a generator.
#[derive(Debug, Clone)]
struct DropoutStream {
    stream: u64,
    /// Shared by clones of the module (the optimizer's `map`, `valid()`): one sequence per layer.
    position: Arc<DropoutPosition>,
}

#[derive(Debug)]
struct DropoutPosition {
    seed: AtomicU64,
    calls: AtomicU64,
    /// Where in the call's (row-major) mask the next input starts; reset after each call.
    offset: AtomicU64,
}

impl DropoutStream {
    fn new(seed: u64, stream: u64) -> DropoutStream {
        DropoutStream {
            stream,
            position: Arc::new(DropoutPosition {
                seed: AtomicU64::new(seed),
                calls: AtomicU64::new(0),
                offset: AtomicU64::new(0),
            }),
        }
    }

    /// The next call's key and the element its input starts at.
    fn next_key(&self) -> (DropoutKey, u64) {
        let key = DropoutKey {
            seed: self.position.seed.load(Ordering::Relaxed),
            stream: self.stream,
            counter: self.position.calls.fetch_add(1, Ordering::Relaxed),
        };
        (key, self.position.offset.swap(0, Ordering::Relaxed))
    }
}

impl LoraAdapter {
    /// An adapter from its factors. Shapes must agree (`A [r, in]`, `B [out, r]`, `m [out]`).
    pub fn new(
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        magnitude: Option<Tensor<1>>,
        scaling: f64,
        dropout: f64,
    ) -> Result<LoraAdapter> {
        let [r, _] = lora_a.dims();
        let [out, rb] = lora_b.dims();
        if r != rb || r == 0 {
            return Err(LoraError::InvalidConfig(format!(
                "lora_A {:?} and lora_B {:?} do not form a rank-r update",
                lora_a.dims(),
                lora_b.dims()
            )));
        }
        if let Some(m) = &magnitude
            && m.dims() != [out]
        {
            return Err(LoraError::InvalidConfig(format!(
                "DoRA magnitude {:?} must have one entry per output row ({out})",
                m.dims()
            )));
        }
        if !(0.0..1.0).contains(&dropout) || !scaling.is_finite() {
            return Err(LoraError::InvalidConfig(format!(
                "dropout {dropout} must be in [0, 1) and scaling {scaling} finite"
            )));
        }
        Ok(LoraAdapter {
            lora_a: Param::from_tensor(lora_a),
            lora_b: Param::from_tensor(lora_b),
            magnitude: magnitude.map(Param::from_tensor),
            training: Param::from_bool(true),
            scaling,
            dropout,
            masks: DropoutStream::new(0, 0),
        })
    }

    /// Draws dropout masks from `(seed, stream)`: give each adapted layer its own stream (the
    /// adapters [`crate::LoraExt::add_adapters`] builds use the config's seed and the layer index).
    pub fn with_dropout_stream(mut self, seed: u64, stream: u64) -> LoraAdapter {
        self.masks = DropoutStream::new(seed, stream);
        self
    }

    /// A copy of this adapter for a replica of its model on `device` (data-parallel training):
    /// the same parameter ids and values, so the replicas' gradients add up by id into the
    /// original's; the same dropout stream, so a micro-batch draws the masks it would draw on
    /// the original; and a position of its own, since replicas run at the same time.
    pub fn replica(&self, device: &Device) -> LoraAdapter {
        fn copy<const D: usize>(p: &Param<Tensor<D>>, device: &Device) -> Param<Tensor<D>> {
            Param::initialized(p.id, p.val().to_device(device).detach().require_grad())
        }
        let (seed, _) = self.dropout_position();
        LoraAdapter {
            lora_a: copy(&self.lora_a, device),
            lora_b: copy(&self.lora_b, device),
            magnitude: self.magnitude.as_ref().map(|m| copy(m, device)),
            training: self.training.clone(),
            scaling: self.scaling,
            dropout: self.dropout,
            masks: DropoutStream::new(seed, self.masks.stream),
        }
    }

    /// Positions this adapter's dropout stream: the next forward pass draws mask number
    /// `position` of the run seeded `seed`. A trainer seeks every adapter to a function of the
    /// step before each step, so a resumed run (whose adapters were read back from PEFT files,
    /// which do not record a seed) draws exactly the masks the original run drew.
    pub fn seek_dropout(&self, seed: u64, position: u64) {
        self.seek_dropout_within(seed, position, 0);
    }

    /// [`LoraAdapter::seek_dropout`] for a forward pass over a slice of the input that mask
    /// `position` was drawn for: the slice starts at row-major element `offset` of that input
    /// and gets its part of the mask. A recomputation in row chunks seeks before every chunk.
    pub fn seek_dropout_within(&self, seed: u64, position: u64, offset: u64) {
        let p = &self.masks.position;
        p.seed.store(seed, Ordering::Relaxed);
        p.calls.store(position, Ordering::Relaxed);
        p.offset.store(offset, Ordering::Relaxed);
    }

    /// Where this adapter's dropout stream stands, as `(seed, position)` for
    /// [`LoraAdapter::seek_dropout`]: recomputing a forward pass (gradient checkpointing) rewinds
    /// to it so the recomputation draws the masks the first pass drew.
    pub fn dropout_position(&self) -> (u64, u64) {
        let p = &self.masks.position;
        (
            p.seed.load(Ordering::Relaxed),
            p.calls.load(Ordering::Relaxed),
        )
    }

    /// A freshly initialised adapter for a base of shape `[out, in]`. For DoRA the magnitude
    /// starts at the row norms of `base + s·B A`, so the adapted layer starts equal to the base.
    #[allow(clippy::too_many_arguments)]
    pub fn init(
        base: &FrozenWeight,
        r: usize,
        scaling: f64,
        dropout: f64,
        init: &LoraInit,
        dora: bool,
        seed: u64,
        stream: u64,
    ) -> Result<LoraAdapter> {
        let [out, inp] = base.dims();
        let device = base.device();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        let kaiming = |rng: &mut ChaCha8Rng, n: usize, fan_in: usize| -> Vec<f32> {
            // kaiming_uniform(a = sqrt(5)) bound: sqrt(6 / ((1 + 5) fan_in)) = 1 / sqrt(fan_in)
            let bound = 1.0 / (fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let (a, b) = match init {
            LoraInit::KaimingUniform => (kaiming(&mut rng, r * inp, inp), vec![0.0; out * r]),
            LoraInit::Gaussian => {
                let std = 1.0 / r as f32;
                (gaussian(&mut rng, r * inp, std), vec![0.0; out * r])
            }
            LoraInit::Random => {
                let a = kaiming(&mut rng, r * inp, inp);
                (a, kaiming(&mut rng, out * r, r))
            }
            LoraInit::Other(name) => {
                return Err(LoraError::Unsupported(format!(
                    "initialisation {name:?}; use kaiming-uniform (true), \"gaussian\" or random (false)"
                )));
            }
        };
        let a = Tensor::<2>::from_data(TensorData::new(a, [r, inp]), &device);
        let b = Tensor::<2>::from_data(TensorData::new(b, [out, r]), &device);
        let magnitude = dora
            .then(|| row_norm(base.to_dense() + b.clone().matmul(a.clone()).mul_scalar(scaling)));
        Ok(LoraAdapter::new(a, b, magnitude, scaling, dropout)?.with_dropout_stream(seed, stream))
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.lora_a.val().dims()[0]
    }

    /// `[out, in]` of the layer the adapter fits.
    pub fn dims(&self) -> [usize; 2] {
        [self.lora_b.val().dims()[0], self.lora_a.val().dims()[1]]
    }

    /// The factor `s` the update is multiplied by.
    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// The dropout probability on the adapter input while training.
    pub fn dropout(&self) -> f64 {
        self.dropout
    }

    /// Whether this is a DoRA adapter.
    pub fn is_dora(&self) -> bool {
        self.magnitude.is_some()
    }

    /// Trainable parameters of this adapter.
    pub fn num_params(&self) -> usize {
        let [out, inp] = self.dims();
        self.rank() * (out + inp) + if self.is_dora() { out } else { 0 }
    }

    /// Switches dropout on (training) or off (evaluation) without moving the tensors.
    pub fn set_training(&mut self, training: bool) {
        self.training = self.training.clone().with_value(training);
    }

    /// The dense update `s · B A` `[out, in]`, detached from the graph.
    pub fn delta(&self) -> Tensor<2> {
        let a = self.lora_a.val().detach();
        let b = self.lora_b.val().detach();
        b.matmul(a).mul_scalar(self.scaling)
    }

    /// DoRA's `m / ||W + s·B A||_row` `[out]`, with the norm detached as PEFT does.
    pub(crate) fn dora_scale(&self, base: &FrozenWeight) -> Option<Tensor<1>> {
        let m = self.magnitude.as_ref()?.val();
        let norm = row_norm(to_f32(base.to_dense().detach()) + self.delta()).detach();
        Some(m / norm)
    }

    fn dropping<const D: usize>(&self, x: &Tensor<D>) -> bool {
        self.drops_out_on(&x.device())
    }

    /// Whether a forward pass on `device` applies dropout to the adapter's input (training mode,
    /// a positive rate and an autodiff device): what an inference path must refuse to skip.
    pub fn drops_out_on(&self, device: &burn::tensor::Device) -> bool {
        self.dropout > 0.0 && self.training.is_enabled() && device.is_autodiff()
    }

    /// The plain (not DoRA) adapter's output `s · (drop(x) Aᵀ) Bᵀ`, drawing one dropout mask as
    /// [`LoraAdapter::apply`] does; `None` for DoRA, whose output depends on the base's.
    pub(crate) fn delta_output<const D: usize>(&self, x: Tensor<D>) -> Option<Tensor<D>> {
        if self.magnitude.is_some() {
            return None;
        }
        let (x, _) = self.drop_input(x);
        Some(self.plain_delta(x))
    }

    /// The adapter's input after dropout (one mask drawn while training), and whether it dropped.
    fn drop_input<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, bool) {
        if self.dropping(&x) {
            let (key, offset) = self.masks.next_key();
            (dropout_at(x, self.dropout, key, offset), true)
        } else {
            (x, false)
        }
    }

    /// `s · (x Aᵀ) Bᵀ` in f32 (the adapter's dtype), returned in `x`'s dtype. The scaling goes on
    /// the rank-r activations, r/out of the work of scaling the update.
    fn plain_delta<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let down = dense_matmul(to_f32(x), &self.lora_a.val());
        let delta = dense_matmul(down.mul_scalar(self.scaling), &self.lora_b.val());
        cast_to(delta, dtype)
    }

    /// Adds the adapter's contribution to `base_out = x Wᵀ` (without bias), from the activations:
    /// `base_out + s · (drop(x) Aᵀ) Bᵀ`; DoRA rescales per output row.
    pub(crate) fn apply<const D: usize>(
        &self,
        x: Tensor<D>,
        base_out: Tensor<D>,
        base: &FrozenWeight,
    ) -> Tensor<D> {
        let (x, dropping) = self.drop_input(x);
        let Some(scale) = self.dora_scale(base) else {
            return base_out + self.plain_delta(x);
        };
        // DoRA, in f32 (the adapter's dtype) whatever the compute dtype is. PEFT:
        // result + (scale - 1) * (x Wᵀ) + scale * s * lora(x), where x Wᵀ is taken on the
        // dropped-out input while training.
        let dtype = base_out.dtype();
        let update = dense_matmul(
            dense_matmul(to_f32(x.clone()), &self.lora_a.val()),
            &self.lora_b.val(),
        );
        let base_dropped = if dropping {
            base.matmul(x)
        } else {
            base_out.clone()
        };
        let scale = scale.unsqueeze::<D>();
        let extra = to_f32(base_dropped) * scale.clone().sub_scalar(1.0)
            + update * scale.mul_scalar(self.scaling);
        base_out + cast_to(extra, dtype)
    }

    /// Replaces the factors (and magnitude), keeping parameter ids so optimizer state still
    /// applies; shapes must match.
    pub fn set_factors(
        &mut self,
        lora_a: Tensor<2>,
        lora_b: Tensor<2>,
        magnitude: Option<Tensor<1>>,
    ) -> Result<()> {
        let same = lora_a.dims() == self.lora_a.val().dims()
            && lora_b.dims() == self.lora_b.val().dims()
            && magnitude.as_ref().map(Tensor::dims)
                == self.magnitude.as_ref().map(|m| m.val().dims());
        if !same {
            return Err(LoraError::InvalidConfig(format!(
                "new factors {:?} / {:?} do not match the adapter's {:?} / {:?}",
                lora_a.dims(),
                lora_b.dims(),
                self.lora_a.val().dims(),
                self.lora_b.val().dims()
            )));
        }
        let device: Device = self.lora_a.val().device();
        let put2 = |p: &Param<Tensor<2>>, t: Tensor<2>| {
            Param::initialized(p.id, t.to_device(&device).detach().require_grad())
        };
        self.lora_a = put2(&self.lora_a, lora_a);
        self.lora_b = put2(&self.lora_b, lora_b);
        if let (Some(p), Some(m)) = (&self.magnitude, magnitude) {
            self.magnitude = Some(Param::initialized(
                p.id,
                m.to_device(&device).detach().require_grad(),
            ));
        }
        Ok(())
    }
}

/// Euclidean norm of each row of `[out, in]`.
pub(crate) fn row_norm(w: Tensor<2>) -> Tensor<1> {
    let [out, _] = w.dims();
    w.square().sum_dim(1).sqrt().reshape([out])
}

/// Normal samples by Box-Muller (rand's distributions crate is not worth a dependency here).
fn gaussian(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        out.push((r * t.cos()) as f32 * std);
        out.push((r * t.sin()) as f32 * std);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(device: &Device) -> FrozenWeight {
        let w: Vec<f32> = (0..32 * 16)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 10.0)
            .collect();
        FrozenWeight::Dense(Tensor::from_data(TensorData::new(w, [32, 16]), device))
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec().unwrap()
    }

    #[test]
    fn initialisations_follow_peft() {
        let device = Device::flex();
        let w = base(&device);
        let k = LoraAdapter::init(&w, 8, 1.0, 0.0, &LoraInit::KaimingUniform, false, 1, 0).unwrap();
        let a = values(k.lora_a.val());
        assert!(
            a.iter().all(|v| v.abs() <= 0.25) && a.iter().any(|v| v.abs() > 0.2),
            "U(±1/√16)"
        );
        assert!(values(k.lora_b.val()).iter().all(|&v| v == 0.0));
        let g = LoraAdapter::init(&w, 8, 1.0, 0.0, &LoraInit::Gaussian, false, 1, 0).unwrap();
        let a = values(g.lora_a.val());
        let var = a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32;
        assert!(
            (var.sqrt() - 0.125).abs() < 0.02,
            "std 1/r, got {}",
            var.sqrt()
        );
        let r = LoraAdapter::init(&w, 8, 1.0, 0.0, &LoraInit::Random, true, 1, 0).unwrap();
        assert!(
            values(r.lora_b.val())
                .iter()
                .all(|v| v.abs() <= 1.0 / 8f32.sqrt())
        );
        assert!(values(r.lora_b.val()).iter().any(|&v| v != 0.0));
        // DoRA starts at the row norms of W + s·B A, so the layer starts equal to its base.
        let x = Tensor::<2>::ones([3, 16], &device);
        let y = r.apply(x.clone(), w.matmul(x.clone()), &w);
        let plain = LoraAdapter::new(r.lora_a.val(), r.lora_b.val(), None, 1.0, 0.0).unwrap();
        let want = plain.apply(x.clone(), w.matmul(x), &w);
        let diff = y.sub(want).abs().max().into_scalar::<f32>();
        assert!(diff < 1e-4, "{diff}");
        // Different streams (layers) draw different factors; the same seed repeats them.
        let again =
            LoraAdapter::init(&w, 8, 1.0, 0.0, &LoraInit::KaimingUniform, false, 1, 0).unwrap();
        let other =
            LoraAdapter::init(&w, 8, 1.0, 0.0, &LoraInit::KaimingUniform, false, 1, 1).unwrap();
        assert_eq!(values(again.lora_a.val()), values(k.lora_a.val()));
        assert_ne!(values(other.lora_a.val()), values(k.lora_a.val()));
    }

    #[test]
    fn a_replica_shares_ids_values_and_masks_but_not_its_position() {
        let device = Device::flex().autodiff();
        let w = base(&device);
        let original = LoraAdapter::init(&w, 4, 2.0, 0.5, &LoraInit::Random, true, 7, 3).unwrap();
        let copy = original.replica(&device);
        assert_eq!(copy.lora_a.id, original.lora_a.id);
        assert_eq!(copy.lora_b.id, original.lora_b.id);
        assert_eq!(
            copy.magnitude.as_ref().map(|m| m.id),
            original.magnitude.as_ref().map(|m| m.id)
        );
        assert_eq!(values(copy.lora_b.val()), values(original.lora_b.val()));
        // The same mask number draws the same mask, so the same output.
        let x = Tensor::<2>::ones([5, 16], &device);
        let forward = |a: &LoraAdapter| {
            a.seek_dropout(7, 11);
            values(a.apply(x.clone(), w.matmul(x.clone()), &w))
        };
        assert_eq!(forward(&copy), forward(&original));
        // Each keeps its own position: the copy drawing a mask does not move the original's.
        original.seek_dropout(7, 20);
        copy.seek_dropout(7, 30);
        assert_eq!(original.dropout_position(), (7, 20));
        assert_eq!(copy.dropout_position(), (7, 30));
    }

    #[test]
    fn dropout_only_while_training_on_an_autodiff_device() {
        for device in [Device::flex(), Device::flex().autodiff()] {
            let w = base(&device);
            let mut ad =
                LoraAdapter::init(&w, 4, 1.0, 0.5, &LoraInit::Random, false, 2, 0).unwrap();
            let x = Tensor::<2>::ones([8, 16], &device);
            let zero = Tensor::<2>::zeros([8, 32], &device);
            let run = |ad: &LoraAdapter| values(ad.apply(x.clone(), zero.clone(), &w));
            let (first, second) = (run(&ad), run(&ad));
            assert_eq!(
                first != second,
                device.is_autodiff(),
                "dropout draws a new mask per call"
            );
            ad.set_training(false);
            assert_eq!(run(&ad), run(&ad));
        }
    }
}
