//! Training gradients of one micro-batch, optionally with layer-level gradient checkpointing.
//!
//! Without checkpointing, autodiff keeps every op's saved tensors for all layers until backward:
//! attention probabilities, MLP activations, the 4-bit layers' inputs, per layer. With it, the
//! forward pass runs each decoder layer off the graph and keeps only the layer's input; backward
//! then walks the layers from the top, recomputes one layer's forward on the graph, and
//! back-propagates the incoming gradient through it (a scalar with the gradients of `Σ y·g`;
//! the layer output itself is not needed, so the down projection's base matmul is skipped), so
//! one layer's working set exists at a time. burn's own `gradient_checkpointing()` only recomputes memory-bound ops and keeps
//! every matmul output, so this is done here, as a sequence of per-layer backward passes.
//!
//! Dropout draws the same masks in the recomputation: each adapter's stream is rewound to where
//! it stood before the layer's first pass. The result equals the plain backward within float
//! rounding (tested), and the step costs about one extra forward pass.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use crate::error::{ModelError, Result};
use crate::layers::DecoderLayer;
use crate::model::{CausalLm, Label, TokenBatch};

/// What a training step keeps for backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Checkpointing {
    /// Every op's saved tensors (fastest, most memory).
    #[default]
    Off,
    /// Only each decoder layer's input, on the device; layers are recomputed in backward.
    Layers,
    /// Only each decoder layer's input, in host memory on accelerators (Unsloth's offloaded
    /// checkpointing), copied back for the recompute. The same as `Layers` on the CPU.
    LayersOffloaded,
}

impl Checkpointing {
    /// The mode two switches name: checkpointing on or off, and offloading what it keeps.
    pub fn from_flags(enabled: bool, offload: bool) -> Checkpointing {
        match (enabled, offload) {
            (false, _) => Checkpointing::Off,
            (true, false) => Checkpointing::Layers,
            (true, true) => Checkpointing::LayersOffloaded,
        }
    }
}

/// One micro-batch's loss and the gradients of `scale · loss_sum` in every trainable parameter.
#[derive(Debug)]
pub struct MicroBatchGradients {
    /// The weighted cross-entropy sum over predicted tokens.
    pub loss_sum: f64,
    /// Predicted tokens (labels that are `Some` after the shift).
    pub tokens: usize,
    /// Gradients by parameter id, as `GradientsParams::from_grads` gives them.
    pub grads: GradientsParams,
}

/// A layer input kept for the recompute: on the device, or copied to host memory.
enum Saved {
    Device(Tensor<3>),
    Host(TensorData),
}

impl Saved {
    fn keep(x: &Tensor<3>, offload: bool) -> Saved {
        if offload {
            Saved::Host(x.to_data())
        } else {
            Saved::Device(x.clone())
        }
    }

    fn restore(self, device: &Device) -> Tensor<3> {
        match self {
            Saved::Device(x) => x,
            Saved::Host(data) => {
                let dtype = data.dtype();
                Tensor::from_data(data, (device, dtype))
            }
        }
    }
}

/// Moves the gradients of a module's trainable parameters out of `grads` into `out`, adding to
/// what `out` holds already (a tiled backward contributes to a parameter once per tile).
struct CollectGrads<'a> {
    grads: &'a mut Gradients,
    out: &'a mut GradientsParams,
}

impl ModuleVisitor for CollectGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.is_require_grad() {
            return;
        }
        if let Some(g) = param.val().grad_remove(self.grads) {
            let g = match self.out.remove::<D>(param.id) {
                Some(prev) => prev + g,
                None => g,
            };
            self.out.register(param.id, g);
        }
    }
}

pub(crate) fn collect(module: &impl Module, grads: &mut Gradients, out: &mut GradientsParams) {
    module.visit(&mut CollectGrads { grads, out });
}

/// Each adapter's dropout position in a layer, to rewind to before the recompute.
fn dropout_marks(layer: &DecoderLayer) -> Vec<Option<(u64, u64)>> {
    layer
        .projections()
        .iter()
        .map(|(_, p)| p.lora().map(|a| a.dropout_position()))
        .collect()
}

fn rewind_dropout(layer: &DecoderLayer, marks: &[Option<(u64, u64)>]) {
    for ((_, p), mark) in layer.projections().iter().zip(marks) {
        if let (Some(a), Some((seed, pos))) = (p.lora(), mark) {
            a.seek_dropout(*seed, *pos);
        }
    }
}

