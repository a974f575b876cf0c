#!/usr/bin/env python3
"""Checks `normkit export --fold` output against the reference PyTorch models, end to end.

    normkit train --model resnet8 --norm mabn --batch 16 --norm-batch 2 --epochs 1 --train-limit 512 --out RUN
    normkit export --fold --checkpoint RUN --out FOLDED.safetensors
    $PYTHON scripts/check_fold_export.py RUN/model.safetensors FOLDED.safetensors

1. Rebuilds the checkpoint's model, `torch_models.ResNet(depth, norm, groups=…, mabn_buffer=…)`, from its
   `torch_model_arguments` and loads it with `strict=True` (scripts/check_torch_interop.py's `build`).
2. Builds `torch_models.ResNet(**torch_model_arguments)` of the folded file (norm "folded") and loads NormKit's
   folded tensors into it with `strict=True` (exactly its names, shapes and dtypes).
3. Compares, on random inputs, NormKit's folded model (in PyTorch) with the unfolded model in eval mode and
   with the reference `torch_models.fold(model)`; and NormKit's folded tensors with the reference's.
Exits non-zero when a difference exceeds 1e-4 (relative to the largest value).
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from check_torch_interop import build, relative, torch_models

TOLERANCE = 1e-4


def main(checkpoint, folded_path):
    model, _, _, _ = build(checkpoint)
    model.eval()
    with safe_open(folded_path, framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("norm") != "folded":
        raise SystemExit(f"{folded_path}: metadata norm is {metadata.get('norm')!r}, expected 'folded'")
    args = json.loads(metadata["torch_model_arguments"])
    folded = torch_models.ResNet(int(args["depth"]), args["norm"], in_channels=int(args["in_channels"]),
                                 num_classes=int(args["num_classes"]), width=int(args["width"]))
    state = load_file(folded_path)
    folded.load_state_dict(state, strict=True)
    folded.eval()
    reference = torch_models.fold(model)
    tensors = max(relative(state[k], v) for k, v in reference.state_dict().items())
    x = torch.randn(16, int(args["in_channels"]), 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unfolded_logits, folded_logits, reference_logits = model(x), folded(x), reference(x)
    vs_eval = relative(folded_logits, unfolded_logits)
    vs_reference = relative(folded_logits, reference_logits)
    print(f"{folded_path}: {len(state)} tensors, strict load into ResNet({args['depth']}, 'folded') ok")
    print(f"  NormKit folded tensors vs torch_models.fold: {tensors:.1e}")
    print(f"  logits, NormKit folded (in torch) vs the checkpoint's {metadata.get('source_norm')} model in eval: {vs_eval:.1e}")
    print(f"  logits, NormKit folded vs torch_models.fold(model): {vs_reference:.1e}")
    if max(tensors, vs_eval, vs_reference) > TOLERANCE:
        raise SystemExit(f"difference above {TOLERANCE}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
