"""Writes the safetensors interoperability fixture for NormKit's tests, or checks a file NormKit wrote.

    $PYTHON scripts/make_safetensors_fixture.py            # write the fixture
    $PYTHON scripts/make_safetensors_fixture.py --check F  # read a NormKit-written file

Writing produces, in Tests/NormKitTrainingTests/Fixtures/:
  safetensors_python.safetensors  written by the Python `safetensors` package (safetensors.torch.save_file)
  safetensors_python.json         every tensor's dtype, shape and exact values (float32 as IEEE-754 bit
                                  patterns, so NaN, infinities, -0 and subnormals compare exactly), and the
                                  metadata, for SafeTensorsTests to check against.

The tensors are a BatchNorm2d state dict after one training step (float32 and the int64 scalar
`num_batches_tracked` of shape []), a conv weight, a float32 scalar, an empty tensor, special floats and
extreme int64 values. The metadata has a single key (the Python package writes metadata in hash-map order,
so with one key the file is byte-for-byte what NormKit writes for the same content).

`--check F` reads F (e.g. written by SafeTensorsTests with NORMKIT_SAFETENSORS_EXPORT=F) with the Python
package, loads the BatchNorm part into nn.BatchNorm2d with strict=True, and compares every tensor with the
fixture JSON bit for bit. Exit status 0 means the Python package accepted NormKit's file.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "Tests", "NormKitTrainingTests", "Fixtures")
BINARY = os.path.join(FIXTURES, "safetensors_python.safetensors")
EXPECTED = os.path.join(FIXTURES, "safetensors_python.json")
METADATA = {"note": "NormKit fixture: \u00e9 \u2713 \"quoted\" back\\slash/\nnewline\ttab\u0001"}


def tensors():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    bn.train()
    bn(torch.randn(4, 3, 5, 5) * 2 + 1)  # one step: running stats move, num_batches_tracked = 1
    state = {f"layer1.0.bn1.{k}": v.detach().clone() for k, v in bn.state_dict().items()}
    state["conv1.weight"] = torch.randn(2, 1, 3, 3)
    state["scalar.f32"] = torch.tensor(0.125, dtype=torch.float32)
    state["empty.f32"] = torch.zeros(0, dtype=torch.float32)
    state["special.f32"] = torch.tensor(
        [-0.0, float("inf"), float("-inf"), float("nan"), 1e-45, 3.4028234663852886e38, -1.5], dtype=torch.float32)
    state["counter.iters"] = torch.tensor(2**62 + 5, dtype=torch.long)
    state["extreme.i64"] = torch.tensor([-(2**63), 2**63 - 1, -1, 0], dtype=torch.long)
    return state


def describe(t):
    if t.dtype == torch.float32:
        bits = [struct.unpack("<I", struct.pack("<f", float(x)))[0] for x in t.flatten().tolist()]
        return {"dtype": "F32", "shape": list(t.shape), "f32_bits": bits}
    assert t.dtype == torch.int64
    return {"dtype": "I64", "shape": list(t.shape), "i64": [int(x) for x in t.flatten().tolist()]}


def write():
    state = tensors()
    save_file(state, BINARY, metadata=METADATA)
    expected = {"tensors": {k: describe(v) for k, v in sorted(state.items())}, "metadata": METADATA}
    with open(EXPECTED, "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {BINARY} ({os.path.getsize(BINARY)} bytes) and {EXPECTED} ({os.path.getsize(EXPECTED)} bytes)")


def check(path):
    with open(EXPECTED) as f:
        expected = json.load(f)
    loaded = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    for name, want in expected["tensors"].items():
        got = loaded.pop(name)
        assert describe(got) == want, f"{name}: {describe(got)} != {want}"
    assert not loaded, f"unexpected tensors {sorted(loaded)}"
    for key, value in expected["metadata"].items():
        assert metadata.get(key) == value, f"metadata {key!r}: {metadata.get(key)!r} != {value!r}"
    bn = nn.BatchNorm2d(3)
    prefix = "layer1.0.bn1."
    bn.load_state_dict({k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}, strict=True)
    assert int(bn.num_batches_tracked) == 1 and not math.isnan(float(bn.running_var.sum()))
    print(f"OK: the Python safetensors package read {path}: {len(expected['tensors'])} tensors equal bit for bit, "
          f"metadata {sorted(metadata)}, BatchNorm2d.load_state_dict(strict=True) accepted it")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        check(sys.argv[2])
    elif len(sys.argv) == 1:
        write()
    else:
        sys.exit(__doc__)
