#!/usr/bin/env bash
# What `--jobs` chooses between on this machine: one run whose steps are spread over N threads,
# against N runs side by side on one thread each. Per round, `fl-lab bench train --threads N`, then
# N copies of `fl-lab bench train --threads 1` at once; the copies' throughput is their mean step
# time divided by N. Prints the medians and the median of the per-round ratios (copies / one).
# Usage: bench/jobs.sh BIN [rounds] [steps] [threads] [extra `bench train` flags...]
set -euo pipefail
bin=${1:?usage: bench/jobs.sh BIN [rounds] [steps] [threads] [flags...]}
rounds=${2:-5}
steps=${3:-20}
threads=${4:-$(nproc)}
shift $(( $# < 4 ? $# : 4 ))
source "$(dirname "$0")/step_ms.sh"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
one=() copies=()
for r in $(seq "$rounds"); do
  one+=("$(step_ms "$bin" --threads "$threads" "$@")")
  for c in $(seq "$threads"); do
    step_ms "$bin" --threads 1 "$@" > "$tmp/$c" &
  done
  wait
  copies+=("$(cat "$tmp"/* | python3 -c 'import sys; v=[float(x) for x in sys.stdin]; print(sum(v)/len(v)/len(v))')")
  echo "round $r: one run on $threads threads ${one[-1]} ms per step; $threads one-thread runs at once ${copies[-1]} ms per step of throughput" >&2
done
python3 - "${one[*]}" "${copies[*]}" "$threads" <<'PY'
import statistics as st, sys
one = [float(v) for v in sys.argv[1].split()]
copies = [float(v) for v in sys.argv[2].split()]
n = sys.argv[3]
ratios = [c / o for o, c in zip(one, copies)]
print(f"one run on {n} threads: median {st.median(one):.1f} ms per step; {n} one-thread runs at once: "
      f"median {st.median(copies):.1f} ms per step of throughput, over {len(one)} rounds")
print(f"runs side by side / one run: median of per-round ratios {st.median(ratios):.3f} "
      f"(range {min(ratios):.3f}-{max(ratios):.3f})")
PY
