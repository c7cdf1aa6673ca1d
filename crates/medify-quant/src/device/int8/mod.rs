//! Frozen LLM.int8 weights resident on a burn device, and the ops that use them.
//!
//! As for 4-bit weights, one backend extension ([`Int8Ops`]) serves every backend: host kernels
//! on Flex, a CubeCL decode kernel on wgpu/CUDA, and a backward for autodiff that decodes again
//! instead of keeping a dense copy.

mod autodiff;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cube;
#[cfg(feature = "flex")]
mod flex;
mod ops;

pub use ops::Int8Ops;

use std::sync::Arc;

use burn::backend::Dispatch;
use burn::tensor::{Device, Int, Tensor};

use crate::{Int8Weight, QuantError};

/// A frozen int8 weight (bitsandbytes' `Linear8bitLt` form: row-wise absmax) on a burn device.
///
/// The codes stay int8 (four to a `u32` word) on the device, with one f32 scale per row; dense
/// values exist only transiently inside an op. `SCB` is kept on the host to write the weight
/// back exactly.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// use medify_quant::{Int8Tensor, Int8Weight};
/// let device = Device::flex();
/// let w = Int8Weight::quantize(&[0.5, -1.0, 0.25, 2.0], [2, 2]).unwrap();
/// let q = Int8Tensor::from_weight(&w, &device).unwrap();
/// let y = q.matmul(Tensor::<2>::ones([1, 2], &device)); // x @ W^T
/// assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), w.dequantize().chunks(2).map(|r| r[0] + r[1]).collect::<Vec<_>>());
/// ```
#[derive(Debug, Clone)]
pub struct Int8Tensor {
    codes: Tensor<1, Int>,
    scales: Tensor<1>,
    scb: Arc<Vec<f32>>,
    shape: [usize; 2],
}

impl Int8Tensor {
    /// Uploads a host int8 weight.
    pub fn from_weight(w: &Int8Weight, device: &Device) -> Result<Int8Tensor, QuantError> {
        Ok(Int8Tensor {
            codes: super::words_tensor(bytemuck::cast_slice(w.codes()), device),
            scales: super::f32_tensor(&w.row_scales(), device),
            scb: Arc::new(w.scb().to_vec()),
            shape: w.shape(),
        })
    }

    /// Quantizes a dense `[out, in]` weight with the host codec (bit-exact with bitsandbytes)
    /// and uploads it to the weight's device.
    pub fn quantize(weight: Tensor<2>) -> Result<Int8Tensor, QuantError> {
        let device = weight.device();
        let dims = weight.dims();
        Int8Tensor::from_weight(
            &Int8Weight::quantize(&super::host_values(weight)?, dims)?,
            &device,
        )
    }

    /// Downloads back to the host form (for saving in transformers' 8-bit layout).
    pub fn to_weight(&self) -> Int8Weight {
        let bytes = super::download_bytes(&self.codes, self.shape[0] * self.shape[1]);
        let codes: Vec<i8> = bytemuck::cast_slice(&bytes).to_vec();
        Int8Weight::from_parts(codes, self.scb.to_vec(), self.shape)
            .expect("an uploaded weight downloads consistently")
    }

    /// `[out_features, in_features]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The device holding the codes.
    pub fn device(&self) -> Device {
        self.codes.device()
    }

    /// Bytes held on the device: one per code (rounded up to a word) and four per row.
    pub fn device_bytes(&self) -> usize {
        4 * (self.shape[0] * self.shape[1]).div_ceil(4) + 4 * self.shape[0]
    }

    /// Handles on the Flex buffers (code words, row scales), no copy; `None` on another device.
    #[cfg(feature = "flex")]
    pub(crate) fn host_parts(&self) -> Option<(burn_flex::FlexTensor, burn_flex::FlexTensor)> {
        Some((
            crate::host_tensor::flex_int(&self.codes)?,
            crate::host_tensor::flex_float(&self.scales)?,
        ))
    }

    /// The dense f32 weight `[out, in]`, decoded on the device.
    pub fn dequantize(&self) -> Tensor<2> {
        Tensor::from_dispatch(<Dispatch as Int8Ops>::i8_dequantize(
            self.codes.clone().into_dispatch(),
            self.scales.clone().into_dispatch(),
            self.shape[0],
            self.shape[1],
        ))
    }

    /// `x @ W^T` over the last dim of `x` (`[..., in]` → `[..., out]`). On an autodiff device
    /// the result is differentiable in `x`; backward decodes `W` again instead of keeping it.
    ///
    /// # Panics
    /// If the last dim of `x` is not `in_features`; [`Int8Tensor::try_matmul`] returns an error.
    pub fn matmul<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.try_matmul(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Int8Tensor::matmul`], with a shape mismatch reported as an error.
    pub fn try_matmul<const D: usize>(&self, x: Tensor<D>) -> Result<Tensor<D>, QuantError> {
        super::frozen_matmul(x, self.shape, "an int8", |x2| {
            Tensor::<2>::from_dispatch(<Dispatch as Int8Ops>::i8_matmul(
                x2.into_dispatch(),
                self.codes.clone().into_dispatch(),
                self.scales.clone().into_dispatch(),
                self.shape[0],
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn weight() -> Int8Weight {
        let values: Vec<f32> = (0..7 * 13)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        Int8Weight::quantize(&values, [7, 13]).unwrap()
    }

    #[test]
    fn decodes_multiplies_and_round_trips_on_flex() {
        let device = Device::flex();
        let w = weight();
        let q = Int8Tensor::from_weight(&w, &device).unwrap();
        assert_eq!(q.to_weight(), w);
        let dense = q.dequantize().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(dense, w.dequantize());
        let x: Vec<f32> = (0..3 * 13).map(|i| (i as f32 * 0.31).sin()).collect();
        let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [3, 13]), &device);
        let y = q.matmul(xt).into_data().try_to_vec::<f32>().unwrap();
        let wd = w.dequantize();
        for r in 0..3 {
            for o in 0..7 {
                let want: f32 = (0..13).map(|k| x[r * 13 + k] * wd[o * 13 + k]).sum();
                assert!((y[r * 7 + o] - want).abs() < 1e-5, "{r},{o}");
            }
        }
        assert!(q.try_matmul(Tensor::<2>::ones([1, 12], &device)).is_err());
    }

    #[test]
    fn backward_gives_the_input_gradient_of_the_decoded_weight() {
        let device = Device::flex().autodiff();
        let w = weight();
        let q = Int8Tensor::from_weight(&w, &device).unwrap();
        let x = Tensor::<3>::ones([2, 2, 13], &device).require_grad();
        let y = q.matmul(x.clone());
        assert_eq!(y.dims(), [2, 2, 7]);
        let grads = (y * 2.0).sum().backward();
        let g = x
            .grad(&grads)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let wd = w.dequantize();
        for k in 0..13 {
            let want: f32 = (0..7).map(|o| 2.0 * wd[o * 13 + k]).sum();
            assert!((g[k] - want).abs() < 1e-5, "{k}: {} vs {want}", g[k]);
        }
    }
}
