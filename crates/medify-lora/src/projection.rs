//! A frozen linear layer over a dense, 4-bit or int8 weight.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use medify_quant::dtype::{cast_to, to_f32};
use medify_quant::{Int8Tensor, Nf4Tensor, QuantConfig, QuantError};

use crate::adapter::LoraAdapter;
use crate::error::LoraError;

/// The frozen base weight of a projection, in PyTorch's `[out, in]` orientation.
///
/// A dense weight is a constant tensor (no gradient buffer); a 4-bit or int8 weight keeps only
/// its codes and statistics on the device and is decoded inside the matmul.
// One per projection: a box would save a few hundred bytes per layer and cost an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// A dense weight `[out, in]` in the compute dtype.
    Dense(Tensor<2>),
    /// An NF4/FP4 (optionally double-quantized) weight.
    Quant4(Nf4Tensor),
    /// An LLM.int8 weight (row-wise absmax, bitsandbytes' `Linear8bitLt` layout).
    Int8(Int8Tensor),
}

impl FrozenWeight {
    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            FrozenWeight::Dense(w) => w.dims(),
            FrozenWeight::Quant4(q) => q.dims(),
            FrozenWeight::Int8(q) => q.dims(),
        }
    }

    /// `x @ Wᵀ` over the last dimension of `x`.
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            FrozenWeight::Dense(w) => dense_matmul(x, w),
            FrozenWeight::Quant4(q) => q.matmul(x),
            FrozenWeight::Int8(q) => q.matmul(x),
        }
    }

    /// `g @ W` over the last dimension of `g` (`[.., out]` to `[.., in]`): the gradient a matmul
    /// by this frozen weight passes back to its input. A 4-bit weight is decoded for it, as its
    /// backward pass does.
    pub fn input_gradient<const D: usize>(&self, g: Tensor<D>) -> Tensor<D> {
        let w = cast_to(self.to_dense(), g.dtype());
        let mut dims = g.dims();
        let rows: usize = dims[..D - 1].iter().product();
        let [out, inp] = w.dims();
        dims[D - 1] = inp;
        g.reshape([rows, out]).matmul(w).reshape(dims)
    }

    /// The weight as a dense `[out, in]` tensor (decoded for 4-bit and int8 weights).
    pub fn to_dense(&self) -> Tensor<2> {
        match self {
            FrozenWeight::Dense(w) => w.clone(),
            FrozenWeight::Quant4(q) => q.dequantize(),
            FrozenWeight::Int8(q) => q.dequantize(),
        }
    }

    /// Whether the weight is stored quantized (4-bit or int8).
    pub fn is_quantized(&self) -> bool {
        !matches!(self, FrozenWeight::Dense(_))
    }

    /// Bytes the weight occupies on its device.
    pub fn device_bytes(&self) -> usize {
        match self {
            FrozenWeight::Dense(w) => w.shape().num_elements() * w.dtype().size(),
            FrozenWeight::Quant4(q) => q.device_bytes(),
            FrozenWeight::Int8(q) => q.device_bytes(),
        }
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        match self {
            FrozenWeight::Dense(w) => w.device(),
            FrozenWeight::Quant4(q) => q.device(),
            FrozenWeight::Int8(q) => q.device(),
        }
    }
}

/// `x @ wᵀ` for a dense `[out, in]` weight, as one 2-D matmul: a broadcast batched matmul over a
/// transposed view copies the whole weight on some backends (flex: 12x slower for one token).
pub fn dense_matmul<const D: usize>(x: Tensor<D>, w: &Tensor<2>) -> Tensor<D> {
    let mut dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let y = x.reshape([rows, dims[D - 1]]).matmul(w.clone().transpose());
    dims[D - 1] = w.dims()[0];
    y.reshape(dims)
}

/// What a merged projection remembers to undo the merge.
#[allow(clippy::large_enum_variant)] // one per merged projection
#[derive(Debug, Clone)]
enum MergedBase {
    /// A dense base holds `W + s·B A` (LoRA) or `(m/‖W + s·B A‖)(W + s·B A)` (DoRA, with that
    /// norm kept here); unmerging subtracts, as PEFT does.
    Dense { dora_scale: Option<Tensor<1>> },
    /// A 4-bit base was requantized after the merge; the original codes are kept (they are
    /// small) so unmerging restores them bit for bit instead of rounding twice.
    Quant4 { original: Nf4Tensor },
    /// An int8 base, requantized after the merge (as PEFT merges into `Linear8bitLt`), its
    /// original codes kept the same way.
    Int8 { original: Int8Tensor },
}

/// What [`Projection::merge`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeOutcome {
    /// The base is 4-bit or int8 and was requantized: the merged weights are rounded.
    pub requantized: bool,
    /// Largest absolute difference between the exact merged weight and its requantized form
    /// (0 for dense bases).
    pub max_rounding_error: f32,
}

