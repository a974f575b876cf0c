"""Sums oneDNN's own execution times from an `ONEDNN_VERBOSE=1` log, by primitive, implementation, direction and
problem: which convolution kernel oneDNN ran for each layer of a training run, how often, and how long per call.

    rm -rf /tmp/verbose-run
    ONEDNN_VERBOSE=1 .build/release/normkit train --model resnet20 --norm gn --batch 32 --epochs 1 \\
        --train-limit 3200 --test-limit 32 --out /tmp/verbose-run > /tmp/verbose.txt
    python3 scripts/onednn_verbose_summary.py /tmp/verbose.txt

Each row: total milliseconds, calls, microseconds per call, primitive, implementation, direction, problem. Times are
oneDNN's (the `exec` lines' last field), per thread: with 2 threads each half-batch primitive appears twice per step.
"""
import argparse
import collections


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", help="a file holding ONEDNN_VERBOSE=1 output")
    parser.add_argument("--primitive", default=None, help="only this primitive kind (convolution, reorder, …)")
    args = parser.parse_args()
    total = collections.defaultdict(float)
    calls = collections.Counter()
    try:
        log = open(args.log, errors="replace")
    except OSError as error:
        raise SystemExit(f"{args.log}: cannot read the log ({error.strerror})")
    with log:
        for line in log:
            fields = line.strip().split(",")
            # onednn_verbose,exec,cpu,<primitive>,<implementation>,<direction>,<memory>,<attributes>,<aux>,<problem>,<ms>
            if len(fields) < 11 or fields[1] != "exec":
                continue
            if args.primitive and fields[3] != args.primitive:
                continue
            try:
                milliseconds = float(fields[-1])
            except ValueError:
                continue
            key = (fields[3], fields[4], fields[5], fields[-2])
            total[key] += milliseconds
            calls[key] += 1
    if not total:
        raise SystemExit(f"{args.log}: no oneDNN exec lines (was ONEDNN_VERBOSE=1 set, and oneDNN the engine?)")
    print(f"{'ms':>9} {'calls':>6} {'µs/call':>8}  primitive, implementation, direction, problem")
    for key in sorted(total, key=lambda k: (k[0], k[2], k[3])):
        print(f"{total[key]:9.1f} {calls[key]:6d} {1000 * total[key] / calls[key]:8.1f}  {', '.join(key)}")
    print(f"{sum(total.values()):9.1f} {sum(calls.values()):6d}           in all")


if __name__ == "__main__":
    main()
