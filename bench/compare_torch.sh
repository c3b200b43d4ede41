#!/usr/bin/env bash
# A training step of the default model (experiments/cpu.toml with K = 10, batch 8, 128 x 128) in fl-lab
# and in PyTorch (bench/torch_retinanet.py, the same network), alternately in one run, 2 threads each;
# then fl-lab's part-by-part table and its fraction of the machine's sgemm peak.
# Usage: bench/compare_torch.sh [rounds] [steps] [bf16]. Needs `pip install torch`. With `bf16` both
# sides multiply in bf16 (PyTorch's CPU autocast; fl-lab's model.conv_products = "bf16", AMX only).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
steps=${2:-15}
torch_args=() fl_args=()
case "${3:-f32}" in
  f32) ;;
  bf16) torch_args=(--bf16) fl_args=(--set model.conv_products=bf16) ;;
  *) echo "compare_torch.sh: the third argument is f32 or bf16, got '$3'" >&2; exit 2 ;;
esac
cargo build --release --quiet
python3 bench/torch_retinanet.py --rounds "$rounds" --steps "$steps" --threads 2 "${torch_args[@]}"
echo
# Timed after the rounds, not alternating with PyTorch: compare its step with the rounds' medians
# only roughly (the machine's speed drifts).
echo "fl-lab alone, part by part (after the rounds, not alternating):"
target/release/fl-lab bench train --set model.num_classes=10 --steps "$steps" --threads 2 "${fl_args[@]}"
