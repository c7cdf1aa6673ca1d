//! [`Finetune`]: a whole fine-tuning run in one call. Start one from settings, a base model and
//! data, or resume one from a checkpoint or a run directory; [`Finetune::run`] loads the base,
//! prepares the data, trains and writes the adapter, as TRL's `SFTTrainer(...).train()` does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::tensor::Device;

use crate::error::{FinetuneError, Result};
use crate::loading::{SMOLLM2_HUB_ID, auto_device};
use crate::training::checkpoints::{CHECKPOINTS_DIR, checkpoint_to_resume, read_checkpoint};
use crate::training::config::FinetuneConfig;
use crate::training::observers::TrainObserver;
use crate::training::provenance::{AdapterSource, DataSource, ModelSource, RunSources};
use crate::training::run::{StartedRun, start_run};
use crate::training::trainer::{TrainSummary, TrainerOptions};

/// A fine-tuning run to start or resume.
///
/// ```
/// use medify_qlora::{Finetune, FinetuneConfig, ModelSource};
/// let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
/// let out = std::env::temp_dir().join(format!("medify-finetune-doc-{}", std::process::id()));
/// let config = FinetuneConfig { lora_r: 4, max_steps: Some(2), batch_size: 4, grad_accum: 1,
///     max_len: 64, save_every: 1, ..FinetuneConfig::default() };
/// let model = ModelSource::new(&root.join("fixtures/tiny_models/llama"), None)?;
/// let summary = Finetune::new(config).model(model).output(&out).overwrite(true).run()?;
/// assert_eq!(summary.steps, 2);
/// // Later, or after a crash: continue the same run to 3 steps from its newest checkpoint.
/// let resumed = Finetune::resume(&out)?.settings(|c| c.max_steps = Some(3)).run()?;
/// assert_eq!(resumed.steps, 3);
/// # std::fs::remove_dir_all(&out)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Finetune {
    config: FinetuneConfig,
    resume: Option<Resumed>,
    model: Option<ModelSource>,
    data: Vec<DataSource>,
    adapter: Option<AdapterSource>,
    out_dir: Option<PathBuf>,
    device: Option<Device>,
    overwrite: bool,
    allow_source_change: bool,
    progress: bool,
    interrupt: Option<Arc<AtomicBool>>,
    default_observers: bool,
    observers: Vec<Box<dyn TrainObserver>>,
}

/// What a resumed run continues from.
struct Resumed {
    checkpoint: PathBuf,
    saved: FinetuneConfig,
    recorded: Option<RunSources>,
}

impl Finetune {
    /// A new run with `config`. Give it a base model ([`model`](Self::model)) and an output
    /// directory ([`output`](Self::output)); the data defaults to the embedded medical Q&A set.
    pub fn new(config: FinetuneConfig) -> Finetune {
        Finetune {
            config,
            resume: None,
            model: None,
            data: Vec::new(),
            adapter: None,
            out_dir: None,
            device: None,
            overwrite: false,
            allow_source_change: false,
            progress: false,
            interrupt: None,
            default_observers: true,
            observers: Vec::new(),
        }
    }

    /// Continues a run from `path`: a checkpoint directory, or a run directory (its newest
    /// checkpoint that reads back whole, e.g. after a crash). The run's settings, model and data
    /// are the checkpoint's; [`settings`](Self::settings) may change what
    /// [`FinetuneConfig::resumed_with`] allows (e.g. more steps), and a model or data given is
    /// checked against the recorded one. The output is the checkpoint's run directory. The
    /// result equals an uninterrupted run.
    pub fn resume(path: impl AsRef<Path>) -> Result<Finetune> {
        let checkpoint = checkpoint_to_resume(path.as_ref())?;
        let (saved, _) = read_checkpoint(&checkpoint)?;
        let recorded = RunSources::read(&checkpoint)?;
        let mut run = Finetune::new(saved.clone());
        run.out_dir = run_dir_of(&checkpoint);
        run.resume = Some(Resumed {
            checkpoint,
            saved,
            recorded,
        });
        Ok(run)
    }

