#!/usr/bin/env bash
# The CUDA backend on a machine with a GPU, in one go (for the device machine of a session, or
# any CUDA host): build with the cuda feature, run every kernel against the CPU backend bit for
# bit, then the kernel benchmarks as a table and JSON under $OUT (default target/gpu-check).
# Without nvcc the kernels are compiled by NVRTC when the backend starts.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-target/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt" || true
cargo build --release --features cuda 2>&1 | tail -3
cargo test --release --features cuda --test cuda -- --nocapture 2>&1 | tee "$out/tests.txt"
cargo test --release --features cuda --lib backend:: 2>&1 | tail -3 | tee -a "$out/tests.txt"
./target/release/secmoe bench --preset kernels --backend cuda --json "$out/kernels.json" 2>&1 | tee "$out/kernels.txt"
