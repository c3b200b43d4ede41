#!/usr/bin/env python3
"""Times one RetinaNet training step in PyTorch (CPU) side by side with `fl-lab bench train` on the same model.

The PyTorch model mirrors experiments/cpu.toml: a ResNet-18-like backbone at 1/4 width (stem
conv3x3/2 3->16, stages of 2 basic blocks with 16, 32, 64, 128 channels, each stage starting with a
stride-2 block), GroupNorm with gcd(8, C) groups, FPN P3-P7 with 64 channels (P6 = conv3x3/2 on C5,
P7 = conv3x3/2 on ReLU(P6)), class and box subnets of 4 x (conv3x3 64 + GroupNorm + ReLU) shared across levels,
9 anchors, K = 10 classes, prior init. One step = forward, sigmoid focal loss (alpha 0.25, gamma 2)
over all anchors and classes + smooth L1 (beta 0.11) on the positives, both divided by the number
of positives, backward, SGD (momentum 0.9, weight decay 1e-4). Batch 8 x 3 x 128 x 128.

Anchor matching is not timed on either side (fl-lab matches in plain Rust in well under 1 ms);
the PyTorch targets are fixed random labels with ~1% positives.

Usage (from the repository root, after `cargo build --release`; bench/compare_torch.sh does both):
    python3 bench/torch_retinanet.py [--steps 20] [--rounds 3] [--threads 2] [--bf16] [--fl-lab target/release/fl-lab]
With --bf16 both sides multiply in bf16: PyTorch's forward under CPU autocast
(`torch.autocast("cpu", dtype=torch.bfloat16)`, convolutions in bf16, the parameters and optimizer
in f32), fl-lab with `model.conv_products = "bf16"` (needs a CPU with AMX).
Needs `pip install torch`. Prints the median step time of each side per round (the two alternate, so
both see the same machine load), the medians over rounds and their ratio, and the median of the
per-round ratios.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH, SIZE, K, A = 8, 128, 10, 9


def gn(c):
    return nn.GroupNorm(math.gcd(8, c), c)


class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = gn(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = gn(cout)
        self.sc = None
        if stride != 1 or cin != cout:
            self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), gn(cout))

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (x if self.sc is None else self.sc(x)))


class RetinaNet(nn.Module):
    def __init__(self, width=0.25, depths=(2, 2, 2, 2), fpn=64, head_convs=4, head_gn=True):
        super().__init__()
        stem = round(64 * width)
        chans = [round(64 * width * 2**i) for i in range(4)]
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), gn(stem), nn.ReLU())
        stages, cin = [], stem
        for d, c in zip(depths, chans):
            blocks = []
            for b in range(d):
                blocks.append(Basic(cin, c, 2 if b == 0 else 1))
                cin = c
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList([nn.Conv2d(c, fpn, 1) for c in chans[1:]])
        self.output = nn.ModuleList([nn.Conv2d(fpn, fpn, 3, 1, 1) for _ in chans[1:]])
        self.p6 = nn.Conv2d(chans[3], fpn, 3, 2, 1)
        self.p7 = nn.Conv2d(fpn, fpn, 3, 2, 1)

        def tower():
            layers = []
            for _ in range(head_convs):
                layers += [nn.Conv2d(fpn, fpn, 3, 1, 1)] + ([gn(fpn)] if head_gn else []) + [nn.ReLU()]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls_pred = nn.Conv2d(fpn, A * K, 3, 1, 1)
        self.box_pred = nn.Conv2d(fpn, A * 4, 3, 1, 1)
        for m in list(self.cls_tower) + list(self.box_tower) + [self.cls_pred, self.box_pred]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_pred.bias, -math.log((1 - 0.01) / 0.01))

    def forward(self, x):
        y = self.stem(x)
        cs = []
        for s in self.stages:
            y = s(y)
            cs.append(y)
        c3, c4, c5 = cs[1:]
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, scale_factor=2, mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, scale_factor=2, mode="nearest")
        ps = [self.output[0](p3), self.output[1](p4), self.output[2](p5)]
        p6 = self.p6(c5)
        ps += [p6, self.p7(F.relu(p6))]
        n = x.shape[0]
        cls = [self.cls_pred(self.cls_tower(p)).permute(0, 2, 3, 1).reshape(n, -1, K) for p in ps]
        box = [self.box_pred(self.box_tower(p)).permute(0, 2, 3, 1).reshape(n, -1, 4) for p in ps]
        return torch.cat(cls, 1), torch.cat(box, 1)


def focal_sum(logits, onehot, alpha=0.25, gamma=2.0):
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    pt = p * onehot + (1 - p) * (1 - onehot)
    at = alpha * onehot + (1 - alpha) * (1 - onehot)
    return (at * (1 - pt) ** gamma * ce).sum()


def smooth_l1_sum(d, beta=0.11):
    d = d.abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta).sum()


def torch_steps(steps, threads, bf16):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = RetinaNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        cls, _ = model(x)
    t = cls.shape[1]
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(BATCH, t, dtype=torch.long)
    pos = torch.rand(BATCH, t, generator=g) < 0.01
    labels[pos] = torch.randint(1, K + 1, (int(pos.sum()),), generator=g)
    onehot = F.one_hot(labels, K + 1)[..., 1:].float()
    box_t = torch.randn(int(pos.sum()), 4, generator=g) * 0.1
    npos = max(1, int(pos.sum()))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            cls, box = model(x)
        cls, box = cls.float(), box.float()
        loss = (focal_sum(cls, onehot) + smooth_l1_sum(box[pos] - box_t)) / npos
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    return statistics.median(times), params


def fl_lab_steps(binary, steps, threads, bf16):
    cmd = [
        binary, "bench", "train", "--json", "--no-peak", "--config", "experiments/cpu.toml",
        "--set", f"model.num_classes={K}", "--set", f"schedule.batch_size={BATCH}",
        "--set", f"data.input_size={SIZE}", "--steps", str(steps), "--threads", str(threads),
    ]
    if bf16:
        cmd += ["--set", "model.conv_products=bf16"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return out["times"]["total_ms"] * 1e-3, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 products on both sides (see above)")
    ap.add_argument("--fl-lab", default="target/release/fl-lab")
    a = ap.parse_args()
    if not os.path.exists(a.fl_lab):
        sys.exit(f"{a.fl_lab} not found: run `cargo build --release` first (or pass --fl-lab)")
    products = "bf16 products (PyTorch CPU autocast; fl-lab model.conv_products = bf16)" if a.bf16 else "f32"
    print(f"training step, batch {BATCH} x 3 x {SIZE} x {SIZE}, K = {K}, {a.threads} threads, "
          f"median of {a.steps} steps, {products}")
    print("round  pytorch_ms  fl_lab_ms  ratio (fl-lab / pytorch)")
    torch_ms, fl_ms = [], []
    for r in range(a.rounds):
        tt, tp = torch_steps(a.steps, a.threads, a.bf16)
        ft, _ = fl_lab_steps(a.fl_lab, a.steps, a.threads, a.bf16)
        torch_ms.append(tt * 1e3)
        fl_ms.append(ft * 1e3)
        print(f"{r:5d}  {tt * 1e3:10.1f}  {ft * 1e3:9.1f}  {ft / tt:5.2f}", flush=True)
    tm, fm = statistics.median(torch_ms), statistics.median(fl_ms)
    print(f"median {tm:10.1f}  {fm:9.1f}  {fm / tm:5.2f}   (PyTorch model: {tp} parameters)")
    # Paired by round, the ratio is less sensitive to the machine's speed drifting between rounds.
    paired = statistics.median(f / t for f, t in zip(fl_ms, torch_ms))
    print(f"median of the per-round ratios: {paired:.2f}")


if __name__ == "__main__":
    main()
