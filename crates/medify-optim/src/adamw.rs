//! [`PagedAdamW`]: AdamW over any burn module with host-resident, paged state.

use std::collections::{BTreeMap, HashMap};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use medify_quant::{dynamic_signed_map, dynamic_unsigned_map};
use regex::Regex;

use crate::blockwise::{self, DeviceMap};
use crate::config::{AdamWConfig, NonFinite, ParamGroup, StateBits};
use crate::error::{OptimError, Result};
use crate::host::{Hyper, update_q8};
use crate::state::{DeviceMoments, HostMoments, Place, Slot};

/// Where the optimizer state is and how much moved, after a step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StateMemory {
    /// Parameters with state.
    pub params: usize,
    /// Elements of those parameters.
    pub elements: u64,
    /// State bytes in storage form (f32 moments, or 8-bit codes + absmax).
    pub state_bytes: u64,
    /// Bytes of state held on an accelerator between steps.
    pub resident_bytes: u64,
    /// Bytes of state held in host memory between steps.
    pub paged_bytes: u64,
    /// Host → device transfers so far.
    pub page_ins: u64,
    /// Device → host transfers so far.
    pub page_outs: u64,
}

impl StateMemory {
    /// Storage bytes per trainable element: 8 for 32-bit state, about 2.03 for 8-bit.
    pub fn bytes_per_param(&self) -> f64 {
        self.state_bytes as f64 / self.elements.max(1) as f64
    }
}

/// What one call to [`PagedAdamW::step`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// False when the step was skipped because a gradient was not finite.
    pub applied: bool,
    /// Global L2 norm of the gradients before clipping (NaN/inf when that caused a skip).
    pub grad_norm: f64,
    /// Factor the gradients were scaled by (1 when not clipped).
    pub clip_scale: f64,
    /// Gradient elements that were not finite (zeroed under [`NonFinite::ZeroElements`]).
    pub non_finite: u64,
    /// Parameters updated.
    pub params_updated: usize,
    /// Learning rate given to the step.
    pub lr: f64,
    /// Optimizer steps applied so far.
    pub steps: u64,
    /// Steps skipped so far.
    pub skipped: u64,
    /// State placement after the step.
    pub memory: StateMemory,
}

/// AdamW with bitsandbytes semantics, 32-bit or blockwise 8-bit moments, global-norm
/// clipping, parameter groups and a device budget for its state.
///
/// State is keyed by the parameter's module path, so it survives a save/load into a freshly
/// built model. Only parameters that received a gradient are touched.
///
/// ```
/// use burn::module::{Module, Param};
/// use burn::optim::GradientsParams;
/// use burn::tensor::{Device, Tensor};
/// use medify_optim::{AdamWConfig, PagedAdamW};
///
/// #[derive(Module, Debug)]
/// struct Net { w: Param<Tensor<1>> }
///
/// let device = Device::flex();
/// let net = Net { w: Param::from_tensor(Tensor::from_floats([1.0, -2.0], &device)) };
/// let mut grads = GradientsParams::new();
/// grads.register(net.w.id, Tensor::<1>::from_floats([0.5, 0.5], &device));
/// let mut opt = PagedAdamW::new(AdamWConfig::paged_adamw_32bit().with_weight_decay(0.0)).unwrap();
/// let (net, report) = opt.step(0.1, net, grads).unwrap();
/// assert!(report.applied);
/// let w = net.w.val().into_data().try_into_vec::<f32>().unwrap();
/// assert!((w[0] - 0.9).abs() < 1e-5 && (w[1] + 2.1).abs() < 1e-5);
/// ```
#[derive(Debug)]
pub struct PagedAdamW {
    config: AdamWConfig,
    groups: Vec<(ParamGroup, Regex)>,
    pub(crate) slots: BTreeMap<String, Slot>,
    clock: u64,
    pub(crate) steps: u64,
    pub(crate) skipped: u64,
    page_ins: u64,
    page_outs: u64,
    maps: Vec<(Device, DeviceMap, DeviceMap)>,
}

