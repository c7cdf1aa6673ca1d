//! Data-parallel training over several devices in one process: every device holds the frozen
//! base and a replica of the adapters, takes whole micro-batches of each step, and the adapter
//! gradients are summed before the one optimizer step on the first device.
//!
//! Each micro-batch's loss is scaled by one over the *whole step's* predicted tokens, so the sum
//! of the devices' gradients is the gradient of the whole step on one device, whatever number of
//! tokens each device got: the mean weighted by each device's tokens. Dropout masks are numbered
//! by the micro-batch's place in the step, so a micro-batch draws the same masks on any device,
//! and two devices train the adapter one device trains on the combined batch (tested).
//!
//! The sum runs on burn's collectives ([`burn::tensor::distributed::all_reduce`]) where the
//! backend has a transport between its devices; in burn 0.22.1 (cubecl 0.11.3) that is CUDA,
//! through NCCL. wgpu and flex have none: cubecl answers "Can't use `all_reduce` on wgpu<wgsl>,
//! which has no transport between its devices", and burn "Distributed operations are not
//! supported for device Flex(Cpu)" (`tests/data_parallel.rs` checks both). There the gradients
//! are copied to the first device and added ([`GradientReduction`]).
//! burn 0.22.1's collectives are single-node (device ids within one process); see
//! `docs/training.md` for what several machines would take.

use std::ops::Range;
use std::time::Instant;

use burn::module::ParamId;
use burn::optim::GradientsParams;
use burn::tensor::distributed::{
    DistributedConfig, DistributedContext, ReduceOperation, all_reduce,
};
use burn::tensor::{Device, DeviceKind, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};
use crate::lora::{LoraExt, LoraModel};
use crate::models::{CausalLm, Checkpointing};
use crate::training::preference::PreferenceObjective;
use crate::training::preference_step::{
    PairMicroBatch, PreferenceShare, PreferenceStepGradients, Reference,
    preference_share_gradients, reference_model,
};
use crate::training::step::{MicroBatch, StepGradients, share_gradients, step_tokens};

/// One device of a data-parallel run, as `--devices` names it: `flex` (the CPU), `wgpu`
/// (the default adapter), `wgpu:N` (the N-th discrete GPU), `cuda:N`.
///
/// ```
/// use medify_qlora::training::DeviceSpec;
/// let specs = DeviceSpec::parse_list("wgpu:0, wgpu:1").unwrap();
/// assert_eq!(specs[1].to_string(), "wgpu:1");
/// assert!(DeviceSpec::parse_list("tpu:0").unwrap_err().to_string().contains("tpu:0"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU through burn's flex backend (one device: naming it twice runs two replicas on
    /// it, which checks the data-parallel path without a second device).
    Flex,
    /// The default wgpu adapter.
    WgpuDefault,
    /// The N-th discrete GPU wgpu finds.
    Wgpu(usize),
    /// The N-th CUDA GPU (builds with the `cuda` feature).
    Cuda(usize),
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::WgpuDefault => write!(f, "wgpu"),
            DeviceSpec::Wgpu(i) => write!(f, "wgpu:{i}"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<DeviceSpec> {
        let bad = || FinetuneError::Config {
            field: "devices".into(),
            reason: format!(
                "unknown device {s:?} (expected flex, wgpu, wgpu:N or cuda:N, e.g. wgpu:0,wgpu:1)"
            ),
        };
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((name, index)) => (name, Some(index.parse::<usize>().map_err(|_| bad())?)),
            None => (lower.as_str(), None),
        };
        match (name, index) {
            ("flex" | "cpu", None) => Ok(DeviceSpec::Flex),
            ("wgpu", None) => Ok(DeviceSpec::WgpuDefault),
            ("wgpu", Some(i)) => Ok(DeviceSpec::Wgpu(i)),
            ("cuda", i) => Ok(DeviceSpec::Cuda(i.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = FinetuneError;

    fn try_from(s: String) -> Result<DeviceSpec> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl DeviceSpec {
    /// A comma-separated list, as `--devices` takes it.
    pub fn parse_list(s: &str) -> Result<Vec<DeviceSpec>> {
        s.split(',')
            .filter(|part| !part.trim().is_empty())
            .map(str::parse)
            .collect()
    }

    /// The device (without autodiff). CUDA fails when this build has no CUDA.
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Flex => Ok(Device::flex()),
            DeviceSpec::WgpuDefault => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
            DeviceSpec::Wgpu(i) => Ok(Device::wgpu(DeviceKind::DiscreteGpu(i))),
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => Ok(Device::cuda(i)),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => Err(FinetuneError::Config {
                field: "devices".into(),
                reason: format!("{self}: this build has no CUDA support (the `cuda` feature)"),
            }),
        }
    }

    /// Whether burn 0.22.1 has collectives between devices of this kind (cubecl's CUDA
    /// runtime; wgpu and flex have no transport between devices).
    pub fn has_collectives(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }
}

/// How the devices' gradients are summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GradientReduction {
    /// burn's `all_reduce` (sum) between the devices.
    Collective,
    /// Copied to the first device and added there (devices without collectives).
    ThroughFirstDevice,
}

/// What one device did in a data-parallel step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceShare {
    /// The device, as `--devices` names it.
    pub device: String,
    /// Micro-batches it trained.
    pub micro_batches: usize,
    /// Predicted tokens in them.
    pub tokens: usize,
    /// Seconds its forward and backward passes took.
    pub seconds: f64,
}

