//! [`Trainer`]: QLoRA training with gradient accumulation, evaluation, checkpoints and exact
//! resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::{Batch, EncodedPair, PreparedData, PreparedPairs, Sequence, pack, unpacked};
use crate::error::{FinetuneError, Result, io_err};
use crate::evaluation::loss::{EvalResult, batch_labels, evaluate_loss, token_batch};
use crate::lora::{LoraConfig, LoraExt, LoraSummary};
use crate::models::CausalLm;
use crate::optim::{LrSchedule, PagedAdamW};
use crate::training::checkpoints::{
    self, BEST_DIR, CHECKPOINTS_DIR, CONFIG_FILE, OPTIMIZER_FILE, STATE_FILE, SUMMARY_FILE,
    TrainState,
};
use crate::training::config::FinetuneConfig;
use crate::training::data_parallel::{DataParallel, DeviceShare};
use crate::training::metrics::{
    EvalMetrics, EvalPreferenceMetrics, PreferenceMetrics, StepMetrics,
};
use crate::training::observers::{RunContext, TrainObserver, default_observers};
use crate::training::preference::{PairStats, PreferenceObjective, ReferenceLogps};
use crate::training::preference_step::{
    PairMicroBatch, Reference, evaluate_pairs, preference_step_gradients, reference_model,
};
use crate::training::provenance::RunSources;
use crate::training::reference_table::ReferenceTable;
use crate::training::step::{MicroBatch, step_gradients};

/// Sequences (supervised) or pairs (preference methods) to train and validate on, already
/// tokenized.
#[derive(Debug, Clone, Default)]
pub struct TrainData {
    /// Training sequences (packed or one example each).
    pub train: Vec<Sequence>,
    /// Validation sequences.
    pub validation: Vec<Sequence>,
    /// Padding id for collation.
    pub pad_id: u32,
    /// Training preference pairs.
    pub pairs: Vec<EncodedPair>,
    /// Validation preference pairs.
    pub validation_pairs: Vec<EncodedPair>,
}

impl TrainData {
    /// Training sequences from prepared records (packed to `max_len` when `config.packing`),
    /// and up to `config.max_eval_records` validation sequences, one record each.
    ///
    /// ```
    /// use medify_qlora::data::{DatasetConfig, PreparedData};
    /// use medify_qlora::{FinetuneConfig, TrainData};
    /// let data = TrainData::from_prepared(&PreparedData::default(), &FinetuneConfig::default(), 0);
    /// assert!(data.train.is_empty());
    /// ```
    pub fn from_prepared(
        prepared: &PreparedData,
        config: &FinetuneConfig,
        pad_id: u32,
    ) -> TrainData {
        let train: Vec<_> = prepared.train.iter().map(|e| e.encoded.clone()).collect();
        let mut validation: Vec<_> = prepared
            .validation
            .iter()
            .map(|e| e.encoded.clone())
            .collect();
        if config.max_eval_records > 0 {
            validation.truncate(config.max_eval_records);
        }
        TrainData {
            train: if config.packing {
                pack(&train, config.max_len)
            } else {
                unpacked(&train)
            },
            validation: unpacked(&validation),
            pad_id,
            ..TrainData::default()
        }
    }

    /// Training and up to `config.max_eval_records` validation pairs for a preference run.
    pub fn from_pairs(prepared: &PreparedPairs, config: &FinetuneConfig, pad_id: u32) -> TrainData {
        let mut validation_pairs = prepared.validation.clone();
        if config.max_eval_records > 0 {
            validation_pairs.truncate(config.max_eval_records);
        }
        TrainData {
            pad_id,
            pairs: prepared.train.clone(),
            validation_pairs,
            ..TrainData::default()
        }
    }

    /// Items an epoch walks through: pairs for a preference run, sequences otherwise.
    fn train_len(&self, preference: bool) -> usize {
        if preference {
            self.pairs.len()
        } else {
            self.train.len()
        }
    }
}