/// A frozen linear layer `y = x Wᵀ + b` whose weight may be dense, 4-bit or int8, with an optional
/// trainable LoRA adapter on top.
///
/// ```
/// use burn::tensor::{DType, Device, Tensor};
/// use medify_lora::{LoraAdapter, Projection};
/// let device = Device::flex();
/// let mut p = Projection::dense(Tensor::<2>::ones([3, 4], &device), None);
/// let a = Tensor::<2>::ones([1, 4], &device);
/// let b = Tensor::<2>::ones([3, 1], &device);
/// p.set_lora(Some(LoraAdapter::new(a, b, None, 2.0, 0.0).unwrap())).unwrap();
/// let x = Tensor::<2>::ones([1, 4], &device);
/// // base 4 + s·(x Aᵀ Bᵀ) = 4 + 2·4
/// assert_eq!(p.forward(x.clone()).into_data().try_into_vec::<f32>().unwrap(), vec![12.0; 3]);
/// p.merge().unwrap();
/// assert_eq!(p.forward(x).into_data().try_into_vec::<f32>().unwrap(), vec![12.0; 3]);
/// ```
#[derive(Module, Debug)]
pub struct Projection {
    #[module(skip)]
    weight: FrozenWeight,
    bias: Option<Tensor<1>>,
    /// The trainable adapter, if the layer is adapted.
    pub lora: Option<LoraAdapter>,
    #[module(skip)]
    merged: Option<MergedBase>,
}

impl Projection {
    /// A projection over a dense `[out, in]` weight.
    pub fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Projection {
        Projection::with_weight(FrozenWeight::Dense(weight), bias)
    }

    /// A projection over an already quantized weight.
    pub fn quant4(weight: Nf4Tensor, bias: Option<Tensor<1>>) -> Projection {
        Projection::with_weight(FrozenWeight::Quant4(weight), bias)
    }

    /// A projection over an int8 weight.
    pub fn int8(weight: Int8Tensor, bias: Option<Tensor<1>>) -> Projection {
        Projection::with_weight(FrozenWeight::Int8(weight), bias)
    }

    fn with_weight(weight: FrozenWeight, bias: Option<Tensor<1>>) -> Projection {
        Projection {
            weight,
            bias,
            lora: None,
            merged: None,
        }
    }

    /// Quantizes a dense `[out, in]` weight (bitsandbytes-exact) and keeps only the 4-bit form.
    pub fn quantized(
        weight: Tensor<2>,
        bias: Option<Tensor<1>>,
        config: &QuantConfig,
    ) -> Result<Projection, QuantError> {
        Ok(Projection::quant4(
            Nf4Tensor::quantize(weight, config)?,
            bias,
        ))
    }

