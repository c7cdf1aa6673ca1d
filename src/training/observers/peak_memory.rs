//! [`PeakMemory`]: the memory a step used, in the metrics of the step.

use crate::error::Result;
use crate::training::memory::{StepMemory, reset_peak_memory};
use crate::training::metrics::StepMetrics;
use crate::training::observers::{RunContext, TrainObserver};

/// Measures each step's peak resident memory and the device allocator's reservation, and puts
/// them into the step's metrics (`peak_rss_bytes`, `device_reserved_bytes`) for the observers
/// after it.
///
/// The peak is **the whole process's**: on Linux it resets the process's high-water mark
/// (`/proc/self/clear_refs`) before the step and reads it after, so anything else the process
/// does meanwhile, another trainer included, counts too, and two trainers measuring at once
/// reset each other's window. Leave it out (remove it from the observers) when several runs
/// share a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakMemory {
    window: bool,
}

impl TrainObserver for PeakMemory {
    fn name(&self) -> &str {
        "peak-memory"
    }

    fn before_step(&mut self, _run: &RunContext) -> Result<()> {
        self.window = reset_peak_memory();
        Ok(())
    }

    fn after_step(&mut self, run: &RunContext, step: &mut StepMetrics) -> Result<()> {
        let memory = StepMemory::read(self.window, &run.model.device());
        step.peak_rss_bytes = memory.peak_rss_bytes;
        step.device_reserved_bytes = memory.device_reserved_bytes;
        Ok(())
    }
}
