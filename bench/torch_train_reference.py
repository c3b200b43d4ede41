#!/usr/bin/env python3
"""Trains the default fl-lab model (experiments/cpu.toml) in PyTorch on the built-in benchmark and
evaluates it with pycocotools: the reference that fl-lab's own training is checked against.

Everything mirrors fl-lab: the network of bench/torch_retinanet.py (K from the dataset), anchors
(levels 3-7, anchor_scale 2, 3 scales x 3 ratios, centred at (i + 0.5) * stride), Detectron's matcher
(0.5 / 0.4 with low-quality matches that promote ignored anchors), the box coder (weights 1, 1, 1, 1),
focal loss (alpha 0.25, gamma 2) or alpha-balanced CE over all non-ignored anchors and classes plus
smooth L1 (beta 0.11) on the positives, both divided by max(1, positives); SGD momentum 0.9, weight decay
1e-4 on every parameter, linear warm-up from 1/3 over 100 iterations, step decay x0.1; random
horizontal flips; inference with threshold 0.05, 1000 candidates per level, class-wise NMS 0.5, 100
detections per image.

Usage (from the repository root; `cargo run --release -- data gen` or any fl-lab command makes data/builtin):
    python3 bench/torch_train_reference.py [--iters 800] [--lr 0.01] [--steps 600 720] [--loss focal|ce]
        [--alpha 0.25] [--gamma 2] [--head-convs 4] [--no-head-gn] [--threads 2] [--out runs/torch-reference]
Needs `pip install torch torchvision pycocotools pillow`. Writes metrics.csv and detections.json to
--out and prints the COCO summary.
"""

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_retinanet as tr  # noqa: E402

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
SIZE = 128
LEVELS = range(3, 8)
ANCHOR_SCALE, SCALES, RATIOS = 2.0, 3, (0.5, 1.0, 2.0)
POS_IOU, NEG_IOU = 0.5, 0.4
BOX_BETA = 0.11
CLIP = math.log(1000.0 / 16)


def load_split(root, split):
    coco = json.load(open(os.path.join(root, f"{split}.json")))
    cats = sorted(c["id"] for c in coco["categories"])
    cat_index = {c: i for i, c in enumerate(cats)}
    by_image = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            by_image[a["image_id"]].append(a)
    images, boxes, classes, ids = [], [], [], []
    for im in coco["images"]:
        assert im["width"] == SIZE and im["height"] == SIZE, "the built-in benchmark is 128 x 128"
        pix = np.asarray(Image.open(os.path.join(root, "images", im["file_name"])).convert("RGB"), np.float32)
        images.append((pix - MEAN) / STD)
        anns = by_image[im["id"]]
        b = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                      for a in anns], np.float32).reshape(-1, 4)
        boxes.append(b)
        classes.append(np.array([cat_index[a["category_id"]] for a in anns], np.int64))
        ids.append(im["id"])
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return coco, cats, x, boxes, classes, ids


def make_anchors():
    out = []
    for l in LEVELS:
        s = 2 ** l
        n = math.ceil(SIZE / s)
        cell = []
        for o in range(SCALES):
            size = ANCHOR_SCALE * s * 2 ** (o / SCALES)
            for r in RATIOS:
                w, h = size / math.sqrt(r), size * math.sqrt(r)
                cell.append([-w / 2, -h / 2, w / 2, h / 2])
        cell = np.array(cell, np.float32)
        c = (np.arange(n, dtype=np.float32) + 0.5) * s
        cy, cx = np.meshgrid(c, c, indexing="ij")
        ctr = np.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        out.append((ctr + cell[None]).reshape(-1, 4))
    return np.concatenate(out)


def iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None] - inter)


def encode(anchors, gt):
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    gx, gy = gt[:, 0] + gw / 2, gt[:, 1] + gh / 2
    return np.stack([(gx - ax) / aw, (gy - ay) / ah, np.log(gw / aw), np.log(gh / ah)], 1)


def targets(anchors, boxes, classes):
    """labels [T] (-1 ignore, 0 background, 1..K) and box targets [T, 4] (rows of positives used)."""
    t = len(anchors)
    labels = np.zeros(t, np.int64)
    deltas = np.zeros((t, 4), np.float32)
    if len(boxes) == 0:
        return labels, deltas
    m = iou(anchors, boxes)  # [T, G]
    best = m.max(1)
    arg = m.argmax(1)
    labels[:] = -1
    labels[best < NEG_IOU] = 0
    pos = best >= POS_IOU
    # Detectron's low-quality rule: anchors with a box's highest IoU, if not background.
    gt_best = m.max(0)
    low = ((m == gt_best[None]) & (gt_best[None] > 0)).any(1) & (best >= NEG_IOU)
    pos |= low
    labels[pos] = classes[arg[pos]] + 1
    deltas[pos] = encode(anchors[pos], boxes[arg[pos]])
    return labels, deltas


def cls_loss(logits, labels, kind, alpha, gamma):
    valid = labels >= 0
    x = logits[valid]
    y = F.one_hot(labels[valid], x.shape[1] + 1)[:, 1:].to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    at = alpha * y + (1 - alpha) * (1 - y)
    if kind == "ce":
        return (at * ce).sum()
    p = torch.sigmoid(x)
    pt = p * y + (1 - p) * (1 - y)
    return (at * (1 - pt) ** gamma * ce).sum()


def smooth_l1(d):
    d = d.abs()
    return torch.where(d < BOX_BETA, 0.5 * d * d / BOX_BETA, d - 0.5 * BOX_BETA).sum()


