//! Settings of [`PagedAdamW`](crate::PagedAdamW), with bitsandbytes' defaults.

use burn::config::Config;
use regex::Regex;
use serde::{Deserialize, Serialize};

// Not `Result`: burn's `Config` derive expands to code that names `Result` unqualified.
use crate::error::{Result as OptimResult, invalid};

/// Precision of the two Adam moments.
///
/// ```
/// use medify_optim::StateBits;
/// assert_eq!("8bit".parse::<StateBits>().unwrap(), StateBits::Eight);
/// assert_eq!(StateBits::ThirtyTwo.to_string(), "32bit");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StateBits {
    /// f32 moments: 8 bytes per parameter (`paged_adamw_32bit`, the QLoRA paper's choice).
    #[default]
    #[serde(rename = "32bit")]
    ThirtyTwo,
    /// Blockwise 8-bit moments: m on the signed dynamic map, v on the unsigned one, one f32
    /// absmax per 256 values: about 2 bytes per parameter (`paged_adamw_8bit`).
    #[serde(rename = "8bit")]
    Eight,
}

impl std::fmt::Display for StateBits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StateBits::ThirtyTwo => "32bit",
            StateBits::Eight => "8bit",
        })
    }
}

impl std::str::FromStr for StateBits {
    type Err = crate::OptimError;

    fn from_str(s: &str) -> OptimResult<Self> {
        match s {
            "32bit" | "32" | "paged_adamw_32bit" | "adamw_32bit" => Ok(StateBits::ThirtyTwo),
            "8bit" | "8" | "paged_adamw_8bit" | "adamw_8bit" => Ok(StateBits::Eight),
            other => Err(invalid(
                "state_bits",
                format!("`{other}` is not one of 32bit, 8bit"),
            )),
        }
    }
}

/// What a step does when a gradient holds NaN or infinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NonFinite {
    /// Skip the whole step (no parameter or state changes) and count it, as loss scalers do.
    #[default]
    SkipStep,
    /// Treat each non-finite gradient element as zero and go on, as bitsandbytes' kernels do.
    ZeroElements,
}

/// Parameters whose module path matches `pattern` train with their own learning-rate factor
/// and weight decay (e.g. no decay on DoRA magnitudes, or LoRA+'s larger rate for `lora_b`).
///
/// ```
/// use medify_optim::ParamGroup;
/// let g = ParamGroup::new("b", r"lora_b$").with_lr_scale(16.0);
/// assert_eq!(g.lr_scale, 16.0);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    /// Name shown in reports.
    pub name: String,
    /// Regex searched in the parameter's module path (`layers.0.attn.q_proj.lora.lora_a`).
    pub pattern: String,
    /// Multiplies the step's learning rate.
    pub lr_scale: f64,
    /// Replaces the optimizer's weight decay, when set.
    pub weight_decay: Option<f64>,
}

impl ParamGroup {
    /// A group with factor 1 and the optimizer's weight decay.
    pub fn new(name: impl Into<String>, pattern: impl Into<String>) -> Self {
        ParamGroup {
            name: name.into(),
            pattern: pattern.into(),
            lr_scale: 1.0,
            weight_decay: None,
        }
    }

    /// Sets the learning-rate factor.
    pub fn with_lr_scale(mut self, scale: f64) -> Self {
        self.lr_scale = scale;
        self
    }

    /// Sets the weight decay.
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = Some(weight_decay);
        self
    }
}

