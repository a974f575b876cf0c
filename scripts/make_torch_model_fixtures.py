#!/usr/bin/env python3
"""Writes the PyTorch → NormKit model fixtures used by TorchModelParityTests.swift.

For every normalization of the reference (`torch_models.NORMS`), builds
`torch_models.ResNet(8, norm, width=4, groups=2, mabn_buffer=3)` with a fixed seed, perturbs every parameter
and every buffer (γ, β, running statistics, MABN's ring buffers, the int64 counters) to non-trivial values so
that a wrong name, layout or convention mapping changes the outputs, and writes two safetensors files into
Tests/NormKitTrainingTests/Fixtures/:

* `torch_resnet8_<norm>.safetensors`: `model.state_dict()`, exactly as `safetensors.torch.save_file` writes it
  (int64 counters stay int64), with `__metadata__` `{"norm", "depth", "width", "groups", "mabn_buffer"}`.
* `torch_resnet8_<norm>_expected.safetensors`, computed from that state:
  - `input` `(4, 1, 12, 12)` and `labels` `(4,)` int64;
  - `logits_eval`: `model.eval()(input)`;
  - `logits_train`: `model.train()(input)` (one training forward from the saved state);
  - `grad.<name>` for every parameter: the gradient of `cross_entropy(logits_train, labels)` (mean);
  - `post.<name>` for every buffer after that forward and backward (BN/BRN running statistics and counters,
    MABN's `running_var`, `iters`, `buffer_x2` and — written by the backward — `buffer_gz`).
  The metadata lists the parameter names in `named_parameters()` order (`parameter_names`, JSON).

The BRN counters are set past its warm-up (`num_batches_tracked = 10000` with the paper's schedule, so
`r_max ≈ 1.29`, `d_max = 1.25` and the clips bite), and MABN's past both its warm-up and the `r` threshold
(`iters = 1500`), so the training forward uses the SMA of the (filled) `buffer_x2`, the renormalisation factor
`r` from the old `running_var` (log-uniform over e^±4, so that `r` is clipped in many channels: unclipped,
`r·z = x/sqrt(running_var + ε)` and the forward would not depend on the SMA), and the backward the SMA of
`buffer_gz`.

    $PYTHON scripts/make_torch_model_fixtures.py
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REFERENCE = os.environ.get("NORMKIT_REFERENCE", os.path.join(ROOT, "..", "shared", "reference"))
sys.path.insert(0, os.path.abspath(REFERENCE))
import torch_models  # noqa: E402

FIXTURES = os.path.join(ROOT, "Tests", "NormKitTrainingTests", "Fixtures")
DEPTH, WIDTH, GROUPS, MABN_BUFFER = 8, 4, 2, 3
BRN_TRACKED, BN_TRACKED, MABN_ITERS = 10000, 37, 1500


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter and buffer to a reproducible non-trivial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() == 1 and leaf == "weight":               # γ (including the zero-initialised last γ)
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif p.dim() == 1:                                   # β and the fc bias
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            else:                                                # conv and fc weights: keep He init, jiggle
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)
                module.num_batches_tracked.fill_(BN_TRACKED)
            elif isinstance(module, torch_models.BatchRenorm2d):
                module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_std.copy_(torch.rand(module.running_std.shape, generator=gen) * 1.5 + 0.5)
                module.num_batches_tracked.fill_(BRN_TRACKED)
            elif isinstance(module, torch_models.MovingAverageBatchNorm2d):
                # Log-uniform over e^±4: r = sqrt(v+ε)/sqrt(running_var+ε) is clipped to [1/5, 5] in many channels,
                # so the training forward depends on the SMA of buffer_x2 (unclipped, r·z = x/sqrt(running_var+ε)).
                module.running_var.copy_(torch.exp(8 * torch.rand(module.running_var.shape, generator=gen) - 4))
                module.iters.fill_(MABN_ITERS)
                module.buffer_x2.copy_(torch.exp(2 * torch.rand(module.buffer_x2.shape, generator=gen) - 1))
                module.buffer_gz.copy_(0.05 * torch.randn(module.buffer_gz.shape, generator=gen))
            elif isinstance(module, torch_models.FrozenBatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
                module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)


def make(norm: str, index: int) -> int:
    torch.manual_seed(1000 + index)
    model = torch_models.ResNet(DEPTH, norm, width=WIDTH, groups=GROUPS, mabn_buffer=MABN_BUFFER)
    gen = torch.Generator().manual_seed(2000 + index)
    perturb(model, gen)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    for k, v in state.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    meta = {"norm": norm, "depth": str(DEPTH), "width": str(WIDTH), "groups": str(GROUPS),
            "mabn_buffer": str(MABN_BUFFER)}
    model_path = os.path.join(FIXTURES, f"torch_resnet8_{norm}.safetensors")
    save_file(state, model_path, metadata=meta)

    x = torch.randn(4, 1, 12, 12, generator=gen)
    labels = torch.tensor([3, 0, 7, 1], dtype=torch.long)
    expected = {"input": x.clone(), "labels": labels.clone()}
    model.eval()
    with torch.no_grad():
        expected["logits_eval"] = model(x).detach().clone()
    model.train()
    model.zero_grad()
    logits = model(x)
    expected["logits_train"] = logits.detach().clone()
    F.cross_entropy(logits, labels).backward()
    names = []
    for name, p in model.named_parameters():
        names.append(name)
        expected[f"grad.{name}"] = p.grad.detach().clone()
    param_names = set(names)
    for name, t in model.state_dict().items():
        if name not in param_names:
            expected[f"post.{name}"] = t.detach().clone().contiguous()
    # Eval after the step, from the updated buffers (parameters unchanged: no optimizer step).
    model.eval()
    with torch.no_grad():
        expected["logits_eval_after"] = model(x).detach().clone()
    expected_path = os.path.join(FIXTURES, f"torch_resnet8_{norm}_expected.safetensors")
    save_file(expected, expected_path, metadata={**meta, "parameter_names": json.dumps(names)})
    size = os.path.getsize(model_path) + os.path.getsize(expected_path)
    print(f"{norm:10s} {len(state):3d} tensors  max|logit| eval {expected['logits_eval'].abs().max():.3f} "
          f"train {expected['logits_train'].abs().max():.3f}  {size} bytes")
    return size


def main() -> None:
    os.makedirs(FIXTURES, exist_ok=True)
    total = sum(make(norm, i) for i, norm in enumerate(torch_models.NORMS))
    print(f"total {total} bytes in {FIXTURES}")


if __name__ == "__main__":
    main()
