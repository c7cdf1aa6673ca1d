//! Preference objectives over a batch of (chosen, rejected) pairs, as TRL computes them: DPO
//! (sigmoid, with conservative label smoothing) and IPO from `DPOTrainer`, SimPO from
//! `CPOTrainer(loss_type="simpo")`, ORPO from `ORPOTrainer`. The inputs are each completion's
//! summed log-probability under the policy ([`CausalLm::sequence_logps`]) and, for DPO and IPO,
//! under the reference model; the output is the loss to differentiate and the statistics TRL logs
//! (`rewards/chosen`, `rewards/accuracies`, `logps/chosen`, …).
//!
//! [`CausalLm::sequence_logps`]: crate::models::CausalLm::sequence_logps

use burn::tensor::activation::log_sigmoid;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result};

/// What a run optimizes: supervised fine-tuning, or a preference objective.
///
/// ```
/// use medify_qlora::training::Method;
/// assert_eq!("dpo".parse::<Method>().unwrap(), Method::Dpo);
/// assert!(Method::Ipo.needs_reference() && !Method::Simpo.needs_reference());
/// assert!("ppo".parse::<Method>().unwrap_err().to_string().contains("sft, dpo, ipo, orpo, simpo"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Next-token cross-entropy on the assistant's replies.
    #[default]
    Sft,
    /// Direct Preference Optimization, TRL's `loss_type="sigmoid"`.
    Dpo,
    /// Identity Preference Optimization, TRL's `loss_type="ipo"` (per-token averaged).
    Ipo,
    /// Odds-Ratio Preference Optimization: the chosen answer's NLL plus an odds-ratio term; no
    /// reference model.
    Orpo,
    /// Simple Preference Optimization: length-normalized log-probabilities with a target margin
    /// `gamma`; no reference model.
    Simpo,
}

impl Method {
    /// Every method, in the order help texts list them.
    pub const ALL: [Method; 5] = [
        Method::Sft,
        Method::Dpo,
        Method::Ipo,
        Method::Orpo,
        Method::Simpo,
    ];

    /// The name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Dpo => "dpo",
            Method::Ipo => "ipo",
            Method::Orpo => "orpo",
            Method::Simpo => "simpo",
        }
    }

    /// Whether it trains on preference pairs.
    pub fn is_preference(self) -> bool {
        self != Method::Sft
    }

    /// Whether it compares against a reference model (DPO, IPO).
    pub fn needs_reference(self) -> bool {
        matches!(self, Method::Dpo | Method::Ipo)
    }

    /// Whether it compares completions by their mean per-token log-probability (SimPO, ORPO)
    /// rather than their sum.
    pub fn length_normalized(self) -> bool {
        matches!(self, Method::Simpo | Method::Orpo)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Method {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<Method> {
        Method::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| FinetuneError::Config {
                field: "method".into(),
                reason: format!("`{s}` is not one of sft, dpo, ipo, orpo, simpo"),
            })
    }
}

/// A preference objective and its coefficients, under TRL's names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreferenceObjective {
    /// Which objective (not [`Method::Sft`]).
    pub method: Method,
    /// DPO's β (temperature of the implicit reward), IPO's τ, SimPO's β, ORPO's λ.
    pub beta: f64,
    /// Conservative DPO / SimPO: the assumed share of flipped labels, in `[0, 0.5)`.
    pub label_smoothing: f64,
    /// SimPO's target reward margin γ.
    pub simpo_gamma: f64,
}

impl PreferenceObjective {
    /// `method` with TRL's default coefficients: β 0.1 (DPO, IPO, ORPO) or 2.0 (SimPO), no
    /// label smoothing, γ 0.5.
    pub fn new(method: Method) -> PreferenceObjective {
        PreferenceObjective {
            method,
            beta: if method == Method::Simpo { 2.0 } else { 0.1 },
            label_smoothing: 0.0,
            simpo_gamma: 0.5,
        }
    }

