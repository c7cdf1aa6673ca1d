//! [`FinetuneConfig`]: every knob of a QLoRA run, defaulting to the QLoRA paper's recipe.

use serde::{Deserialize, Serialize};

use crate::data::{DatasetConfig, PairTruncation};
use crate::error::{FinetuneError, Result};
use crate::lora::{LoraConfig, TargetModules};
use crate::models::{Checkpointing, ComputeDtype, LinearQuant, LoadOptions};
use crate::optim::{AdamWConfig, LrSchedule, ScheduleKind, StateBits, Warmup};
use crate::quant::{QuantConfig, QuantType, check_blocksize};
use crate::training::preference::{Method, PreferenceObjective};

/// `chosen`, or the device's default compute dtype, checked against `device`; an error names
/// the `compute_dtype` setting.
pub(crate) fn compute_dtype_on(
    chosen: Option<ComputeDtype>,
    device: &burn::tensor::Device,
) -> Result<ComputeDtype> {
    let dtype = chosen.unwrap_or_else(|| ComputeDtype::default_for(device));
    dtype
        .check(device)
        .map_err(|e| bad("compute_dtype", e.to_string()))?;
    Ok(dtype)
}

/// How the frozen base is held while an adapter trains over it: the run's setting
/// (flattened into [`FinetuneConfig`]: `quant`, `quant_blocksize`, `double_quant`) and what a
/// run records of its base (`run_sources.json`), so evaluation, chat and merges load the base
/// in the form the adapter learned against.
///
/// ```
/// use medify_qlora::{BaseQuant, BaseQuantization};
/// let q = BaseQuantization::default();
/// assert_eq!((q.quant, q.blocksize, q.double_quant), (BaseQuant::Nf4, 64, true));
/// assert!(BaseQuantization { blocksize: 48, ..q }.quant_config().is_err());
/// assert_eq!(BaseQuantization { quant: BaseQuant::Dense, ..q }.quant_config().unwrap(), None);
/// let int8 = BaseQuantization { quant: BaseQuant::Int8, ..q };
/// assert_eq!(int8.linear_quant().unwrap(), Some(medify_qlora::models::LinearQuant::Int8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BaseQuantization {
    /// `nf4` or `fp4` for the frozen base (`none` keeps it dense: plain LoRA).
    pub quant: BaseQuant,
    /// Values per 4-bit absmax block (a power of two in 32..=4096).
    #[serde(rename = "quant_blocksize", alias = "blocksize")]
    pub blocksize: usize,
    /// Quantize the absmax values again (double quantization).
    pub double_quant: bool,
}

impl Default for BaseQuantization {
    /// QLoRA's: NF4, blocks of 64, double quantization.
    fn default() -> Self {
        BaseQuantization {
            quant: BaseQuant::Nf4,
            blocksize: 64,
            double_quant: true,
        }
    }
}

impl BaseQuantization {
    /// How the base's linear layers are loaded: 4-bit with its settings, int8, or `None` for
    /// a dense base.
    pub fn linear_quant(&self) -> Result<Option<LinearQuant>> {
        Ok(match self.quant {
            BaseQuant::Int8 => Some(LinearQuant::Int8),
            _ => self.quant_config()?.map(LinearQuant::Bits4),
        })
    }

    /// The 4-bit settings to load the base with, or `None` for a dense or int8 base. The
    /// block size is checked by the quantizer's own rule.
    pub fn quant_config(&self) -> Result<Option<QuantConfig>> {
        let Some(quant_type) = self.quant.quant_type() else {
            return Ok(None);
        };
        check_blocksize(self.blocksize).map_err(|e| bad("quant_blocksize", e.to_string()))?;
        Ok(Some(QuantConfig {
            quant_type,
            blocksize: self.blocksize,
            double_quant: self.double_quant,
        }))
    }
}