/// Where and how a run writes.
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    /// Run directory: adapter, metrics, plot, checkpoints.
    pub out_dir: PathBuf,
    /// Write into a non-empty `out_dir` (replacing only the trainer's own files).
    pub overwrite: bool,
    /// Show a progress bar on stderr (the [`ProgressDisplay`](crate::training::ProgressDisplay)
    /// observer among the defaults).
    pub progress: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
    /// Where the base model and the data came from: written beside every adapter and
    /// checkpoint (with the base's quantization), named in `adapter_config.json` as
    /// `base_model_name_or_path`, and what a resumed run is checked against.
    pub sources: Option<RunSources>,
}

impl TrainerOptions {
    /// Quiet options writing to `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        TrainerOptions {
            out_dir: out_dir.into(),
            overwrite: false,
            progress: false,
            interrupt: None,
            sources: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Optimizer steps taken in total.
    pub steps: u64,
    /// Labelled tokens trained on.
    pub tokens: u64,
    /// Wall time of this call.
    pub seconds: f64,
    /// Mean training loss of the last step.
    pub last_loss: Option<f64>,
    /// Validation before training.
    pub eval_before: Option<EvalResult>,
    /// Validation after training.
    pub eval_after: Option<EvalResult>,
    /// Lowest validation loss and its step.
    pub best_eval: Option<(u64, f64)>,
    /// Steps the optimizer skipped for non-finite gradients.
    pub skipped_steps: u64,
    /// Stopped early by the interrupt flag.
    pub interrupted: bool,
    /// Preference runs: reward accuracy and margin on the held-out pairs before training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_before: Option<EvalPreferenceMetrics>,
    /// The same after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_after: Option<EvalPreferenceMetrics>,
    /// Newest checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
}

/// Trains a model's LoRA adapters. See the crate documentation for a complete example.
///
/// Adapter dropout masks are a counter-based hash of (config seed, layer, mask number); the
/// trainer seeks every adapter to the step before the step runs, so a resumed run draws the
/// masks of an uninterrupted one, and trainers running concurrently in one process stay
/// reproducible (nothing is drawn from the device's generator).
pub struct Trainer {
    config: FinetuneConfig,
    lora: LoraConfig,
    model: Option<CausalLm>,
    optimizer: PagedAdamW,
    schedule: LrSchedule,
    data: TrainData,
    options: TrainerOptions,
    state: TrainState,
    total_steps: u64,
    summary: Option<LoraSummary>,
    last_checkpoint: Option<PathBuf>,
    observers: Vec<Box<dyn TrainObserver>>,
    /// The preference objective, or `None` for supervised training.
    objective: Option<PreferenceObjective>,
    /// DPO/IPO's reference: a frozen model sharing the base, or the precomputed table.
    reference: RunReference,
    /// Replicas on further devices, for data-parallel training.
    parallel: Option<DataParallel>,
}

/// Where a preference run takes its reference log-probabilities from.
enum RunReference {
    /// None needed (supervised, SimPO, ORPO).
    None,
    /// A frozen copy sharing the policy's base, run every step.
    Model(Box<CausalLm>),
    /// Computed once before training and stored with the run.
    Table(ReferenceTable),
}

impl RunReference {
    /// The reference of micro-batches of training pairs (or, with `validation`, of validation
    /// pairs) given by their indices; a table's entries are gathered into `table`, which the
    /// answer borrows.
    fn for_batches<'a>(
        &'a self,
        groups: &[Vec<usize>],
        validation: bool,
        table: &'a mut Vec<ReferenceLogps>,
    ) -> Reference<'a> {
        match self {
            RunReference::None => Reference::None,
            RunReference::Model(m) => Reference::Model(m),
            RunReference::Table(t) => {
                *table = groups.iter().map(|idx| t.batch(idx, validation)).collect();
                Reference::Precomputed(table)
            }
        }
    }
}

