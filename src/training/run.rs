//! `start_run`: a fine-tuning run from its settings and sources, ready to train: the base
//! loaded (held as the settings say), the data read and rendered through the chat template, and
//! the trainer created or resumed. [`Finetune`](crate::Finetune) and [`crate::run_sweep`] both
//! start their runs here.

use std::path::Path;

use burn::tensor::Device;

use crate::data::prepare;
use crate::error::Result;
use crate::loading::base::load_base_with;
use crate::training::config::FinetuneConfig;
use crate::training::provenance::RunSources;
use crate::training::trainer::{TrainData, Trainer, TrainerOptions};

/// A run ready to [`Trainer::train`], and what its data came to.
pub struct StartedRun {
    /// The trainer (its `out_dir` is the run directory).
    pub trainer: Trainer,
    /// Records read from the data.
    pub records: usize,
    /// Training sequences after rendering, truncation and packing.
    pub train_sequences: usize,
    /// Validation sequences.
    pub validation_sequences: usize,
    /// The model and data the run trains on.
    pub sources: RunSources,
}

/// Loads `sources.model` on `device` (an autodiff device), prepares `sources.data` with
/// `config`, and creates the trainer writing to `options.out_dir`, or resumes it from
/// `resume` (a checkpoint directory). `options.sources` is set to `sources`.
pub(crate) fn start_run(
    config: &FinetuneConfig,
    sources: RunSources,
    device: &Device,
    options: TrainerOptions,
    resume: Option<&Path>,
) -> Result<StartedRun> {
    let base = load_base_with(
        &sources.model.path,
        device,
        &config.load_options(device)?,
        config.template.as_deref(),
    )?;
    let encoder = base
        .encoder
        .clone()
        .with_system_prompt(config.system_prompt.clone());
    let read = sources.data.read()?;
    let prepared = prepare(read.records, &encoder, &config.dataset_config())?;
    let data = TrainData::from_prepared(&prepared, config, encoder.pad_id());
    let (records, train_sequences, validation_sequences) = (
        prepared.report.records,
        data.train.len(),
        data.validation.len(),
    );
    let options = TrainerOptions {
        sources: Some(sources.clone()),
        ..options
    };
    let trainer = match resume {
        Some(ckpt) => Trainer::resume_with(ckpt, config, base.model, data, options)?,
        None => Trainer::new(config.clone(), base.model, data, options)?,
    };
    Ok(StartedRun {
        trainer,
        records,
        train_sequences,
        validation_sequences,
        sources,
    })
}
