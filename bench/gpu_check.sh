#!/usr/bin/env bash
# The CUDA check, in two halves.
#
#   bench/gpu_check.sh build   (here, no GPU needed) installs nvcc, the CUDA headers and the cuBLAS,
#                              cuRAND and NVRTC libraries from pip into ~/cuda13 if absent (as the
#                              README's "Building with CUDA" says), makes a link stub for the driver
#                              (libcuda comes with a GPU's driver, not with pip), builds the `cuda`
#                              binary into target-cuda/, and prints the command to run on a GPU machine.
#   bench/gpu_check.sh run     (on the GPU machine, from the repository root) trains a few steps of the
#                              `cpu` and `paper` models on cuda and on the CPU from the same initial
#                              weights and batch (`fl-lab bench device-check`), prints the losses, their
#                              relative difference and each device's step times, and fails if a first
#                              step's losses differ by more than 1e-3 relative. The `paper` model gets a
#                              synthetic ResNet-50 weights file (`fl-lab bench resnet-weights`) and 2
#                              random 640x640 images per batch, so the CPU side takes minutes, not hours.
#
# Environment: CUDA_VERSION (default 13.0: no newer than the GPU driver's, at most 13.4),
# CUDA_COMPUTE_CAP (default 90: H100/H200), FL_LAB (run: the binary, default target-cuda/release/fl-lab),
# STEPS (run: default 3), DEVICE (run: the device checked, default cuda; DEVICE=cpu with a CPU build
# runs the same comparison CPU against CPU, which must agree to rounding).
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
    local v=${CUDA_VERSION:-13.0}
    local cuda=~/cuda13
    local lib="$cuda/nvidia/cu13/lib"
    # nvcc and headers compile candle's kernels; cuBLAS, cuRAND and NVRTC are linked by name (one pip
    # call with --upgrade: --target replaces the nvidia/ folder it shares with earlier installs).
    if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ] || [ ! -e "$lib/libcublas.so.13" ] || ! ls "$lib"/libcurand.so.* >/dev/null 2>&1; then
        python3 -m pip install --upgrade --target "$cuda" "nvidia-cuda-nvcc==$v.*" "nvidia-cuda-runtime==$v.*" \
            "nvidia-cuda-crt==$v.*" "nvidia-cuda-cccl==$v.*" "nvidia-nvvm==$v.*" \
            "nvidia-cublas==$v.*" "nvidia-cuda-nvrtc==$v.*" "nvidia-curand==10.*"
    fi
    for name in cublas cublasLt curand nvrtc cudart; do
        local so
        so=$(ls "$lib"/lib$name.so.* | grep -E "lib$name\.so\.[0-9]+$" | head -1)
        ln -sf "$(basename "$so")" "$lib/lib$name.so"
    done
    # The driver (libcuda) comes with the GPU's driver, not with pip: link against a stub that defines
    # the driver functions cudarc declares (as the CUDA toolkit's lib/stubs/libcuda.so does). It sits
    # in lib/ (the folder the CUDA crates already search) as libcuda.so only; the binary asks for
    # libcuda.so.1, which only the GPU machine's driver provides.
    if [ ! -e "$lib/libcuda.so" ]; then
        cargo fetch --quiet
        local ver sys
        ver=$(grep -A1 'name = "cudarc"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
        sys=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-"$ver"/src/driver/sys/mod.rs | head -1)
        mkdir -p "$lib/stubs"
        grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$sys" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' \
            | sort -u >"$lib/stubs/libcuda_stub.c"
        cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$lib/stubs/libcuda_stub.c"
    fi
    export CUDA_HOME="$cuda/nvidia/cu13" PATH="$cuda/nvidia/cu13/bin:$PATH"
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --features cuda --target-dir target-cuda
    echo
    echo "Built target-cuda/release/fl-lab (CUDA $v, compute capability $CUDA_COMPUTE_CAP)."
    echo "It loads libcuda.so.1 (the GPU driver, $v or newer) and cuBLAS, cuRAND and NVRTC $v at run time:"
    echo "a CUDA $v toolkit on the GPU machine, or these pip packages there with LD_LIBRARY_PATH set."
    echo "On a GPU machine with this repository and that binary, run from the repository root:"
    echo
    echo "    bench/gpu_check.sh run"
}

run() {
    local bin=${FL_LAB:-target-cuda/release/fl-lab}
    local steps=${STEPS:-3}
    local device=${DEVICE:-cuda}
    [ -x "$bin" ] || { echo "no binary at $bin: run 'bench/gpu_check.sh build' first (or set FL_LAB)" >&2; exit 2; }
    # The pip libraries of `build`, where they exist (the driver stub there is not libcuda.so.1).
    if [ -d ~/cuda13/nvidia/cu13/lib ]; then
        export LD_LIBRARY_PATH="$HOME/cuda13/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$bin" bench resnet-weights --backbone r50 --out "$tmp/resnet50.safetensors"
    local status=0
    echo "== cpu preset (128x128, batch 8) =="
    "$bin" --quiet bench device-check --config cpu --device "$device" --against cpu --steps "$steps" || status=1
    echo "== paper preset (ResNet-50-FPN, frozen BN, 640x640, batch 2) =="
    "$bin" --quiet bench device-check --config paper --device "$device" --against cpu --steps "$steps" \
        --set model.pretrained="\"$tmp/resnet50.safetensors\"" --set schedule.batch_size=2 || status=1
    exit $status
}

case "${1:-}" in
    build) build ;;
    run) run ;;
    *) echo "usage: bench/gpu_check.sh build|run" >&2; exit 2 ;;
esac
