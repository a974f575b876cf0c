"""Times PyTorch's GroupNorm and BatchNorm2d (training mode, forward and forward+backward) on the shapes of
`normkit bench`, with 2 threads, for the comparison in docs/PERFORMANCE.md.

    .venv-torch/bin/python scripts/bench_torch.py
"""
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


def measure():
    """{(layer, shape): (fwd ms, fwd+bwd ms)} over SHAPES, layer "GroupNorm" (G = min(32, C)) or "BatchNorm",
    training mode; the forward alone runs under no_grad."""
    out = {}
    for shape in SHAPES:
        c = shape[1]
        x = torch.randn(*shape, requires_grad=True)
        dy = torch.randn(*shape)
        for name, layer in (("GroupNorm", torch.nn.GroupNorm(min(32, c), c)), ("BatchNorm", torch.nn.BatchNorm2d(c))):
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


def label(name, shape):
    return f"GroupNorm G={min(32, shape[1])}" if name == "GroupNorm" else name


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| layer | shape | fwd ms | fwd+bwd ms |\n|---|---|---:|---:|")
    for (name, shape), (fwd, fb) in measure().items():
        print(f"| {label(name, shape)} | {shape} | {fwd:.3f} | {fb:.3f} |")


if __name__ == "__main__":
    main()
