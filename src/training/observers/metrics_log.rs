//! [`MetricsLog`]: `metrics.jsonl` in the run directory.

use crate::error::Result;
use crate::training::checkpoints::METRICS_FILE;
use crate::training::metrics::{EvalMetrics, MetricsRecord, StepMetrics, append_metrics};
use crate::training::observers::{RunContext, TrainObserver};

/// Appends a [`StepMetrics`] line after every step and an [`EvalMetrics`] line after every
/// evaluation to `metrics.jsonl` (what [`LossPlot`](super::LossPlot) and sweeps read).
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLog;

impl TrainObserver for MetricsLog {
    fn name(&self) -> &str {
        "metrics-log"
    }

    fn after_step(&mut self, run: &RunContext, step: &mut StepMetrics) -> Result<()> {
        append_metrics(
            &run.out_dir.join(METRICS_FILE),
            &MetricsRecord::Step(step.clone()),
        )
    }

    fn on_eval(&mut self, run: &RunContext, eval: &EvalMetrics) -> Result<()> {
        append_metrics(
            &run.out_dir.join(METRICS_FILE),
            &MetricsRecord::Eval(eval.clone()),
        )
    }
}
