//! [`LossPlot`]: `loss.png` in the run directory.

use crate::error::Result;
use crate::training::checkpoints::{METRICS_FILE, PLOT_FILE, REWARDS_PLOT_FILE};
use crate::training::observers::{RunContext, TrainObserver};
use crate::training::plot::{write_loss_plot, write_rewards_plot};
use crate::training::trainer::TrainSummary;

/// At the end of every training call, plots the training and validation loss of
/// `metrics.jsonl` (the whole run, across resumes) into `loss.png`, and for a preference run
/// the reward margins and held-out reward accuracy into `rewards.png`. Without a metrics log
/// there is nothing to plot and it writes nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossPlot;

impl TrainObserver for LossPlot {
    fn name(&self) -> &str {
        "loss-plot"
    }

    fn on_train_end(&mut self, run: &RunContext, _summary: &TrainSummary) -> Result<()> {
        let metrics = run.out_dir.join(METRICS_FILE);
        if !metrics.is_file() {
            return Ok(());
        }
        write_loss_plot(&metrics, &run.out_dir.join(PLOT_FILE))?;
        write_rewards_plot(&metrics, &run.out_dir.join(REWARDS_PLOT_FILE))
    }
}
