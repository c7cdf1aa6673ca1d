//! # medify-lora
//!
//! The projection every layer of the model zoo is built from: a frozen base weight, dense or
//! 4-bit ([`medify_quant::Nf4Tensor`]), with an optional bias. Models hold `Projection`s for
//! q/k/v/o/gate/up/down, so adapting a model is a walk over named projections.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use medify_lora::Projection;
//! use medify_quant::QuantConfig;
//! let device = Device::flex();
//! let w = Tensor::<2>::from_floats([[1.0f32; 64], [0.5; 64]], &device);
//! let dense = Projection::dense(w.clone(), None);
//! let q4 = Projection::quantized(w, None, &QuantConfig::default()).unwrap();
//! let x = Tensor::<3>::ones([1, 2, 64], &device);
//! let (a, b) = (dense.forward(x.clone()), q4.forward(x));
//! assert_eq!(a.dims(), [1, 2, 2]);
//! // 64 and 32, up to the 8-bit rounding of the double-quantized block scales
//! assert!(a.sub(b).abs().max().into_scalar::<f32>() < 0.5);
//! ```

mod projection;

pub use projection::{FrozenWeight, Projection, dense_matmul};
