#!/usr/bin/env bash
# The CUDA check, in two halves.
#
#   bench/gpu_check.sh build   (here, no GPU needed) installs nvcc and the CUDA headers from pip into
#                              ~/cuda13 if absent (as the README's "Building with CUDA" says), builds
#                              the `cuda` binary into target-cuda/, and prints the command to run on a
#                              GPU machine.
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
    if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ]; then
        python3 -m pip install --target "$cuda" "nvidia-cuda-nvcc==$v.*" "nvidia-cuda-runtime==$v.*" \
            "nvidia-cuda-crt==$v.*" "nvidia-cuda-cccl==$v.*" "nvidia-nvvm==$v.*"
    fi
    export CUDA_HOME="$cuda/nvidia/cu13" PATH="$cuda/nvidia/cu13/bin:$PATH"
    export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
    cargo build --release --features cuda --target-dir target-cuda
    echo
    echo "Built target-cuda/release/fl-lab (CUDA $v, compute capability $CUDA_COMPUTE_CAP)."
    echo "On a GPU machine with this repository and that binary, run from the repository root:"
    echo
    echo "    bench/gpu_check.sh run"
}

run() {
    local bin=${FL_LAB:-target-cuda/release/fl-lab}
    local steps=${STEPS:-3}
    local device=${DEVICE:-cuda}
    [ -x "$bin" ] || { echo "no binary at $bin: run 'bench/gpu_check.sh build' first (or set FL_LAB)" >&2; exit 2; }
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