/// How the frozen base's linear layers are held: QLoRA's 4-bit codes, LLM.int8 (bitsandbytes'
/// `load_in_8bit`), or dense (plain LoRA).
///
/// ```
/// use medify_qlora::BaseQuant;
/// assert_eq!("NF4".parse::<BaseQuant>().unwrap(), BaseQuant::Nf4);
/// assert_eq!(serde_json::to_string(&BaseQuant::Dense).unwrap(), "\"none\"");
/// assert_eq!("int8".parse::<BaseQuant>().unwrap(), BaseQuant::Int8);
/// assert!("int4".parse::<BaseQuant>().unwrap_err().to_string().contains("nf4, fp4, int8, none"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum BaseQuant {
    /// 4-bit NormalFloat (QLoRA's choice).
    #[default]
    #[serde(rename = "nf4")]
    Nf4,
    /// bitsandbytes' 4-bit float.
    #[serde(rename = "fp4")]
    Fp4,
    /// Row-wise absmax int8 (LLM.int8, bitsandbytes' `Linear8bitLt`).
    #[serde(rename = "int8")]
    Int8,
    /// Dense weights, as stored.
    #[serde(rename = "none", alias = "dense")]
    Dense,
}

impl BaseQuant {
    /// The 4-bit code, or `None` for an int8 or dense base.
    pub fn quant_type(self) -> Option<QuantType> {
        match self {
            BaseQuant::Nf4 => Some(QuantType::Nf4),
            BaseQuant::Fp4 => Some(QuantType::Fp4),
            BaseQuant::Int8 | BaseQuant::Dense => None,
        }
    }

    /// Whether the base is held quantized (4-bit or int8).
    pub fn is_quantized(self) -> bool {
        self != BaseQuant::Dense
    }

    /// QLoRA's 4-bit settings (block size 64, double quantization) with this code.
    pub fn default_config(self) -> Option<QuantConfig> {
        self.quant_type()
            .map(|t| QuantConfig::default().with_quant_type(t))
    }

    /// How linear layers load with this choice's default settings (`None`: dense).
    pub fn linear_quant(self) -> Option<LinearQuant> {
        match self {
            BaseQuant::Int8 => Some(LinearQuant::Int8),
            _ => self.default_config().map(LinearQuant::Bits4),
        }
    }

    /// The name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BaseQuant::Nf4 => "nf4",
            BaseQuant::Fp4 => "fp4",
            BaseQuant::Int8 => "int8",
            BaseQuant::Dense => "none",
        }
    }
}

impl std::fmt::Display for BaseQuant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BaseQuant {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<BaseQuant> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(BaseQuant::Nf4),
            "fp4" => Ok(BaseQuant::Fp4),
            "int8" | "8bit" => Ok(BaseQuant::Int8),
            "none" | "dense" => Ok(BaseQuant::Dense),
            other => Err(bad(
                "quant",
                format!("`{other}` is not one of nf4, fp4, int8, none"),
            )),
        }
    }
}

/// The optimizer, by the name transformers' `optim` gives it.
///
/// ```
/// use medify_qlora::Optimizer;
/// assert_eq!("paged_adamw_8bit".parse::<Optimizer>().unwrap(), Optimizer::PagedAdamW8bit);
/// assert_eq!(Optimizer::default().to_string(), "paged_adamw_32bit");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Optimizer {
    /// Paged AdamW with f32 moments (the QLoRA paper's).
    #[default]
    #[serde(rename = "paged_adamw_32bit")]
    PagedAdamW32bit,
    /// Paged AdamW with blockwise 8-bit moments.
    #[serde(rename = "paged_adamw_8bit")]
    PagedAdamW8bit,
}

impl Optimizer {
    /// The state precision.
    pub fn state_bits(self) -> StateBits {
        match self {
            Optimizer::PagedAdamW32bit => StateBits::ThirtyTwo,
            Optimizer::PagedAdamW8bit => StateBits::Eight,
        }
    }
}

impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Optimizer::PagedAdamW32bit => "paged_adamw_32bit",
            Optimizer::PagedAdamW8bit => "paged_adamw_8bit",
        })
    }
}