/// What one optimizer step did.
struct StepOutcome {
    loss: f64,
    tokens: usize,
    report: crate::optim::StepReport,
    preference: Option<PairStats>,
    /// Each device's share of a data-parallel step.
    devices: Option<Vec<DeviceShare>>,
}

fn micro_batches_per_epoch(train: usize, batch: usize) -> usize {
    train.div_ceil(batch)
}

impl Trainer {
    /// Adds adapters to `model` and prepares a fresh run in `options.out_dir`. When
    /// `options.sources` names a starting adapter ([`RunSources::adapter`]), the policy starts
    /// from it instead (its rank, alpha and targets replace the settings'), and for DPO and IPO
    /// the reference model is the base with that adapter, frozen.
    pub fn new(
        config: FinetuneConfig,
        mut model: CausalLm,
        data: TrainData,
        options: TrainerOptions,
    ) -> Result<Trainer> {
        config.validate()?;
        let objective = config.objective();
        if data.train_len(objective.is_some()) == 0 {
            return Err(FinetuneError::NoData(if objective.is_some() {
                "no training pairs: every pair was filtered out".into()
            } else {
                "no training sequences: every record was filtered out".into()
            }));
        }
        checkpoints::prepare_run_dir(&options.out_dir, options.overwrite)?;
        checkpoints::remove_leftovers(&options.out_dir)?;
        let mut config = config;
        let start = options.sources.as_ref().and_then(|s| s.adapter.clone());
        let (mut lora, summary) = match &start {
            Some(adapter) => {
                let (lora, summary) = model.load_adapter(&adapter.path)?;
                config.adopt_adapter(&lora);
                (lora, summary)
            }
            None => {
                let lora = config.lora_config()?;
                let summary = model.add_adapters(&lora)?;
                (lora, summary)
            }
        };
        if let Some(sources) = &options.sources {
            lora.base_model_name_or_path
                .get_or_insert_with(|| sources.model.name_or_path.clone());
        }
        let reference = match objective.filter(|o| o.method.needs_reference()) {
            None => RunReference::None,
            Some(_) => {
                let frozen = reference_model(&model, start.is_some())?;
                if config.precompute_ref_logps {
                    let table = ReferenceTable::compute(
                        &frozen,
                        &data.pairs,
                        &data.validation_pairs,
                        data.pad_id,
                        config.batch_size.max(4),
                        config.max_len,
                        config.pair_truncation,
                    )?;
                    table.write(&options.out_dir)?;
                    RunReference::Table(table)
                } else {
                    RunReference::Model(Box::new(frozen))
                }
            }
        };
        model.set_adapters_training(true);
        checkpoints::write_json(&options.out_dir.join(CONFIG_FILE), &config)?;
        let trainer = Self::assemble(
            config,
            lora,
            model,
            data,
            options,
            TrainState::default(),
            Some(summary),
            reference,
        )?;
        trainer.write_sources(&trainer.options.out_dir)?;
        Ok(trainer)
    }

    /// Continues the run saved in `checkpoint_dir` with `model` (the same base, without
    /// adapters). The checkpoint's configuration is used; the result equals an uninterrupted run.
    /// [`RunSources::for_resume`] finds the model and data the run was on.
    pub fn resume(
        checkpoint_dir: &Path,
        model: CausalLm,
        data: TrainData,
        options: TrainerOptions,
    ) -> Result<Trainer> {
        let (config, _) = checkpoints::read_checkpoint(checkpoint_dir)?;
        Self::resume_with(checkpoint_dir, &config, model, data, options)
    }

