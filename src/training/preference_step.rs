//! One optimizer step's gradients under a preference objective: each micro-batch of pairs (TRL's
//! concatenated batch, chosen rows then rejected rows) through the policy, the reference
//! log-probabilities from a frozen model or from a precomputed table, the objective
//! ([`preference_loss`]), and the gradients accumulated over the step's micro-batches as TRL's
//! trainers average them.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};

use crate::data::{Batch, PairTruncation, pair_batch};
use crate::error::{FinetuneError, Result};
use crate::evaluation::loss::{batch_labels, token_batch};
use crate::lora::LoraExt;
use crate::models::{CausalLm, Checkpointing, TokenBatch};
use crate::training::preference::{
    Method, PairLogps, PairStats, PreferenceObjective, ReferenceLogps, preference_loss,
};
use crate::training::step::{DROPOUT_CALLS_PER_STEP_BITS, MicroBatch};

/// A micro-batch of `pairs` pairs, collated for the model: `2 · pairs` rows.
#[derive(Debug, Clone)]
pub struct PairMicroBatch {
    /// Ids and labels (completion tokens only), chosen rows first.
    pub batch: MicroBatch,
    /// The collated rows (for ORPO's NLL over whole chosen sequences).
    pub rows: Batch,
    /// Pairs in it.
    pub pairs: usize,
}

impl PairMicroBatch {
    /// Collates pairs as TRL's `DataCollatorForPreference` does (see [`pair_batch`]).
    pub fn new(
        pairs: &[crate::data::EncodedPair],
        pad_id: u32,
        max_length: Option<usize>,
        truncation: PairTruncation,
    ) -> PairMicroBatch {
        let rows = pair_batch(pairs, pad_id, max_length, truncation);
        PairMicroBatch {
            batch: (token_batch(&rows), batch_labels(&rows)),
            rows,
            pairs: pairs.len(),
        }
    }

    /// The chosen rows, every real token labelled: what ORPO's NLL term is computed over
    /// (prompt and answer, as TRL's `ORPOTrainer` does).
    fn chosen_sequences(&self) -> MicroBatch {
        let n = self.pairs;
        let r = &self.rows;
        let batch = TokenBatch {
            ids: r.input_ids[..n].to_vec(),
            positions: Some(r.positions[..n].to_vec()),
            attention_mask: Some(r.attention_mask[..n].to_vec()),
            segments: Some(r.segments[..n].to_vec()),
        };
        let labels = r.input_ids[..n]
            .iter()
            .zip(&r.attention_mask[..n])
            .map(|(ids, mask)| {
                ids.iter()
                    .zip(mask)
                    .map(|(&t, &m)| m.then_some(t))
                    .collect()
            })
            .collect();
        (batch, labels)
    }
}

/// Where DPO and IPO take the reference log-probabilities from.
#[derive(Clone, Copy)]
pub enum Reference<'a> {
    /// None is needed (SimPO, ORPO).
    None,
    /// A frozen model ([`reference_model`]), run without autodiff on every micro-batch.
    Model(&'a CausalLm),
    /// Computed once before training ([`precompute_reference`]), one entry per micro-batch.
    Precomputed(&'a [ReferenceLogps]),
}

impl Reference<'_> {
    /// The reference log-probabilities of micro-batch `i` (`mb`), or `None` for a method
    /// without a reference.
    fn for_micro_batch(
        &self,
        i: usize,
        mb: &PairMicroBatch,
        method: Method,
    ) -> Result<Option<ReferenceLogps>> {
        if !method.needs_reference() {
            return Ok(None);
        }
        match self {
            Reference::Model(m) => reference_logps(m, mb).map(Some),
            Reference::Precomputed(table) => table.get(i).cloned().map(Some).ok_or_else(|| {
                FinetuneError::NoData(format!(
                    "no precomputed reference log-probabilities for micro-batch {i}"
                ))
            }),
            Reference::None => Err(FinetuneError::NoData(format!(
                "{method} needs a reference model or precomputed reference log-probabilities"
            ))),
        }
    }
}

