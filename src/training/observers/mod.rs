//! Observers of the training loop: what a run reports and writes besides its adapter and
//! checkpoints. The [`Trainer`](crate::Trainer) calls each observer at the start of a training
//! call, around every optimizer step, after every evaluation and checkpoint, and at the end.
//!
//! The defaults ([`default_observers`]) are [`PeakMemory`], [`MetricsLog`] (`metrics.jsonl`),
//! [`ProgressDisplay`] (a progress bar on stderr), [`LossPlot`] (`loss.png`) and [`ModelCardWriter`]
//! (`README.md`). A library user adds one of their own, or removes or replaces a default, with
//! [`Trainer::observers_mut`](crate::Trainer::observers_mut) or the
//! [`Finetune`](crate::Finetune) builder. Observers never change what is trained: the adapter,
//! the checkpoints and exact resume are the trainer's own.
//!
//! ```
//! use medify_qlora::training::{RunContext, StepMetrics, TrainObserver};
//!
//! /// Collects the training loss of every step.
//! #[derive(Default)]
//! struct Losses(Vec<(u64, f64)>);
//!
//! impl TrainObserver for Losses {
//!     fn name(&self) -> &str { "losses" }
//!     fn after_step(&mut self, _run: &RunContext, step: &mut StepMetrics) -> medify_qlora::Result<()> {
//!         self.0.push((step.step, step.loss));
//!         Ok(())
//!     }
//! }
//! ```

mod loss_plot;
mod metrics_log;
mod model_card;
mod peak_memory;
mod progress;

use std::path::Path;

pub use loss_plot::LossPlot;
pub use metrics_log::MetricsLog;
pub use model_card::ModelCardWriter;
pub use peak_memory::PeakMemory;
pub use progress::ProgressDisplay;

use crate::error::Result;
use crate::models::CausalLm;
use crate::training::checkpoints::TrainState;
use crate::training::config::FinetuneConfig;
use crate::training::metrics::{EvalMetrics, StepMetrics};
use crate::training::trainer::TrainSummary;

/// What an observer sees of the run when it is called.
pub struct RunContext<'a> {
    /// The run directory.
    pub out_dir: &'a Path,
    /// The run's settings.
    pub config: &'a FinetuneConfig,
    /// Steps the whole run takes.
    pub total_steps: u64,
    /// Where the run stands (steps taken, data position, best evaluation).
    pub state: &'a TrainState,
    /// The model with its adapters.
    pub model: &'a CausalLm,
}

/// Called by the training loop; every method does nothing by default. An error stops the
/// training call with that error (the last checkpoint still resumes the run).
pub trait TrainObserver: Send {
    /// A short name, for finding or removing the observer.
    fn name(&self) -> &str;

    /// A training call starts (before the evaluation before training, if any).
    fn on_train_start(&mut self, _run: &RunContext) -> Result<()> {
        Ok(())
    }

    /// An optimizer step is about to run.
    fn before_step(&mut self, _run: &RunContext) -> Result<()> {
        Ok(())
    }

    /// An optimizer step ran. Observers are called in order, and one may fill in what it
    /// measured (e.g. [`PeakMemory`] the memory fields) for those after it.
    fn after_step(&mut self, _run: &RunContext, _step: &mut StepMetrics) -> Result<()> {
        Ok(())
    }

    /// An evaluation on the validation sequences ran.
    fn on_eval(&mut self, _run: &RunContext, _eval: &EvalMetrics) -> Result<()> {
        Ok(())
    }

    /// A checkpoint was written into `dir`.
    fn on_checkpoint(&mut self, _run: &RunContext, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// The training call ends: the adapter (unless interrupted) and `summary.json` are written.
    fn on_train_end(&mut self, _run: &RunContext, _summary: &TrainSummary) -> Result<()> {
        Ok(())
    }
}

/// The observers a [`Trainer`](crate::Trainer) starts with, in the order they are called: the
/// peak-memory measurement (so the log has it), the metrics log, the progress bar when
/// `progress` is set, the loss plot and the model card.
pub fn default_observers(progress: bool) -> Vec<Box<dyn TrainObserver>> {
    let mut observers: Vec<Box<dyn TrainObserver>> =
        vec![Box::new(PeakMemory::default()), Box::new(MetricsLog)];
    if progress {
        observers.push(Box::new(ProgressDisplay::default()));
    }
    observers.push(Box::new(LossPlot));
    observers.push(Box::new(ModelCardWriter::default()));
    observers
}