    /// [`resume`](Self::resume) with settings changed as [`FinetuneConfig::resumed_with`]
    /// allows: e.g. a larger `max_steps` extends the run. `max_steps` below the checkpoint's
    /// step is refused. A preference run's precomputed reference log-probabilities are read
    /// back from the checkpoint; otherwise its reference model is rebuilt (from the base, or
    /// the base and the run's starting adapter).
    pub fn resume_with(
        checkpoint_dir: &Path,
        requested: &FinetuneConfig,
        mut model: CausalLm,
        data: TrainData,
        options: TrainerOptions,
    ) -> Result<Trainer> {
        let (saved, state) = checkpoints::read_checkpoint(checkpoint_dir)?;
        let config = saved.resumed_with(requested)?;
        if let Some(max) = config.max_steps.filter(|&m| m < state.step) {
            return Err(FinetuneError::Config {
                field: "max_steps".into(),
                reason: format!(
                    "{max} is below the checkpoint's step {}; the run is already past it",
                    state.step
                ),
            });
        }
        let needs_reference = config
            .objective()
            .is_some_and(|o| o.method.needs_reference());
        let reference = if !needs_reference {
            RunReference::None
        } else if config.precompute_ref_logps {
            RunReference::Table(ReferenceTable::read(
                checkpoint_dir,
                data.pairs.len(),
                data.validation_pairs.len(),
            )?)
        } else {
            let start = options.sources.as_ref().and_then(|s| s.adapter.as_ref());
            let frozen = match start {
                Some(adapter) => {
                    if !adapter.path.exists() {
                        return Err(FinetuneError::SourceMissing {
                            what: "starting adapter (the reference model's)",
                            path: adapter.path.clone(),
                        });
                    }
                    model.load_adapter(&adapter.path)?;
                    let frozen = reference_model(&model, true)?;
                    model.remove_adapters()?;
                    frozen
                }
                None => reference_model(&model, false)?,
            };
            RunReference::Model(Box::new(frozen))
        };
        let (lora, summary) = model.load_adapter(checkpoint_dir)?;
        model.set_adapters_training(true);
        std::fs::create_dir_all(&options.out_dir).map_err(io_err(&options.out_dir))?;
        checkpoints::remove_leftovers(&options.out_dir)?;
        if let RunReference::Table(table) = &reference {
            table.write(&options.out_dir)?;
        }
        let mut trainer = Self::assemble(
            config,
            lora,
            model,
            data,
            options,
            state,
            Some(summary),
            reference,
        )?;
        let state_file = checkpoint_dir.join(OPTIMIZER_FILE);
        trainer.optimizer.load_state(&state_file)?;
        // Refused here, while the caller still has a usable error, rather than mid-step.
        trainer
            .optimizer
            .check_module(trainer.model())
            .map_err(|e| FinetuneError::Checkpoint {
                path: state_file,
                reason: format!("does not fit the adapter: {e}"),
            })?;
        trainer.last_checkpoint = Some(checkpoint_dir.to_path_buf());
        trainer.write_sources(&trainer.options.out_dir)?;
        checkpoints::write_json(&trainer.options.out_dir.join(CONFIG_FILE), &trainer.config)?;
        Ok(trainer)
    }

    /// Writes the run's sources, with the base's quantization, into `dir` (when known).
    fn write_sources(&self, dir: &Path) -> Result<()> {
        let Some(sources) = &self.options.sources else {
            return Ok(());
        };
        let mut sources = sources.clone();
        sources.model.quantization = Some(self.config.quantization);
        sources.write(dir)
    }

