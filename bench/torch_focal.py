"""Times torchvision.ops.sigmoid_focal_loss (reduction="sum", alpha .25, gamma 2) forward +
backward on the shape of benches/focal_loss.rs: logits [80000, 10], ~1% positive anchors, with
2 CPU threads. Prints the median over many runs in milliseconds.

torchvision's function has no ignore label; it runs here on all 80,000 anchors (its best case:
the fused fl-lab op skips the ~5% ignored anchors, which a PyTorch user would first have to
mask out with an extra indexing pass).

    pip install torch torchvision   # benchmarks only, never in CI
    python3 bench/torch_focal.py [--runs 300]
"""

import argparse
import statistics
import time

import torch
from torchvision.ops import sigmoid_focal_loss

M, K = 80_000, 10


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = (torch.rand(M, K, generator=g) * 8.0 - 6.0).requires_grad_(True)
    u = torch.rand(M, generator=g)
    cls = torch.randint(0, K, (M,), generator=g)
    targets = torch.zeros(M, K)
    pos = u < 0.01
    targets[pos, cls[pos]] = 1.0

    def step() -> None:
        logits.grad = None
        loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="sum")
        loss.backward()

    for _ in range(20):
        step()
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times) * 1e3
    print(f"torchvision sigmoid_focal_loss fwd+bwd [{M}, {K}] threads={args.threads}: median {med:.3f} ms")
    print(f"median_ms={med:.4f}")


if __name__ == "__main__":
    main()
