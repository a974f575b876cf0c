"""Times PyTorch's GroupNorm, GroupNorm followed by SiLU (`F.silu(gn(x))`, the unfused block NormKit's
`GroupNorm+SiLU` row replaces) and BatchNorm2d (training mode, forward and forward+backward) on the shapes of
`normkit bench`, with 2 threads, in NCHW or channels-last memory, for the comparison in docs/PERFORMANCE.md.

    .venv-torch/bin/python scripts/bench_torch.py [--layout channelsLast] [--shapes 1x256x56x56,1x128x128x128] [--groups 1]

`--groups` sets the GroupNorm rows' G (at most C; 1 is LayerNorm over (C, H, W) with per-channel affine, NormKit's
`GroupNorm(groups: 1)`), as `normkit bench --groups` does.
"""
import argparse
import time
import torch

SHAPES = [(2, 256, 56, 56), (2, 512, 28, 28), (2, 2048, 7, 7), (32, 256, 56, 56), (32, 32, 28, 28), (8, 64, 14, 14)]


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return 1e3 * times[len(times) // 2]


def parse_shapes(text):
    """`normkit bench --shapes` syntax: comma-separated NxCxHxW."""
    shapes = [tuple(int(v) for v in item.split("x")) for item in text.split(",") if item]
    if not shapes or any(len(s) != 4 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected NxCxHxW[,NxCxHxW…] with positive sizes, got {text!r}")
    return shapes


def measure(layout="channelsFirst", shapes=SHAPES, groups=32):
    """{(layer, shape): (fwd ms, fwd+bwd ms)} over `shapes`, layer "GroupNorm" (G = min(groups, C)), "GroupNorm+SiLU" or
    "BatchNorm", training mode; the forward alone runs under no_grad. `layout` "channelsLast" puts x and dy in
    torch.channels_last memory (PyTorch's GN and BN have channels-last kernels)."""
    memory = torch.channels_last if layout == "channelsLast" else torch.contiguous_format
    out = {}
    for shape in shapes:
        c = shape[1]
        x = torch.randn(*shape).to(memory_format=memory).requires_grad_(True)
        dy = torch.randn(*shape).to(memory_format=memory)
        gn = torch.nn.GroupNorm(min(groups, c), c)
        layers = (("GroupNorm", gn), ("GroupNorm+SiLU", torch.nn.Sequential(torch.nn.GroupNorm(min(groups, c), c),
                                                                            torch.nn.SiLU())),
                  ("BatchNorm", torch.nn.BatchNorm2d(c)))
        for name, layer in layers:
            layer.train()
            reps = 9 if x.numel() > 10_000_000 else 51
            with torch.no_grad():
                fwd = median_ms(lambda: layer(x), reps)

            def both():
                x.grad = None
                layer.zero_grad(set_to_none=True)
                layer(x).backward(dy)
            out[(name, tuple(shape))] = (fwd, median_ms(both, reps))
    return out


def label(name, shape, groups=32):
    return f"{name.replace('GroupNorm', f'GroupNorm G={min(groups, shape[1])}')}" if name.startswith("GroupNorm") else name


def add_groups_argument(parser):
    """`--groups`, checked against the shapes once both are parsed (`check_groups`)."""
    parser.add_argument("--groups", type=int, default=32, help="G of the GroupNorm rows (at most C), default 32")


def check_groups(parser, args):
    if args.groups < 1:
        parser.error(f"--groups must be at least 1, got {args.groups}")
    for shape in args.shapes:
        if shape[1] % min(args.groups, shape[1]):
            parser.error(f"--groups {args.groups} does not divide the {shape[1]} channels of {shape}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["channelsFirst", "channelsLast"], default="channelsFirst")
    parser.add_argument("--shapes", type=parse_shapes, default=SHAPES, help="NxCxHxW[,…] instead of the defaults")
    add_groups_argument(parser)
    args = parser.parse_args()
    check_groups(parser, args)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.layout}")
    print("| layer | shape | fwd ms | fwd+bwd ms |\n|---|---|---:|---:|")
    for (name, shape), (fwd, fb) in measure(args.layout, args.shapes, args.groups).items():
        print(f"| {label(name, shape, args.groups)} | {shape} | {fwd:.3f} | {fb:.3f} |")


if __name__ == "__main__":
    main()