impl std::str::FromStr for Optimizer {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<Optimizer> {
        match s.parse::<StateBits>() {
            Ok(StateBits::ThirtyTwo) => Ok(Optimizer::PagedAdamW32bit),
            Ok(StateBits::Eight) => Ok(Optimizer::PagedAdamW8bit),
            Err(_) => Err(bad(
                "optimizer",
                format!("`{s}` is not paged_adamw_32bit or paged_adamw_8bit"),
            )),
        }
    }
}

/// A fine-tuning run. `Default` is QLoRA (Dettmers et al. 2023): NF4 with double quantization,
/// r = 64, alpha = 16, dropout 0.05 on all linear layers, paged AdamW 32-bit at 2e-4 constant
/// with 3% warmup, max grad norm 0.3, no weight decay, effective batch 16.
///
/// ```
/// use medify_qlora::FinetuneConfig;
/// let c = FinetuneConfig::default();
/// assert_eq!((c.lora_r, c.lora_alpha, c.learning_rate), (64, 16.0, 2e-4));
/// assert_eq!(c.batch_size * c.grad_accum, 16);
/// let json = serde_json::to_string(&c).unwrap();
/// assert_eq!(serde_json::from_str::<FinetuneConfig>(&json).unwrap(), c);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FinetuneConfig {
    /// How the frozen base is held (`quant`, `quant_blocksize`, `double_quant` in the file).
    #[serde(flatten)]
    pub quantization: BaseQuantization,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f64,
    /// Dropout on the adapters' input.
    pub lora_dropout: f64,
    /// Layers that get adapters, in PEFT's JSON form: `"all-linear"`, a list of module names
    /// (`["q_proj", "v_proj"]`), or a regular expression over the whole module path.
    pub target_modules: TargetModules,
    /// Rank-stabilised scaling.
    pub use_rslora: bool,
    /// Weight-decomposed LoRA.
    pub use_dora: bool,
    /// `paged_adamw_32bit` or `paged_adamw_8bit`.
    pub optimizer: Optimizer,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// `constant`, `linear` or `cosine`.
    pub lr_schedule: ScheduleKind,
    /// Warmup as a share of all steps (used when `warmup_steps` is unset).
    pub warmup_ratio: f64,
    /// Warmup in steps.
    pub warmup_steps: Option<u64>,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Device budget of optimizer state in MiB (unset: no limit).
    pub optimizer_budget_mib: Option<u64>,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Devices for data-parallel training (`--devices wgpu:0,wgpu:1`): each holds the base and
    /// a replica of the adapters and takes whole micro-batches of every step, so `grad_accum`
    /// must be at least their number; the gradients are summed before the one optimizer step,
    /// which equals one device with the whole batch. Empty: the one device the run is given.
    pub devices: Vec<crate::training::DeviceSpec>,
    /// Keep only each decoder layer's input during forward and recompute the layer in backward
    /// (on by default, as in the QLoRA recipe): far less activation memory for about one extra
    /// forward pass.
    pub gradient_checkpointing: bool,
    /// With gradient checkpointing on an accelerator, keep the saved layer inputs in host memory.
    pub offload_checkpoints: bool,
    /// Activation and matmul dtype (QLoRA's `bnb_4bit_compute_dtype`); unset: the device's
    /// default (bf16 on CUDA, f16 on Vulkan, f32 on the CPU). Adapters and optimizer state stay
    /// f32.
    pub compute_dtype: Option<ComputeDtype>,
    /// Longest sequence in tokens.
    pub max_len: usize,
    /// Pack several examples into each sequence (attention stays within an example).
    pub packing: bool,
    /// Passes over the training data (ignored when `max_steps` is set).
    pub epochs: usize,
    /// Optimizer steps to take, overriding `epochs`.
    pub max_steps: Option<u64>,
    /// Evaluate on the validation split every this many steps (0: only before and after).
    pub eval_every: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub save_every: u64,
    /// Checkpoints to keep (the best by eval loss is kept as well).
    pub keep_last: usize,
    /// Share of records held out for validation.
    pub validation_fraction: f64,
    /// Most validation records used (0: all).
    pub max_eval_records: usize,
    /// Seed of data order, adapter initialisation and dropout.
    pub seed: u64,
    /// Built-in chat template instead of the model's own.
    pub template: Option<String>,
    /// System prompt added to conversations without one.
    pub system_prompt: Option<String>,
    /// What the run optimises: `sft` (next-token loss on the replies) or a preference
    /// objective on `prompt`/`chosen`/`rejected` pairs (`dpo`, `ipo`, `orpo`, `simpo`).
    pub method: Method,
    /// DPO's β, IPO's τ, SimPO's β, ORPO's λ; unset: TRL's default (0.1, or 2.0 for SimPO).
    pub beta: Option<f64>,
    /// Conservative DPO and SimPO: the assumed share of flipped preference labels.
    pub label_smoothing: f64,
    /// SimPO's target reward margin γ.
    pub simpo_gamma: f64,
    /// DPO/IPO: compute the reference log-probabilities once before training and store them
    /// with the run (resume reads them back), instead of a reference pass every step.
    pub precompute_ref_logps: bool,
    /// Which end of an over-long prompt + completion survives `max_len` (preference pairs).
    pub pair_truncation: PairTruncation,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            quantization: BaseQuantization::default(),
            lora_r: 64,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            target_modules: TargetModules::AllLinear,
            use_rslora: false,
            use_dora: false,
            optimizer: Optimizer::PagedAdamW32bit,
            learning_rate: 2e-4,
            lr_schedule: ScheduleKind::Constant,
            warmup_ratio: 0.03,
            warmup_steps: None,
            weight_decay: 0.0,
            max_grad_norm: 0.3,
            optimizer_budget_mib: None,
            batch_size: 1,
            grad_accum: 16,
            devices: Vec::new(),
            gradient_checkpointing: true,
            offload_checkpoints: false,
            compute_dtype: None,
            max_len: 512,
            packing: false,
            epochs: 1,
            max_steps: None,
            eval_every: 0,
            save_every: 0,
            keep_last: 2,
            validation_fraction: 0.05,
            max_eval_records: 200,
            seed: 42,
            template: None,
            system_prompt: None,
            method: Method::Sft,
            beta: None,
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
            precompute_ref_logps: false,
            pair_truncation: PairTruncation::KeepStart,
        }
    }
}