impl PagedAdamW {
    /// An optimizer with no state yet.
    pub fn new(config: AdamWConfig) -> Result<Self> {
        let groups = config.compiled_groups()?;
        Ok(PagedAdamW {
            config,
            groups,
            slots: BTreeMap::new(),
            clock: 0,
            steps: 0,
            skipped: 0,
            page_ins: 0,
            page_outs: 0,
            maps: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Steps applied so far (the index the next step's schedule should use).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Steps skipped because of non-finite gradients.
    pub fn skipped_steps(&self) -> u64 {
        self.skipped
    }

    /// Module paths of the parameters that have state, in order.
    pub fn state_paths(&self) -> Vec<&str> {
        self.slots.keys().map(String::as_str).collect()
    }

    /// Where the state lives now.
    pub fn memory(&self) -> StateMemory {
        let mut m = StateMemory {
            params: self.slots.len(),
            page_ins: self.page_ins,
            page_outs: self.page_outs,
            ..Default::default()
        };
        for s in self.slots.values() {
            m.elements += s.numel as u64;
            m.state_bytes += s.storage_bytes();
            match s.place {
                Place::Device(_) | Place::Local(_) => m.resident_bytes += s.storage_bytes(),
                Place::Host(_) => m.paged_bytes += s.storage_bytes(),
            }
        }
        m
    }

    /// Checks that every piece of state (e.g. loaded from a checkpoint) fits the parameter at
    /// its module path. [`PagedAdamW::step`] makes the same check but has taken the module by
    /// then, so a caller that must keep its module on a misfit checks first.
    ///
    /// ```
    /// use burn::module::{Module, Param};
    /// use burn::tensor::{Device, Tensor};
    /// use medify_optim::{AdamWConfig, PagedAdamW};
    ///
    /// #[derive(Module, Debug)]
    /// struct Bias {
    ///     b: Param<Tensor<1>>,
    /// }
    ///
    /// let device = Device::default();
    /// let module = Bias { b: Param::from_tensor(Tensor::zeros([3], &device)) };
    /// let optimizer = PagedAdamW::new(AdamWConfig::paged_adamw_32bit()).unwrap();
    /// optimizer.check_module(&module).unwrap(); // no state yet: nothing can misfit
    /// ```
    pub fn check_module<M: Module>(&self, module: &M) -> Result<()> {
        let mut check = Check {
            slots: &self.slots,
            path: Vec::new(),
            error: None,
        };
        module.visit(&mut check);
        match check.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One AdamW step with learning rate `lr` over every parameter of `module` that has a
    /// gradient in `grads`. Returns the updated module and what happened. Fails, before
    /// changing anything, when loaded state does not fit a parameter.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<(M, StepReport)> {
        self.check_module(&module)?;
        let mut collect = Collect {
            path: Vec::new(),
            grads,
            zero_non_finite: self.config.non_finite == NonFinite::ZeroElements,
            found: HashMap::new(),
            sum_squares: None,
            non_finite: None,
        };
        module.visit(&mut collect);
        let sum_squares = collect
            .sum_squares
            .take()
            .map(|t| t.into_scalar::<f64>())
            .unwrap_or(0.0);
        let non_finite = collect
            .non_finite
            .take()
            .map(|t| t.into_scalar::<i64>() as u64)
            .unwrap_or(0);
        let grad_norm = sum_squares.sqrt();
        let mut report = StepReport {
            applied: false,
            grad_norm,
            clip_scale: 1.0,
            non_finite,
            params_updated: 0,
            lr,
            steps: self.steps,
            skipped: self.skipped,
            memory: self.memory(),
        };
        if !grad_norm.is_finite()
            || (non_finite > 0 && self.config.non_finite == NonFinite::SkipStep)
        {
            self.skipped += 1;
            report.skipped = self.skipped;
            return Ok((module, report));
        }
        if let Some(max) = self.config.max_grad_norm {
            // torch.nn.utils.clip_grad_norm_: scale = max / (norm + 1e-6), never above 1.
            report.clip_scale = (max / (grad_norm + 1e-6)).min(1.0);
        }
        let mut update = Update {
            opt: self,
            path: Vec::new(),
            found: collect.found,
            lr,
            clip_scale: report.clip_scale,
            updated: 0,
        };
        let module = module.map(&mut update);
        report.params_updated = update.updated;
        self.steps += 1;
        report.applied = true;
        report.steps = self.steps;
        report.memory = self.memory();
        Ok((module, report))
    }

    fn maps(&mut self, device: &Device) -> (DeviceMap, DeviceMap) {
        if let Some((_, s, u)) = self.maps.iter().find(|(d, _, _)| d == device) {
            return (s.clone(), u.clone());
        }
        let s = DeviceMap::new(dynamic_signed_map(), device);
        let u = DeviceMap::new(dynamic_unsigned_map(), device);
        self.maps.push((device.clone(), s.clone(), u.clone()));
        (s, u)
    }

    fn group_of(&self, path: &str) -> (f64, f64) {
        self.groups
            .iter()
            .find(|(_, re)| re.is_match(path))
            .map(|(g, _)| {
                (
                    g.lr_scale,
                    g.weight_decay.unwrap_or(self.config.weight_decay),
                )
            })
            .unwrap_or((1.0, self.config.weight_decay))
    }

    /// Updates one flattened parameter and keeps its state within the device budget.
    fn update_param(
        &mut self,
        path: &str,
        p: Tensor<1>,
        g: Tensor<1>,
        lr: f64,
        clip: f64,
    ) -> Tensor<1> {
        let device = p.device();
        let n = p.dims()[0];
        let (lr_scale, wd) = self.group_of(path);
        let lr = lr * lr_scale;
        self.clock += 1;
        let clock = self.clock;
        let existing = self.slots.remove(path);
        let t = existing.as_ref().map_or(0, |s| s.step) + 1;
        // Existing state keeps its precision; new state follows the configuration.
        let eight_bit = match &existing {
            Some(slot) => slot.eight_bit,
            None => self.config.state_bits == StateBits::Eight && n >= self.config.min_8bit_size,
        };
        let (b1, b2) = self.config.betas;
        // bitsandbytes' kernel: step size lr·√(1-β2ᵗ)/(1-β1ᵗ), eps scaled by √(1-β2ᵗ),
        // then decoupled weight decay on the updated parameter.
        let c1 = 1.0 - b1.powi(t as i32);
        let c2 = (1.0 - b2.powi(t as i32)).sqrt();
        let step_size = lr * c2 / c1;
        if eight_bit && is_host(&device) {
            let moments = match existing.map(|s| s.place) {
                Some(Place::Local(h) | Place::Host(h)) => h,
                Some(Place::Device(d)) => d.download(),
                None => HostMoments::q8_zeros(n),
            };
            let hyper = Hyper {
                b1: b1 as f32,
                one_minus_b1: (1.0 - b1) as f32,
                b2: b2 as f32,
                one_minus_b2: (1.0 - b2) as f32,
                eps: (self.config.eps * c2) as f32,
                step_size: step_size as f32,
                decay: (wd > 0.0).then_some((1.0 - lr * wd) as f32),
                clip: (clip < 1.0).then_some(clip as f32),
            };
            let (p, moments) = update_on_host(p, g, moments, hyper);
            self.slots.insert(
                path.to_string(),
                Slot {
                    step: t,
                    numel: n,
                    eight_bit,
                    place: Place::Local(moments),
                    last_used: clock,
                },
            );
            return p;
        }
        let moments = match existing.map(|s| s.place) {
            Some(Place::Device(d)) => Some(d),
            Some(Place::Host(h) | Place::Local(h)) => {
                self.page_ins += 1;
                Some(h.upload(&device))
            }
            None => None,
        };
        let maps = eight_bit.then(|| self.maps(&device));
        let (m, v) = match (moments, &maps) {
            (Some(DeviceMoments::F32 { m, v }), _) => (m, v),
            (
                Some(DeviceMoments::Q8 {
                    m,
                    m_absmax,
                    v,
                    v_absmax,
                }),
                Some((ms, mu)),
            ) => (
                blockwise::dequantize(&m, &m_absmax, ms, n),
                blockwise::dequantize(&v, &v_absmax, mu, n),
            ),
            _ => (Tensor::zeros([n], &device), Tensor::zeros([n], &device)),
        };
        let g = if clip < 1.0 { g.mul_scalar(clip) } else { g };
        let m = m.mul_scalar(b1).add(g.clone().mul_scalar(1.0 - b1));
        let v = v.mul_scalar(b2).add(g.square().mul_scalar(1.0 - b2));
        let denom = v.clone().sqrt().add_scalar(self.config.eps * c2);
        let mut p = p - (m.clone() / denom).mul_scalar(step_size);
        if wd > 0.0 {
            p = p.mul_scalar(1.0 - lr * wd);
        }
        let moments = match &maps {
            Some((ms, mu)) => {
                let (m, m_absmax) = blockwise::quantize(m, ms);
                let (v, v_absmax) = blockwise::quantize(v, mu);
                DeviceMoments::Q8 {
                    m,
                    m_absmax,
                    v,
                    v_absmax,
                }
            }
            None => DeviceMoments::F32 { m, v },
        };
        let mut slot = Slot {
            step: t,
            numel: n,
            eight_bit,
            place: Place::Device(moments),
            last_used: clock,
        };
        if !is_host(&device) {
            self.fit_budget(&mut slot);
        }
        self.slots.insert(path.to_string(), slot);
        p
    }

    /// Pages out least-recently-used state until `current` fits the budget, then pages out
    /// `current` itself if it alone is larger than the budget.
    fn fit_budget(&mut self, current: &mut Slot) {
        let Some(budget) = self.config.device_budget else {
            return;
        };
        let need = current.device_bytes();
        if need > budget {
            // It can never stay: keep what is resident and send this one home.
            page_out(current);
            self.page_outs += 1;
            return;
        }
        let mut resident: u64 = self.slots.values().map(Slot::device_bytes).sum();
        while resident + need > budget {
            let victim = self
                .slots
                .iter()
                .filter(|(_, s)| matches!(s.place, Place::Device(_)))
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            let Some(key) = victim else { break };
            if let Some(slot) = self.slots.get_mut(&key) {
                resident -= slot.device_bytes();
                page_out(slot);
                self.page_outs += 1;
            }
        }
    }
}

/// The 8-bit update of a parameter on a CPU device, over host copies of `p` and `g`.
fn update_on_host(
    p: Tensor<1>,
    g: Tensor<1>,
    moments: HostMoments,
    h: Hyper,
) -> (Tensor<1>, HostMoments) {
    let device = p.device();
    let host = |t: Tensor<1>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    };
    let (mut pv, gv) = (host(p), host(g));
    let n = pv.len();
    let moments = match moments {
        HostMoments::Q8 {
            mut m,
            mut m_absmax,
            mut v,
            mut v_absmax,
        } => {
            update_q8(
                &mut pv,
                &gv,
                &mut m,
                &mut m_absmax,
                &mut v,
                &mut v_absmax,
                h,
            );
            HostMoments::Q8 {
                m,
                m_absmax,
                v,
                v_absmax,
            }
        }
        f32_state => f32_state,
    };
    (
        Tensor::from_data(TensorData::new(pv, [n]), &device),
        moments,
    )
}

fn page_out(slot: &mut Slot) {
    if let Place::Device(d) = &slot.place {
        slot.place = Place::Host(d.download());
    }
}

/// True for devices whose memory is host memory (nothing to page).
pub(crate) fn is_host(device: &Device) -> bool {
    medify_quant::is_flex(device)
}

fn join(path: &[String]) -> String {
    path.join(".")
}

/// First pass: flattened (and sanitized) gradients, their squared norm and non-finite count.
struct Collect {
    path: Vec<String>,
    grads: GradientsParams,
    zero_non_finite: bool,
    found: HashMap<ParamId, (String, Tensor<1>)>,
    sum_squares: Option<Tensor<1>>,
    non_finite: Option<Tensor<1, Int>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let n = g.shape().num_elements();
        let g: Tensor<1> = g.inner().reshape([n]);
        let bad = g.clone().is_finite().bool_not();
        let count = bad.clone().int().sum();
        let g = if self.zero_non_finite {
            g.mask_fill(bad, 0.0)
        } else {
            g
        };
        let sq = g.clone().square().sum();
        let device = |t: &Tensor<1>| t.device();
        self.sum_squares = Some(match self.sum_squares.take() {
            Some(acc) => {
                let d = device(&acc);
                acc + sq.to_device(&d)
            }
            None => sq,
        });
        self.non_finite = Some(match self.non_finite.take() {
            Some(acc) => {
                let d = acc.device();
                acc + count.to_device(&d)
            }
            None => count,
        });
        self.found.insert(param.id, (join(&self.path), g));
    }
}

/// Compares stored state sizes with the module's parameters, by path.
struct Check<'a> {
    slots: &'a BTreeMap<String, Slot>,
    path: Vec<String>,
    error: Option<OptimError>,
}

impl ModuleVisitor for Check<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_some() {
            return;
        }
        let path = join(&self.path);
        if let Some(slot) = self.slots.get(&path) {
            let expected = param.shape().num_elements();
            if slot.numel != expected {
                self.error = Some(OptimError::ShapeMismatch {
                    param: path,
                    expected,
                    found: slot.numel,
                });
            }
        }
    }
}

/// Second pass: the update of every parameter found by [`Collect`].
struct Update<'a> {
    opt: &'a mut PagedAdamW,
    path: Vec<String>,
    found: HashMap<ParamId, (String, Tensor<1>)>,
    lr: f64,
    clip_scale: f64,
    updated: usize,
}

impl ModuleMapper for Update<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some((path, grad)) = self.found.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let autodiff = tensor.is_autodiff();
        let strategy = tensor.gradient_checkpointing_strategy();
        let require_grad = tensor.is_require_grad();
        let flat: Tensor<1> = tensor.inner().reshape([shape.num_elements()]);
        let grad = grad.to_device(&flat.device());
        let updated = self
            .opt
            .update_param(&path, flat, grad, self.lr, self.clip_scale);
        let mut out: Tensor<D> = updated.reshape(shape);
        if autodiff {
            out = Tensor::from_inner(out);
            if let Some(s) = strategy {
                out = out.with_gradient_checkpointing_strategy(s);
            }
        }
        if require_grad {
            out = out.require_grad();
        }
        self.updated += 1;
        Param::from_mapped_value(id, out, mapper)
    }
}