impl DeviceShare {
    /// Its throughput in predicted tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

/// One data-parallel step's summed gradients (on the first device) and each device's share.
pub struct ParallelStepGradients {
    /// The step's gradients, loss and tokens, as [`crate::training::step_gradients`] gives
    /// them on one device.
    pub step: StepGradients,
    /// Per device, in the order of [`DataParallel::devices`].
    pub shares: Vec<DeviceShare>,
}

/// Replicas of a model on further devices and the way their gradients meet.
///
/// ```
/// use burn::tensor::Device;
/// use medify_qlora::lora::{LoraConfig, LoraExt};
/// use medify_qlora::models::{CausalLm, LoadOptions};
/// use medify_qlora::training::{DataParallel, DeviceSpec, GradientReduction};
/// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_models/llama");
/// let device = Device::flex().autodiff();
/// let load = || CausalLm::from_pretrained(&dir, &device, &LoadOptions::dense()).unwrap().0;
/// let mut model = load();
/// model.add_adapters(&LoraConfig::new(2, 4.0)).unwrap();
/// // flex named twice: a second replica on the same CPU stands in for a second device.
/// let dp = DataParallel::new(&model, vec![load()], &[DeviceSpec::Flex, DeviceSpec::Flex]).unwrap();
/// assert_eq!(dp.devices().len(), 2);
/// assert_eq!(dp.reduction(), GradientReduction::ThroughFirstDevice);
/// ```
pub struct DataParallel {
    specs: Vec<DeviceSpec>,
    replicas: Vec<CausalLm>,
    /// DPO/IPO's frozen reference model on each further device ([`DataParallel::set_reference`]).
    references: Vec<CausalLm>,
    reduction: GradientReduction,
    /// Keeps burn's communication server up while collectives are in use.
    _context: Option<DistributedContext>,
}

impl DataParallel {
    /// `replicas` are the base, loaded on `specs[1..]` in order (their adapters are replaced
    /// by copies of `primary`'s, which lives on `specs[0]`).
    pub fn new(
        primary: &CausalLm,
        replicas: Vec<CausalLm>,
        specs: &[DeviceSpec],
    ) -> Result<DataParallel> {
        if specs.len() != replicas.len() + 1 {
            return Err(FinetuneError::Config {
                field: "devices".into(),
                reason: format!(
                    "{} devices for {} replicas besides the first device",
                    specs.len(),
                    replicas.len()
                ),
            });
        }
        // NCCL joins distinct GPUs; a device named twice sums through itself.
        let distinct = specs
            .iter()
            .enumerate()
            .all(|(i, s)| !specs[..i].contains(s));
        let collective = distinct && specs.iter().all(|s| s.has_collectives());
        let context = collective.then(|| {
            DistributedContext::init(
                model_devices(primary, &replicas),
                DistributedConfig {
                    all_reduce_op: ReduceOperation::Sum,
                },
            )
        });
        let mut dp = DataParallel {
            specs: specs.to_vec(),
            replicas,
            references: Vec::new(),
            reduction: if collective {
                GradientReduction::Collective
            } else {
                GradientReduction::ThroughFirstDevice
            },
            _context: context,
        };
        dp.sync(primary)?;
        Ok(dp)
    }

    /// The devices, the first one holding the model the optimizer updates.
    pub fn devices(&self) -> &[DeviceSpec] {
        &self.specs
    }

    /// How gradients are summed on these devices.
    pub fn reduction(&self) -> GradientReduction {
        self.reduction
    }

    /// Copies `primary`'s adapters (after an optimizer step) to every replica.
    pub fn sync(&mut self, primary: &CausalLm) -> Result<()> {
        for replica in &mut self.replicas {
            replica.replicate_adapters(primary)?;
            replica.set_adapters_training(true);
        }
        Ok(())
    }

