//! `--device cpu|cuda[:N]` parsing.

use anyhow::{bail, Result};
use candle_core::Device;

/// Whether a device flag names the CPU (as `parse_device` reads it: case and surrounding spaces
/// aside).
pub fn is_cpu(spec: &str) -> bool {
    spec.trim().eq_ignore_ascii_case("cpu")
}

/// Parses a device flag. `cuda` needs the binary to be built with the `cuda` feature.
pub fn parse_device(spec: &str) -> Result<Device> {
    if is_cpu(spec) {
        return Ok(Device::Cpu);
    }
    let s = spec.trim().to_ascii_lowercase();
    let ordinal = if s == "cuda" {
        0
    } else if let Some(n) = s.strip_prefix("cuda:") {
        match n.parse::<usize>() {
            Ok(n) => n,
            Err(_) => {
                bail!("invalid --device '{spec}': expected cpu, cuda or cuda:N with N a GPU index")
            }
        }
    } else {
        bail!("invalid --device '{spec}': expected cpu, cuda or cuda:N");
    };
    if !candle_core::utils::cuda_is_available() {
        bail!("--device {spec}: this fl-lab was built without CUDA; rebuild with `cargo build --release --features cuda`");
    }
    Ok(Device::new_cuda(ordinal)?)
}

/// A short device name for output rows ("cpu", "cuda:0").
pub fn device_name(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(_) => match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
            _ => "cuda".to_string(),
        },
        _ => format!("{:?}", device.location()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(matches!(parse_device("cpu").unwrap(), Device::Cpu));
        let e = parse_device("gpu7").unwrap_err().to_string();
        assert!(e.contains("gpu7"), "{e}");
        assert!(parse_device("cuda:x").is_err());
    }
}
