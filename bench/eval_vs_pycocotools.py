#!/usr/bin/env python3
"""Times `fl-lab eval` against pycocotools COCOeval on the same generated data, in one run.

    python3 -m pip install pycocotools==2.0.11 numpy
    cargo build --release
    python3 bench/eval_vs_pycocotools.py            # 5,000 images x 100 detections
    (or: bench/eval_vs_pycocotools.sh, which does the build too)

Generates (fixed seed) a ground truth of N images with 80 categories, 1-15 objects each
(mask-like `area` fields, ~3% crowd), and a results file with exactly D detections per image
(jittered copies of the ground truth plus random boxes, full-precision scores). Then times:
  pycocotools: COCO(gt) + loadRes(dets) (loading), and evaluate() + accumulate() + summarize()
  fl-lab:      the whole `fl-lab eval` process (reading both JSON files, evaluating, writing
               metrics.json/csv, per_category.csv, pr_curves.csv and pr_curves.png), best and
               median of --repeats runs
and checks that both print the same 12 summary lines and the same stats.
"""
import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np


def generate(n_images, dets_per_image, n_cats, seed):
    rng = np.random.default_rng(seed)
    cat_ids = sorted(int(c) for c in rng.choice(np.arange(1, 200), n_cats, replace=False))
    images, anns, dets = [], [], []
    aid = 1
    for iid in range(1, n_images + 1):
        W, H = 640, 480
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": W, "height": H})
        img_anns = []
        for _ in range(int(rng.integers(1, 16))):
            w = float(np.exp(rng.uniform(np.log(6), np.log(400))))
            h = min(w * float(np.exp(rng.uniform(-0.5, 0.5))), H - 1.0)
            w = min(w, W - 1.0)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            b = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            a = {"id": aid, "image_id": iid, "category_id": int(rng.choice(cat_ids)), "bbox": b,
                 "area": round(w * h * rng.uniform(0.4, 1.0), 3), "iscrowd": int(rng.random() < 0.03)}
            aid += 1
            anns.append(a)
            img_anns.append(a)
        k = 0
        while k < dets_per_image:
            if img_anns and rng.random() < 0.4:
                a = img_anns[int(rng.integers(len(img_anns)))]
                x, y, w, h = a["bbox"]
                s = rng.choice([0.03, 0.1, 0.25])
                nx, ny = x + rng.normal(0, s * w), y + rng.normal(0, s * h)
                nw, nh = w * np.exp(rng.normal(0, s)), h * np.exp(rng.normal(0, s))
                cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            else:
                nw = float(np.exp(rng.uniform(np.log(6), np.log(400))))
                nh = nw * float(np.exp(rng.uniform(-0.5, 0.5)))
                nx, ny = rng.uniform(0, W - min(nw, W - 1)), rng.uniform(0, H - min(nh, H - 1))
                cat = int(rng.choice(cat_ids))
            dets.append({"image_id": iid, "category_id": cat,
                         "bbox": [round(float(nx), 2), round(float(ny), 2), round(float(nw), 2), round(float(nh), 2)],
                         "score": float(rng.uniform(0.05, 1.0))})
            k += 1
    cats = [{"id": c, "name": f"class{c}", "supercategory": "thing"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets-per-image", type=int, default=100)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--seed", type=int, default=2017)
    ap.add_argument("--repeats", type=int, default=3, help="fl-lab runs (pycocotools runs once)")
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "fl-lab"))
    ap.add_argument("--workdir", default=None, help="keep the generated files here (default: a temp dir)")
    args = ap.parse_args()

    import pycocotools
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not os.path.exists(args.binary):
        sys.exit(f"{args.binary} not found: run `cargo build --release` first")
    work = args.workdir or tempfile.mkdtemp(prefix="fl-lab-eval-bench-")
    os.makedirs(work, exist_ok=True)
    t = time.perf_counter()
    gt, dets = generate(args.images, args.dets_per_image, args.categories, args.seed)
    gt_path, dt_path = os.path.join(work, "gt.json"), os.path.join(work, "dets.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(dt_path, "w") as f:
        json.dump(dets, f)
    print(f"data: {len(gt['images'])} images, {len(gt['annotations'])} gt, {len(dets)} detections, "
          f"{len(gt['categories'])} categories ({time.perf_counter() - t:.1f} s to generate) in {work}")
    print(f"machine: {os.cpu_count()} cpus; pycocotools {getattr(pycocotools, '__version__', '?')}, numpy {np.__version__}")

    # fl-lab first, then pycocotools (the page cache is warm for both after generation).
    fl_times, fl_out = [], None
    for _ in range(args.repeats):
        t = time.perf_counter()
        r = subprocess.run([args.binary, "--quiet", "eval", "--gt", gt_path, "--dets", dt_path,
                            "--out", os.path.join(work, "fl-lab-out")], capture_output=True, text=True)
        fl_times.append(time.perf_counter() - t)
        if r.returncode != 0:
            sys.exit(f"fl-lab failed: {r.stderr}")
        fl_out = r.stdout
    with open(os.path.join(work, "fl-lab-out", "metrics.json")) as f:
        fl_metrics = json.load(f)

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        t = time.perf_counter()
        coco_gt = COCO(gt_path)
        coco_dt = coco_gt.loadRes(dt_path)
        py_load = time.perf_counter() - t
        t = time.perf_counter()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ev.summarize()
    py_eval = time.perf_counter() - t

    names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    diff = max(abs(fl_metrics["stats"][n] - float(v)) for n, v in zip(names, ev.stats))
    same_text = fl_out.splitlines() == out.getvalue().splitlines()
    print(out.getvalue(), end="")
    print(f"summary text identical: {same_text}; max |stat difference|: {diff:.3g}")
    fl_best, fl_med = min(fl_times), statistics.median(fl_times)
    print(f"pycocotools: load {py_load:.2f} s, evaluate+accumulate+summarize {py_eval:.2f} s, total {py_load + py_eval:.2f} s")
    print(f"fl-lab eval (whole process, incl. JSON parsing and writing outputs): best {fl_best:.3f} s, "
          f"median {fl_med:.3f} s of {args.repeats} (evaluation alone: {fl_metrics['eval_seconds']:.3f} s)")
    print(f"speed-up: {py_eval / fl_med:.1f}x vs pycocotools evaluate+accumulate+summarize, "
          f"{(py_load + py_eval) / fl_med:.1f}x vs pycocotools total (fl-lab median)")
    if not same_text or diff > 1e-9:
        sys.exit("fl-lab and pycocotools disagree")


if __name__ == "__main__":
    main()
