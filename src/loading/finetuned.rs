//! Loading a fine-tuned model: the base its adapter was trained over, held as it was during
//! training (4-bit form, compute dtype, chat template), with the adapter applied. What `eval`,
//! `chat`, `serve`, `merge` and sweeps talk to.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::Result;
use crate::lora::{LoraExt, LoraSummary};
use crate::models::{ComputeDtype, LoadOptions};
use crate::training::checkpoints::{CONFIG_FILE, read_json};
use crate::training::config::compute_dtype_on;
use crate::training::{AdapterBase, BaseQuant, FinetuneConfig};

use super::base::{BaseModel, load_base_with};

/// What to change when loading a fine-tuned model; what is left `None` comes from the run's
/// record beside the adapter (`run_sources.json`, `finetune_config.json`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FinetunedOptions {
    /// The base model, instead of the one the run records.
    pub model: Option<PathBuf>,
    /// How to hold the base (`BaseQuant::Dense`: as stored), instead of as the run held it.
    pub quant: Option<BaseQuant>,
    /// A built-in chat template, instead of the run's (or else the model's own).
    pub template: Option<String>,
    /// The compute dtype, instead of the run's (or else the device's default).
    pub compute_dtype: Option<ComputeDtype>,
}

/// A base model with a trained adapter applied.
#[derive(Debug)]
pub struct FinetunedModel {
    /// The model (adapters applied, in inference mode), its tokenizer and chat encoder.
    pub base: BaseModel,
    /// Which base was loaded and how it is held, and whether the run's record said so.
    pub from: AdapterBase,
    /// The run's settings, when the adapter directory records them (a run or checkpoint
    /// directory does; a PEFT adapter from elsewhere does not).
    pub settings: Option<FinetuneConfig>,
    /// Trainable versus total parameters of the adapter.
    pub adapter: LoraSummary,
}

impl FinetunedModel {
    /// Loads the adapter in `adapter_dir` (a run directory, a checkpoint, `best/`, or any PEFT
    /// adapter) over its base on `device`, as `options` and the run's record say.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_qlora::loading::{FinetunedModel, FinetunedOptions};
    /// let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    /// let options = FinetunedOptions { model: Some(root.join("fixtures/tiny_models/llama")),
    ///     ..FinetunedOptions::default() };
    /// let tuned = FinetunedModel::load(&root.join("fixtures/lora/peft_lora"), &Device::flex(), &options)?;
    /// assert!(tuned.adapter.trainable > 0);
    /// # Ok::<(), medify_qlora::FinetuneError>(())
    /// ```
    pub fn load(
        adapter_dir: impl AsRef<Path>,
        device: &Device,
        options: &FinetunedOptions,
    ) -> Result<FinetunedModel> {
        let adapter_dir = adapter_dir.as_ref();
        let from = AdapterBase::resolve(
            Some(adapter_dir),
            options.model.as_deref(),
            options.quant.map(BaseQuant::linear_quant),
        )?;
        let config_file = adapter_dir.join(CONFIG_FILE);
        let settings: Option<FinetuneConfig> = if config_file.is_file() {
            Some(read_json(&config_file)?)
        } else {
            None
        };
        let compute_dtype = compute_dtype_on(
            options
                .compute_dtype
                .or(settings.as_ref().and_then(|s| s.compute_dtype)),
            device,
        )?;
        let load = LoadOptions {
            quantize: from.quant.clone(),
            compute_dtype,
        };
        let template = options
            .template
            .as_deref()
            .or(settings.as_ref().and_then(|s| s.template.as_deref()));
        let mut base = load_base_with(&from.model, device, &load, template)?;
        let (_, adapter) = base.model.load_adapter(adapter_dir)?;
        Ok(FinetunedModel {
            base,
            from,
            settings,
            adapter,
        })
    }
}