    /// The frozen base weight (holding the merged weight while merged).
    pub fn weight(&self) -> &FrozenWeight {
        &self.weight
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor<1>> {
        self.bias.as_ref()
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.weight.dims()
    }

    /// The adapter, if any.
    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Installs (or removes, with `None`) the adapter. Its shape must fit the layer, and a merged
    /// layer must be unmerged first.
    pub fn set_lora(&mut self, adapter: Option<LoraAdapter>) -> Result<(), LoraError> {
        if self.merged.is_some() {
            return Err(LoraError::State(
                "the adapter is merged into this layer; unmerge it before replacing it".into(),
            ));
        }
        if let Some(a) = &adapter
            && a.dims() != self.dims()
        {
            return Err(LoraError::InvalidConfig(format!(
                "adapter for a {:?} layer cannot go on a {:?} layer",
                a.dims(),
                self.dims()
            )));
        }
        self.lora = adapter;
        Ok(())
    }

    /// Whether the adapter is currently folded into the base weight.
    pub fn is_merged(&self) -> bool {
        self.merged.is_some()
    }

    /// Applies the layer over the last dimension of `x`: `x Wᵀ (+ adapter) + b`, the adapter
    /// computed from the activations (the merged weight is never formed).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let base = self.weight.matmul(x.clone());
        let y = match (&self.lora, &self.merged) {
            (Some(adapter), None) => adapter.apply(x, base, &self.weight),
            _ => base,
        };
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<D>(),
            None => y,
        }
    }

    /// A scalar whose gradient in `x` and in the adapter's parameters equals that of
    /// `Σ forward(x) ⊙ g` for a constant `g`: how gradient checkpointing back-propagates `g`
    /// through a recomputed layer. With a plain adapter (or none) the base's part is linear with
    /// the constant gradient `g W`, so `Σ x ⊙ (g W)` stands in for it and the base's forward
    /// matmul is skipped; the value then differs from `Σ forward(x) ⊙ g` (only its gradient
    /// is meant). DoRA takes the full forward.
    pub fn backprop_surrogate<const D: usize>(&self, x: Tensor<D>, g: Tensor<D>) -> Tensor<1> {
        let delta = match (&self.lora, &self.merged) {
            (Some(adapter), None) => match adapter.delta_output(x.clone()) {
                Some(delta) => Some(delta),
                None => return (self.forward(x) * g).sum(),
            },
            _ => None,
        };
        let base = (x * self.weight.input_gradient(g.clone())).sum();
        match delta {
            Some(delta) => base + (delta * g).sum(),
            None => base,
        }
    }

    /// The weight the layer effectively applies, dense `[out, in]`: base plus adapter
    /// (DoRA-rescaled), whether merged or not. For export; detached from any graph.
    pub fn effective_weight(&self) -> Tensor<2> {
        let w = self.weight.to_dense().detach();
        match (&self.lora, &self.merged) {
            (Some(adapter), None) => merged_weight(w, adapter, &self.weight).0,
            _ => w,
        }
    }

    /// Folds the adapter into the base weight so inference costs nothing extra. A 4-bit or int8
    /// base is dequantized, summed and requantized with its own settings: the rounding is
    /// reported.
    pub fn merge(&mut self) -> Result<MergeOutcome, LoraError> {
        let adapter = self
            .lora
            .as_ref()
            .ok_or_else(|| LoraError::State("no adapter to merge".into()))?;
        if self.merged.is_some() {
            return Err(LoraError::State("the adapter is already merged".into()));
        }
        let (merged, dora_scale) =
            merged_weight(self.weight.to_dense().detach(), adapter, &self.weight);
        match &self.weight {
            FrozenWeight::Dense(_) => {
                self.weight = FrozenWeight::Dense(merged);
                self.merged = Some(MergedBase::Dense { dora_scale });
                Ok(MergeOutcome {
                    requantized: false,
                    max_rounding_error: 0.0,
                })
            }
            FrozenWeight::Quant4(q) => {
                let config = QuantConfig::default()
                    .with_quant_type(q.quant_type())
                    .with_blocksize(q.blocksize())
                    .with_double_quant(q.is_double_quant());
                let requantized = Nf4Tensor::quantize(merged.clone(), &config)?;
                let err = rounding_error(requantized.dequantize(), merged);
                let original = q.clone();
                self.weight = FrozenWeight::Quant4(requantized);
                self.merged = Some(MergedBase::Quant4 { original });
                Ok(MergeOutcome::requantized(err))
            }
            FrozenWeight::Int8(q) => {
                let requantized = Int8Tensor::quantize(merged.clone())?;
                let err = rounding_error(requantized.dequantize(), merged);
                let original = q.clone();
                self.weight = FrozenWeight::Int8(requantized);
                self.merged = Some(MergedBase::Int8 { original });
                Ok(MergeOutcome::requantized(err))
            }
        }
    }

    /// Undoes [`Projection::merge`].
    pub fn unmerge(&mut self) -> Result<(), LoraError> {
        let adapter = self
            .lora
            .as_ref()
            .ok_or_else(|| LoraError::State("no adapter to unmerge".into()))?;
        match self.merged.take() {
            None => Err(LoraError::State("the adapter is not merged".into())),
            Some(MergedBase::Quant4 { original }) => {
                self.weight = FrozenWeight::Quant4(original);
                Ok(())
            }
            Some(MergedBase::Int8 { original }) => {
                self.weight = FrozenWeight::Int8(original);
                Ok(())
            }
            Some(MergedBase::Dense { dora_scale }) => {
                let w = self.weight.to_dense().detach();
                let w = match dora_scale {
                    Some(scale) => w / scale.unsqueeze_dim::<2>(1),
                    None => w,
                };
                self.weight = FrozenWeight::Dense(w - adapter.delta());
                Ok(())
            }
        }
    }
}

/// The largest absolute difference between a requantized weight and the exact one.
fn rounding_error(requantized: Tensor<2>, exact: Tensor<2>) -> f32 {
    requantized.sub(exact).abs().max().into_scalar::<f32>()
}

impl MergeOutcome {
    fn requantized(max_rounding_error: f32) -> MergeOutcome {
        MergeOutcome {
            requantized: true,
            max_rounding_error,
        }
    }
}

/// `W + s·B A`, and for DoRA `(m / ‖W + s·B A‖_row) (W + s·B A)` with that row factor.
fn merged_weight(
    w: Tensor<2>,
    adapter: &LoraAdapter,
    base: &FrozenWeight,
) -> (Tensor<2>, Option<Tensor<1>>) {
    // Summed in f32, returned in the base's dtype.
    let dtype = w.dtype();
    let sum = to_f32(w) + adapter.delta();
    match adapter.dora_scale(base) {
        Some(scale) => {
            let scale = scale.detach();
            (
                cast_to(sum * scale.clone().unsqueeze_dim::<2>(1), dtype),
                Some(scale),
            )
        }
        None => (cast_to(sum, dtype), None),
    }
}
