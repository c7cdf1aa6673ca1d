//! One optimizer step of adapter training, the one the [`Trainer`](crate::Trainer) takes and the
//! training benchmarks (`bench-train`, `bench-memory`) measure.

use burn::optim::GradientsAccumulator;
use burn::optim::GradientsParams;

use crate::error::Result;
use crate::lora::LoraExt;
use crate::models::{CausalLm, Checkpointing, Label, TokenBatch};
use crate::optim::{PagedAdamW, StepReport};

/// Dropout masks one step may draw per layer (micro-batches x forward passes), as a power of
/// two: step `n` draws from mask number `n << DROPOUT_CALLS_PER_STEP_BITS` on.
pub const DROPOUT_CALLS_PER_STEP_BITS: u32 = 24;

/// A micro-batch: token ids with positions and segments, and the label of every position.
pub type MicroBatch = (TokenBatch, Vec<Vec<Label>>);

/// The gradients of one optimizer step, before the update.
pub struct StepGradients {
    /// Summed over the step's micro-batches, each scaled by `1 / tokens`.
    pub grads: GradientsParams,
    /// Mean loss per predicted token over the whole step.
    pub loss: f64,
    /// Predicted tokens in the step.
    pub tokens: usize,
}

/// The gradients of one step over `micro_batches` (gradient accumulation): each micro-batch's
/// loss is scaled by one over the predicted tokens of the *whole* step, so accumulating equals
/// one large batch. Dropout masks are numbered by `(seed, step)` and the micro-batch's place in
/// the step, so a resumed run, a benchmark, or a data-parallel run that gives the micro-batch to
/// another device draws the masks an uninterrupted one-device run draws.
pub fn step_gradients(
    model: &CausalLm,
    micro_batches: &[MicroBatch],
    seed: u64,
    step: u64,
    checkpointing: Checkpointing,
) -> Result<StepGradients> {
    let tokens = step_tokens(micro_batches);
    let share = share_gradients(
        model,
        micro_batches.iter().enumerate(),
        tokens,
        seed,
        step,
        checkpointing,
    )?;
    Ok(StepGradients {
        grads: share.grads,
        loss: share.loss_sum / tokens.max(1) as f64,
        tokens,
    })
}

/// The gradients of part of a step's micro-batches (a device's share in data-parallel
/// training).
pub struct ShareGradients {
    /// Summed over the share's micro-batches, each scaled by one over the whole step's tokens.
    pub grads: GradientsParams,
    /// Summed loss of the share's predicted tokens.
    pub loss_sum: f64,
    /// Predicted tokens in the share.
    pub tokens: usize,
}

/// The gradients of the micro-batches `share` lists as `(place in the step, micro-batch)`,
/// each loss scaled by `1 / step_tokens` (the predicted tokens of the whole step), so the
/// shares of one step add up to its [`step_gradients`].
pub fn share_gradients<'a>(
    model: &CausalLm,
    share: impl IntoIterator<Item = (usize, &'a MicroBatch)>,
    step_tokens: usize,
    seed: u64,
    step: u64,
    checkpointing: Checkpointing,
) -> Result<ShareGradients> {
    let scale = 1.0 / step_tokens.max(1) as f32;
    let mut accumulator = GradientsAccumulator::<CausalLm>::new();
    let (mut loss_sum, mut tokens) = (0.0, 0);
    for (place, (batch, labels)) in share {
        let predicted = predicted(labels);
        if predicted == 0 {
            continue;
        }
        model.seek_dropout(seed, (step << DROPOUT_CALLS_PER_STEP_BITS) + place as u64);
        let out = model.loss_gradients(batch, labels, scale, checkpointing)?;
        accumulator.accumulate(model, out.grads);
        loss_sum += out.loss_sum;
        tokens += predicted;
    }
    Ok(ShareGradients {
        grads: accumulator.grads(),
        loss_sum,
        tokens,
    })
}

/// Predicted tokens of a step's micro-batches.
pub fn step_tokens(micro_batches: &[MicroBatch]) -> usize {
    micro_batches
        .iter()
        .map(|(_, labels)| predicted(labels))
        .sum()
}

/// [`step_gradients`], then the optimizer's update at learning rate `lr` (clipping as the
/// optimizer is configured). Returns the updated model, the step's mean loss and the
/// optimizer's report.
pub fn train_step(
    model: CausalLm,
    optimizer: &mut PagedAdamW,
    micro_batches: &[MicroBatch],
    seed: u64,
    step: u64,
    lr: f64,
    checkpointing: Checkpointing,
) -> Result<(CausalLm, f64, StepReport)> {
    let g = step_gradients(&model, micro_batches, seed, step, checkpointing)?;
    let (model, report) = optimizer.step(lr, model, g.grads)?;
    Ok((model, g.loss, report))
}

/// Labels that are predicted: every `Some` after the first position of each row.
fn predicted(labels: &[Vec<Label>]) -> usize {
    labels
        .iter()
        .map(|row| row.iter().skip(1).filter(|l| l.is_some()).count())
        .sum()
}