    /// Saves the adapter (and the run's sources beside it) into `dir`.
    fn save_adapter_to(&self, dir: &Path) -> Result<()> {
        self.model().save_adapter(dir, &self.lora, true)?;
        self.write_sources(dir)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: FinetuneConfig,
        lora: LoraConfig,
        model: CausalLm,
        data: TrainData,
        options: TrainerOptions,
        state: TrainState,
        summary: Option<LoraSummary>,
        reference: RunReference,
    ) -> Result<Trainer> {
        let objective = config.objective();
        let per_epoch =
            micro_batches_per_epoch(data.train_len(objective.is_some()), config.batch_size)
                .div_ceil(config.grad_accum) as u64;
        let total_steps = config.max_steps.unwrap_or(per_epoch * config.epochs as u64);
        let schedule = config.schedule(total_steps)?;
        let optimizer = PagedAdamW::new(config.adamw_config()?)?;
        let observers = default_observers(options.progress);
        Ok(Trainer {
            config,
            lora,
            model: Some(model),
            optimizer,
            schedule,
            data,
            options,
            state,
            total_steps,
            summary,
            last_checkpoint: None,
            observers,
            objective,
            reference,
            parallel: None,
        })
    }

    /// Trains data-parallel over [`FinetuneConfig::devices`]: `replicas` are the base loaded on
    /// `devices[1..]` (the trainer's own model lives on `devices[0]`); each gets a copy of the
    /// adapters, and every step deals its micro-batches between the devices and sums their
    /// gradients ([`DataParallel`]). The optimizer, checkpoints and resume stay on the first
    /// device, and the result equals training on one device.
    pub fn with_data_parallel(mut self, replicas: Vec<CausalLm>) -> Result<Trainer> {
        let mut parallel = DataParallel::new(self.model(), replicas, &self.config.devices)?;
        if let RunReference::Model(reference) = &self.reference {
            parallel.set_reference(reference)?;
        }
        self.parallel = Some(parallel);
        Ok(self)
    }

    /// The observers of the training loop, in the order they are called: the
    /// [`default_observers`] until changed. Push one of your own, remove a default (say the
    /// process-wide [`PeakMemory`](crate::training::PeakMemory) when several trainers share a
    /// process) or clear them all; the adapter, checkpoints and resume do not depend on them.
    pub fn observers_mut(&mut self) -> &mut Vec<Box<dyn TrainObserver>> {
        &mut self.observers
    }

    /// Adds `observer` after the others.
    pub fn add_observer(&mut self, observer: impl TrainObserver + 'static) {
        self.observers.push(Box::new(observer));
    }

    /// Removes the observers named `name` (see [`TrainObserver::name`]); returns how many.
    pub fn remove_observer(&mut self, name: &str) -> usize {
        let before = self.observers.len();
        self.observers.retain(|o| o.name() != name);
        before - self.observers.len()
    }

    /// Calls `f` on every observer with the run as it stands. The observers are put back even
    /// when one fails.
    fn notify(
        &mut self,
        mut f: impl FnMut(&mut dyn TrainObserver, &RunContext) -> Result<()>,
    ) -> Result<()> {
        let mut observers = std::mem::take(&mut self.observers);
        let result = {
            let run = RunContext {
                out_dir: &self.options.out_dir,
                config: &self.config,
                total_steps: self.total_steps,
                state: &self.state,
                model: self.model(),
            };
            observers.iter_mut().try_for_each(|o| f(o.as_mut(), &run))
        };
        self.observers = observers;
        result
    }

    /// The model with its adapters.
    pub fn model(&self) -> &CausalLm {
        self.model
            .as_ref()
            .expect("the model is only taken during the optimizer step")
    }

    /// Gives the model back (e.g. to merge or chat after training).
    pub fn into_model(mut self) -> CausalLm {
        self.model
            .take()
            .expect("the model is only taken during a step")
    }

    /// The run directory.
    pub fn out_dir(&self) -> &Path {
        &self.options.out_dir
    }

    /// The adapters' configuration (for `save_adapter`).
    pub fn lora_config(&self) -> &LoraConfig {
        &self.lora
    }

    /// Trainable versus total parameters.
    pub fn adapter_summary(&self) -> Option<&LoraSummary> {
        self.summary.as_ref()
    }