def lr_at(it, a):
    f = 1.0
    if it < a.warmup:
        f = a.warmup_factor + (1 - a.warmup_factor) * it / a.warmup
    return a.lr * f * 0.1 ** sum(it >= s for s in a.steps)


def decode(anchors, d):
    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + aw / 2, anchors[:, 1] + ah / 2
    cx, cy = d[:, 0] * aw + ax, d[:, 1] * ah + ay
    w, h = torch.exp(d[:, 2].clamp(max=CLIP)) * aw, torch.exp(d[:, 3].clamp(max=CLIP)) * ah
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, SIZE)


@torch.no_grad()
def detect(model, x, anchors_t, level_counts, k, ids, cats):
    model.eval()
    results = []
    for i0 in range(0, len(x), 32):
        cls, box = model(x[i0:i0 + 32])
        for j in range(cls.shape[0]):
            boxes, scores, labels = [], [], []
            off = 0
            for n in level_counts:
                s = torch.sigmoid(cls[j, off:off + n]).flatten()
                keep = torch.nonzero(s > 0.05).flatten()
                if len(keep) > 1000:
                    keep = keep[torch.topk(s[keep], 1000).indices]
                a = off + keep // k
                boxes.append(decode(anchors_t[a], box[j, a]))
                scores.append(s[keep])
                labels.append(keep % k)
                off += n
            b, s, l = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = torchvision.ops.batched_nms(b, s, l, 0.5)[:100]
            for q in keep.tolist():
                x0, y0, x1, y1 = b[q].tolist()
                results.append({"image_id": ids[i0 + j], "category_id": cats[int(l[q])],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(s[q])})
    model.train()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data/builtin")
    ap.add_argument("--iters", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--steps", type=int, nargs="*", default=[900, 1080])
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--warmup-factor", type=float, default=1 / 3)
    ap.add_argument("--loss", choices=["focal", "ce"], default="focal")
    ap.add_argument("--alpha", type=float, default=0.25)
    ap.add_argument("--gamma", type=float, default=2.0)
    ap.add_argument("--head-convs", type=int, default=4)
    ap.add_argument("--no-head-gn", action="store_true", help="subnets without GroupNorm (model.head_gn = false)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/torch-reference")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    os.makedirs(a.out, exist_ok=True)

    _, cats, xtr, btr, ctr, _ = load_split(a.data, "train")
    val_coco, _, xva, _, _, ids = load_split(a.data, "val")
    k = len(cats)
    tr.K = k
    model = tr.RetinaNet(head_convs=a.head_convs, head_gn=not a.no_head_gn)
    anchors = make_anchors()
    anchors_t = torch.from_numpy(anchors)
    level_counts = [math.ceil(SIZE / 2 ** l) ** 2 * 9 * k for l in LEVELS]
    # Targets of an image and of its mirror image are fixed: compute them once.
    def mirror(b):
        return np.stack([SIZE - b[:, 2], b[:, 1], SIZE - b[:, 0], b[:, 3]], 1) if len(b) else b
    tg = [[targets(anchors, b, c), targets(anchors, mirror(b), c)] for b, c in zip(btr, ctr)]
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=1e-4)
    order, pos_in_epoch = rng.permutation(len(xtr)), 0
    rows, t_start = [], time.perf_counter()
    for it in range(a.iters):
        idx = []
        for _ in range(a.batch):
            if pos_in_epoch == len(order):
                order, pos_in_epoch = rng.permutation(len(xtr)), 0
            idx.append(order[pos_in_epoch])
            pos_in_epoch += 1
        flips = rng.random(a.batch) < 0.5
        x = xtr[idx].clone()
        x[flips] = x[flips].flip(-1)
        labels = torch.from_numpy(np.stack([tg[i][int(f)][0] for i, f in zip(idx, flips)]))
        deltas = torch.from_numpy(np.stack([tg[i][int(f)][1] for i, f in zip(idx, flips)]))
        for g in opt.param_groups:
            g["lr"] = lr_at(it, a)
        cls, box = model(x)
        pos = labels > 0
        npos = max(1, int(pos.sum()))
        lc = cls_loss(cls.reshape(-1, k), labels.flatten(), a.loss, a.alpha, a.gamma) / npos
        lb = smooth_l1(box[pos] - deltas[pos]) / npos
        opt.zero_grad(set_to_none=True)
        (lc + lb).backward()
        opt.step()
        rows.append((it, lr_at(it, a), lc.item(), lb.item(), int(pos.sum()), time.perf_counter() - t_start))
        if it % 50 == 0 or it == a.iters - 1:
            print(f"it {it:5d} lr {rows[-1][1]:.5f} cls {lc.item():.4f} box {lb.item():.4f} "
                  f"pos {int(pos.sum())} {rows[-1][5]:.0f}s", flush=True)
    with open(os.path.join(a.out, "metrics.csv"), "w") as f:
        f.write("iteration,lr,loss_cls,loss_box,positives,seconds\n")
        f.writelines(",".join(str(v) for v in r) + "\n" for r in rows)
    dets = detect(model, xva, anchors_t, level_counts, k, ids, cats)
    with open(os.path.join(a.out, "detections.json"), "w") as f:
        json.dump(dets, f)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(a.data, "val.json"))
        dt = gt.loadRes(dets) if dets else None
    if dt is None:
        print("no detections: AP 0")
        return
    e = COCOeval(gt, dt, "bbox")
    e.evaluate(); e.accumulate(); e.summarize()
    print(f"AP {e.stats[0]:.4f} AP50 {e.stats[1]:.4f} train seconds {rows[-1][5]:.0f}")


if __name__ == "__main__":
    main()
