//! A frozen linear layer over a dense or 4-bit weight.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use medify_quant::{Nf4Tensor, QuantConfig, QuantError};

/// The frozen base weight of a projection, in PyTorch's `[out, in]` orientation.
///
/// A dense weight is a constant tensor (no gradient buffer); a 4-bit weight keeps only its
/// packed codes and statistics on the device and is decoded inside the matmul.
#[derive(Debug, Clone)]
pub enum FrozenWeight {
    /// A dense weight `[out, in]` in the compute dtype.
    Dense(Tensor<2>),
    /// An NF4/FP4 (optionally double-quantized) weight.
    Quant4(Nf4Tensor),
}

impl FrozenWeight {
    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            FrozenWeight::Dense(w) => w.dims(),
            FrozenWeight::Quant4(q) => q.dims(),
        }
    }

    /// `x @ Wᵀ` over the last dimension of `x`.
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            FrozenWeight::Dense(w) => dense_matmul(x, w),
            FrozenWeight::Quant4(q) => q.matmul(x),
        }
    }

    /// The weight as a dense `[out, in]` tensor (decoded for 4-bit weights).
    pub fn to_dense(&self) -> Tensor<2> {
        match self {
            FrozenWeight::Dense(w) => w.clone(),
            FrozenWeight::Quant4(q) => q.dequantize(),
        }
    }

    /// Whether the weight is stored in 4 bits.
    pub fn is_quantized(&self) -> bool {
        matches!(self, FrozenWeight::Quant4(_))
    }

    /// Bytes the weight occupies on its device.
    pub fn device_bytes(&self) -> usize {
        match self {
            FrozenWeight::Dense(w) => w.shape().num_elements() * w.dtype().size(),
            FrozenWeight::Quant4(q) => q.device_bytes(),
        }
    }

    /// The device the weight lives on.
    pub fn device(&self) -> Device {
        match self {
            FrozenWeight::Dense(w) => w.device(),
            FrozenWeight::Quant4(q) => q.device(),
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

/// A frozen linear layer `y = x Wᵀ + b` whose weight may be dense or 4-bit.
#[derive(Module, Debug)]
pub struct Projection {
    #[module(skip)]
    weight: FrozenWeight,
    bias: Option<Tensor<1>>,
}

impl Projection {
    /// A projection over a dense `[out, in]` weight.
    pub fn dense(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Projection {
        Projection {
            weight: FrozenWeight::Dense(weight),
            bias,
        }
    }

    /// A projection over an already quantized weight.
    pub fn quant4(weight: Nf4Tensor, bias: Option<Tensor<1>>) -> Projection {
        Projection {
            weight: FrozenWeight::Quant4(weight),
            bias,
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

    /// The frozen base weight.
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

    /// Applies the layer over the last dimension of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.weight.matmul(x);
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<D>(),
            None => y,
        }
    }
}