    /// Checks the coefficients, naming the one that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| FinetuneError::Config {
            field: field.into(),
            reason,
        };
        if !self.method.is_preference() {
            return Err(bad("method", "sft has no preference objective".into()));
        }
        if !(self.beta.is_finite() && self.beta > 0.0) {
            return Err(bad(
                "beta",
                format!("{} must be a positive number", self.beta),
            ));
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            return Err(bad(
                "label_smoothing",
                format!("{} must be in [0, 0.5)", self.label_smoothing),
            ));
        }
        if self.label_smoothing > 0.0 && !matches!(self.method, Method::Dpo | Method::Simpo) {
            return Err(bad(
                "label_smoothing",
                format!("only DPO and SimPO use it, not {}", self.method),
            ));
        }
        if !self.simpo_gamma.is_finite() {
            return Err(bad("simpo_gamma", "must be a finite number".into()));
        }
        Ok(())
    }
}

/// Each completion's log-probability under one model, for a batch of pairs.
#[derive(Debug, Clone)]
pub struct PairLogps {
    /// `[pairs]`: the chosen completions' summed log-probabilities.
    pub chosen: Tensor<1>,
    /// `[pairs]`: the rejected completions' summed log-probabilities.
    pub rejected: Tensor<1>,
    /// Completion tokens of each chosen answer.
    pub chosen_tokens: Vec<usize>,
    /// Completion tokens of each rejected answer.
    pub rejected_tokens: Vec<usize>,
}

impl PairLogps {
    /// Splits one forward pass over `[chosen rows…, rejected rows…]` (TRL's concatenated
    /// batch) into its halves.
    pub fn from_concatenated(logps: crate::models::SequenceLogps) -> Result<PairLogps> {
        let rows = logps.tokens.len();
        if !rows.is_multiple_of(2) || rows == 0 {
            return Err(FinetuneError::NoData(format!(
                "a preference batch has chosen and rejected rows in equal numbers, got {rows} rows"
            )));
        }
        let n = rows / 2;
        Ok(PairLogps {
            chosen: logps.logps.clone().narrow(0, 0, n),
            rejected: logps.logps.narrow(0, n, n),
            chosen_tokens: logps.tokens[..n].to_vec(),
            rejected_tokens: logps.tokens[n..].to_vec(),
        })
    }

    /// Pairs in the batch.
    pub fn len(&self) -> usize {
        self.chosen_tokens.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.chosen_tokens.is_empty()
    }

    /// The values, detached, as `(chosen, rejected)`: what a reference pass keeps, or what
    /// `--precompute-ref-logps` stores.
    pub fn values(&self) -> (Vec<f64>, Vec<f64>) {
        (floats(&self.chosen), floats(&self.rejected))
    }
}

/// The reference model's log-probabilities of the same completions (DPO, IPO).
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceLogps {
    /// Chosen completions' summed log-probabilities.
    pub chosen: Vec<f64>,
    /// Rejected completions' summed log-probabilities.
    pub rejected: Vec<f64>,
}

/// Per-pair statistics of a batch, as TRL logs their means.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairStats {
    /// `rewards/chosen`: β · (policy − reference) log-probability of each chosen answer (DPO,
    /// IPO), or β · its mean per-token log-probability (SimPO, ORPO).
    pub rewards_chosen: Vec<f64>,
    /// `rewards/rejected`, likewise.
    pub rewards_rejected: Vec<f64>,
    /// `logps/chosen`: the policy's log-probability (summed; mean per token for SimPO and ORPO).
    pub logps_chosen: Vec<f64>,
    /// `logps/rejected`, likewise.
    pub logps_rejected: Vec<f64>,
    /// Each pair's loss term (before the batch mean; ORPO's without the NLL).
    pub losses: Vec<f64>,
    /// ORPO: `nll_loss`, the chosen sequences' cross-entropy.
    pub nll_loss: Option<f64>,
    /// ORPO: `log_odds_ratio`, the mean of `log σ(log odds)`.
    pub log_odds_ratio: Option<f64>,
    /// ORPO: `log_odds_chosen`, the mean log odds.
    pub log_odds_chosen: Option<f64>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