impl CausalLm {
    /// The loss of a micro-batch and the gradients of `scale · loss_sum` (the trainer passes
    /// `1 / tokens in the accumulation window`), with the activations `checkpointing` says.
    /// Both modes give the same loss and gradients within float rounding.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, Checkpointing, LoadOptions, TokenBatch};
    /// use medify_lora::{LoraConfig, LoraExt};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let device = Device::flex().autodiff();
    /// let (mut model, _) = CausalLm::from_pretrained(dir, &device, &LoadOptions::default()).unwrap();
    /// model.add_adapters(&LoraConfig::default()).unwrap();
    /// let batch = TokenBatch::new(vec![vec![1, 5, 9, 4]]);
    /// let labels = vec![vec![None, Some(5), Some(9), Some(4)]];
    /// let out = model.loss_gradients(&batch, &labels, 1.0 / 3.0, Checkpointing::Layers).unwrap();
    /// assert_eq!(out.tokens, 3);
    /// assert!(!out.grads.is_empty());
    /// ```
    pub fn loss_gradients(
        &self,
        batch: &TokenBatch,
        labels: &[Vec<Label>],
        scale: f32,
        checkpointing: Checkpointing,
    ) -> Result<MicroBatchGradients> {
        let (_, _, tokens) = self.loss_targets(batch, labels)?;
        let (loss_sum, grads) = self.gradients_of(batch, checkpointing, |hidden| {
            let sum = self.hidden_loss(hidden, batch, labels)?.sum;
            let value = sum.clone().into_scalar::<f64>();
            Ok::<_, ModelError>((sum.mul_scalar(scale), value))
        })?;
        Ok(MicroBatchGradients {
            loss_sum,
            tokens,
            grads,
        })
    }

    /// The gradients, in every trainable parameter, of the scalar that `head` computes from the
    /// batch's final (normed) hidden states `[rows, seq, hidden]`, with the activations
    /// `checkpointing` says: any objective over the model's outputs (a token loss, sequence
    /// log-probabilities and a preference loss over them) trains with layer checkpointing
    /// through here. `head` also hands back whatever else it computed (`T`); it runs once.
    ///
    /// ```
    /// use burn::tensor::Device;
    /// use medify_models::{CausalLm, Checkpointing, LoadOptions, ModelError, TokenBatch};
    /// use medify_lora::{LoraConfig, LoraExt};
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/tiny_models/llama");
    /// let (mut model, _) = CausalLm::from_pretrained(dir, &Device::flex().autodiff(), &LoadOptions::default()).unwrap();
    /// model.add_adapters(&LoraConfig::default()).unwrap();
    /// let batch = TokenBatch::new(vec![vec![1, 5, 9, 4]]);
    /// let labels = vec![vec![None, None, Some(9), Some(4)]];
    /// // Maximise the sequence's log-probability.
    /// let (logp, grads) = model.gradients_of(&batch, Checkpointing::Layers, |hidden| {
    ///     let logps = model.hidden_sequence_logps(hidden, &batch, &labels)?.logps;
    ///     let value = logps.clone().into_scalar::<f64>();
    ///     Ok::<_, ModelError>((logps.neg().sum(), value))
    /// }).unwrap();
    /// assert!(logp < 0.0 && !grads.is_empty());
    /// ```
    pub fn gradients_of<T, E: From<ModelError>>(
        &self,
        batch: &TokenBatch,
        checkpointing: Checkpointing,
        head: impl FnOnce(Tensor<3>) -> std::result::Result<(Tensor<1>, T), E>,
    ) -> std::result::Result<(T, GradientsParams), E> {
        if !self.device().is_autodiff() {
            return Err(ModelError::InvalidRequest(
                "training needs an autodiff device (Device::autodiff)".into(),
            )
            .into());
        }
        if checkpointing == Checkpointing::Off || self.layers.is_empty() {
            let hidden = self.forward_hidden(batch, None)?;
            let (scalar, extra) = head(hidden)?;
            let grads = GradientsParams::from_grads(scalar.backward(), self);
            return Ok((extra, grads));
        }
        let device = self.device();
        let offload =
            checkpointing == Checkpointing::LayersOffloaded && !medify_quant::is_flex(&device);
        let (ctx, mut x) = self.embed(batch, None)?;

        // Forward off the graph, keeping each layer's input.
        let mut saved = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            saved.push((Saved::keep(&x, offload), dropout_marks(layer)));
            x = layer.clone().no_grad().forward(x, &ctx, None);
        }

        // Head on the graph, from the last layer's output as a leaf.
        let top = x.require_grad();
        let (scalar, extra) = head(self.norm.forward(top.clone()))?;
        let mut grads = scalar.backward();
        let mut out = GradientsParams::new();
        collect(self, &mut grads, &mut out);
        let mut upstream = top.grad(&grads).ok_or_else(no_gradient)?;
        drop(grads);

        // Backward layer by layer: recompute, then back-propagate `upstream` through it.
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let (input, marks) = saved.pop().ok_or_else(no_gradient)?;
            let input = input.restore(&device);
            let [b, s, _] = input.dims();
            if layer.needs_tiles(b, s, &ctx) {
                // Rewinds each adapter's stream itself, once per tile.
                let grad =
                    layer.tiled_backward(input, &ctx, upstream.clone(), &marks, i > 0, &mut out)?;
                if let Some(grad) = grad {
                    upstream = grad;
                }
                continue;
            }
            rewind_dropout(layer, &marks);
            let input = if i > 0 { input.require_grad() } else { input };
            let surrogate = layer.backprop_surrogate(input.clone(), &ctx, upstream.clone());
            let mut grads = surrogate.backward();
            collect(layer, &mut grads, &mut out);
            if i > 0 {
                upstream = input.grad(&grads).ok_or_else(no_gradient)?;
            }
        }
        Ok((extra, out))
    }
}

pub(crate) fn no_gradient() -> ModelError {
    ModelError::InvalidRequest("checkpointed backward lost a layer's gradient".into())
}
