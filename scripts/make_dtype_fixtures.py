#!/usr/bin/env python3
"""Writes the safetensors dtype fixtures for NormKit's tests (SafeTensorsDtypeTests.swift): files with F16, BF16,
F64 and I32 tensors, as PyTorch users save them (`model.half()`, `model.bfloat16()`, `model.double()`), which
NormKit reads into its float32 / int64 state tensors.

    $PYTHON scripts/make_dtype_fixtures.py      # PYTHON: a Python with torch (the safetensors package is not needed)

The files are written by hand in the safetensors format (8-byte little-endian header length, compact JSON header
padded with spaces to a multiple of 8, then the little-endian data, tensors ordered by dtype size and then by name,
as the Python package orders them), so the script needs only torch. Into Tests/NormKitTrainingTests/Fixtures/:

* `safetensors_dtypes.safetensors`: special values of every dtype NormKit reads (±0, ±inf, NaN with payloads,
  subnormals, the largest finite values, values that round, an F64 that underflows to 0 and one that rounds down
  to float32's largest value), a matrix, a scalar and an empty tensor; plus
  `safetensors_dtypes.json`: for every tensor its dtype, shape and what PyTorch's `.float()` (floating dtypes,
  as float32 bit patterns, so NaN payloads, -0 and subnormals compare exactly) or `.long()` (I32, I64) gives.
* for `dtype` in `f16`, `bf16`, `f64`: `torch_resnet8_bn_<dtype>.safetensors`, the state dict of
  `torch_models.ResNet(8, "bn", width=4)` with perturbed weights and running statistics after `model.to(dtype)`
  (its int64 `num_batches_tracked` stays int64, as PyTorch keeps it); `torch_resnet8_bn_<dtype>_as_f32.safetensors`,
  the same state dict `.float()` (the rounded weights in float32); `torch_resnet8_bn_<dtype>_expected.safetensors`,
  an `input` and the `logits_eval` of the float32 model holding those rounded weights.
"""
import json
import os
import struct
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REFERENCE = os.environ.get("NORMKIT_REFERENCE", os.path.join(ROOT, "..", "shared", "reference"))
sys.path.insert(0, os.path.abspath(REFERENCE))
import torch_models  # noqa: E402

FIXTURES = os.path.join(ROOT, "Tests", "NormKitTrainingTests", "Fixtures")
DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The little-endian bytes of t (this machine is little-endian), via an integer view of the same width."""
    t = t.contiguous()
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.view(view).numpy().tobytes() if t.numel() else b""


def save(tensors: dict, path: str, metadata: dict) -> None:
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header = {"__metadata__": metadata} if metadata else {}
    data = b""
    for name in names:
        t = tensors[name]
        raw = tensor_bytes(t)
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def from_bits(bits, dtype):
    width = {torch.float16: torch.int16, torch.bfloat16: torch.int16}[dtype]
    return torch.tensor([b - 65536 if b >= 32768 else b for b in bits], dtype=width).view(dtype)


def describe(t: torch.Tensor) -> dict:
    entry = {"dtype": DTYPES[t.dtype], "shape": list(t.shape)}
    if t.is_floating_point():
        f = t.float().flatten().contiguous()
        entry["f32_bits"] = [int(b) & 0xFFFFFFFF for b in f.view(torch.int32).tolist()]
    else:
        entry["i64"] = [int(x) for x in t.long().flatten().tolist()]
    return entry


def special_tensors() -> dict:
    inf, nan = float("inf"), float("nan")
    return {
        # ±0, ±inf, the default NaN, a negative NaN, a signalling NaN with a payload, the smallest and largest
        # subnormal, the smallest normal, the largest finite, values that are not exact decimals.
        "f16.special": from_bits(
            [0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF,
             0x3555, 0xBE00, 0x3C01], torch.float16),
        "f16.matrix": torch.tensor([[0.1, -2.5, 1000.0], [1e-3, 3.0, -0.0]], dtype=torch.float16),
        "f16.scalar": torch.tensor(0.333, dtype=torch.float16),
        "bf16.special": from_bits(
            [0x0000, 0x8000, 0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x0001, 0x807F, 0x0080, 0x7F7F, 0xFF7F,
             0x3EAB, 0xBFC0], torch.bfloat16),
        "bf16.empty": torch.zeros(0, 3, dtype=torch.bfloat16),
        "f64.values": torch.tensor(
            [0.0, -0.0, inf, -inf, nan, -nan, 0.1, 1 / 3, 1 + 2.0**-30, 1 + 3 * 2.0**-24, -(1 + 2.0**-24),
             3.4028234663852886e38, 3.4028235e38 + 1e30, 1e-50, -1e-50, 1e-45, 1.5e-45, 2.0**-149 * 0.5,
             2.0**-149 * 0.75, 1.1754942e-38, -123456789.123456789], dtype=torch.float64),
        "i32.values": torch.tensor([-(2**31), 2**31 - 1, -1, 0, 7], dtype=torch.int32),
        "f32.values": torch.tensor([1.5, -0.0], dtype=torch.float32),
        "i64.counter": torch.tensor(2**40 + 3, dtype=torch.int64),
    }


def perturbed_bn_resnet() -> torch.nn.Module:
    torch.manual_seed(3000)
    model = torch_models.ResNet(8, "bn", width=4)
    gen = torch.Generator().manual_seed(3001)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5 if name.endswith("weight")
                        else 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.5 * torch.randn(module.running_mean.shape, generator=gen))
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 1.5 + 0.5)
                module.num_batches_tracked.fill_(37)
    return model.eval()


def main() -> None:
    os.makedirs(FIXTURES, exist_ok=True)
    special = special_tensors()
    path = os.path.join(FIXTURES, "safetensors_dtypes.safetensors")
    metadata = {"writer": "scripts/make_dtype_fixtures.py"}
    save(special, path, metadata)
    with open(os.path.join(FIXTURES, "safetensors_dtypes.json"), "w") as f:
        json.dump({"tensors": {k: describe(v) for k, v in sorted(special.items())}, "metadata": metadata}, f,
                  indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")

    for suffix, dtype in [("f16", torch.float16), ("bf16", torch.bfloat16), ("f64", torch.float64)]:
        model = perturbed_bn_resnet()
        stored = {k: v.detach().clone().contiguous() for k, v in model.to(dtype).state_dict().items()}
        assert stored["norm1.num_batches_tracked"].dtype == torch.int64
        as_f32 = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
        reference = perturbed_bn_resnet()
        reference.load_state_dict(as_f32, strict=True)
        gen = torch.Generator().manual_seed(3002)
        x = torch.randn(4, 1, 12, 12, generator=gen)
        with torch.no_grad():
            logits = reference(x)
        meta = {"norm": "bn", "depth": "8", "width": "4", "dtype": DTYPES[dtype]}
        base = os.path.join(FIXTURES, f"torch_resnet8_bn_{suffix}")
        save(stored, base + ".safetensors", meta)
        save(as_f32, base + "_as_f32.safetensors", meta)
        save({"input": x, "logits_eval": logits}, base + "_expected.safetensors", meta)
        print(f"{suffix}: {len(stored)} tensors, max|logit| {logits.abs().max():.3f}")


if __name__ == "__main__":
    main()