/// AdamW settings. `Default` is bitsandbytes' `PagedAdamW32bit` (betas 0.9/0.999, eps 1e-8,
/// weight decay 1e-2 applied after the update); the learning rate is given to each step so
/// a schedule can drive it. The `with_*` builders come from burn's `Config` derive, as does
/// saving and loading the settings as JSON.
///
/// ```
/// use medify_optim::{AdamWConfig, StateBits};
/// let c = AdamWConfig::paged_adamw_8bit().with_max_grad_norm(Some(0.3));
/// assert_eq!(c.state_bits, StateBits::Eight);
/// c.validate().unwrap();
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Decay rates of the first and second moments.
    #[config(default = "(0.9, 0.999)")]
    pub betas: (f64, f64),
    /// Added to the root of the second moment.
    #[config(default = 1e-8)]
    pub eps: f64,
    /// Decoupled weight decay: `p *= 1 - lr * weight_decay` after the Adam update.
    #[config(default = 1e-2)]
    pub weight_decay: f64,
    /// Precision of the moments.
    #[config(default = "StateBits::ThirtyTwo")]
    pub state_bits: StateBits,
    /// Tensors with fewer elements keep f32 moments even in 8-bit mode (bitsandbytes: 4096).
    #[config(default = 4096)]
    pub min_8bit_size: usize,
    /// Clip the global gradient norm to this value (QLoRA: 0.3).
    pub max_grad_norm: Option<f64>,
    /// Handling of NaN/inf gradients.
    #[config(default = "NonFinite::SkipStep")]
    pub non_finite: NonFinite,
    /// Bytes of state allowed to stay on an accelerator between steps; the rest lives in host
    /// memory and is paged in for its parameter's update, least recently used out first.
    /// `None`: no limit. Ignored on CPU devices, where host memory is the device memory.
    pub device_budget: Option<u64>,
    /// Parameter groups, first match wins; unmatched parameters use the settings above.
    #[config(default = "Vec::new()")]
    pub groups: Vec<ParamGroup>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig::new()
    }
}

impl AdamWConfig {
    /// bitsandbytes' `PagedAdamW32bit` defaults.
    pub fn paged_adamw_32bit() -> Self {
        Self::default()
    }

    /// bitsandbytes' `PagedAdamW8bit` defaults.
    pub fn paged_adamw_8bit() -> Self {
        AdamWConfig {
            state_bits: StateBits::Eight,
            ..Self::default()
        }
    }

    /// Appends a parameter group.
    pub fn with_group(mut self, group: ParamGroup) -> Self {
        self.groups.push(group);
        self
    }

    /// Checks every field and compiles the group patterns.
    pub fn validate(&self) -> OptimResult<()> {
        self.compiled_groups().map(|_| ())
    }

    pub(crate) fn compiled_groups(&self) -> OptimResult<Vec<(ParamGroup, Regex)>> {
        let (b1, b2) = self.betas;
        for (name, b) in [("betas.0", b1), ("betas.1", b2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(invalid(name, format!("{b} is outside [0, 1)")));
            }
        }
        if !(self.eps > 0.0 && self.eps.is_finite()) {
            return Err(invalid("eps", format!("{} must be positive", self.eps)));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(invalid(
                "weight_decay",
                format!("{} must be zero or positive", self.weight_decay),
            ));
        }
        if let Some(max) = self.max_grad_norm
            && !(max > 0.0 && max.is_finite())
        {
            return Err(invalid("max_grad_norm", format!("{max} must be positive")));
        }
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let field = format!("groups[{i}]");
                if !(g.lr_scale >= 0.0 && g.lr_scale.is_finite()) {
                    return Err(invalid(
                        &field,
                        format!("lr_scale {} must be >= 0", g.lr_scale),
                    ));
                }
                if let Some(wd) = g.weight_decay
                    && !(wd >= 0.0 && wd.is_finite())
                {
                    return Err(invalid(&field, format!("weight_decay {wd} must be >= 0")));
                }
                let re = Regex::new(&g.pattern)
                    .map_err(|e| invalid(&field, format!("pattern `{}`: {e}", g.pattern)))?;
                Ok((g.clone(), re))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_field() {
        let e = AdamWConfig::default()
            .with_betas((1.0, 0.9))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("betas.0"), "{e}");
        let e = AdamWConfig::default().with_eps(0.0).validate().unwrap_err();
        assert!(e.to_string().contains("`eps`"), "{e}");
        let e = AdamWConfig::default()
            .with_max_grad_norm(Some(-1.0))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("max_grad_norm"), "{e}");
        let e = AdamWConfig::default()
            .with_group(ParamGroup::new("x", "("))
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("groups[0]"), "{e}");
        assert!("16bit".parse::<StateBits>().is_err());
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = AdamWConfig::paged_adamw_8bit()
            .with_group(ParamGroup::new("b", "lora_b").with_weight_decay(0.0));
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains("\"8bit\""), "{s}");
        assert_eq!(serde_json::from_str::<AdamWConfig>(&s).unwrap(), c);
    }
}
