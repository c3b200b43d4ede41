#!/usr/bin/env bash
# Fuzzes the file and flag parsers for minutes instead of seconds, e.g. before a release: runs the
# property tests of tests/fuzz_parsers.rs with SCALE times their `cargo test` case counts and a
# fresh seed, printed first so that a failure can be replayed with the same two numbers. Debug
# profile on purpose: integer overflow panics there instead of wrapping. A failure prints its
# minimized input; fix the parser and keep that input as a regression test in the same file.
#   bench/fuzz.sh [SCALE] [SEED]      (default SCALE 50, SEED random)
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-50}"
seed="${2:-$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}"
echo "bench/fuzz.sh: FL_LAB_FUZZ_SCALE=$scale FL_LAB_FUZZ_SEED=$seed"
FL_LAB_FUZZ_SCALE="$scale" FL_LAB_FUZZ_SEED="$seed" cargo test --test fuzz_parsers
