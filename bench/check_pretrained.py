#!/usr/bin/env python3
"""fl-lab's ResNet backbone with torchvision weights against torchvision itself.

Builds torchvision's ResNet-18, -34 and -50 with random weights and random BatchNorm statistics and
affine parameters (so that frozen BN is not an identity), saves each state dict as safetensors (the file
`model.pretrained` takes), runs fl-lab's backbone on the same images (`fl-lab bench features`: frozen BN,
stem and first stage frozen as in the `paper` preset) and torchvision's in eval mode, and prints the largest absolute difference of the C2..C5
features (torchvision's layer1..layer4 outputs) relative to the largest magnitude of torchvision's, per
depth. Exits 1 if any C3, C4 or C5 difference is above 1e-4.

Usage: python3 bench/check_pretrained.py [--depths 18,34,50] [--size 225x161] [--fl-lab PATH]
Needs: pip install torch torchvision safetensors numpy (and `cargo build --release`).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch
import torchvision
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomise_bn(model, gen):
    """Random BN statistics and affine parameters, as a trained network has."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.4 * torch.rand(c, generator=gen) - 0.2
            m.running_mean.data = 0.4 * torch.rand(c, generator=gen) - 0.2
            m.running_var.data = 0.5 + torch.rand(c, generator=gen)
            m.num_batches_tracked.fill_(1000)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--depths", default="18,34,50")
    ap.add_argument("--size", default="225x161", help="image height x width (odd sizes test the padding)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--fl-lab", default=os.path.join(ROOT, "target", "release", "fl-lab"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        images = torch.randn(args.batch, 3, h, w, generator=gen)
        inp = os.path.join(tmp, "images.safetensors")
        save_file({"images": images.contiguous()}, inp)
        print(f"images: {args.batch} x 3 x {h} x {w}, N(0, 1); torch {torch.__version__}, "
              f"torchvision {torchvision.__version__}")
        print(f"{'model':<10}{'feature':<9}{'shape':<22}{'max |diff|':>12}{'scale':>10}{'relative':>11}")
        for depth in (int(d) for d in args.depths.split(",")):
            net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
            randomise_bn(net, gen)
            net.eval()
            weights = os.path.join(tmp, f"resnet{depth}.safetensors")
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
            out = os.path.join(tmp, f"features{depth}.safetensors")
            sets = [f"model.backbone=\"r{depth}\"", "model.width=1.0", "model.stem=\"resnet\"",
                    "model.norm=\"frozen_bn\"", "model.freeze_at=2", f"model.pretrained=\"{weights}\""]
            cmd = [args.fl_lab, "bench", "features", "--config", "cpu"]
            for s in sets:
                cmd += ["--set", s]
            cmd += ["--input", inp, "--out", out]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            ours = load_file(out)
            with torch.no_grad():
                x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
                theirs = {}
                for i, layer in enumerate([net.layer1, net.layer2, net.layer3, net.layer4]):
                    x = layer(x)
                    theirs[f"c{i + 2}"] = x
            for k in ["c2", "c3", "c4", "c5"]:
                a, b = ours[k], theirs[k]
                if a.shape != b.shape:
                    print(f"resnet{depth} {k}: fl-lab {tuple(a.shape)} vs torchvision {tuple(b.shape)}")
                    sys.exit(1)
                diff = (a - b).abs().max().item()
                scale = b.abs().max().item()
                rel = diff / scale
                if k != "c2":
                    worst = max(worst, rel)
                print(f"{'resnet' + str(depth):<10}{k:<9}{str(tuple(b.shape)):<22}{diff:>12.3e}{scale:>10.3f}"
                      f"{rel:>11.2e}")
    ok = worst <= 1e-4
    print(f"largest relative difference of C3-C5: {worst:.2e} ({'within' if ok else 'above'} 1e-4)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
