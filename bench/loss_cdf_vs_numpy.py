#!/usr/bin/env python3
"""Times `fl-lab loss-cdf --samples` against numpy doing the same analysis, side by side in one run.

Both read the same .npy of 10^5 positives and 10^7 negatives ([logit, target] rows, float32), compute the
focal loss for gammas 0, 0.5, 1, 2, normalize each set, sort, accumulate and write ~1,000 points per
curve to CSV. numpy follows the straightforward recipe (one sort per gamma and set); fl-lab sorts each
set once (the focal loss is monotone in the margin for every gamma) and also draws the PNG.

Usage: cargo build --release && python3 bench/loss_cdf_vs_numpy.py [--rounds 5]
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

GAMMAS = [0.0, 0.5, 1.0, 2.0]


def make_samples(path, n_pos, n_neg, seed=0):
    rng = np.random.default_rng(seed)
    data = np.empty((n_pos + n_neg, 2), dtype=np.float32)
    data[:n_pos, 0] = rng.normal(1.5, 2.0, n_pos)
    data[:n_pos, 1] = 1
    data[n_pos:, 0] = rng.normal(-5.0, 2.0, n_neg)
    data[n_pos:, 1] = 0
    rng.shuffle(data)
    np.save(path, data)


def softplus(z):
    return np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))


def numpy_cdf(npy, out_csv, points=1000):
    data = np.load(npy)
    x, t = data[:, 0].astype(np.float64), data[:, 1]
    rows = []
    for margin in (x[t == 1], -x[t == 0]):
        n = len(margin)
        for g in GAMMAS:
            loss = np.exp(-g * softplus(margin)) * softplus(-margin)
            loss.sort()
            cum = np.concatenate([[0.0], np.cumsum(loss)]) / loss.sum()
            idx = np.unique(np.round(np.linspace(0, n, points + 1)).astype(np.int64))
            rows.append(np.stack([np.full(len(idx), g), idx / n, cum[idx]], axis=1))
    np.savetxt(out_csv, np.concatenate(rows), delimiter=",", fmt="%.9g")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--binary", default="target/release/fl-lab")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        npy = os.path.join(d, "samples.npy")
        make_samples(npy, 100_000, 10_000_000)
        ours, theirs = [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            subprocess.run([args.binary, "--quiet", "loss-cdf", "--samples", npy, "--values", "logits",
                            "--out", os.path.join(d, "out")], check=True, stdout=subprocess.DEVNULL)
            ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            numpy_cdf(npy, os.path.join(d, "numpy.csv"))
            theirs.append(time.perf_counter() - t0)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"10^5 positives + 10^7 negatives, gammas {GAMMAS}, {args.rounds} rounds (medians):")
        print(f"  fl-lab loss-cdf (whole command: read, sort, loss, normalize, CDF, CSV, PNG): {a:.2f} s")
        print(f"  numpy (load, loss, sort, normalize, cumsum, write CSV):                   {b:.2f} s")
        print(f"  ratio fl-lab / numpy: {a / b:.2f}")


if __name__ == "__main__":
    main()
