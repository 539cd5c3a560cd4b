//! In a CUDA build (`--features cuda`), compiles the training attention's kernels
//! (`src/fused/attention.cu`) to PTX for `CUDA_COMPUTE_CAP` (default 90: Hopper) with `nvcc`
//! (or `NVCC`); `fused/attention/cuda.rs` embeds it. Nothing to do in a CPU build.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/fused/attention.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ptx = out.join("attention.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17"])
        .arg(format!("--gpu-architecture=compute_{cap}"))
        .arg("-o")
        .arg(&ptx)
        .arg("src/fused/attention.cu")
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{nvcc} could not compile src/fused/attention.cu ({status})"),
        Err(e) => panic!("a CUDA build needs {nvcc} (scripts/build-cuda.sh installs one): {e}"),
    }
}