/// The reference model of a policy, sharing its frozen base: a copy without autodiff and, for a
/// new adapter, without adapters (PEFT's `disable_adapter`: the base model). With
/// `keep_adapters` the copy keeps the policy's current adapters, frozen: for a run that starts
/// from an SFT adapter, the reference is the SFT model, at the cost of a second copy of the
/// adapter only (TRL's `ref_adapter_name`).
pub fn reference_model(policy: &CausalLm, keep_adapters: bool) -> Result<CausalLm> {
    let mut frozen = policy.valid();
    frozen.set_adapters_training(false);
    if !keep_adapters {
        frozen.remove_adapters()?;
    }
    Ok(frozen)
}

/// The policy's log-probabilities of each completion in a micro-batch.
pub fn pair_logps(model: &CausalLm, mb: &PairMicroBatch) -> Result<PairLogps> {
    let (batch, labels) = &mb.batch;
    PairLogps::from_concatenated(model.sequence_logps(batch, labels)?)
}

/// The reference model's log-probabilities of each completion (no gradient).
pub fn reference_logps(reference: &CausalLm, mb: &PairMicroBatch) -> Result<ReferenceLogps> {
    let (chosen, rejected) = pair_logps(reference, mb)?.values();
    Ok(ReferenceLogps { chosen, rejected })
}

/// The reference log-probabilities of every micro-batch, computed once (TRL's
/// `precompute_ref_log_probs`): the reference model can then be dropped, and a resumed run
/// reads them back instead of recomputing.
pub fn precompute_reference(
    reference: &CausalLm,
    micro_batches: &[PairMicroBatch],
) -> Result<Vec<ReferenceLogps>> {
    micro_batches
        .iter()
        .map(|mb| reference_logps(reference, mb))
        .collect()
}

/// The objective on one micro-batch of pairs under `model` (with or without autodiff), and
/// its completion tokens.
fn micro_batch_loss(
    model: &CausalLm,
    mb: &PairMicroBatch,
    objective: &PreferenceObjective,
    reference: Option<&ReferenceLogps>,
) -> Result<(crate::training::preference::PreferenceLoss, usize)> {
    let hidden = model.forward_hidden(&mb.batch.0, None)?;
    hidden_loss(model, hidden, mb, objective, reference)
}

/// [`micro_batch_loss`] from the micro-batch's final hidden states: the policy's sequence
/// log-probabilities, ORPO's NLL over the chosen rows, and the objective.
fn hidden_loss(
    model: &CausalLm,
    hidden: burn::tensor::Tensor<3>,
    mb: &PairMicroBatch,
    objective: &PreferenceObjective,
    reference: Option<&ReferenceLogps>,
) -> Result<(crate::training::preference::PreferenceLoss, usize)> {
    let (batch, labels) = &mb.batch;
    let nll = if objective.method == Method::Orpo {
        let (chosen, chosen_labels) = mb.chosen_sequences();
        let rows = hidden.clone().narrow(0, 0, mb.pairs);
        Some(model.hidden_loss(rows, &chosen, &chosen_labels)?.loss)
    } else {
        None
    };
    let policy = PairLogps::from_concatenated(model.hidden_sequence_logps(hidden, batch, labels)?)?;
    let tokens =
        policy.chosen_tokens.iter().sum::<usize>() + policy.rejected_tokens.iter().sum::<usize>();
    Ok((preference_loss(objective, &policy, reference, nll)?, tokens))
}

impl PairMicroBatch {
    /// `pairs` in micro-batches of `batch`, in order.
    pub fn chunks(
        pairs: &[crate::data::EncodedPair],
        batch: usize,
        pad_id: u32,
        max_length: Option<usize>,
        truncation: PairTruncation,
    ) -> Vec<PairMicroBatch> {
        pairs
            .chunks(batch.max(1))
            .map(|chunk| PairMicroBatch::new(chunk, pad_id, max_length, truncation))
            .collect()
    }
}

/// What evaluating a policy on held-out pairs found.
#[derive(Debug, Clone)]
pub struct PairEvaluation {
    /// The objective's mean over the pairs (ORPO: over micro-batches, with its NLL term).
    pub loss: f64,
    /// Every pair's rewards and log-probabilities.
    pub stats: PairStats,
    /// Completion tokens evaluated.
    pub tokens: usize,
}

