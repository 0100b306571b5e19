//! Builds the kernels of `kernels/`.
//!
//! Always: `kernels/host.c` (the kernels' per-element math from `modarith.cuh`, run on the CPU)
//! into a static library that the CPU tests compare with the Rust CPU backend, with the `cc` crate
//! and the system C compiler.
//!
//! With the `cuda` feature: every `kernels/*.cu` to PTX with nvcc (`NVCC`, else
//! `$CUDA_HOME/bin/nvcc` or `$CUDA_PATH/bin/nvcc`, else `nvcc` on the PATH); a kernel that does not
//! compile fails the build with nvcc's message. Without nvcc the build goes on: the CUDA backend
//! then compiles the embedded sources at run time with NVRTC (and says so in a build warning).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest architecture the PTX targets: the driver compiles it for the GPU it runs on.
const PTX_ARCH: &str = "compute_75";

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo::rustc-check-cfg=cfg(secmoe_prebuilt_ptx)");

    cc::Build::new()
        .file("kernels/host.c")
        .include("kernels")
        .opt_level(2)
        .flag_if_supported("-std=c11")
        // the doubles of the conversions' overflow rows as the CPU computes them: no FMA
        .flag_if_supported("-ffp-contract=off")
        .compile("secmoe_kernel_host");

    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let Some(nvcc) = find_nvcc() else {
        println!(
            "cargo:warning=feature `cuda` without nvcc (set NVCC or CUDA_HOME): the kernels will be compiled at run \
             time with NVRTC"
        );
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "cu")).collect())
        .unwrap_or_default();
    sources.sort();
    for source in &sources {
        let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel");
        let ptx = out.join(format!("{stem}.ptx"));
        let output = Command::new(&nvcc)
            .args(["--ptx", "-O3", &format!("-arch={PTX_ARCH}"), "-Ikernels", "-o"])
            .arg(&ptx)
            .arg(source)
            .output()
            .unwrap_or_else(|e| panic!("feature `cuda`: cannot run `{}`: {e}", nvcc.display()));
        if !output.status.success() {
            panic!(
                "nvcc failed on {}:\n{}{}",
                source.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    println!("cargo:rustc-cfg=secmoe_prebuilt_ptx");
}

/// nvcc from `NVCC`, the CUDA home variables or the PATH, if any exists.
fn find_nvcc() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(explicit));
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"].into_iter().filter_map(std::env::var_os).map(|h| Path::new(&h).join("bin"));
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    homes.chain(path).map(|dir| dir.join("nvcc")).find(|candidate| candidate.is_file())
}