    /// Gives every further device a copy of DPO/IPO's frozen `reference` model (the first
    /// device's), over its own base: the reference pass of each micro-batch runs where the
    /// micro-batch does.
    pub fn set_reference(&mut self, reference: &CausalLm) -> Result<()> {
        self.references = self
            .replicas
            .iter()
            .map(|replica| {
                let mut copy = replica.clone();
                copy.replicate_adapters(reference)?;
                reference_model(&copy, true)
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// Runs `work(device, model, micro-batch range)` for every device on its own thread, the
    /// step's micro-batches [`deal`]t between them; returns each result with its range and
    /// seconds. A step with fewer micro-batches than devices leaves the last devices idle.
    fn on_devices<T: Send>(
        &self,
        primary: &CausalLm,
        micro_batches: usize,
        work: impl Fn(usize, &CausalLm, Range<usize>) -> Result<T> + Sync,
    ) -> Result<Vec<(T, DeviceShare)>> {
        let models: Vec<&CausalLm> = std::iter::once(primary).chain(&self.replicas).collect();
        let ranges = deal(micro_batches, self.specs.len());
        let work = &work;
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = models
                .iter()
                .zip(&ranges)
                .enumerate()
                .map(|(device, (model, range))| {
                    let range = range.clone();
                    scope.spawn(move || {
                        let start = Instant::now();
                        let out = work(device, model, range);
                        (out, start.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().map_err(|_| FinetuneError::DeviceThread))
                .collect()
        });
        results
            .into_iter()
            .zip(ranges)
            .zip(&self.specs)
            .map(|((result, range), spec)| {
                let (out, seconds) = result?;
                Ok((
                    out?,
                    DeviceShare {
                        device: spec.to_string(),
                        micro_batches: range.len(),
                        tokens: 0,
                        seconds,
                    },
                ))
            })
            .collect()
    }

    /// The gradients of one supervised step: [`deal`]s the micro-batches to the devices, runs
    /// each device's share on its own thread, and sums the gradients on the first device.
    pub fn step_gradients(
        &self,
        primary: &CausalLm,
        micro_batches: &[MicroBatch],
        seed: u64,
        step: u64,
        checkpointing: Checkpointing,
    ) -> Result<ParallelStepGradients> {
        let tokens = step_tokens(micro_batches);
        let done = self.on_devices(primary, micro_batches.len(), |_, model, range| {
            share_gradients(
                model,
                range.map(|i| (i, &micro_batches[i])),
                tokens,
                seed,
                step,
                checkpointing,
            )
        })?;
        let mut grads = Vec::with_capacity(done.len());
        let mut shares = Vec::with_capacity(done.len());
        let mut loss_sum = 0.0;
        for (share, mut device) in done {
            loss_sum += share.loss_sum;
            device.tokens = share.tokens;
            grads.push(share.grads);
            shares.push(device);
        }
        let grads = self.reduce(primary, grads);
        Ok(ParallelStepGradients {
            step: StepGradients {
                grads,
                loss: loss_sum / tokens.max(1) as f64,
                tokens,
            },
            shares,
        })
    }

    /// The gradients of one preference step, as [`DataParallel::step_gradients`] for
    /// [`preference_step_gradients`](crate::training::preference_step_gradients): each device
    /// runs its micro-batches (with its copy of the reference model, or the precomputed table),
    /// the gradients are summed and the micro-batches' losses and statistics merged in step
    /// order.
    #[allow(clippy::too_many_arguments)]
    pub fn preference_step_gradients(
        &self,
        primary: &CausalLm,
        micro_batches: &[PairMicroBatch],
        objective: &PreferenceObjective,
        reference: Reference<'_>,
        seed: u64,
        step: u64,
        checkpointing: Checkpointing,
    ) -> Result<(PreferenceStepGradients, Vec<DeviceShare>)> {
        let reference_on = |device: usize| -> Result<Reference<'_>> {
            match (device, reference) {
                (0, r) | (_, r @ (Reference::None | Reference::Precomputed(_))) => Ok(r),
                (d, Reference::Model(_)) => self
                    .references
                    .get(d - 1)
                    .map(Reference::Model)
                    .ok_or_else(|| FinetuneError::Config {
                        field: "devices".into(),
                        reason: "the reference model was not copied to every device \
                                 (DataParallel::set_reference)"
                            .into(),
                    }),
            }
        };
        let done = self.on_devices(primary, micro_batches.len(), |device, model, range| {
            preference_share_gradients(
                model,
                range.map(|i| (i, &micro_batches[i])),
                micro_batches.len(),
                objective,
                reference_on(device)?,
                seed,
                step,
                checkpointing,
            )
        })?;
        let mut grads = Vec::with_capacity(done.len());
        let mut outcomes = Vec::new();
        let mut shares = Vec::with_capacity(done.len());
        for (share, mut device) in done {
            device.tokens = share.micro_batches.iter().map(|m| m.tokens).sum();
            outcomes.extend(share.micro_batches);
            grads.push(share.grads);
            shares.push(device);
        }
        let merged = PreferenceShare {
            grads: self.reduce(primary, grads),
            micro_batches: outcomes,
        };
        Ok((merged.finish(micro_batches.len()), shares))
    }

    /// Sums every adapter parameter's gradient over the devices, onto the first device.
    fn reduce(&self, primary: &CausalLm, mut shares: Vec<GradientsParams>) -> GradientsParams {
        let devices = model_devices(primary, &self.replicas);
        let mut out = GradientsParams::new();
        for (_, proj) in primary.linear_layers() {
            let Some(adapter) = proj.lora() else {
                continue;
            };
            self.reduce_param::<2>(adapter.lora_a.id, &mut shares, &devices, &mut out);
            self.reduce_param::<2>(adapter.lora_b.id, &mut shares, &devices, &mut out);
            if let Some(m) = &adapter.magnitude {
                self.reduce_param::<1>(m.id, &mut shares, &devices, &mut out);
            }
        }
        out
    }

    /// Sums one parameter's gradient, `shares[i]` being device `devices[i]`'s.
    fn reduce_param<const D: usize>(
        &self,
        id: ParamId,
        shares: &mut [GradientsParams],
        devices: &[Device],
        out: &mut GradientsParams,
    ) {
        let first = &devices[0];
        let parts: Vec<Option<Tensor<D>>> = shares.iter_mut().map(|g| g.remove::<D>(id)).collect();
        let Some(template) = parts.iter().flatten().next().cloned() else {
            return; // no device trained a token through this parameter
        };
        let sum = match self.reduction {
            GradientReduction::Collective => {
                // Every device takes part in the collective, with zeros on its own device
                // where it had no token.
                let handles: Vec<_> = parts
                    .into_iter()
                    .zip(devices)
                    .map(|(part, device)| {
                        let t = part.unwrap_or_else(|| {
                            Tensor::<D>::zeros(template.shape(), device).cast(template.dtype())
                        });
                        all_reduce(t, ReduceOperation::Sum, devices.to_vec())
                    })
                    .collect();
                // Every device waits for its copy of the sum; the first device's is kept.
                let mut resolved: Vec<Tensor<D>> =
                    handles.into_iter().map(|h| h.resolve()).collect();
                resolved.swap_remove(0)
            }
            GradientReduction::ThroughFirstDevice => parts
                .into_iter()
                .flatten()
                .map(|t| t.to_device(first))
                .reduce(|a, b| a + b)
                .unwrap_or(template),
        };
        out.register(id, sum);
    }
}

/// The devices of the first model and its replicas, in order, without autodiff (where their
/// gradients live).
fn model_devices(primary: &CausalLm, replicas: &[CausalLm]) -> Vec<Device> {
    std::iter::once(primary)
        .chain(replicas)
        .map(|m| m.embed_tokens.device().without_autodiff())
        .collect()
}

/// Splits `micro_batches` into `devices` contiguous ranges whose lengths differ by at most one
/// (the first ones longer).
///
/// ```
/// use medify_qlora::training::deal;
/// assert_eq!(deal(5, 2), vec![0..3, 3..5]);
/// assert_eq!(deal(4, 4), vec![0..1, 1..2, 2..3, 3..4]);
/// ```
pub fn deal(micro_batches: usize, devices: usize) -> Vec<Range<usize>> {
    let devices = devices.max(1);
    let (each, extra) = (micro_batches / devices, micro_batches % devices);
    let mut start = 0;
    (0..devices)
        .map(|d| {
            let len = each + usize::from(d < extra);
            let range = start..start + len;
            start += len;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_round_trip_and_refuse_unknown_names() {
        for s in ["flex", "wgpu", "wgpu:3", "cuda:1"] {
            let spec: DeviceSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), spec);
        }
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Flex);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        for bad in ["wgpu:x", "flex:1", "npu:0", ""] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("devices"), "{bad}: {err}");
        }
        assert!(serde_json::from_str::<DeviceSpec>("\"tpu\"").is_err());
    }

    #[test]
    fn dealing_covers_every_micro_batch_once() {
        for n in 0..12 {
            for d in 1..5 {
                let ranges = deal(n, d);
                assert_eq!(ranges.len(), d);
                let flat: Vec<usize> = ranges.iter().flat_map(Clone::clone).collect();
                assert_eq!(flat, (0..n).collect::<Vec<_>>());
                let lens: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
                assert!(lens.iter().max().unwrap() - lens.iter().min().unwrap() <= 1);
            }
        }
    }
}
