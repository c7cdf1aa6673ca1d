//! [`ProgressDisplay`]: a progress bar on stderr.

use indicatif::{ProgressBar, ProgressStyle};

use crate::error::Result;
use crate::training::metrics::{EvalMetrics, StepMetrics};
use crate::training::observers::{RunContext, TrainObserver};
use crate::training::trainer::TrainSummary;

/// A progress bar of the run's steps on stderr with the loss, learning rate and throughput of
/// the last step and the ETA; evaluations during training are printed above it.
#[derive(Debug, Default)]
pub struct ProgressDisplay {
    bar: Option<ProgressBar>,
}

impl TrainObserver for ProgressDisplay {
    fn name(&self) -> &str {
        "progress"
    }

    fn before_step(&mut self, run: &RunContext) -> Result<()> {
        if self.bar.is_some() {
            return Ok(());
        }
        // Made at the first step, so the evaluation before training prints nothing over it.
        let bar = ProgressBar::new(run.total_steps);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(run.state.step);
        self.bar = Some(bar);
        Ok(())
    }

    fn after_step(&mut self, _run: &RunContext, step: &mut StepMetrics) -> Result<()> {
        if let Some(bar) = &self.bar {
            let rewards = step.preference.map_or_else(String::new, |p| {
                format!(
                    "  acc {:.2}  margin {:+.3}",
                    p.rewards_accuracies, p.rewards_margins
                )
            });
            // Data-parallel: each device's own rate, in device order.
            let devices = step.devices.as_ref().map_or_else(String::new, |d| {
                let rates: Vec<String> = d
                    .iter()
                    .map(|s| format!("{:.0}", s.tokens_per_s()))
                    .collect();
                format!(" ({} per device)", rates.join(" + "))
            });
            bar.set_message(format!(
                "loss {:.4}{rewards}  lr {:.2e}  {:.0} tok/s{devices}",
                step.loss, step.lr, step.tokens_per_s
            ));
            bar.set_position(step.step);
        }
        Ok(())
    }

    fn on_eval(&mut self, run: &RunContext, eval: &EvalMetrics) -> Result<()> {
        // Evaluations between steps; the ones before and after training are the caller's.
        if let Some(bar) = &self.bar
            && eval.step < run.total_steps
        {
            bar.println(match &eval.preference {
                Some(p) => format!(
                    "step {}: held-out loss {:.4}, reward accuracy {:.3}, margin {:+.4}",
                    eval.step, eval.eval_loss, p.rewards_accuracies, p.rewards_margins
                ),
                None => format!(
                    "step {}: eval loss {:.4} (perplexity {:.2})",
                    eval.step, eval.eval_loss, eval.eval_perplexity
                ),
            });
        }
        Ok(())
    }

    fn on_train_end(&mut self, _run: &RunContext, _summary: &TrainSummary) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        Ok(())
    }
}
