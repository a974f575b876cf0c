"""Images/s of PyTorch training the reference ResNet-8 (torch_models.py) with GN on 28×28 inputs, SGD momentum,
2 threads: the comparison for `normkit train --model resnet8 --norm gn --batch B` in docs/PERFORMANCE.md.

    .venv-torch/bin/python scripts/bench_torch_training.py [--batch 32] [--norm gn]
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference"))
from torch_models import ResNet  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--norm", default="gn")
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = ResNet(8, args.norm, groups=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(f"torch {torch.__version__}: ResNet-8 {args.norm} batch {args.batch}: "
          f"{args.steps * args.batch / seconds:.0f} images/s ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
