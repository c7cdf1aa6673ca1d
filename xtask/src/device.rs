//! `--device flex|wgpu|cuda|auto` for every command.

use burn::tensor::{Device, DeviceKind};

/// Resolves a device name. `auto` takes CUDA when it is compiled in and a GPU answers, else
/// flex (the fast pure-Rust CPU backend), and says on stderr why.
pub fn device_named(name: &str) -> Result<Device, String> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        "wgpu" => Ok(Device::wgpu(DeviceKind::DefaultDevice)),
        "cuda" => cuda(),
        "auto" => match cuda() {
            Ok(d) => Ok(d),
            Err(why) => {
                eprintln!("device auto: using flex (CPU) because {why}");
                Ok(Device::flex())
            }
        },
        other => Err(format!(
            "unknown device {other:?} (expected flex, wgpu, cuda or auto)"
        )),
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Device, String> {
    // burn panics inside device creation when no GPU answers: probe under catch_unwind.
    std::panic::catch_unwind(|| {
        let d = Device::cuda(0);
        let _ = burn::tensor::Tensor::<1>::zeros([1], &d).into_data();
        d
    })
    .map_err(|_| "no CUDA device answered".to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Device, String> {
    Err("this build has no CUDA support (rebuild with --features cuda)".to_string())
}
