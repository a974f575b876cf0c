"""NormKit's `normkit train` vs the same training in PyTorch, alternated in one run: images/s of each and the ratio.

Both sides train the same network on the same images with the same recipe (docs/NORMALIZATION.md §8): the reference
model of ../shared/reference/torch_models.py (ResNet-8 or -20; BN, GN with 16 groups, or MABN with CenConv and
NormKit's default buffer max(1, 32 / batch)), SGD with momentum 0.9, learning rate 0.1 × batch / 32 with linear
warm-up over 15 % of the steps from lr/25 and cosine decay, weight decay 5e-4 on conv and linear weights, and the
augmentation (pad 4 with the value of a black pixel, random 28×28 crop, horizontal flip with p = 0.5). PyTorch holds
the standardised Fashion-MNIST images in memory (NormKit does too). Each measurement is one epoch over the first
`--images` training images at 2 threads, timed from the first step to the last, evaluation excluded (NormKit's
`imagesPerSecond` in summary.json; the same clock around PyTorch's loop), so start-up costs inside the epoch
(oneDNN primitive creation, PyTorch's first iterations) count on both sides.

The machines are shared VMs whose speed drifts, so the two sides alternate — NormKit, PyTorch, NormKit, … —
`--rounds` times per cell, and the table reports the median of each side and the median of the per-round ratios.

    swift build -c release
    .venv-torch/bin/python scripts/compare_torch_training.py                       # the full table (~20 min)
    .venv-torch/bin/python scripts/compare_torch_training.py --models resnet8 --norms gn --batches 32 --rounds 3
"""
import argparse
import gzip
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "reference"))
from torch_models import ResNet  # noqa: E402

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise SystemExit(f"{directory}: no {stem}[.gz] (install Debian's dataset-fashion-mnist or pass --data)")


def load_training_images(directory, limit):
    """The first `limit` training images in [0, 1], shape (N, 1, 28, 28), and their labels."""
    images = read_idx(find(directory, "train-images-idx3-ubyte"))[:limit].astype(np.float32) / 255
    labels = read_idx(find(directory, "train-labels-idx1-ubyte"))[:limit].astype(np.int64)
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def augment(batch, pad_value, generator):
    """Pad 4 with `pad_value`, crop a random 28×28 window and flip with p = 0.5, per image."""
    n, _, h, w = batch.shape
    padded = F.pad(batch, (4, 4, 4, 4), value=pad_value)
    offsets = torch.randint(0, 9, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(batch)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        window = padded[i, :, top:top + h, left:left + w]
        out[i] = window.flip(-1) if flips[i] else window
    return out


def torch_images_per_second(model_name, norm, batch, images, labels, pad_value, seed=0):
    torch.manual_seed(seed)
    depth = int(model_name.removeprefix("resnet"))
    kwargs = {"groups": 16} if norm == "gn" else {}
    if norm == "mabn":
        kwargs["mabn_buffer"] = max(1, 32 // batch)
    model = ResNet(depth, norm, **kwargs)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    peak = 0.1 * batch / 32
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                                lr=peak, momentum=0.9)
    steps = images.shape[0] // batch
    warmup = max(1, int(0.15 * steps))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=generator)
    start = time.perf_counter()
    for step in range(steps):
        if step < warmup:
            lr = peak / 25 + (peak - peak / 25) * step / warmup
        else:
            lr = 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = order[step * batch:(step + 1) * batch]
        x = augment(images[index], pad_value, generator)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), labels[index]).backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def normkit_images_per_second(binary, model_name, norm, batch, count, data, engine):
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "run")
        command = [binary, "train", "--model", model_name, "--norm", norm, "--batch", str(batch), "--epochs", "1",
                   "--train-limit", str(count), "--test-limit", "100", "--threads", "2", "--data", data,
                   "--out", out]
        if engine:
            command += ["--conv-engine", engine]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["epochs"][0]["imagesPerSecond"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet8,resnet20")
    parser.add_argument("--norms", default="bn,gn,mabn")
    parser.add_argument("--batches", default="32,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=6400, help="training images per measurement at batch 32")
    parser.add_argument("--small-batch-images", type=int, default=1600, help="… at batches below 32")
    parser.add_argument("--normkit", default=".build/release/normkit")
    parser.add_argument("--engine", default=None, help="normkit's --conv-engine (default: its own default)")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    most = max(args.images, args.small_batch_images)
    images, labels = load_training_images(args.data, most)
    rows = []
    for model_name in args.models.split(","):
        for norm in args.norms.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                count = args.images if batch >= 32 else args.small_batch_images
                # Standardised on the subset's own statistics, as `normkit train --train-limit` does; the padding
                # is a black pixel in those units.
                subset = (images[:count], labels[:count])
                mean, std = float(subset[0].mean()), float(subset[0].std(unbiased=False))
                xs = (subset[0] - mean) / std
                pad = (0 - mean) / std
                nk, pt = [], []
                for _ in range(args.rounds):
                    nk.append(normkit_images_per_second(args.normkit, model_name, norm, batch, count, args.data,
                                                        args.engine))
                    time.sleep(1)  # NormKit's process is gone; let the machine settle
                    pt.append(torch_images_per_second(model_name, norm, batch, xs, subset[1], pad))
                    time.sleep(1)  # PyTorch's OpenMP workers spin for a while after its last kernel
                ratios = [a / b for a, b in zip(nk, pt)]
                row = {"model": model_name, "norm": norm, "batch": batch, "images": count,
                       "normkit": nk, "torch": pt, "ratios": ratios,
                       "normkitMedian": statistics.median(nk), "torchMedian": statistics.median(pt),
                       "ratioMedian": statistics.median(ratios)}
                rows.append(row)
                print(f"{model_name} {norm} batch {batch}: NormKit {row['normkitMedian']:.0f} images/s, "
                      f"PyTorch {row['torchMedian']:.0f} images/s, ratio {row['ratioMedian']:.2f} "
                      f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
    print(f"\ntorch {torch.__version__}, 2 threads; {args.rounds} alternating rounds per row, medians\n")
    print("| model | norm | batch | NormKit images/s | PyTorch images/s | NormKit / PyTorch (per-round range) |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['norm']} | {r['batch']} | {r['normkitMedian']:.0f} | {r['torchMedian']:.0f} | "
              f"{r['ratioMedian']:.2f} ({min(r['ratios']):.2f}–{max(r['ratios']):.2f}) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
