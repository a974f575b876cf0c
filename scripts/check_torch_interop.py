#!/usr/bin/env python3
"""Checks that NormKit checkpoints load into the reference PyTorch models and give the same outputs.

    NORMKIT_INTEROP_DIR=/tmp/interop swift test -c release --filter TorchModelParityTests/testExportForTorchInterop
    $PYTHON scripts/check_torch_interop.py /tmp/interop [--run RUN_DIR ...]

DIR holds one sub-directory per normalization, each a `normkit train`-style run directory (written by `Trainer`)
with `model.safetensors` and a `logits.json` of inputs and NormKit's logits. For each, the script:

1. reads `model.safetensors` and its `__metadata__` (`format`, `configuration`, `torch_model_arguments`, `step`);
2. rebuilds `torch_models.ResNet(depth, norm, groups=…/group_size=…, mabn_buffer=…)` from
   `torch_model_arguments` alone;
3. checks that the file has exactly the model's tensor names, shapes and dtypes (int64 counters included: a
   plain `load_state_dict` would silently cast them), then `load_state_dict(strict=True)`;
4. compares the eval-mode logits with NormKit's, and the training-mode logits of one forward from the saved state.

`--run DIR` (repeatable) checks a real `normkit train` run directory (or a model.safetensors) the same way up
to the strict load, and runs an eval forward on random inputs (finite logits). Exits non-zero on any failure.
"""
import argparse
import json
import os
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE = os.environ.get("NORMKIT_REFERENCE", os.path.join(HERE, "..", "..", "shared", "reference"))
sys.path.insert(0, os.path.abspath(REFERENCE))
import torch_models  # noqa: E402

TOLERANCE = 1e-4  # max |diff| relative to max |logit|


def build(path):
    """The torch model described by the metadata of `path`, loaded strictly; (model, metadata)."""
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    for key in ("format", "configuration", "torch_model_arguments", "step"):
        if key not in metadata:
            raise ValueError(f"{path}: metadata has no {key!r} (found {sorted(metadata)})")
    args = json.loads(metadata["torch_model_arguments"])
    kwargs = {"mabn_buffer": int(args["mabn_buffer"])}
    if "group_size" in args:
        kwargs["group_size"] = int(args["group_size"])
    else:
        kwargs["groups"] = int(args["groups"])
    configuration = json.loads(metadata["configuration"])
    model = torch_models.ResNet(int(args["depth"]), args["norm"], **kwargs)
    state = load_file(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, tensor in expected.items():
        if state[name].dtype != tensor.dtype or state[name].shape != tensor.shape:
            raise ValueError(f"{path}: {name} is {state[name].dtype} {tuple(state[name].shape)}, "
                             f"torch expects {tensor.dtype} {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=True)
    for name, tensor in model.state_dict().items():
        if not torch.equal(tensor, state[name]):
            raise ValueError(f"{path}: {name} changed on load")
    return model, metadata, configuration, args


def relative(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def check_export(root):
    failures = 0
    runs = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "logits.json")))
    if not runs:
        print(f"{root}: no run directories with logits.json", file=sys.stderr)
        return 1
    print(f"{'norm':10s} {'tensors':>7s} {'step':>4s} {'max|eval diff|':>15s} {'rel':>8s} "
          f"{'max|train diff|':>16s} {'rel':>8s}")
    for run in runs:
        directory = os.path.join(root, run)
        try:
            with open(os.path.join(directory, "logits.json")) as f:
                record = json.load(f)
            model, metadata, configuration, args = build(os.path.join(directory, "model.safetensors"))
            assert args["norm"] == record["norm"] == configuration["norm"], (args, record["norm"])
            x = torch.tensor(record["input"], dtype=torch.float32).reshape(record["input_shape"])
            ours_eval = torch.tensor(record["logits_eval"], dtype=torch.float32).reshape(x.shape[0], -1)
            ours_train = torch.tensor(record["logits_train"], dtype=torch.float32).reshape(x.shape[0], -1)
            model.eval()
            with torch.no_grad():
                theirs_eval = model(x)
            model.train()
            with torch.no_grad():
                theirs_train = model(x)
            e, t = relative(ours_eval, theirs_eval), relative(ours_train, theirs_train)
            ok = e < TOLERANCE and t < TOLERANCE
            print(f"{record['norm']:10s} {len(model.state_dict()):7d} {metadata['step']:>4s} "
                  f"{float((ours_eval - theirs_eval).abs().max()):15.3e} {e:8.1e} "
                  f"{float((ours_train - theirs_train).abs().max()):16.3e} {t:8.1e}  {'ok' if ok else 'FAIL'}")
            failures += not ok
        except Exception as error:  # report and go on with the other runs
            print(f"{run:10s} FAIL: {error}")
            failures += 1
    return failures


def check_run(path):
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    try:
        model, metadata, configuration, args = build(path)
        model.eval()
        with torch.no_grad():
            logits = model(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
        ok = bool(torch.isfinite(logits).all())
        counters = {k: (str(v.dtype), int(v)) for k, v in model.state_dict().items()
                    if v.dtype == torch.int64}
        first = sorted(counters.items())[:1]
        print(f"run {path}: {configuration['model']} {args['norm']} step {metadata['step']}: "
              f"strict load ok, {len(model.state_dict())} tensors, int64 counters {len(counters)} "
              f"{first}, eval logits finite: {ok}")
        return 0 if ok else 1
    except Exception as error:
        print(f"run {path}: FAIL: {error}")
        return 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", nargs="?", help="directory written by testExportForTorchInterop")
    parser.add_argument("--run", action="append", default=[], help="a normkit train run directory")
    options = parser.parse_args()
    if not options.directory and not options.run:
        parser.error("give a directory and/or --run")
    failures = 0
    if options.directory:
        failures += check_export(options.directory)
    for run in options.run:
        failures += check_run(run)
    print("OK" if failures == 0 else f"{failures} FAILURE(S)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
