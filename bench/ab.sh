#!/usr/bin/env bash
# Two fl-lab binaries (e.g. before and after a kernel change) timed alternately on the same training
# step, so that the machine's drift hits both alike: `fl-lab bench train --json` per round, A then B,
# then the medians and the median of the per-round ratios B / A.
# Usage: bench/ab.sh BIN_A BIN_B [rounds] [steps] [extra `bench train` flags...]
set -euo pipefail
a=${1:?usage: bench/ab.sh BIN_A BIN_B [rounds] [steps] [flags...]}
b=${2:?usage: bench/ab.sh BIN_A BIN_B [rounds] [steps] [flags...]}
rounds=${3:-8}
steps=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
source "$(dirname "$0")/step_ms.sh"
ta=() tb=()
for r in $(seq "$rounds"); do
  ta+=("$(step_ms "$a" "$@")")
  tb+=("$(step_ms "$b" "$@")")
  echo "round $r: A ${ta[-1]} ms, B ${tb[-1]} ms" >&2
done
python3 - "${ta[*]}" "${tb[*]}" <<'PY'
import statistics as st, sys
a = [float(v) for v in sys.argv[1].split()]
b = [float(v) for v in sys.argv[2].split()]
ratios = [y / x for x, y in zip(a, b)]
print(f"A median {st.median(a):.1f} ms, B median {st.median(b):.1f} ms per step over {len(a)} rounds")
print(f"B / A: median of per-round ratios {st.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")
PY
