//! Where a model runs: `cpu`, or `cuda` / `cuda:N` in a kefu built with the `cuda` feature.
//! On a GPU the weights and activations are bf16 (adapters keep f32 master weights), every
//! matrix is held dense, and nothing is re-quantized for CPU kernels.

use candle_core::{DType, Device};

use crate::decoder::DecoderOptions;
use crate::error::{Error, Result};
use crate::loader::LoadOptions;

/// Parses `cpu`, `cuda` or `cuda:N`. A CUDA device in a build without the `cuda` feature, or
/// on a machine without a usable GPU, is a clear error.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name.eq_ignore_ascii_case("cpu") {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.split_once(':') {
        None if name.eq_ignore_ascii_case("cuda") => 0,
        Some((kind, n)) if kind.eq_ignore_ascii_case("cuda") => n.parse().map_err(|_| {
            Error::InvalidParameter(format!(
                "device `{name}`: the GPU number after `cuda:` must be a whole number"
            ))
        })?,
        _ => {
            return Err(Error::InvalidParameter(format!(
                "unknown device `{name}` (expected cpu, cuda or cuda:N)"
            )));
        }
    };
    if !cfg!(feature = "cuda") {
        return Err(Error::InvalidParameter(format!(
            "device `{name}`: this kefu was built without CUDA support (build it with \
             scripts/build-cuda.sh, or `cargo build --release --features cuda`)"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::InvalidParameter(format!("device `{name}` cannot be opened: {e}")))
}

/// The element type of weights and activations on `device`.
pub fn compute_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

impl LoadOptions {
    /// The defaults for `device`: on the CPU the given options unchanged; on a GPU dense bf16
    /// weights and no re-quantization.
    pub fn on(mut self, device: &Device) -> Self {
        self.device = device.clone();
        if !device.is_cpu() {
            self.requantize = false;
            self.decoder = DecoderOptions {
                dense: true,
                fast_kernels: false,
                dtype: compute_dtype(device),
            };
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_fail_clearly() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "metal", ""] {
            let message = parse_device(bad).unwrap_err().to_string();
            assert!(message.contains("device"), "{bad}: {message}");
        }
        if !cfg!(feature = "cuda") {
            let message = parse_device("cuda:0").unwrap_err().to_string();
            assert!(message.contains("without CUDA"), "{message}");
        }
    }

    #[test]
    fn cpu_options_stay_as_given() {
        let cpu = LoadOptions::default().on(&Device::Cpu);
        assert!(cpu.requantize && !cpu.decoder.dense);
        assert_eq!(cpu.decoder.dtype, DType::F32);
        assert_eq!(compute_dtype(&Device::Cpu), DType::F32);
    }
}
