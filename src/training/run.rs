//! `start_run`: a fine-tuning run from its settings and sources, ready to train: the base
//! loaded (held as the settings say), the data read and rendered through the chat template, and
//! the trainer created or resumed. [`Finetune`](crate::Finetune) and [`crate::run_sweep`] both
//! start their runs here.

use std::path::Path;

use burn::tensor::Device;

use crate::data::{
    ChatEncoder, DatasetConfig, PairTruncation, PreparedData, PreparedPairs, SourcedExample,
    SourcedPair, prepare, prepare_pairs,
};
use crate::error::Result;
use crate::loading::base::load_base_with;
use crate::training::config::FinetuneConfig;
use crate::training::provenance::{DataReport, DataSource, RunSources};
use crate::training::trainer::{TrainData, Trainer, TrainerOptions};

/// A run ready to [`Trainer::train`], and what its data came to.
pub struct StartedRun {
    /// The trainer (its `out_dir` is the run directory).
    pub trainer: Trainer,
    /// Records read from the data.
    pub records: usize,
    /// Training sequences after rendering, truncation and packing (pairs, for a preference run).
    pub train_sequences: usize,
    /// Validation sequences (pairs, for a preference run).
    pub validation_sequences: usize,
    /// The model and data the run trains on.
    pub sources: RunSources,
    /// What each data source came to (also in the run directory's `data_report.json`).
    pub data: DataReport,
}

/// Data sources read, prepared and counted.
pub struct PreparedSources {
    /// The records as read, every source in order.
    pub records: Vec<SourcedExample>,
    /// Training and validation examples.
    pub prepared: PreparedData,
    /// Per-source counts.
    pub report: DataReport,
}

/// Reads every source of `data`, marks each record with its source, and prepares them
/// together with `dataset`'s settings and the sources' weights. Runs, the sweep's held-out
/// answers and `cargo xtask preview` all see data through here.
pub fn prepare_sources(
    data: &[DataSource],
    encoder: &ChatEncoder,
    dataset: DatasetConfig,
) -> Result<PreparedSources> {
    let mut reads = DataSource::read_all(data)?;
    let records: Vec<SourcedExample> = reads
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.records))
        .collect();
    let dataset = DatasetConfig {
        source_weights: DataSource::weights(data),
        ..dataset
    };
    let prepared = prepare(records.clone(), encoder, &dataset)?;
    let report = DataReport::new(data, &reads, &prepared.report);
    Ok(PreparedSources {
        records,
        prepared,
        report,
    })
}

/// Preference data sources read, prepared and counted.
pub struct PreparedPairSources {
    /// The pairs as read, every source in order.
    pub pairs: Vec<SourcedPair>,
    /// Training and validation pairs.
    pub prepared: PreparedPairs,
    /// Per-source counts (records are pairs).
    pub report: DataReport,
}

/// [`prepare_sources`] for preference pairs: reads every source of `data` as pairs, marks
/// each with its source, and prepares them together (dedupe, split, weights, TRL's
/// tokenization cut to `dataset.max_len` with `truncation`).
pub fn prepare_pair_sources(
    data: &[DataSource],
    encoder: &ChatEncoder,
    dataset: DatasetConfig,
    truncation: PairTruncation,
) -> Result<PreparedPairSources> {
    let mut reads = DataSource::read_all_pairs(data)?;
    let pairs: Vec<SourcedPair> = reads
        .iter_mut()
        .flat_map(|r| std::mem::take(&mut r.pairs))
        .collect();
    let dataset = DatasetConfig {
        source_weights: DataSource::weights(data),
        ..dataset
    };
    let prepared = prepare_pairs(pairs.clone(), encoder, &dataset, truncation)?;
    let report = DataReport::of_pairs(data, &reads, &prepared.report);
    Ok(PreparedPairSources {
        pairs,
        prepared,
        report,
    })
}

/// Loads `sources.model` on `device` (an autodiff device), prepares `sources.data` with
/// `config`, and creates the trainer writing to `options.out_dir`, or resumes it from
/// `resume` (a checkpoint directory). `options.sources` is set to `sources`. With several
/// [`FinetuneConfig::devices`], the base is loaded on each further one as well and the trainer
/// trains data-parallel.
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
    let (data, data_report, records) = if config.method.is_preference() {
        let p = prepare_pair_sources(
            &sources.data,
            &encoder,
            config.dataset_config(),
            config.pair_truncation,
        )?;
        let data = TrainData::from_pairs(&p.prepared, config, encoder.pad_id());
        (data, p.report, p.prepared.report.records)
    } else {
        let p = prepare_sources(&sources.data, &encoder, config.dataset_config())?;
        let data = TrainData::from_prepared(&p.prepared, config, encoder.pad_id());
        (data, p.report, p.prepared.report.records)
    };
    let (train_sequences, validation_sequences) = if config.method.is_preference() {
        (data.pairs.len(), data.validation_pairs.len())
    } else {
        (data.train.len(), data.validation.len())
    };
    let options = TrainerOptions {
        sources: Some(sources.clone()),
        ..options
    };
    let mut trainer = match resume {
        Some(ckpt) => Trainer::resume_with(ckpt, config, base.model, data, options)?,
        None => Trainer::new(config.clone(), base.model, data, options)?,
    };
    if config.devices.len() > 1 {
        // Every further device holds the base too; the trainer gives each the adapters. A
        // device named again (flex twice: micro-batches in parallel on one CPU) shares the
        // first one's base instead of loading a second copy.
        let replicas = config.devices[1..]
            .iter()
            .map(|spec| {
                if *spec == config.devices[0] {
                    return Ok(trainer.model().clone());
                }
                let device = spec.open()?.autodiff();
                let options = config.load_options(&device)?;
                let replica = load_base_with(
                    &sources.model.path,
                    &device,
                    &options,
                    config.template.as_deref(),
                )?;
                Ok(replica.model)
            })
            .collect::<Result<Vec<_>>>()?;
        trainer = trainer.with_data_parallel(replicas)?;
    }
    data_report.write(trainer.out_dir())?;
    Ok(StartedRun {
        trainer,
        records,
        train_sequences,
        validation_sequences,
        sources,
        data: data_report,
    })
}