impl PairStats {
    /// `rewards/accuracies`: the share of pairs whose chosen reward is above the rejected one.
    pub fn accuracy(&self) -> f64 {
        let wins: Vec<f64> = self
            .rewards_chosen
            .iter()
            .zip(&self.rewards_rejected)
            .map(|(c, r)| if c > r { 1.0 } else { 0.0 })
            .collect();
        mean(&wins)
    }

    /// `rewards/margins`: the mean of chosen minus rejected reward.
    pub fn margin(&self) -> f64 {
        let m: Vec<f64> = self
            .rewards_chosen
            .iter()
            .zip(&self.rewards_rejected)
            .map(|(c, r)| c - r)
            .collect();
        mean(&m)
    }

    /// `rewards/chosen`'s mean.
    pub fn mean_reward_chosen(&self) -> f64 {
        mean(&self.rewards_chosen)
    }

    /// `rewards/rejected`'s mean.
    pub fn mean_reward_rejected(&self) -> f64 {
        mean(&self.rewards_rejected)
    }

    /// `logps/chosen`'s mean.
    pub fn mean_logps_chosen(&self) -> f64 {
        mean(&self.logps_chosen)
    }

    /// `logps/rejected`'s mean.
    pub fn mean_logps_rejected(&self) -> f64 {
        mean(&self.logps_rejected)
    }
}

/// A batch's preference loss (differentiable in the policy's log-probabilities) and its
/// statistics.
#[derive(Debug, Clone)]
pub struct PreferenceLoss {
    /// The scalar to back-propagate: the mean over pairs (plus ORPO's NLL).
    pub loss: Tensor<1>,
    /// What TRL logs.
    pub stats: PairStats,
}

fn floats(t: &Tensor<1>) -> Vec<f64> {
    t.clone()
        .detach()
        .into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .unwrap_or_default()
}

fn constant(values: &[f64], device: &Device) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(
            values.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            [values.len()],
        ),
        device,
    )
}

fn counts(tokens: &[usize], device: &Device) -> Tensor<1> {
    let v: Vec<f64> = tokens.iter().map(|&n| n.max(1) as f64).collect();
    constant(&v, device)
}

/// `log(1 − exp(x))` for `x < 0`, stable on both sides of `−ln 2` (as TRL's `log1mexp`).
fn log1mexp(x: Tensor<1>) -> Tensor<1> {
    let small = x.clone().lower_elem(-std::f32::consts::LN_2);
    let far = x.clone().exp().neg().log1p();
    let near = x.exp().neg().add_scalar(1.0).log();
    near.mask_where(small, far)
}

/// `-(1 − ε) log σ(z) − ε log σ(−z)`: the sigmoid loss with conservative label smoothing.
fn smoothed_sigmoid(z: Tensor<1>, eps: f64) -> Tensor<1> {
    let pos = log_sigmoid(z.clone()).neg();
    if eps == 0.0 {
        return pos;
    }
    pos.mul_scalar(1.0 - eps) + log_sigmoid(z.neg()).neg().mul_scalar(eps)
}