/// The objective and TRL's statistics of `model` on `micro_batches` of held-out pairs, without
/// autodiff and without dropout: reward accuracy and margin say how often, and by how much, the
/// policy prefers the chosen answer relative to the reference.
pub fn evaluate_pairs(
    model: &CausalLm,
    micro_batches: &[PairMicroBatch],
    objective: &PreferenceObjective,
    reference: Reference<'_>,
) -> Result<PairEvaluation> {
    let mut plain = model.valid();
    plain.set_adapters_training(false);
    let mut stats = PairStats::default();
    let (mut loss, mut pairs, mut tokens) = (0.0, 0usize, 0);
    let mut orpo_terms: Vec<(f64, f64, f64)> = Vec::new();
    for (i, mb) in micro_batches.iter().enumerate() {
        let reference = reference.for_micro_batch(i, mb, objective.method)?;
        let (out, n) = micro_batch_loss(&plain, mb, objective, reference.as_ref())?;
        tokens += n;
        loss += out.loss.into_scalar::<f64>() * mb.pairs as f64;
        pairs += mb.pairs;
        merge_stats(&mut stats, out.stats, &mut orpo_terms);
    }
    finish_orpo(&mut stats, &orpo_terms);
    Ok(PairEvaluation {
        loss: loss / pairs.max(1) as f64,
        stats,
        tokens,
    })
}

fn merge_stats(into: &mut PairStats, s: PairStats, orpo_terms: &mut Vec<(f64, f64, f64)>) {
    if let (Some(a), Some(b), Some(c)) = (s.nll_loss, s.log_odds_ratio, s.log_odds_chosen) {
        orpo_terms.push((a, b, c));
    }
    into.rewards_chosen.extend(s.rewards_chosen);
    into.rewards_rejected.extend(s.rewards_rejected);
    into.logps_chosen.extend(s.logps_chosen);
    into.logps_rejected.extend(s.logps_rejected);
    into.losses.extend(s.losses);
}

fn finish_orpo(stats: &mut PairStats, orpo_terms: &[(f64, f64, f64)]) {
    if !orpo_terms.is_empty() {
        let k = orpo_terms.len() as f64;
        stats.nll_loss = Some(orpo_terms.iter().map(|t| t.0).sum::<f64>() / k);
        stats.log_odds_ratio = Some(orpo_terms.iter().map(|t| t.1).sum::<f64>() / k);
        stats.log_odds_chosen = Some(orpo_terms.iter().map(|t| t.2).sum::<f64>() / k);
    }
}

/// The gradients of one preference step, before the update.
pub struct PreferenceStepGradients {
    /// Summed over the step's micro-batches, each micro-batch's loss divided by their number
    /// (TRL: the mean over a micro-batch's pairs, averaged over gradient accumulation).
    pub grads: GradientsParams,
    /// The step's loss: the mean of its micro-batches' losses.
    pub loss: f64,
    /// Every pair's statistics (ORPO's NLL and log-odds: the mean over micro-batches).
    pub stats: PairStats,
    /// Pairs in the step.
    pub pairs: usize,
    /// Completion tokens in the step (chosen and rejected).
    pub tokens: usize,
}

/// The gradients of one step over `micro_batches` under `objective`, with the activations
/// `checkpointing` says (layer checkpointing recomputes each decoder layer in backward, as for
/// supervised steps: the objective is computed from the last layer's output, and its gradient
/// flows back layer by layer). Dropout masks are numbered by `(seed, step)` and the micro-batch's
/// place in the step, as for supervised steps, so resuming is exact and a data-parallel run draws
/// the same masks; the reference pass runs without autodiff (and without dropout).
pub fn preference_step_gradients(
    model: &CausalLm,
    micro_batches: &[PairMicroBatch],
    objective: &PreferenceObjective,
    reference: Reference<'_>,
    seed: u64,
    step: u64,
    checkpointing: Checkpointing,
) -> Result<PreferenceStepGradients> {
    let share = preference_share_gradients(
        model,
        micro_batches.iter().enumerate(),
        micro_batches.len(),
        objective,
        reference,
        seed,
        step,
        checkpointing,
    )?;
    Ok(share.finish(micro_batches.len()))
}

