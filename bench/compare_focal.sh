#!/usr/bin/env bash
# Runs the fused focal loss criterion bench and the torchvision script alternately, then prints
# both medians and their ratio. Needs `pip install torch torchvision` (benchmarks only).
#   bench/compare_focal.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-2}"
cargo bench --bench focal_loss --no-run >/dev/null
est=target/criterion/focal_loss_80000x10/fused_fwd_bwd/new/estimates.json
for r in $(seq 1 "$rounds"); do
  cargo bench --bench focal_loss -- --noplot fused_fwd_bwd >/dev/null 2>&1
  ours=$(python3 -c "import json;print(json.load(open('$est'))['median']['point_estimate']/1e6)")
  theirs=$(python3 bench/torch_focal.py --threads 2 | sed -n 's/^median_ms=//p')
  python3 -c "o=$ours;t=$theirs;print(f'round $r: fl-lab fused {o:.3f} ms   torchvision {t:.3f} ms   ratio {o/t:.3f}')"
done
