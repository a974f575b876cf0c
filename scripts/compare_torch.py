"""NormKit vs PyTorch on the shapes of `normkit bench`, measured in alternating rounds.

The project's machines are shared VMs whose speed for cache-resident work changes from minute to minute (see
docs/PERFORMANCE.md). Comparing a NormKit table from one minute with a PyTorch table from another mixes that
drift into the ratio, so this script alternates shape by shape: for each shape, one `normkit bench` run of it and
one PyTorch run of it, back to back, the side that goes first changing from shape to shape and from round to round;
`--rounds` times. Each cell reports the best (lowest) of the rounds' medians for each side and their ratio (PyTorch
time / NormKit time), and beside it the median and range of the per-round ratios: the two sides' times of one round
of one shape were taken seconds apart, so a spread there is the machine's state (L3 shared with other VMs, above
all for the (2, 256, 56, 56) forward+backward cells, whose 25.6 MB working set is near a shared L3's share).

    swift build -c release
    .venv-torch/bin/python scripts/compare_torch.py --rounds 3 [--layout channelsLast] [--shapes 1x256x56x56] [--groups 1]
        [--json results.json]

`--layout channelsLast` compares NormKit's NHWC kernels with PyTorch on torch.channels_last tensors; `--shapes`
times other shapes than `normkit bench`'s defaults, on both sides; `--groups` the GroupNorm rows' G (1: LayerNorm);
`--json` writes every round's times too (an existing file is refused).

The last columns give the floor of each cache-resident cell: `copy ms` is `normkit bench`'s same-size copy (a
`memcpy` of x on NormKit's threads, best of the rounds; none beyond the caches, where the outputs are streamed), and
`copy / … fwd` the fraction of that copy's speed each forward reaches. No forward that reads x and writes y beats it,
so a cell where PyTorch already runs at more than 1/1.5 of it cannot show 1.5x.
"""
import argparse
import json
import os
import statistics
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


def ratio_cell(ratios):
    """The per-round ratios of one cell: median (range)."""
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--normkit", default=".build/release/normkit")
    parser.add_argument("--layout", choices=["channelsFirst", "channelsLast"], default="channelsFirst")
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="NxCxHxW[,…] instead of the defaults")
    parser.add_argument("--json", help="also write the rows, with every round's times, to this new file")
    add_groups_argument(parser)
    args = parser.parse_args()
    check_groups(parser, args)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.json and os.path.lexists(args.json):
        parser.error(f"--json {args.json} exists; give a new path")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        parser.error(f"--json {args.json}: its directory does not exist")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    # rounds[key]: per round (NormKit fwd, NormKit fwd+bwd, PyTorch fwd, PyTorch fwd+bwd); copies[key]: best copy ms.
    rounds, copies = {}, {}
    torch_ran_last = False
    for r in range(args.rounds):
        for i, shape in enumerate(args.shapes):
            tables = {}
            for side in (("normkit", "torch") if (r + i) % 2 == 0 else ("torch", "normkit")):
                if side == "normkit":
                    # PyTorch's OpenMP workers keep spinning for a while after its last kernel and would take a core
                    # from the NormKit process started right after; a pause lets them park (NormKit's own workers
                    # spin only ~50 µs).
                    if torch_ran_last:
                        time.sleep(1)
                    tables[side] = normkit_round(args.normkit, args.layout, [shape], args.groups)
                    torch_ran_last = False
                else:
                    tables[side] = measure(args.layout, [shape], args.groups)
                    torch_ran_last = True
            for key, (pf, pfb) in tables["torch"].items():
                nf, nfb, copy = tables["normkit"][key]
                rounds.setdefault(key, []).append((nf, nfb, pf, pfb))
                copies[key] = min(copies.get(key, float("inf")), copy)
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\ntorch {torch.__version__}, 2 threads, {args.layout}; {args.rounds} rounds alternating shape by shape: "
          "each side's best of the rounds' medians, their ratio, and the per-round ratios' median (range)\n")
    print("| layer | shape | NormKit fwd ms | PyTorch fwd ms | × | × per round | NormKit fwd+bwd ms | PyTorch fwd+bwd ms "
          "| × | × per round | copy ms | copy / NormKit fwd | copy / PyTorch fwd |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for key, times in rounds.items():
        name, shape = key
        nf, nfb, pf, pfb = (min(t[j] for t in times) for j in range(4))
        forward_ratios = [t[2] / t[0] for t in times]
        both_ratios = [t[3] / t[1] for t in times]
        copy = copies[key]
        floor = (f"{copy:.3f} | {copy / nf:.2f} | {copy / pf:.2f}" if copy != float("inf") else "– | – | –")
        print(f"| {label(name, shape, args.groups)} | {shape} | {nf:.3f} | {pf:.3f} | {pf / nf:.2f} "
              f"| {ratio_cell(forward_ratios)} | {nfb:.3f} | {pfb:.3f} | {pfb / nfb:.2f} | {ratio_cell(both_ratios)} "
              f"| {floor} |")
        rows.append({"layer": label(name, shape, args.groups), "shape": list(shape), "layout": args.layout,
                     "rounds": [{"normkitForwardMilliseconds": t[0], "normkitForwardBackwardMilliseconds": t[1],
                                 "torchForwardMilliseconds": t[2], "torchForwardBackwardMilliseconds": t[3]}
                                for t in times],
                     "forwardRatio": pf / nf, "forwardBackwardRatio": pfb / nfb,
                     "forwardRatioMedian": statistics.median(forward_ratios),
                     "forwardBackwardRatioMedian": statistics.median(both_ratios),
                     "sameSizeCopyMilliseconds": None if copy == float("inf") else copy})
    if args.json:
        with open(args.json, "x") as f:
            json.dump({"torch": torch.__version__, "threads": 2, "rows": rows}, f, indent=2)

if __name__ == "__main__":
    main()
