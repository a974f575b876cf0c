#!/usr/bin/env python3
"""Writes the folding fixtures used by FoldingTests.swift (`normkit export --fold` against the reference).

For every foldable normalization of the reference (`torch_models.FOLDABLE`: bn, brn, mabn, frozen-bn, none),
builds `torch_models.ResNet(8, norm, width=4, groups=2, mabn_buffer=3)` with a fixed seed, perturbs every
parameter and buffer exactly as scripts/make_torch_model_fixtures.py does (γ, β, running means, variances and
stds, MABN's EMA of χ² log-uniform over e^±4), then folds it with the reference `torch_models.fold(model)` and
writes one file, Tests/NormKitTrainingTests/Fixtures/fold_resnet8_<norm>.safetensors, holding

* `unfolded.<name>`: `model.state_dict()` (what NormKit loads into its ResNet before folding);
* `folded.<name>`: `fold(model).state_dict()` (what NormKit's fold must produce: `conv1.weight`, `conv1.bias`,
  …, `layer2.0.downsample.0.bias`, `fc.*`);
* `input` `(4, 1, 12, 12)`, `logits_eval` = `model.eval()(input)` and `logits_folded` = `fold(model)(input)`.

Its `__metadata__`: `norm`, `depth`, `width`, `groups`, `mabn_buffer`, and `folded_names` (JSON, the folded
state_dict's keys in PyTorch's order). It also checks that the reference refuses gn, ln and in.

    $PYTHON scripts/make_fold_fixtures.py
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_torch_model_fixtures import DEPTH, FIXTURES, GROUPS, MABN_BUFFER, WIDTH, perturb, torch_models  # noqa: E402


def make(norm: str, index: int) -> int:
    torch.manual_seed(3000 + index)
    model = torch_models.ResNet(DEPTH, norm, width=WIDTH, groups=GROUPS, mabn_buffer=MABN_BUFFER)
    gen = torch.Generator().manual_seed(4000 + index)
    perturb(model, gen)
    model.eval()
    folded = torch_models.fold(model)
    x = torch.randn(4, 1, 12, 12, generator=gen)
    with torch.no_grad():
        logits_eval = model(x)
        logits_folded = folded(x)
    tensors = {"input": x.clone(), "logits_eval": logits_eval.clone(), "logits_folded": logits_folded.clone()}
    for k, v in model.state_dict().items():
        tensors[f"unfolded.{k}"] = v.detach().clone().contiguous()
    folded_state = folded.state_dict()
    for k, v in folded_state.items():
        tensors[f"folded.{k}"] = v.detach().clone().contiguous()
    err = (logits_folded - logits_eval).abs().max().item() / logits_eval.abs().max().item()
    assert err < 1e-5, (norm, err)
    meta = {"norm": norm, "depth": str(DEPTH), "width": str(WIDTH), "groups": str(GROUPS),
            "mabn_buffer": str(MABN_BUFFER), "folded_names": json.dumps(list(folded_state.keys()))}
    path = os.path.join(FIXTURES, f"fold_resnet8_{norm}.safetensors")
    save_file(tensors, path, metadata=meta)
    size = os.path.getsize(path)
    print(f"{norm:10s} {len(folded_state):3d} folded tensors  max|logit| {logits_eval.abs().max():.3f}  "
          f"fold vs eval {err:.1e}  {size} bytes")
    return size


def main() -> None:
    os.makedirs(FIXTURES, exist_ok=True)
    for norm in ("gn", "ln", "in"):
        try:
            torch_models.fold(torch_models.ResNet(DEPTH, norm, width=WIDTH, groups=GROUPS).eval())
        except ValueError as error:
            print(f"{norm:10s} refused by the reference: {error}")
        else:
            raise AssertionError(f"the reference folded {norm}")
    total = sum(make(norm, i) for i, norm in enumerate(torch_models.FOLDABLE))
    print(f"total {total} bytes in {FIXTURES}")


if __name__ == "__main__":
    main()