/// The objective over a batch of pairs. `reference` is required for DPO and IPO (and ignored
/// otherwise); `chosen_nll` is ORPO's cross-entropy of the chosen sequences (required for ORPO).
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_qlora::training::{Method, PairLogps, PreferenceObjective, ReferenceLogps, preference_loss};
/// let d = Device::flex();
/// let policy = PairLogps { chosen: Tensor::from_floats([-10.0], &d), rejected: Tensor::from_floats([-12.0], &d),
///     chosen_tokens: vec![5], rejected_tokens: vec![6] };
/// let reference = ReferenceLogps { chosen: vec![-11.0], rejected: vec![-11.0] };
/// let out = preference_loss(&PreferenceObjective::new(Method::Dpo), &policy, Some(&reference), None).unwrap();
/// // Δ = (−10 + 11) − (−12 + 11) = 2; loss = −log σ(0.1 · 2)
/// let want = -(1.0f64 / (1.0 + (-0.2f64).exp())).ln();
/// assert!((out.loss.into_scalar::<f64>() - want).abs() < 1e-6);
/// assert_eq!(out.stats.accuracy(), 1.0);
/// ```
pub fn preference_loss(
    objective: &PreferenceObjective,
    policy: &PairLogps,
    reference: Option<&ReferenceLogps>,
    chosen_nll: Option<Tensor<1>>,
) -> Result<PreferenceLoss> {
    objective.validate()?;
    let n = policy.len();
    if n == 0 {
        return Err(FinetuneError::NoData(
            "a preference batch without pairs".into(),
        ));
    }
    let device = policy.chosen.device();
    let beta = objective.beta;
    let (pc, pr) = (policy.chosen.clone(), policy.rejected.clone());
    let mut stats = PairStats::default();
    let loss = match objective.method {
        Method::Dpo | Method::Ipo => {
            let r = reference.ok_or_else(|| {
                FinetuneError::NoData(format!(
                    "{} needs the reference model's log-probabilities",
                    objective.method
                ))
            })?;
            if r.chosen.len() != n || r.rejected.len() != n {
                return Err(FinetuneError::NoData(format!(
                    "{} reference log-probabilities for {n} pairs",
                    r.chosen.len()
                )));
            }
            let chosen_ratio = pc.clone() - constant(&r.chosen, &device);
            let rejected_ratio = pr.clone() - constant(&r.rejected, &device);
            stats.rewards_chosen = floats(&chosen_ratio).iter().map(|v| beta * v).collect();
            stats.rewards_rejected = floats(&rejected_ratio).iter().map(|v| beta * v).collect();
            stats.logps_chosen = floats(&pc);
            stats.logps_rejected = floats(&pr);
            if objective.method == Method::Dpo {
                let z = (chosen_ratio - rejected_ratio).mul_scalar(beta);
                smoothed_sigmoid(z, objective.label_smoothing)
            } else {
                let nc = counts(&policy.chosen_tokens, &device);
                let nr = counts(&policy.rejected_tokens, &device);
                let delta = chosen_ratio / nc - rejected_ratio / nr;
                delta.sub_scalar(1.0 / (2.0 * beta)).powi_scalar(2)
            }
        }
        Method::Simpo | Method::Orpo => {
            let ac = pc / counts(&policy.chosen_tokens, &device);
            let ar = pr / counts(&policy.rejected_tokens, &device);
            stats.logps_chosen = floats(&ac);
            stats.logps_rejected = floats(&ar);
            stats.rewards_chosen = stats.logps_chosen.iter().map(|v| beta * v).collect();
            stats.rewards_rejected = stats.logps_rejected.iter().map(|v| beta * v).collect();
            if objective.method == Method::Simpo {
                let z = (ac - ar)
                    .sub_scalar(objective.simpo_gamma / beta)
                    .mul_scalar(beta);
                smoothed_sigmoid(z, objective.label_smoothing)
            } else {
                let log_odds = (ac.clone() - ar.clone()) - (log1mexp(ac) - log1mexp(ar));
                let ratio = log_sigmoid(log_odds.clone());
                stats.log_odds_chosen = Some(mean(&floats(&log_odds)));
                stats.log_odds_ratio = Some(mean(&floats(&ratio)));
                ratio.mul_scalar(-beta)
            }
        }
        Method::Sft => unreachable!("validate refuses sft"),
    };
    stats.losses = floats(&loss);
    let mut total = loss.mean();
    if objective.method == Method::Orpo {
        let nll = chosen_nll.ok_or_else(|| {
            FinetuneError::NoData("ORPO needs the chosen sequences' cross-entropy".into())
        })?;
        stats.nll_loss = Some(floats(&nll).first().copied().unwrap_or(0.0));
        total = total + nll;
    }
    Ok(PreferenceLoss { loss: total, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(c: &[f32], r: &[f32], nc: &[usize], nr: &[usize]) -> PairLogps {
        let d = Device::flex();
        PairLogps {
            chosen: Tensor::from_data(TensorData::new(c.to_vec(), [c.len()]), &d),
            rejected: Tensor::from_data(TensorData::new(r.to_vec(), [r.len()]), &d),
            chosen_tokens: nc.to_vec(),
            rejected_tokens: nr.to_vec(),
        }
    }

    fn logsig(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn each_objective_is_trls_formula() {
        let p = policy(&[-10.0, -20.0], &[-12.0, -18.0], &[5, 8], &[6, 4]);
        let r = ReferenceLogps {
            chosen: vec![-11.0, -19.0],
            rejected: vec![-11.0, -19.0],
        };
        let value = |o: &PreferenceObjective, nll: Option<Tensor<1>>| {
            preference_loss(o, &p, Some(&r), nll)
                .unwrap()
                .loss
                .into_scalar::<f64>()
        };
        // DPO with label smoothing 0.1: Δ = 2 and −2
        let dpo = PreferenceObjective {
            label_smoothing: 0.1,
            ..PreferenceObjective::new(Method::Dpo)
        };
        let want = [2.0f64, -2.0]
            .iter()
            .map(|d| -0.9 * logsig(0.1 * d) - 0.1 * logsig(-0.1 * d))
            .sum::<f64>()
            / 2.0;
        assert!((value(&dpo, None) - want).abs() < 1e-6);
        // IPO: per-token averaged ratios, (Δ − 1/(2β))²
        let ipo = PreferenceObjective::new(Method::Ipo);
        let d0 = 1.0 / 5.0 - (-1.0) / 6.0;
        let d1 = -1.0 / 8.0 - 1.0 / 4.0;
        let want = ((d0 - 5.0f64).powi(2) + (d1 - 5.0f64).powi(2)) / 2.0;
        assert!((value(&ipo, None) - want).abs() < 1e-4);
        // SimPO: means, margin γ/β
        let simpo = PreferenceObjective::new(Method::Simpo);
        let z = |c: f64, nc: f64, r: f64, nr: f64| 2.0 * (c / nc - r / nr - 0.5 / 2.0);
        let want = (-logsig(z(-10.0, 5.0, -12.0, 6.0)) - logsig(z(-20.0, 8.0, -18.0, 4.0))) / 2.0;
        assert!((value(&simpo, None) - want).abs() < 1e-6);
        // ORPO: NLL − β mean log σ(log odds)
        let orpo = PreferenceObjective::new(Method::Orpo);
        let odds = |c: f64, r: f64| (c - r) - ((1.0 - c.exp()).ln() - (1.0 - r.exp()).ln());
        let lo = [odds(-2.0, -2.0), odds(-2.5, -4.5)];
        let want = 1.5 - 0.1 * (logsig(lo[0]) + logsig(lo[1])) / 2.0;
        let nll = Tensor::<1>::from_floats([1.5], &Device::flex());
        assert!((value(&orpo, Some(nll)) - want).abs() < 1e-5);
        // ORPO without its NLL, DPO without a reference: errors, not panics
        assert!(preference_loss(&orpo, &p, None, None).is_err());
        assert!(preference_loss(&dpo, &p, None, None).is_err());
    }

    #[test]
    fn log1mexp_is_stable_on_both_branches() {
        let d = Device::flex();
        let x = Tensor::<1>::from_floats([-1e-3, -0.5, -0.7, -5.0, -40.0], &d);
        let got: Vec<f32> = log1mexp(x).into_data().try_into_vec().unwrap();
        for (g, x) in got.iter().zip([-1e-3f64, -0.5, -0.7, -5.0, -40.0]) {
            let want = (-x.exp_m1()).ln();
            assert!(
                (*g as f64 - want).abs() < 1e-3 * want.abs().max(1e-6),
                "{x}: {g} vs {want}"
            );
        }
    }

    #[test]
    fn bad_settings_name_their_field() {
        let err = |o: PreferenceObjective| o.validate().unwrap_err().to_string();
        let dpo = PreferenceObjective::new(Method::Dpo);
        assert!(err(PreferenceObjective { beta: 0.0, ..dpo }).contains("beta"));
        assert!(
            err(PreferenceObjective {
                label_smoothing: 0.5,
                ..dpo
            })
            .contains("label_smoothing")
        );
        let ipo = PreferenceObjective {
            label_smoothing: 0.1,
            ..PreferenceObjective::new(Method::Ipo)
        };
        assert!(err(ipo).contains("only DPO and SimPO"));
        assert!(err(PreferenceObjective::new(Method::Sft)).contains("sft"));
    }
}
