//! [`ModelCardWriter`]: the adapter's `README.md` (a Hugging Face model card).

use crate::error::Result;
use crate::training::model_card::{CardOptions, write_model_card};
use crate::training::observers::{RunContext, TrainObserver};
use crate::training::trainer::TrainSummary;

/// When a training call finishes the run (not when interrupted), writes the model card
/// `README.md` beside the adapter with `options`.
#[derive(Debug, Clone, Default)]
pub struct ModelCardWriter {
    /// What the card says beyond the run's own record.
    pub options: CardOptions,
}

impl TrainObserver for ModelCardWriter {
    fn name(&self) -> &str {
        "model-card"
    }

    fn on_train_end(&mut self, run: &RunContext, summary: &TrainSummary) -> Result<()> {
        if summary.interrupted {
            return Ok(());
        }
        write_model_card(run.out_dir, &self.options).map(|_| ())
    }
}
