//! `--device flex|wgpu|cuda|auto` for every command: parsed into the library's
//! [`DeviceChoice`], which opens it; an automatic choice says why on stderr.

use burn::tensor::Device;
use medify_qlora::loading::DeviceChoice;

/// Opens the device named `name`.
pub fn device_named(name: &str) -> anyhow::Result<Device> {
    let choice: DeviceChoice = name.parse()?;
    let chosen = choice.open()?;
    if let Some(why) = chosen.reason {
        eprintln!("device auto: {why}");
    }
    Ok(chosen.device)
}
