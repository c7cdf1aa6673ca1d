//! Host views of Flex tensors, shared by the workspace's host kernels (4-bit matmul, dropout,
//! the fused softmax / SwiGLU / loss of `medify-models`).

use std::borrow::Cow;

use burn::backend::Autodiff;
use burn::tensor::{DType, Element, Int, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};

/// A typed view of a Flex tensor's values in row-major order: borrowed when it is contiguous and
/// of type `E`, else converted.
pub fn values<E: Element + bytemuck::Pod>(t: &FlexTensor) -> Cow<'_, [E]> {
    match t.as_slice::<E>() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(
            t.clone()
                .into_data()
                .convert::<E>()
                .try_into_vec::<E>()
                .expect("converted to the requested element type"),
        ),
    }
}

/// [`values`] as f32.
pub fn f32s(t: &FlexTensor) -> Cow<'_, [f32]> {
    values::<f32>(t)
}

/// A Flex tensor of `shape` from f32 results, stored as `dtype` (the kernels compute in f32).
pub fn from_f32(values: Vec<f32>, shape: Vec<usize>, dtype: DType) -> FlexTensor {
    let data = TensorData::new(values, shape);
    FlexTensor::from_data(if dtype == DType::F32 {
        data
    } else {
        data.convert_dtype(dtype)
    })
}

/// The Flex tensor behind a float tensor, sharing its storage (no copy); `None` on another
/// device. A tensor tracked by autodiff gives its untracked value.
pub fn flex_float<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    match t.clone().try_into_primitive::<Flex>() {
        Ok(p) => Some(p),
        Err(_) => t
            .clone()
            .try_into_primitive::<Autodiff<Flex>>()
            .ok()
            .map(|p| p.into_primitive()),
    }
}

/// [`flex_float`] for an integer tensor (4-bit codes, int8 words).
pub fn flex_int<const D: usize>(t: &Tensor<D, Int>) -> Option<FlexTensor> {
    t.clone().try_into_primitive::<Flex>().ok()
}
