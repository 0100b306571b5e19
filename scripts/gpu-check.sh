#!/usr/bin/env bash
# The CUDA backend on a machine with a GPU, in two steps, so that the GPU host needs neither cargo
# nor a network (a session's device machine has neither):
#
#   scripts/gpu-check.sh build   # here: release binaries with the cuda feature into target/gpu-bin
#                                # (NVCC should name an nvcc no newer than the GPU host's driver:
#                                # its PTX version must be one the driver reads)
#   scripts/gpu-check.sh run     # there: every kernel against the CPU backend bit for bit, the
#                                # kernel benchmarks, and one MoE layer on the GPU and on the CPU;
#                                # logs and JSON under $OUT (default target/gpu-check), also
#                                # packed into one gpu-check.tar.gz there
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/gpu-bin

case "${1:-}" in
build)
    set -e
    mkdir -p "$bin"
    exes=$(cargo test --release --features cuda --no-run --test cuda --lib 2>&1 | tee /dev/stderr |
        sed -n 's/.*Executable .*(\(.*\))$/\1/p')
    cargo build --release --features cuda --bin secmoe
    for exe in $exes; do
        case "$exe" in
        */cuda-*) cp "$exe" "$bin/cuda-tests" ;;
        */secmoe-*) cp "$exe" "$bin/lib-tests" ;;
        esac
    done
    cp target/release/secmoe "$bin/secmoe"
    grep -h -m1 '^\.version' target/release/build/secmoe-*/out/*.ptx | sort -u | sed 's/^/PTX /'
    ls -la "$bin"
    ;;
run)
    out="${OUT:-target/gpu-check}"
    mkdir -p "$out"
    export RUST_BACKTRACE=1
    status=0
    step() { # step NAME SECONDS COMMAND...: runs one step with a time limit, its log under $out
        local name=$1 limit=$2
        shift 2
        echo "== $name"
        local start=$SECONDS
        timeout "$limit" "$@" >"$out/$name.log" 2>&1
        local rc=$?
        tail -n 25 "$out/$name.log"
        echo "== $name: exit $rc in $((SECONDS - start)) s"
        [ "$rc" -eq 0 ] || status=1
    }
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee "$out/device.txt"
    step cuda-tests 150 "$bin/cuda-tests" --nocapture --test-threads=1
    step lib-backend-tests 60 "$bin/lib-tests" backend::
    step kernels 150 "$bin/secmoe" bench --preset kernels --backend cuda --json "$out/kernels.json"
    # one MoE layer per backend: Select-Then-Compute (selection sums on held buffers; under
    # cuda:pipelines its ciphertext products on the device too)
    for backend in cuda cuda:pipelines cpu; do
        name=${backend/:/-}
        step "moe-stc-$name" 150 "$bin/secmoe" bench --preset experts --backend "$backend" --experts 32,128 \
            --tokens 16 --d-model 256 --d-ff 1024 --method select-then-compute --json "$out/moe-stc-$name.json"
    done
    # selecting rows (every expert's matrices under HE: under cuda:pipelines their products by
    # weights given by their low coefficients on the device)
    for backend in cuda cuda:pipelines cpu; do
        name=${backend/:/-}
        step "moe-rows-$name" 120 "$bin/secmoe" bench --preset experts --backend "$backend" --experts 8,32 \
            --tokens 16 --method select-rows --json "$out/moe-rows-$name.json"
    done
    tar -czf /tmp/gpu-check.tar.gz -C "$out" . && mv /tmp/gpu-check.tar.gz "$out/"
    exit $status
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
