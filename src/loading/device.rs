//! Choosing the device a run or a model uses: by name, or automatically.

use burn::tensor::{Device, DeviceKind};

use crate::error::{FinetuneError, Result};

/// Which backend to run on. `Auto` takes CUDA when this build has it and a GPU answers, else
/// the CPU (flex, the fast pure-Rust backend); wgpu is only ever chosen by name, since on a
/// machine without a GPU it runs on a software driver far slower than flex.
///
/// ```
/// use medify_qlora::loading::DeviceChoice;
/// assert_eq!("cpu".parse::<DeviceChoice>().unwrap(), DeviceChoice::Flex);
/// let chosen = DeviceChoice::Flex.open().unwrap();
/// assert!(chosen.reason.is_none());
/// assert!("tpu".parse::<DeviceChoice>().unwrap_err().to_string().contains("flex, wgpu, cuda or auto"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA if available, else the CPU.
    #[default]
    Auto,
    /// The CPU through burn's flex backend.
    Flex,
    /// The default wgpu adapter (Vulkan, Metal, DirectX or WebGPU).
    Wgpu,
    /// The first CUDA GPU (builds with the `cuda` feature).
    Cuda,
}

/// A device and, when it was picked automatically, why.
#[derive(Debug, Clone)]
pub struct ChosenDevice {
    /// The device (without autodiff; training adds it).
    pub device: Device,
    /// Why `Auto` fell back to the CPU, for telling the user.
    pub reason: Option<String>,
}

impl std::str::FromStr for DeviceChoice {
    type Err = FinetuneError;

    fn from_str(s: &str) -> Result<DeviceChoice> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "flex" | "cpu" => Ok(DeviceChoice::Flex),
            "wgpu" => Ok(DeviceChoice::Wgpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            other => Err(FinetuneError::Config {
                field: "device".into(),
                reason: format!("unknown device {other:?} (expected flex, wgpu, cuda or auto)"),
            }),
        }
    }
}

impl DeviceChoice {
    /// Opens the device. `Cuda` fails when this build has no CUDA or no GPU answers; `Auto`
    /// then takes the CPU and says why in [`ChosenDevice::reason`].
    pub fn open(self) -> Result<ChosenDevice> {
        let chosen = |device| ChosenDevice {
            device,
            reason: None,
        };
        match self {
            DeviceChoice::Flex => Ok(chosen(Device::flex())),
            DeviceChoice::Wgpu => Ok(chosen(Device::wgpu(DeviceKind::DefaultDevice))),
            DeviceChoice::Cuda => cuda().map(chosen).map_err(|reason| FinetuneError::Config {
                field: "device".into(),
                reason,
            }),
            DeviceChoice::Auto => Ok(auto_device()),
        }
    }
}

/// CUDA when this build has it and a GPU answers, else the CPU with the reason.
pub fn auto_device() -> ChosenDevice {
    match cuda() {
        Ok(device) => ChosenDevice {
            device,
            reason: None,
        },
        Err(why) => ChosenDevice {
            device: Device::flex(),
            reason: Some(format!("using flex (CPU) because {why}")),
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> std::result::Result<Device, String> {
    // burn panics inside device creation when no GPU answers: probe under catch_unwind.
    std::panic::catch_unwind(|| {
        let d = Device::cuda(0);
        let _ = burn::tensor::Tensor::<1>::zeros([1], &d).into_data();
        d
    })
    .map_err(|_| "no CUDA device answered".to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> std::result::Result<Device, String> {
    Err("this build has no CUDA support (the `cuda` feature)".to_string())
}
