//! # medify-lora
//!
//! LoRA, rsLoRA and DoRA adapters over frozen linear layers whose base weight is dense or 4-bit
//! ([`medify_quant::Nf4Tensor`], which makes the combination QLoRA), with adapter files in
//! PEFT's format so Python tools and inference servers load what is trained here.
//!
//! Every layer of the model zoo is a [`Projection`]; a model lists its projections by module
//! path through [`LoraModel`], and [`LoraExt`] adapts, merges, saves and loads in one call.
//! The adapter is computed from the activations (`y = x Wᵀ + s · (drop(x) Aᵀ) Bᵀ`): the merged
//! weight is never formed, only `A` and `B` (and DoRA's magnitude) are parameters, and the base
//! keeps no gradient buffer and no dense copy.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use medify_lora::{LoraAdapter, Projection};
//! use medify_quant::QuantConfig;
//! let device = Device::flex();
//! let w = Tensor::<2>::from_floats([[1.0f32; 64], [0.5; 64]], &device);
//! let dense = Projection::dense(w.clone(), None);
//! let mut q4 = Projection::quantized(w, None, &QuantConfig::default()).unwrap();
//! let x = Tensor::<3>::ones([1, 2, 64], &device);
//! let (a, b) = (dense.forward(x.clone()), q4.forward(x.clone()));
//! assert_eq!(a.dims(), [1, 2, 2]);
//! // 64 and 32, up to the 8-bit rounding of the double-quantized block scales
//! assert!(a.sub(b.clone()).abs().max().into_scalar::<f32>() < 0.5);
//! // A zero-initialised B leaves the output unchanged until training moves it.
//! let lora_a = Tensor::<2>::ones([4, 64], &device);
//! let lora_b = Tensor::<2>::zeros([2, 4], &device);
//! q4.set_lora(Some(LoraAdapter::new(lora_a, lora_b, None, 4.0, 0.0).unwrap())).unwrap();
//! assert!(q4.forward(x).sub(b).abs().max().into_scalar::<f32>() == 0.0);
//! ```

mod adapter;
mod config;
mod error;
mod model;
mod projection;

pub use adapter::LoraAdapter;
pub use config::{LoraConfig, LoraInit, TargetModules};
pub use error::{LoraError, Result};
pub use model::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraExt, LoraModel, LoraSummary, MergeReport};
pub use projection::{FrozenWeight, MergeOutcome, Projection, dense_matmul};