    /// Steps the whole run takes.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// Where the run stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Validation loss of the current adapters (`None` without validation data, or when no
    /// validation row has a labelled token). For a preference run: the objective's mean over
    /// the held-out pairs (its `perplexity` is that loss's exponential, not a perplexity; see
    /// [`evaluate_preferences`](Self::evaluate_preferences) for rewards).
    pub fn evaluate(&self) -> Result<Option<EvalResult>> {
        Ok(self.evaluation()?.map(|(r, _)| r))
    }

    /// Reward accuracy, margin and log-probabilities of the current adapters on the held-out
    /// pairs (`None` for a supervised run or without validation pairs).
    pub fn evaluate_preferences(&self) -> Result<Option<EvalPreferenceMetrics>> {
        Ok(self.evaluation()?.and_then(|(_, p)| p))
    }

    fn evaluation(&self) -> Result<Option<(EvalResult, Option<EvalPreferenceMetrics>)>> {
        let batch = self.config.batch_size.max(4);
        if let Some(objective) = &self.objective {
            let pairs = &self.data.validation_pairs;
            if pairs.is_empty() {
                return Ok(None);
            }
            let micro_batches = PairMicroBatch::chunks(
                pairs,
                batch,
                self.data.pad_id,
                Some(self.config.max_len),
                self.config.pair_truncation,
            );
            let groups: Vec<Vec<usize>> = (0..pairs.len())
                .collect::<Vec<_>>()
                .chunks(batch)
                .map(<[usize]>::to_vec)
                .collect();
            let mut table = Vec::new();
            let reference = self.reference.for_batches(&groups, true, &mut table);
            let e = evaluate_pairs(self.model(), &micro_batches, objective, reference)?;
            let result = EvalResult {
                loss: e.loss,
                perplexity: e.loss.exp(),
                tokens: e.tokens,
                records: pairs.len(),
            };
            return Ok(Some((result, Some(EvalPreferenceMetrics::of(&e.stats)))));
        }
        if self.data.validation.is_empty() {
            return Ok(None);
        }
        let r = evaluate_loss(self.model(), &self.data.validation, self.data.pad_id, batch)?;
        // Validation rows with no labelled token (all cut by max_len) give no loss to track.
        Ok((r.tokens > 0).then_some((r, None)))
    }

    /// Pairs collated for the model, cut to `max_len` as the settings say.
    fn pair_micro_batch(&self, pairs: &[EncodedPair]) -> PairMicroBatch {
        PairMicroBatch::new(
            pairs,
            self.data.pad_id,
            Some(self.config.max_len),
            self.config.pair_truncation,
        )
    }

