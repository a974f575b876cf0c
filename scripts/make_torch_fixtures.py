#!/usr/bin/env python3
"""Writes the PyTorch parity fixtures that Tests/NormKitTests/TorchParityTests.swift reads.

Regenerate (from the package root, with a venv made as in ../shared/reference/README.md:
`python3 -m venv .venv-torch && .venv-torch/bin/pip install torch safetensors numpy`):

    .venv-torch/bin/python scripts/make_torch_fixtures.py

Everything is seeded, so a rerun with the same PyTorch gives the same numbers (up to PyTorch's own CPU kernel
changes between versions). Tests never need Python: the JSON files are committed.

Outputs (Tests/NormKitTests/Fixtures/):

- torch_batchnorm.json: torch.nn.BatchNorm1d on (N, C) and (N, C, L), BatchNorm2d, BatchNorm3d, momentum 0.1,
  eps 1e-5, random non-trivial weight/bias (and one affine=False case). Each case has 3 training steps
  (x, dy, y, dx, dweight, dbias, running_mean, running_var after the step) and then an eval forward
  (x, y) that uses the running statistics of the 3 steps.
- torch_groupnorm.json: torch.nn.GroupNorm for several G on small shapes of spatial rank 0 to 3, including
  G = 1 (LayerNorm-equivalent) and G = C (InstanceNorm-equivalent): x, dy, y, dx, dweight, dbias.

All tensors are float32, flattened in PyTorch's contiguous (channels-first) order; numbers are written with the
shortest decimal that round-trips to the same float32.
"""

import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "Tests", "NormKitTests", "Fixtures")


def flat(t):
    """A float32 tensor as a list of the shortest decimals that round-trip to the same float32."""
    a = t.detach().to(torch.float32).contiguous().view(-1).numpy()
    return [float(str(v)) for v in a]  # str of a numpy float32 is its shortest round-trip decimal


def rand(gen, shape, scale=1.0, offset=0.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * scale + offset


def affine_values(gen, channels):
    mag = torch.rand(channels, generator=gen) + 0.5
    sign = torch.where(torch.rand(channels, generator=gen) < 0.5, -1.0, 1.0)
    return (mag * sign).float(), (torch.rand(channels, generator=gen) * 2 - 1).float()


def batchnorm_case(name, module_cls, shape, seed, affine=True, steps=3):
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    bn = module_cls(channels, eps=1e-5, momentum=0.1, affine=affine)
    case = {"name": name, "module": module_cls.__name__, "shape": list(shape), "eps": 1e-5, "momentum": 0.1,
            "affine": affine, "steps": []}
    if affine:
        w, b = affine_values(gen, channels)
        with torch.no_grad():
            bn.weight.copy_(w)
            bn.bias.copy_(b)
        case["weight"] = flat(bn.weight)
        case["bias"] = flat(bn.bias)
    bn.train()
    for _ in range(steps):
        x = rand(gen, shape, scale=2.0, offset=0.5).requires_grad_(True)
        dy = rand(gen, shape)
        if affine:
            bn.weight.grad = None
            bn.bias.grad = None
        y = bn(x)
        y.backward(dy)
        step = {"x": flat(x), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad),
                "running_mean": flat(bn.running_mean), "running_var": flat(bn.running_var)}
        if affine:
            step["dweight"] = flat(bn.weight.grad)
            step["dbias"] = flat(bn.bias.grad)
        case["steps"].append(step)
    case["num_batches_tracked"] = int(bn.num_batches_tracked.item())
    bn.eval()
    with torch.no_grad():
        x = rand(gen, shape, scale=2.0, offset=0.5)
        case["eval"] = {"x": flat(x), "y": flat(bn(x))}
    return case


def groupnorm_case(name, shape, groups, seed, affine=True):
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    gn = torch.nn.GroupNorm(groups, channels, eps=1e-5, affine=affine)
    case = {"name": name, "shape": list(shape), "groups": groups, "eps": 1e-5, "affine": affine}
    if affine:
        w, b = affine_values(gen, channels)
        with torch.no_grad():
            gn.weight.copy_(w)
            gn.bias.copy_(b)
        case["weight"] = flat(gn.weight)
        case["bias"] = flat(gn.bias)
    x = rand(gen, shape, scale=1.5, offset=-0.3).requires_grad_(True)
    dy = rand(gen, shape)
    y = gn(x)
    y.backward(dy)
    case.update({"x": flat(x), "dy": flat(dy), "y": flat(y), "dx": flat(x.grad)})
    if affine:
        case["dweight"] = flat(gn.weight.grad)
        case["dbias"] = flat(gn.bias.grad)
    return case


def main():
    torch.set_num_threads(1)
    nn = torch.nn
    bn_cases = [
        batchnorm_case("bn1d_NC", nn.BatchNorm1d, (8, 3), seed=101),
        batchnorm_case("bn1d_NCL", nn.BatchNorm1d, (4, 3, 7), seed=102),
        batchnorm_case("bn2d", nn.BatchNorm2d, (3, 4, 5, 5), seed=103),
        batchnorm_case("bn2d_no_affine", nn.BatchNorm2d, (2, 3, 3, 3), seed=104, affine=False),
        batchnorm_case("bn3d", nn.BatchNorm3d, (2, 3, 3, 4, 5), seed=105),
    ]
    gn_cases = [
        groupnorm_case("gn_rank0_G2", (3, 6), 2, seed=201),
        groupnorm_case("gn_rank1_G2", (3, 4, 7), 2, seed=202),
        groupnorm_case("gn2d_G1_layernorm", (2, 6, 5, 5), 1, seed=203),
        groupnorm_case("gn2d_G2", (2, 6, 5, 5), 2, seed=204),
        groupnorm_case("gn2d_G3", (2, 6, 5, 5), 3, seed=205),
        groupnorm_case("gn2d_G6_instancenorm", (2, 6, 5, 5), 6, seed=206),
        groupnorm_case("gn2d_G2_no_affine", (2, 4, 3, 3), 2, seed=207, affine=False),
        groupnorm_case("gn3d_G2", (2, 4, 3, 3, 3), 2, seed=208),
    ]
    meta = {"torch_version": torch.__version__, "generator": "scripts/make_torch_fixtures.py"}
    os.makedirs(OUT, exist_ok=True)
    for fname, cases in [("torch_batchnorm.json", bn_cases), ("torch_groupnorm.json", gn_cases)]:
        path = os.path.join(OUT, fname)
        with open(path, "w") as f:
            json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
            f.write("\n")
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
