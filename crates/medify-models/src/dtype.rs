//! The dtype activations and matmuls run in (bitsandbytes' `bnb_4bit_compute_dtype`).

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// The float type of activations, dense weights and matmuls. Adapter weights, their gradients
/// and the optimizer state stay f32 whatever this is: inputs are cast to f32 at the adapter and
/// its output back (PEFT does the same). Norms, attention softmax and the loss upcast to f32
/// internally, as transformers does.
///
/// ```
/// use burn::tensor::Device;
/// use medify_models::ComputeDtype;
/// assert_eq!(ComputeDtype::default_for(&Device::flex()), ComputeDtype::F32);
/// assert_eq!("bf16".parse::<ComputeDtype>().unwrap(), ComputeDtype::Bf16);
/// assert!(ComputeDtype::F16.check(&Device::flex()).is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    /// 32-bit floats (the CPU default).
    #[default]
    F32,
    /// IEEE half precision (Vulkan/Metal/WebGPU without bf16).
    F16,
    /// bfloat16 (the CUDA default: f32's range, 8 bits of mantissa).
    Bf16,
}

impl ComputeDtype {
    /// burn's dtype.
    pub fn dtype(self) -> DType {
        match self {
            ComputeDtype::F32 => DType::F32,
            ComputeDtype::F16 => DType::F16,
            ComputeDtype::Bf16 => DType::BF16,
        }
    }

    /// What `dtype` stands for, if it is one of the three.
    pub fn from_dtype(dtype: DType) -> Option<ComputeDtype> {
        match dtype {
            DType::F32 => Some(ComputeDtype::F32),
            DType::F16 => Some(ComputeDtype::F16),
            DType::BF16 => Some(ComputeDtype::Bf16),
            _ => None,
        }
    }

    /// QLoRA's choice for `device`: f32 on the CPU backends (Flex and the CubeCL CPU runtime:
    /// 16-bit buys no speed there), otherwise bf16 where the device computes it (CUDA, Metal)
    /// and f16 where it does not (Vulkan/WGSL).
    pub fn default_for(device: &Device) -> ComputeDtype {
        let name = format!("{device:?}").to_lowercase();
        if medify_quant::is_flex(device) || name.contains("cpu") {
            ComputeDtype::F32
        } else if device.supports_dtype(DType::BF16) {
            ComputeDtype::Bf16
        } else if device.supports_dtype(DType::F16) {
            ComputeDtype::F16
        } else {
            ComputeDtype::F32
        }
    }

    /// Refuses a dtype the device cannot compute in, naming what it offers.
    pub fn check(self, device: &Device) -> Result<()> {
        if device.supports_dtype(self.dtype()) {
            return Ok(());
        }
        let offered: Vec<String> = [ComputeDtype::F32, ComputeDtype::F16, ComputeDtype::Bf16]
            .into_iter()
            .filter(|d| device.supports_dtype(d.dtype()))
            .map(|d| d.to_string())
            .collect();
        Err(ModelError::InvalidRequest(format!(
            "compute dtype {self} is not supported on {device:?}; it offers {}",
            offered.join(", ")
        )))
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ComputeDtype::F32 => "f32",
            ComputeDtype::F16 => "f16",
            ComputeDtype::Bf16 => "bf16",
        })
    }
}

impl FromStr for ComputeDtype {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<ComputeDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(ComputeDtype::F32),
            "f16" | "float16" | "fp16" => Ok(ComputeDtype::F16),
            "bf16" | "bfloat16" => Ok(ComputeDtype::Bf16),
            _ => Err(ModelError::InvalidRequest(format!(
                "unknown compute dtype {s:?}; one of f32, f16, bf16"
            ))),
        }
    }
}