    /// Micro-batches (indices into `train`) of one epoch, in its shuffled order.
    fn epoch_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.data.train_len(self.objective.is_some())).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.config.seed ^ (epoch + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        order.shuffle(&mut rng);
        order
            .chunks(self.config.batch_size)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// The micro-batches of the next optimizer step; advances the data position.
    fn next_window(&mut self) -> Vec<Vec<usize>> {
        let mut batches = self.epoch_batches(self.state.epoch);
        if self.state.cursor >= batches.len() {
            self.state.epoch += 1;
            self.state.cursor = 0;
            batches = self.epoch_batches(self.state.epoch);
        }
        let end = (self.state.cursor + self.config.grad_accum).min(batches.len());
        let window = batches[self.state.cursor..end].to_vec();
        self.state.cursor = end;
        window
    }

    /// One optimizer step over the next window of micro-batches ([`step_gradients`], or
    /// [`preference_step_gradients`] for a preference run, then the optimizer); the trainer
    /// keeps the model whatever fails.
    fn step(&mut self) -> Result<StepOutcome> {
        let step = self.state.step + 1;
        let window = self.next_window();
        let model = self.model();
        let mut shares = None;
        let (grads, loss, tokens, preference) = match &self.objective {
            None => {
                let micro_batches: Vec<MicroBatch> = window
                    .iter()
                    .map(|idx| {
                        let rows: Vec<Sequence> =
                            idx.iter().map(|&i| self.data.train[i].clone()).collect();
                        let batch = Batch::collate(&rows, self.data.pad_id);
                        (token_batch(&batch), batch_labels(&batch))
                    })
                    .collect();
                let g = match &self.parallel {
                    Some(parallel) => {
                        let p = parallel.step_gradients(
                            model,
                            &micro_batches,
                            self.config.seed,
                            step,
                            self.config.checkpointing(),
                        )?;
                        shares = Some(p.shares);
                        p.step
                    }
                    None => step_gradients(
                        model,
                        &micro_batches,
                        self.config.seed,
                        step,
                        self.config.checkpointing(),
                    )?,
                };
                (g.grads, g.loss, g.tokens, None)
            }
            Some(objective) => {
                let micro_batches: Vec<PairMicroBatch> = window
                    .iter()
                    .map(|idx| {
                        let pairs: Vec<EncodedPair> =
                            idx.iter().map(|&i| self.data.pairs[i].clone()).collect();
                        self.pair_micro_batch(&pairs)
                    })
                    .collect();
                let mut table = Vec::new();
                let reference = self.reference.for_batches(&window, false, &mut table);
                let g = match &self.parallel {
                    Some(parallel) => {
                        let (g, devices) = parallel.preference_step_gradients(
                            model,
                            &micro_batches,
                            objective,
                            reference,
                            self.config.seed,
                            step,
                            self.config.checkpointing(),
                        )?;
                        shares = Some(devices);
                        g
                    }
                    None => preference_step_gradients(
                        model,
                        &micro_batches,
                        objective,
                        reference,
                        self.config.seed,
                        step,
                        self.config.checkpointing(),
                    )?,
                };
                (g.grads, g.loss, g.tokens, Some(g.stats))
            }
        };
        if !loss.is_finite() {
            return Err(FinetuneError::NonFiniteLoss {
                step,
                loss,
                last_checkpoint: self.last_checkpoint.clone(),
            });
        }
        // The optimizer's only failure (state that does not fit) is checked while the trainer
        // still holds the model, so an error leaves the trainer whole and usable.
        self.optimizer.check_module(model)?;
        let lr = self.schedule.lr_at(self.state.step);
        let model = self
            .model
            .take()
            .expect("the model is only taken for the optimizer step");
        let (model, report) = self.optimizer.step(lr, model, grads)?;
        if let Some(parallel) = &mut self.parallel {
            parallel.sync(&model)?;
        }
        self.model = Some(model);
        self.state.step = step;
        self.state.tokens += tokens as u64;
        Ok(StepOutcome {
            loss,
            tokens,
            report,
            preference,
            devices: shares,
        })
    }

    /// Writes a checkpoint (adapter, optimizer state, position, configuration) atomically and
    /// prunes old ones.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf> {
        let dir = self
            .options
            .out_dir
            .join(CHECKPOINTS_DIR)
            .join(format!("step-{:06}", self.state.step));
        std::fs::create_dir_all(dir.parent().unwrap_or(&dir)).map_err(io_err(&dir))?;
        checkpoints::write_dir_atomic(&dir, |tmp| {
            self.save_adapter_to(tmp)?;
            self.optimizer.save(&tmp.join(OPTIMIZER_FILE), true)?;
            checkpoints::write_json(&tmp.join(STATE_FILE), &self.state)?;
            if let RunReference::Table(table) = &self.reference {
                table.write(tmp)?;
            }
            checkpoints::write_json(&tmp.join(CONFIG_FILE), &self.config)
        })?;
        checkpoints::prune_checkpoints(&self.options.out_dir, self.config.keep_last)?;
        self.last_checkpoint = Some(dir.clone());
        self.notify(|o, run| o.on_checkpoint(run, &dir))?;
        Ok(dir)
    }

    fn evaluate_and_log(&mut self) -> Result<Option<(EvalResult, Option<EvalPreferenceMetrics>)>> {
        let Some((r, preference)) = self.evaluation()? else {
            return Ok(None);
        };
        let eval = EvalMetrics {
            preference,
            ..EvalMetrics::of(self.state.step, &r)
        };
        self.notify(|o, run| o.on_eval(run, &eval))?;
        let better = self.state.best_eval.is_none_or(|(_, best)| r.loss < best);
        if better && self.state.step > 0 {
            self.state.best_eval = Some((self.state.step, r.loss));
            let dir = self.options.out_dir.join(BEST_DIR);
            checkpoints::write_dir_atomic(&dir, |tmp| self.save_adapter_to(tmp))?;
        }
        Ok(Some((r, preference)))
    }

    /// Trains to the last step (or until interrupted), evaluating and checkpointing as
    /// configured, then writes the adapter and the summary into the run directory; the
    /// observers write the rest (by default `metrics.jsonl`, the progress bar, `loss.png` and
    /// the model card).
    pub fn train(&mut self) -> Result<TrainSummary> {
        let started = Instant::now();
        self.notify(|o, run| o.on_train_start(run))?;
        if self.state.step == 0 && self.state.eval_before.is_none() {
            let before = self.evaluate_and_log()?;
            self.state.eval_before = before.map(|(r, _)| r);
            self.state.preference_before = before.and_then(|(_, p)| p);
        }
        let mut last_loss = None;
        let mut interrupted = false;
        while self.state.step < self.total_steps {
            self.notify(|o, run| o.before_step(run))?;
            let t = Instant::now();
            let StepOutcome {
                loss,
                tokens,
                report,
                preference,
                devices,
            } = self.step()?;
            let secs = t.elapsed().as_secs_f64();
            last_loss = Some(loss);
            let mut metrics = StepMetrics {
                step: self.state.step,
                epoch: self.state.epoch,
                loss,
                lr: report.lr,
                grad_norm: report.grad_norm,
                clip_scale: report.clip_scale,
                tokens: tokens as u64,
                tokens_per_s: tokens as f64 / secs.max(1e-9),
                skipped: !report.applied,
                elapsed_s: started.elapsed().as_secs_f64(),
                peak_rss_bytes: None,
                device_reserved_bytes: None,
                preference: preference.as_ref().map(PreferenceMetrics::of),
                devices,
            };
            self.notify(|o, run| o.after_step(run, &mut metrics))?;
            let step = self.state.step;
            let every = |n: u64| n > 0 && step.is_multiple_of(n);
            if every(self.config.eval_every) && self.state.step < self.total_steps {
                self.evaluate_and_log()?;
            }
            if every(self.config.save_every) {
                self.save_checkpoint()?;
            }
            if self
                .options
                .interrupt
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst))
            {
                if !every(self.config.save_every) {
                    self.save_checkpoint()?;
                }
                interrupted = true;
                break;
            }
        }
        let (eval_after, preference_after) = if interrupted {
            (None, None)
        } else {
            match self.evaluate_and_log()? {
                Some((r, p)) => (Some(r), p),
                None => (None, None),
            }
        };
        let out = self.options.out_dir.clone();
        if !interrupted {
            self.save_adapter_to(&out)?;
        }
        let summary = TrainSummary {
            steps: self.state.step,
            tokens: self.state.tokens,
            seconds: started.elapsed().as_secs_f64(),
            last_loss,
            eval_before: self.state.eval_before,
            eval_after,
            best_eval: self.state.best_eval,
            skipped_steps: self.optimizer.skipped_steps(),
            interrupted,
            last_checkpoint: self.last_checkpoint.clone(),
            preference_before: self.state.preference_before,
            preference_after,
        };
        checkpoints::write_json(&out.join(SUMMARY_FILE), &summary)?;
        self.notify(|o, run| o.on_train_end(run, &summary))?;
        Ok(summary)
    }
}