    /// The base model (for a resumed run: instead of the recorded one, which must have the same
    /// content unless [`allow_source_change`](Self::allow_source_change)).
    pub fn model(mut self, model: ModelSource) -> Finetune {
        self.model = Some(model);
        self
    }

    /// Starts the policy from an adapter instead of a new one: the usual recipe is an SFT run,
    /// then DPO from its adapter. For DPO and IPO the reference model is then the base with
    /// this adapter, frozen (TRL's `ref_adapter_name`: a second copy of the adapter, not of the
    /// base). A resumed run uses the recorded one.
    pub fn adapter(mut self, adapter: AdapterSource) -> Finetune {
        self.adapter = Some(adapter);
        self
    }

    /// A data source; call again to train on several at once, each read its own way and
    /// sampled by its [`weight`](DataSource::weight). Default for a new run: the embedded
    /// medical Q&A set (the embedded medical-safety preference pairs for a preference method);
    /// for a resumed run, as [`model`](Self::model), every recorded source
    /// given again, in the same order.
    pub fn data(mut self, data: DataSource) -> Finetune {
        self.data.push(data);
        self
    }

    /// The run directory: adapter, `metrics.jsonl`, `loss.png`, checkpoints.
    pub fn output(mut self, dir: impl Into<PathBuf>) -> Finetune {
        self.out_dir = Some(dir.into());
        self
    }

    /// Changes settings: all of them for a new run; for a resumed run, those
    /// [`FinetuneConfig::resumed_with`] lets change mid-run (others are refused at
    /// [`start`](Self::start)).
    pub fn settings(mut self, change: impl FnOnce(&mut FinetuneConfig)) -> Finetune {
        change(&mut self.config);
        self
    }

    /// The device to train on (autodiff is added). Default: the first of
    /// [`FinetuneConfig::devices`] when set (data-parallel training), else [`auto_device`].
    pub fn device(mut self, device: Device) -> Finetune {
        self.device = Some(device);
        self
    }

    /// Write into a non-empty output directory (replacing only the trainer's own files).
    pub fn overwrite(mut self, yes: bool) -> Finetune {
        self.overwrite = yes;
        self
    }

    /// For a resumed run: accept a model or data whose content differs from the recorded one.
    pub fn allow_source_change(mut self, yes: bool) -> Finetune {
        self.allow_source_change = yes;
        self
    }

    /// Show a progress bar on stderr.
    pub fn progress(mut self, on: bool) -> Finetune {
        self.progress = on;
        self
    }

    /// When `flag` is set (e.g. by a Ctrl-C handler), stop after the current step with a
    /// checkpoint.
    pub fn interrupt(mut self, flag: Arc<AtomicBool>) -> Finetune {
        self.interrupt = Some(flag);
        self
    }

    /// Adds an observer of the training loop after the default ones.
    pub fn observer(mut self, observer: impl TrainObserver + 'static) -> Finetune {
        self.observers.push(Box::new(observer));
        self
    }

    /// Leaves out the [`default_observers`](crate::training::default_observers) (metrics log,
    /// progress bar, loss plot, model card, peak memory); only those added with
    /// [`observer`](Self::observer) are called.
    pub fn without_default_observers(mut self) -> Finetune {
        self.default_observers = false;
        self
    }

    /// The settings the run starts with (for a resumed run: before the check against the
    /// checkpoint).
    pub fn config(&self) -> &FinetuneConfig {
        &self.config
    }

    /// The checkpoint a resumed run continues from.
    pub fn checkpoint(&self) -> Option<&Path> {
        self.resume.as_ref().map(|r| r.checkpoint.as_path())
    }

    /// The model and data a resumed run's checkpoint records (`None` for a new run, or a
    /// checkpoint older than the record).
    pub fn recorded_sources(&self) -> Option<&RunSources> {
        self.resume.as_ref().and_then(|r| r.recorded.as_ref())
    }

    /// The output directory, when given or known from the resumed checkpoint.
    pub fn output_dir(&self) -> Option<&Path> {
        self.out_dir.as_deref()
    }

