#!/usr/bin/env bash
# A training step of the default model (experiments/cpu.toml with K = 10, batch 8, 128 x 128) in fl-lab
# and in PyTorch (bench/torch_retinanet.py, the same network), alternately in one run, 2 threads each;
# then fl-lab's part-by-part table and its fraction of the machine's sgemm peak.
# Usage: bench/compare_torch.sh [rounds] [steps]. Needs `pip install torch`.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
steps=${2:-15}
cargo build --release --quiet
python3 bench/torch_retinanet.py --rounds "$rounds" --steps "$steps" --threads 2
echo
target/release/fl-lab bench train --set model.num_classes=10 --steps "$steps" --threads 2
