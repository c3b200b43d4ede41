#!/usr/bin/env bash
# Two fl-lab binaries (e.g. before and after a kernel change) timed alternately on the same training
# step, so that the machine's drift hits both alike: `fl-lab bench train --json` per round, A then B,
# then the medians and the median of the per-round ratios B / A. With COPIES=N each timing runs N
# copies of the binary at once and takes their mean step time: how sweeps train on the CPU (one
# one-thread run per core: `COPIES=2 bench/ab.sh A B 6 10 --threads 1`).
# Usage: [COPIES=N] bench/ab.sh BIN_A BIN_B [rounds] [steps] [extra `bench train` flags...]
set -euo pipefail
a=${1:?usage: bench/ab.sh BIN_A BIN_B [rounds] [steps] [flags...]}
b=${2:?usage: bench/ab.sh BIN_A BIN_B [rounds] [steps] [flags...]}
rounds=${3:-8}
steps=${4:-10}
shift $(( $# < 4 ? $# : 4 ))
source "$(dirname "$0")/step_ms.sh"
copies=${COPIES:-1}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The mean step time of `copies` runs of BIN at once.
timed() {
  for c in $(seq "$copies"); do
    step_ms "$@" > "$tmp/$c" &
  done
  wait
  cat "$tmp"/[0-9]* | python3 -c 'import sys; v=[float(x) for x in sys.stdin]; print(sum(v)/len(v))'
  rm -f "$tmp"/[0-9]*
}
ta=() tb=()
for r in $(seq "$rounds"); do
  ta+=("$(timed "$a" "$@")")
  tb+=("$(timed "$b" "$@")")
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
