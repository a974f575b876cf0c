"""NormKit vs PyTorch on the shapes of `normkit bench`, measured in alternating rounds.

The project's machines are shared VMs whose speed for cache-resident work changes from minute to minute (see
docs/PERFORMANCE.md). Comparing a NormKit table from one minute with a PyTorch table from another mixes that
drift into the ratio, so this script alternates: one `normkit bench` run, one PyTorch run of the same shapes,
`--rounds` times, and keeps for every cell the best (lowest) of the rounds' medians for each side. Both sides get
the same treatment; the ratio column is PyTorch time / NormKit time.

    swift build -c release
    .venv-torch/bin/python scripts/compare_torch.py --rounds 3 [--layout channelsLast] [--shapes 1x256x56x56] [--groups 1]

`--layout channelsLast` compares NormKit's NHWC kernels with PyTorch on torch.channels_last tensors; `--shapes`
times other shapes than `normkit bench`'s defaults, on both sides; `--groups` the GroupNorm rows' G (1: LayerNorm).

The last columns give the floor of each cache-resident cell: `copy ms` is `normkit bench`'s same-size copy (a
`memcpy` of x on NormKit's threads, best of the rounds; none beyond the caches, where the outputs are streamed), and
`copy / … fwd` the fraction of that copy's speed each forward reaches. No forward that reads x and writes y beats it,
so a cell where PyTorch already runs at more than 1/1.5 of it cannot show 1.5x.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import torch

from bench_torch import SHAPES, add_groups_argument, check_groups, label, measure, parse_shapes


def normkit_round(binary, layout, shapes, groups):
    """The same table from `normkit bench --json`."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bench.json")
        shape_list = ",".join("x".join(str(v) for v in shape) for shape in shapes)
        subprocess.run([binary, "bench", "--layout", layout, "--repetitions", "101", "--shapes", shape_list,
                        "--groups", str(groups), "--json", path], check=True, stdout=subprocess.DEVNULL)
        rows = json.load(open(path))
    return {(r["layer"], tuple(r["shape"])): (r["forwardMilliseconds"], r["forwardBackwardMilliseconds"],
                                               r.get("sameSizeCopyMilliseconds", float("inf")))
            for r in rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--normkit", default=".build/release/normkit")
    parser.add_argument("--layout", choices=["channelsFirst", "channelsLast"], default="channelsFirst")
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="NxCxHxW[,…] instead of the defaults")
    add_groups_argument(parser)
    args = parser.parse_args()
    check_groups(parser, args)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    best_nk, best_pt = {}, {}
    for r in range(args.rounds):
        # PyTorch's OpenMP workers keep spinning for a while after its last kernel and would take a core from the
        # NormKit process started right after; a pause lets them park (NormKit's own workers spin only ~50 µs).
        time.sleep(1)
        for best, table in ((best_nk, normkit_round(args.normkit, args.layout, args.shapes, args.groups)),
                            (best_pt, measure(args.layout, args.shapes, args.groups))):
            for key, times in table.items():
                old = best.get(key, (float("inf"),) * len(times))
                best[key] = tuple(min(o, t) for o, t in zip(old, times))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\ntorch {torch.__version__}, 2 threads, {args.layout}; best of {args.rounds} alternating rounds "
          "(each a median)\n")
    print("| layer | shape | NormKit fwd ms | PyTorch fwd ms | × | NormKit fwd+bwd ms | PyTorch fwd+bwd ms | × "
          "| copy ms | copy / NormKit fwd | copy / PyTorch fwd |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in best_pt:
        name, shape = key
        nf, nfb, copy = best_nk[key]
        pf, pfb = best_pt[key]
        floor = (f"{copy:.3f} | {copy / nf:.2f} | {copy / pf:.2f}" if copy != float("inf") else "– | – | –")
        print(f"| {label(name, shape, args.groups)} | {shape} | {nf:.3f} | {pf:.3f} | {pf / nf:.2f} | {nfb:.3f} "
              f"| {pfb:.3f} | {pfb / nfb:.2f} | {floor} |")


if __name__ == "__main__":
    main()