fn bad(field: &str, reason: impl Into<String>) -> FinetuneError {
    FinetuneError::Config {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Settings a resumed run may change: how long it runs, how often it evaluates and saves, and
/// how memory and devices are spent. The rest define the run's mathematics and data, so they stay.
pub const RESUMABLE_SETTINGS: [&str; 10] = [
    "max_steps",
    "epochs",
    "eval_every",
    "save_every",
    "keep_last",
    "gradient_checkpointing",
    "offload_checkpoints",
    "optimizer_budget_mib",
    "compute_dtype",
    "devices",
];

impl FinetuneConfig {
    /// The configuration a resumed run uses: `self` (the checkpoint's) with the
    /// [`RESUMABLE_SETTINGS`] taken from `requested`. Any other setting in which they differ is
    /// refused, naming it, rather than silently ignored. A larger `max_steps` (or more `epochs`)
    /// extends the run; as in transformers' Trainer, the learning-rate schedule is then computed
    /// over the new length from the resumed step on.
    ///
    /// ```
    /// use medify_qlora::FinetuneConfig;
    /// let saved = FinetuneConfig { max_steps: Some(10), ..FinetuneConfig::default() };
    /// let longer = FinetuneConfig { max_steps: Some(20), ..saved.clone() };
    /// assert_eq!(saved.resumed_with(&longer).unwrap().max_steps, Some(20));
    /// let other_lr = FinetuneConfig { learning_rate: 1e-3, ..saved.clone() };
    /// assert!(saved.resumed_with(&other_lr).unwrap_err().to_string().contains("learning_rate"));
    /// ```
    pub fn resumed_with(&self, requested: &FinetuneConfig) -> Result<FinetuneConfig> {
        let as_map = |c: &FinetuneConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (saved, wanted) = (as_map(self), as_map(requested));
        for (field, value) in &wanted {
            let old = saved.get(field).unwrap_or(&serde_json::Value::Null);
            if old != value && !RESUMABLE_SETTINGS.contains(&field.as_str()) {
                return Err(FinetuneError::ResumeConflict {
                    field: field.clone(),
                    saved: old.to_string(),
                    requested: value.to_string(),
                    changeable: RESUMABLE_SETTINGS.join(", "),
                });
            }
        }
        let config = requested.clone();
        config.validate()?;
        Ok(config)
    }

    /// How the base loads for this run on `device`: 4-bit settings and the compute dtype, checked
    /// against the device.
    pub fn load_options(&self, device: &burn::tensor::Device) -> Result<LoadOptions> {
        Ok(LoadOptions {
            quantize: self.quantization.linear_quant()?,
            compute_dtype: compute_dtype_on(self.compute_dtype, device)?,
        })
    }

    /// What a training step keeps for backward, from `gradient_checkpointing` and
    /// `offload_checkpoints`.
    pub fn checkpointing(&self) -> Checkpointing {
        Checkpointing::from_flags(self.gradient_checkpointing, self.offload_checkpoints)
    }

    /// Reads a JSON config over the defaults ([`with_settings`](Self::with_settings)):
    /// unknown fields and values of the wrong kind are errors naming them.
    pub fn from_json(text: &str) -> Result<FinetuneConfig> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad("(file)", e.to_string()))?;
        let serde_json::Value::Object(settings) = value else {
            return Err(bad("(file)", "is not a JSON object of settings"));
        };
        FinetuneConfig::default().with_settings(&settings)
    }

    /// These settings with `settings` (setting name → JSON value, as in
    /// `finetune_config.json`) put over them: the one way settings are changed, whether they
    /// come from a config file, a sweep, a resumed run's request or command-line flags. An
    /// unknown name or a value that does not fit is an error naming the setting; the result is
    /// validated.
    ///
    /// ```
    /// use medify_qlora::FinetuneConfig;
    /// let settings = serde_json::json!({"lora_r": 8, "quant": "none"});
    /// let c = FinetuneConfig::default().with_settings(settings.as_object().unwrap()).unwrap();
    /// assert_eq!((c.lora_r, c.quant_config().unwrap()), (8, None));
    /// let wrong = serde_json::json!({"lora_rank": 8});
    /// let e = FinetuneConfig::default().with_settings(wrong.as_object().unwrap()).unwrap_err();
    /// assert!(e.to_string().contains("lora_rank"));
    /// ```
    pub fn with_settings(
        &self,
        settings: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<FinetuneConfig> {
        let serde_json::Value::Object(current) =
            serde_json::to_value(self).map_err(|e| bad("(settings)", e.to_string()))?
        else {
            return Err(bad("(settings)", "settings do not serialize to an object"));
        };
        if let Some(k) = settings.keys().find(|k| !current.contains_key(*k)) {
            return Err(bad(k, "unknown setting"));
        }
        let mut merged = current.clone();
        merged.extend(settings.iter().map(|(k, v)| (k.clone(), v.clone())));
        let config: FinetuneConfig = serde_json::from_value(serde_json::Value::Object(merged))
            .map_err(|e| {
                // Name the setting whose value does not fit: try each one alone.
                let field = settings.iter().find_map(|(k, v)| {
                    let mut one = current.clone();
                    one.insert(k.clone(), v.clone());
                    serde_json::from_value::<FinetuneConfig>(serde_json::Value::Object(one))
                        .err()
                        .map(|_| k.clone())
                });
                bad(field.as_deref().unwrap_or("(settings)"), e.to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; errors name the field.
    pub fn validate(&self) -> Result<()> {
        self.quant_config()?;
        self.lora_config()?;
        self.adamw_config()?;
        self.schedule(1)?;
        for (field, v) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
        ] {
            if v == 0 {
                return Err(bad(field, "must be at least 1"));
            }
        }
        if self.devices.len() > 1 && self.grad_accum < self.devices.len() {
            return Err(bad(
                "grad_accum",
                format!(
                    "{} micro-batches per step cannot give each of {} devices one: each device \
                     takes whole micro-batches (set grad_accum to a multiple of the devices)",
                    self.grad_accum,
                    self.devices.len()
                ),
            ));
        }
        if self.max_len < 8 {
            return Err(bad(
                "max_len",
                format!("{} is too short (at least 8)", self.max_len),
            ));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err(bad("epochs", "must be at least 1 when max_steps is unset"));
        }
        if self.max_steps == Some(0) {
            return Err(bad("max_steps", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(bad("validation_fraction", "must be in [0, 1)"));
        }
        if self.keep_last == 0 {
            return Err(bad("keep_last", "must be at least 1"));
        }
        if let Some(objective) = self.objective() {
            objective.validate()?;
            if self.packing {
                return Err(bad(
                    "packing",
                    format!("{} trains on whole pairs; turn packing off", self.method),
                ));
            }
        } else if self.beta.is_some() || self.label_smoothing != 0.0 || self.precompute_ref_logps {
            let field = if self.beta.is_some() {
                "beta"
            } else if self.label_smoothing != 0.0 {
                "label_smoothing"
            } else {
                "precompute_ref_logps"
            };
            return Err(bad(
                field,
                "applies to preference methods only; set method to dpo, ipo, orpo or simpo",
            ));
        }
        if self.offload_checkpoints && !self.gradient_checkpointing {
            return Err(bad(
                "offload_checkpoints",
                "offloads what gradient checkpointing keeps; turn gradient_checkpointing on",
            ));
        }
        Ok(())
    }

    /// The preference objective with its coefficients (TRL's defaults where unset), or `None`
    /// for supervised fine-tuning.
    ///
    /// ```
    /// use medify_qlora::FinetuneConfig;
    /// use medify_qlora::training::Method;
    /// assert!(FinetuneConfig::default().objective().is_none());
    /// let simpo = FinetuneConfig { method: Method::Simpo, ..FinetuneConfig::default() };
    /// assert_eq!(simpo.objective().unwrap().beta, 2.0);
    /// ```
    pub fn objective(&self) -> Option<PreferenceObjective> {
        self.method.is_preference().then(|| {
            let defaults = PreferenceObjective::new(self.method);
            PreferenceObjective {
                beta: self.beta.unwrap_or(defaults.beta),
                label_smoothing: self.label_smoothing,
                simpo_gamma: self.simpo_gamma,
                ..defaults
            }
        })
    }

    /// The base's quantization, or `None` for a dense base.
    pub fn quant_config(&self) -> Result<Option<QuantConfig>> {
        self.quantization.quant_config()
    }

    /// Takes the adapter settings (rank, alpha, dropout, targets, rsLoRA, DoRA) of an adapter a
    /// run starts from, so the run's configuration says what it trains.
    pub fn adopt_adapter(&mut self, lora: &LoraConfig) {
        self.lora_r = lora.r;
        self.lora_alpha = lora.alpha;
        self.lora_dropout = lora.dropout;
        self.target_modules = lora.target_modules.clone();
        self.use_rslora = lora.use_rslora;
        self.use_dora = lora.use_dora;
    }

    /// The adapters' configuration.
    pub fn lora_config(&self) -> Result<LoraConfig> {
        let config = LoraConfig::new(self.lora_r, self.lora_alpha)
            .with_dropout(self.lora_dropout)
            .with_target_modules(self.target_modules.clone())
            .with_use_rslora(self.use_rslora)
            .with_use_dora(self.use_dora)
            .with_seed(self.seed);
        config.validate().map_err(|e| bad("lora", e.to_string()))?;
        Ok(config)
    }

    /// How records become sequences (length, split, seed).
    pub fn dataset_config(&self) -> DatasetConfig {
        DatasetConfig {
            max_len: self.max_len,
            validation_fraction: self.validation_fraction,
            seed: self.seed,
            ..DatasetConfig::default()
        }
    }

    /// The optimizer's configuration.
    pub fn adamw_config(&self) -> Result<AdamWConfig> {
        let config = AdamWConfig::default()
            .with_state_bits(self.optimizer.state_bits())
            .with_weight_decay(self.weight_decay)
            .with_max_grad_norm((self.max_grad_norm > 0.0).then_some(self.max_grad_norm))
            .with_device_budget(self.optimizer_budget_mib.map(|m| m << 20));
        config
            .validate()
            .map_err(|e| bad("optimizer", e.to_string()))?;
        Ok(config)
    }

    /// The learning-rate schedule over `total_steps`.
    pub fn schedule(&self, total_steps: u64) -> Result<LrSchedule> {
        let warmup = match self.warmup_steps {
            Some(n) => Warmup::Steps(n),
            None => Warmup::Ratio(self.warmup_ratio),
        };
        let s =
            LrSchedule::new(self.lr_schedule, self.learning_rate, total_steps).with_warmup(warmup);
        s.validate()
            .map_err(|e| bad("learning_rate", e.to_string()))?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fields_are_named() {
        let e = FinetuneConfig::from_json(r#"{"lora_rr": 8}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora_rr"), "{e}");
        let e = FinetuneConfig::from_json(r#"{"optimizer": "sgd"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("optimizer") && e.contains("sgd"), "{e}");
        let e = FinetuneConfig::from_json(r#"{"lora_r": 0}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lora"), "{e}");
        let c = FinetuneConfig {
            quantization: BaseQuantization {
                blocksize: 48,
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("quant_blocksize")
        );
        let c = FinetuneConfig {
            grad_accum: 0,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("grad_accum"));
        let e = FinetuneConfig::from_json(r#"{"seed": 1, "lr_schedule": 3}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`lr_schedule`"), "{e}");
    }

    #[test]
    fn choices_are_typed_and_read_in_peft_form() {
        let c = FinetuneConfig::from_json(
            r#"{"quant": "none", "optimizer": "paged_adamw_8bit", "lr_schedule": "cosine",
                "target_modules": ["q_proj", "v_proj"]}"#,
        )
        .unwrap();
        assert_eq!(c.quant_config().unwrap(), None);
        assert_eq!(c.adamw_config().unwrap().state_bits, StateBits::Eight);
        assert_eq!(c.lr_schedule, ScheduleKind::Cosine);
        assert_eq!(
            c.lora_config().unwrap().target_modules,
            TargetModules::names(&["q_proj", "v_proj"])
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["target_modules"],
            serde_json::json!(["q_proj", "v_proj"])
        );
        assert_eq!(json["quant"], "none");
        let regex = FinetuneConfig::from_json(r#"{"target_modules": ".*\\.(q|v)_proj"}"#).unwrap();
        assert!(matches!(regex.target_modules, TargetModules::Regex(_)));
    }

    #[test]
    fn defaults_are_qlora() {
        let c = FinetuneConfig::default();
        let q = c.quant_config().unwrap().unwrap();
        assert_eq!(
            (q.quant_type, q.blocksize, q.double_quant),
            (QuantType::Nf4, 64, true)
        );
        let l = c.lora_config().unwrap();
        assert_eq!((l.r, l.alpha, l.dropout), (64, 16.0, 0.05));
        assert_eq!(l.target_modules, TargetModules::AllLinear);
        let o = c.adamw_config().unwrap();
        assert_eq!(
            (o.state_bits, o.max_grad_norm, o.weight_decay),
            (StateBits::ThirtyTwo, Some(0.3), 0.0)
        );
        let s = c.schedule(1000).unwrap();
        assert_eq!((s.warmup_steps(), s.lr_at(500)), (30, 2e-4));
    }
}