    /// Loads the base, prepares the data and creates (or resumes) the trainer, ready to
    /// [`train`](crate::Trainer::train).
    pub fn start(self) -> Result<StartedRun> {
        let Finetune {
            config,
            resume,
            model,
            data,
            adapter,
            out_dir,
            device,
            overwrite,
            allow_source_change,
            progress,
            interrupt,
            default_observers,
            observers,
        } = self;
        let out_dir = out_dir.ok_or_else(|| FinetuneError::Config {
            field: "output".into(),
            reason: match &resume {
                Some(r) => format!(
                    "{} is not inside a run's {CHECKPOINTS_DIR}/ directory; give the output \
                     directory",
                    r.checkpoint.display()
                ),
                None => "a new run needs an output directory".into(),
            },
        })?;
        let (config, sources) = match &resume {
            None => {
                config.validate()?;
                let model = model.ok_or_else(|| FinetuneError::Config {
                    field: "model".into(),
                    reason: "a new run needs a base model".into(),
                })?;
                let data = if data.is_empty() {
                    vec![default_data(&config)]
                } else {
                    data
                };
                (config, RunSources::new(model, data).with_adapter(adapter))
            }
            Some(r) => {
                // Checked now, before the model loads; the trainer checks again.
                let config = r.saved.resumed_with(&config)?;
                // The default model, gone from the cache since: fetch it again.
                let model = match (model, &r.recorded) {
                    (None, Some(rec))
                        if rec.model.name_or_path == SMOLLM2_HUB_ID && !rec.model.path.exists() =>
                    {
                        Some(ModelSource::smollm2()?)
                    }
                    (model, _) => model,
                };
                let sources = match &r.recorded {
                    Some(recorded) => recorded.for_resume(
                        model,
                        (!data.is_empty()).then_some(data),
                        allow_source_change,
                    )?,
                    None => RunSources {
                        model: model.ok_or_else(|| FinetuneError::Config {
                            field: "model".into(),
                            reason: format!(
                                "{} does not record its base model; give it",
                                r.checkpoint.display()
                            ),
                        })?,
                        data: if data.is_empty() {
                            vec![default_data(&config)]
                        } else {
                            data
                        },
                        adapter,
                    },
                };
                (config, sources)
            }
        };
        let device = match (device, config.devices.first()) {
            (Some(_), Some(_)) => {
                return Err(FinetuneError::Config {
                    field: "devices".into(),
                    reason: "give either one device or the list of devices, not both".into(),
                });
            }
            (Some(device), None) => device,
            (None, Some(first)) => first.open()?,
            (None, None) => auto_device().device,
        }
        .autodiff();
        let options = TrainerOptions {
            out_dir,
            overwrite,
            progress,
            interrupt,
            sources: None,
        };
        let checkpoint = resume.as_ref().map(|r| r.checkpoint.as_path());
        let mut started = start_run(&config, sources, &device, options, checkpoint)?;
        if !default_observers {
            started.trainer.observers_mut().clear();
        }
        started.trainer.observers_mut().extend(observers);
        Ok(started)
    }

    /// [`start`](Self::start)s the run and trains it to its last step (or until interrupted).
    pub fn run(self) -> Result<TrainSummary> {
        self.start()?.trainer.train()
    }
}

/// The run directory of `run/checkpoints/step-N`.
/// The embedded data a run trains on when given none: the medical Q&A set, or for a
/// preference method the medical-safety preference pairs.
fn default_data(config: &FinetuneConfig) -> DataSource {
    if config.method.is_preference() {
        DataSource::embedded_preferences()
    } else {
        DataSource::embedded()
    }
}

fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    checkpoint
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == CHECKPOINTS_DIR))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
}

impl FinetuneConfig {
    /// The settings of the embedded demo (`cargo xtask finetune` with no model or data): small
    /// enough to finish in about a minute on two CPU cores with SmolLM2-135M.
    pub fn demo() -> FinetuneConfig {
        FinetuneConfig {
            lora_r: 16,
            lora_alpha: 32.0,
            learning_rate: 5e-4,
            warmup_ratio: 0.1,
            batch_size: 4,
            grad_accum: 1,
            max_len: 192,
            max_steps: Some(24),
            eval_every: 12,
            save_every: 12,
            validation_fraction: 0.1,
            ..FinetuneConfig::default()
        }
    }
}
