//! The one cast between the compute dtype (f32, f16 or bf16 activations) and the f32 of
//! adapters, norms, softmax and the loss, for every crate above this one.

use burn::tensor::{DType, Tensor};

/// `x` in `dtype`, unchanged when it already is.
///
/// ```
/// use burn::tensor::{DType, Device, Tensor};
/// let x = Tensor::<1>::from_floats([1.5f32, -2.0], &Device::flex());
/// assert_eq!(medify_quant::dtype::cast_to(x.clone(), DType::F16).dtype(), DType::F16);
/// assert_eq!(medify_quant::dtype::to_f32(x).dtype(), DType::F32);
/// ```
pub fn cast_to<const D: usize>(x: Tensor<D>, dtype: DType) -> Tensor<D> {
    if x.dtype() == dtype { x } else { x.cast(dtype) }
}

/// `x` as f32 (see [`cast_to`]).
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    cast_to(x, DType::F32)
}
