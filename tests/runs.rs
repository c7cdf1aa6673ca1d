//! Helpers over the run directories the root tests train into (they need the facade crate,
//! which the crates' own tests, sharing `common/`, do not link).

use std::path::Path;

use medify_qlora::training::{MetricsRecord, StepMetrics, read_metrics};

/// The step records of a run's `metrics.jsonl`, in order.
pub fn step_metrics(run_dir: &Path) -> Vec<StepMetrics> {
    read_metrics(&run_dir.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            MetricsRecord::Step(s) => Some(s),
            MetricsRecord::Eval(_) => None,
        })
        .collect()
}
