//! Learning-rate schedules with warmup, the ones Hugging Face's trainer offers for QLoRA.

use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid};

/// Shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Peak rate until the end (QLoRA's choice).
    #[default]
    Constant,
    /// Linear decay to zero at the last step.
    Linear,
    /// Half a cosine from the peak to zero at the last step.
    Cosine,
}

impl std::str::FromStr for ScheduleKind {
    type Err = crate::OptimError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            other => Err(invalid(
                "schedule",
                format!("`{other}` is not one of constant, linear, cosine"),
            )),
        }
    }
}

/// Length of the linear warmup from 0 to the peak rate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Warmup {
    /// A number of optimizer steps.
    Steps(u64),
    /// A fraction of the total steps, rounded up (QLoRA: 0.03).
    Ratio(f64),
}

impl Default for Warmup {
    fn default() -> Self {
        Warmup::Steps(0)
    }
}

/// The learning rate of every optimizer step, exactly as transformers'
/// `get_{constant,linear,cosine}_schedule_with_warmup` give it (step 0 of a warmup uses 0).
///
/// ```
/// use medify_optim::{LrSchedule, ScheduleKind, Warmup};
/// let s = LrSchedule::new(ScheduleKind::Linear, 2e-4, 10).with_warmup(Warmup::Steps(3));
/// assert_eq!(s.lr_at(0), 0.0);
/// assert_eq!(s.lr_at(3), 2e-4);
/// assert!((s.lr_at(9) - 2e-4 / 7.0).abs() < 1e-12);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Shape after warmup.
    pub kind: ScheduleKind,
    /// Rate reached at the end of warmup.
    pub peak_lr: f64,
    /// Warmup length.
    pub warmup: Warmup,
    /// Optimizer steps of the whole run (linear and cosine reach zero there).
    pub total_steps: u64,
}

impl LrSchedule {
    /// A schedule without warmup.
    pub fn new(kind: ScheduleKind, peak_lr: f64, total_steps: u64) -> Self {
        LrSchedule {
            kind,
            peak_lr,
            warmup: Warmup::Steps(0),
            total_steps,
        }
    }

    /// Sets the warmup.
    pub fn with_warmup(mut self, warmup: Warmup) -> Self {
        self.warmup = warmup;
        self
    }

    /// Checks the rate and warmup.
    pub fn validate(&self) -> Result<()> {
        if !(self.peak_lr >= 0.0 && self.peak_lr.is_finite()) {
            return Err(invalid(
                "learning_rate",
                format!("{} must be >= 0", self.peak_lr),
            ));
        }
        if let Warmup::Ratio(r) = self.warmup
            && !(0.0..=1.0).contains(&r)
        {
            return Err(invalid("warmup_ratio", format!("{r} is outside [0, 1]")));
        }
        Ok(())
    }

    /// Warmup length in steps (`ceil(ratio * total)` for a ratio).
    pub fn warmup_steps(&self) -> u64 {
        match self.warmup {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) => (r * self.total_steps as f64).ceil() as u64,
        }
    }

    /// The rate of the optimizer step with 0-based index `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warmup = self.warmup_steps();
        if step < warmup {
            return self.peak_lr * step as f64 / warmup.max(1) as f64;
        }
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => {
                let left = self.total_steps.saturating_sub(step) as f64;
                (left / self.total_steps.saturating_sub(warmup).max(1) as f64).max(0.0)
            }
            ScheduleKind::Cosine => {
                let progress =
                    (step - warmup) as f64 / self.total_steps.saturating_sub(warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by transformers 5.23 for peak 2e-4, 3 warmup steps, 10 steps.
    const HF_LINEAR: [f64; 10] = [
        0.0,
        6.666666666666667e-05,
        0.00013333333333333334,
        0.0002,
        0.00017142857142857143,
        0.00014285714285714287,
        0.00011428571428571428,
        8.571428571428571e-05,
        5.714285714285714e-05,
        2.857142857142857e-05,
    ];
    const HF_COSINE: [f64; 10] = [
        0.0,
        6.666666666666667e-05,
        0.00013333333333333334,
        0.0002,
        0.0001900968867902419,
        0.00016234898018587337,
        0.00012225209339563145,
        7.774790660436858e-05,
        3.7651019814126654e-05,
        9.903113209758096e-06,
    ];

    fn check(kind: ScheduleKind, want: &[f64]) {
        let s = LrSchedule::new(kind, 2e-4, 10).with_warmup(Warmup::Steps(3));
        for (i, w) in want.iter().enumerate() {
            let got = s.lr_at(i as u64);
            assert!((got - w).abs() < 1e-15, "{kind:?} step {i}: {got} vs {w}");
        }
    }

    #[test]
    fn schedules_match_transformers() {
        check(ScheduleKind::Linear, &HF_LINEAR);
        check(ScheduleKind::Cosine, &HF_COSINE);
        let mut constant = [2e-4; 10];
        constant[..3].copy_from_slice(&HF_LINEAR[..3]);
        check(ScheduleKind::Constant, &constant);
    }

    #[test]
    fn warmup_ratio_rounds_up_and_is_checked() {
        let s = LrSchedule::new(ScheduleKind::Constant, 2e-4, 100).with_warmup(Warmup::Ratio(0.03));
        assert_eq!(s.warmup_steps(), 3);
        let s = LrSchedule::new(ScheduleKind::Constant, 2e-4, 10).with_warmup(Warmup::Ratio(0.03));
        assert_eq!(s.warmup_steps(), 1);
        let e = s.with_warmup(Warmup::Ratio(1.5)).validate().unwrap_err();
        assert!(e.to_string().contains("warmup_ratio"));
        assert_eq!(
            LrSchedule::new(ScheduleKind::Linear, 1.0, 10).lr_at(20),
            0.0,
            "past the end stays at zero"
        );
    }
}
