#!/usr/bin/env python3
"""PyTorch's float32 error on hard inputs: the bar NormKit's precision tests hold each layer to.

Runs the layers of the project's PyTorch reference, torch_models.py (found as in scripts/check_torch_interop.py:
NORMKIT_REFERENCE or --reference-dir), in float32 and in float64 on the same float32 inputs, step by step from the
same state, and writes each float32 run's worst relative error against its float64 twin, together with the inputs,
to Tests/NormKitTests/Fixtures/torch_precision.json. NormKitTests.PrecisionTests replays the inputs through NormKit
and asserts its errors against its own float64 reference stay within a small factor of PyTorch's.

    $PYTHON scripts/make_precision_fixtures.py [--reference-dir DIR]      # $PYTHON: a Python with torch

Cases `brnLargeMean` (issue 9's gap): BatchRenorm2d on (1, 24, 2) NCHW, per-channel means S·N(0,1) for S = 1e3,
10 and 1e5, spreads 0.01, momentum 0.2, warm-up 5 steps, r_max 3 by step 20, d_max 5 by step 12, 40 training steps
(forward, backward, then an evaluation forward of the same input); on the same inputs, `F.batch_norm` (training
with running statistics, momentum 0.2, then evaluation) and `F.group_norm` with one group per channel. Relative
error = max|a − ref| / max|ref| per step, worst over steps.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--reference-dir", default=os.environ.get(
    "NORMKIT_REFERENCE", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference")))
parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "Tests", "NormKitTests", "Fixtures",
                                                  "torch_precision.json"))
args = parser.parse_args()
sys.path.insert(0, os.path.abspath(args.reference_dir))
import torch_models  # noqa: E402


def rel_err(a, ref):
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    scale = np.abs(ref).max()
    err = np.abs(a - ref).max()
    return float(err / scale) if scale > 0 else float(err)


def functional_errors(xs, dys, gamma, beta, kind):
    """PyTorch's float32 BatchNorm (training with running statistics, momentum 0.2, then evaluation) or GroupNorm
    with one group per channel, against float64, over the case's steps."""
    c = xs[0].shape[1]
    state = {dtype: (torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)) for dtype in (torch.float32, torch.float64)}
    worst = {"y": 0.0, "dx": 0.0, "dgamma": 0.0, "dbeta": 0.0} | ({"eval": 0.0} if kind == "bn" else {})
    for x_np, dy_np in zip(xs, dys):
        out = {}
        for dtype in (torch.float32, torch.float64):
            x = torch.from_numpy(x_np).to(dtype).requires_grad_(True)
            w = torch.from_numpy(gamma).to(dtype).requires_grad_(True)
            b = torch.from_numpy(beta).to(dtype).requires_grad_(True)
            if kind == "bn":
                rm, rv = state[dtype]
                y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.2, eps=1e-5)
            else:
                y = F.group_norm(x, c, w, b, eps=1e-5)
            y.backward(torch.from_numpy(dy_np).to(dtype))
            out[dtype] = dict(y=y.detach().numpy(), dx=x.grad.numpy(), dgamma=w.grad.numpy(), dbeta=b.grad.numpy())
            if kind == "bn":
                with torch.no_grad():
                    out[dtype]["eval"] = F.batch_norm(torch.from_numpy(x_np).to(dtype), rm, rv, w, b, training=False,
                                                      eps=1e-5).numpy()
        for key in worst:
            worst[key] = max(worst[key], rel_err(out[torch.float32][key], out[torch.float64][key]))
    return worst


def brn_large_mean(mean_scale, seed):
    rng = np.random.default_rng(seed)
    n, c, p, steps = 1, 24, 2, 40
    means = mean_scale * rng.standard_normal(c)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.uniform(-0.5, 0.5, c).astype(np.float32)
    xs = [(means[None, :, None] + 0.01 * rng.standard_normal((n, c, p))).astype(np.float32) for _ in range(steps)]
    dys = [rng.standard_normal((n, c, p)).astype(np.float32) for _ in range(steps)]
    layers = {}
    for dtype in (torch.float32, torch.float64):
        layer = torch_models.BatchRenorm2d(c, momentum=0.2, warmup_steps=5, r_max=3.0, d_max=5.0,
                                           r_steps=20, d_steps=12).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(gamma))
            layer.bias.copy_(torch.from_numpy(beta))
        layers[dtype] = layer
    worst = {"y": 0.0, "dx": 0.0, "dgamma": 0.0, "dbeta": 0.0, "eval": 0.0}
    for s in range(steps):
        out = {}
        for dtype, layer in layers.items():
            layer.train()
            x = torch.from_numpy(xs[s]).to(dtype).requires_grad_(True)
            layer.weight.grad = None
            layer.bias.grad = None
            y = layer(x)
            y.backward(torch.from_numpy(dys[s]).to(dtype))
            layer.eval()
            with torch.no_grad():
                ye = layer(torch.from_numpy(xs[s]).to(dtype))
            out[dtype] = dict(y=y.detach().numpy(), dx=x.grad.numpy(), dgamma=layer.weight.grad.numpy(),
                              dbeta=layer.bias.grad.numpy(), eval=ye.numpy())
        for key in worst:
            worst[key] = max(worst[key], rel_err(out[torch.float32][key], out[torch.float64][key]))
    return {
        "batchNormFloat32Error": functional_errors(xs, dys, gamma, beta, "bn"),
        "groupNormFloat32Error": functional_errors(xs, dys, gamma, beta, "gn"),
        "meanScale": mean_scale, "shape": [n, c, p], "steps": steps, "momentum": 0.2,
        "schedule": {"warmupSteps": 5, "rMax": 3.0, "dMax": 5.0, "rSteps": 20, "dSteps": 12},
        "gamma": gamma.tolist(), "beta": beta.tolist(),
        "x": [v.reshape(-1).tolist() for v in xs], "dy": [v.reshape(-1).tolist() for v in dys],
        "torchFloat32Error": worst,
    }


fixture = {"generator": "scripts/make_precision_fixtures.py", "torch": torch.__version__,
           "brnLargeMean": [brn_large_mean(1e3, 9), brn_large_mean(10.0, 10), brn_large_mean(1e5, 11)]}
with open(args.out, "w") as f:
    json.dump(fixture, f, separators=(",", ":"))
for case in fixture["brnLargeMean"]:
    print(case["meanScale"], "brn", json.dumps(case["torchFloat32Error"]))
    print(case["meanScale"], "bn", json.dumps(case["batchNormFloat32Error"]))
    print(case["meanScale"], "gn", json.dumps(case["groupNormFloat32Error"]))
