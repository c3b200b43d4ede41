#!/bin/sh
# Builds the release binary, then times fl-lab eval against pycocotools on generated data.
# Needs: python3 -m pip install pycocotools==2.0.11 numpy
set -e
cd "$(dirname "$0")/.."
cargo build --release
exec python3 bench/eval_vs_pycocotools.py "$@"
