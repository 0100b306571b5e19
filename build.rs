//! Compiles `kernels/*.cu` to PTX with nvcc when the `cuda` feature is on.
//!
//! Without the feature nothing happens and the CPU backend is the only one. With it, `NVCC`
//! (or `nvcc` on the PATH) must exist; a missing compiler is a build error naming it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".to_string());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let Ok(entries) = std::fs::read_dir("kernels") else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cu") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
        let ptx = out.join(format!("{stem}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-arch=compute_70", "-o"])
            .arg(&ptx)
            .arg(&path)
            .status()
            .unwrap_or_else(|e| panic!("feature `cuda`: cannot run `{nvcc}` ({e}); install nvcc or set NVCC"));
        assert!(status.success(), "nvcc failed on {}", path.display());
    }
}