/// Part of a preference step's micro-batches (a device's share in data-parallel training):
/// their gradients, and what each micro-batch measured, to be merged in step order.
pub struct PreferenceShare {
    /// Summed over the share's micro-batches, each loss divided by the step's micro-batches.
    pub grads: GradientsParams,
    /// Per micro-batch, in the order run.
    pub micro_batches: Vec<MicroBatchOutcome>,
}

/// What one micro-batch of a preference step measured.
pub struct MicroBatchOutcome {
    /// Its place in the step.
    pub place: usize,
    /// Its loss (the mean over its pairs).
    pub loss: f64,
    /// Its pairs' statistics.
    pub stats: PairStats,
    /// Its pairs.
    pub pairs: usize,
    /// Its completion tokens (chosen and rejected).
    pub tokens: usize,
}

impl PreferenceShare {
    /// The step's gradients from the shares of all its `micro_batches` (`self` holding the
    /// summed gradients and every micro-batch's outcome): loss and statistics merged in step
    /// order, as one device computes them.
    pub fn finish(mut self, micro_batches: usize) -> PreferenceStepGradients {
        let n = micro_batches.max(1) as f64;
        self.micro_batches.sort_by_key(|m| m.place);
        let mut stats = PairStats::default();
        let (mut loss, mut pairs, mut tokens) = (0.0, 0, 0);
        let mut orpo_terms: Vec<(f64, f64, f64)> = Vec::new();
        for m in self.micro_batches {
            tokens += m.tokens;
            loss += m.loss / n;
            pairs += m.pairs;
            merge_stats(&mut stats, m.stats, &mut orpo_terms);
        }
        finish_orpo(&mut stats, &orpo_terms);
        PreferenceStepGradients {
            grads: self.grads,
            loss,
            stats,
            pairs,
            tokens,
        }
    }
}

/// The gradients of the micro-batches `share` lists as `(place in the step, micro-batch)`, each
/// loss divided by `step_micro_batches` (TRL's average over gradient accumulation), so the
/// shares of one step add up to its [`preference_step_gradients`]. `reference` is indexed by
/// place.
#[allow(clippy::too_many_arguments)]
pub fn preference_share_gradients<'a>(
    model: &CausalLm,
    share: impl IntoIterator<Item = (usize, &'a PairMicroBatch)>,
    step_micro_batches: usize,
    objective: &PreferenceObjective,
    reference: Reference<'_>,
    seed: u64,
    step: u64,
    checkpointing: Checkpointing,
) -> Result<PreferenceShare> {
    if !model.device().is_autodiff() {
        return Err(FinetuneError::NoData(
            "training needs an autodiff device (Device::autodiff)".into(),
        ));
    }
    let n = step_micro_batches.max(1) as f64;
    let mut accumulator = GradientsAccumulator::<CausalLm>::new();
    let mut outcomes = Vec::new();
    for (place, mb) in share {
        model.seek_dropout(seed, (step << DROPOUT_CALLS_PER_STEP_BITS) + place as u64);
        let reference = reference.for_micro_batch(place, mb, objective.method)?;
        let (batch, _) = &mb.batch;
        let ((value, mb_stats, completion_tokens), grads) =
            model.gradients_of(batch, checkpointing, |hidden| {
                let (out, completion_tokens) =
                    hidden_loss(model, hidden, mb, objective, reference.as_ref())?;
                let value = out.loss.clone().into_scalar::<f64>();
                Ok::<_, FinetuneError>((
                    out.loss.div_scalar(n),
                    (value, out.stats, completion_tokens),
                ))
            })?;
        accumulator.accumulate(model, grads);
        outcomes.push(MicroBatchOutcome {
            place,
            loss: value,
            stats: mb_stats,
            pairs: mb.pairs,
            tokens: completion_tokens,
        });
    }
    Ok(PreferenceShare {
        grads: accumulator.grads(),
        micro_batches: outcomes,
    })
}
