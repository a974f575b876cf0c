#!/usr/bin/env python3
"""Reference traces for NormKit's MovingAverageBatchNorm (spec section 4) and BatchRenorm (spec section 3).

A float64 numpy implementation of the spec, written independently of the Swift code, is run for 1,200 training
steps (forward, backward, then an evaluation forward) on inputs generated from a closed-form formula, and the
outputs are written compactly to Tests/NormKitTests/Fixtures/{mabn,brn}_trace.json. The Swift tests
(MovingAverageBatchNormTests, BatchRenormTests) implement the same formula and compare.

    python3 scripts/make_trace_fixtures.py          # needs numpy only

The input formula (shared with the Swift tests; `math` is the C library's libm, so Python and Swift compute the
same doubles, then round them to float32). For step s >= 1, sample n, channel c, flat spatial position p:

    base  = sin(0.173*s + 0.91*n + 0.57*c + 0.331*p) + 0.5*cos(0.061*s*(c+1) + 1.7*p + 0.4*n)
    scale = exp(0.9*sin(2*pi*s/347 + 0.8*c)), times 12 when s % 97 == 0       (scale drift and spikes)
    shift = MABN: 0.1*sin(s/50 + c)
            BRN:  1.5*sin(2*pi*s/211 + c), plus 4 when s % 89 == 0            (mean drift and jumps)
    x     = float32(shift + scale*base)
    dy    = float32(cos(0.127*s + 0.53*n - 0.29*c + 0.77*p) * (1 + 0.3*sin(0.01*s)))
    gamma_c = 1 + 0.25*c, beta_c = 0.125*c - 0.125 (exact in float32)

Stored per run:
  - at the summary steps: yP = sum y*probe, dxP = sum dx*probe with probe = cos(0.7*n + 1.1*c + 0.3*p);
    dgP, dbP = sum_c (1 + 0.5c)*dgamma_c (resp. dbeta_c); rP (and dP for BRN) = sum_{b,c} (1 + 0.5c + 0.25b)*r
    (resp. d) over ghost batch b and channel c;
  - every 100 steps: y, dx, the evaluation output evalY (same x, after the backward), dgamma, dbeta (all in
    logical (n, c, p) order) and the full state in the reference's state_dict naming;
  - statistics on r and d (how often they were clipped, free, different from 1), to show the phases are reached.
"""
import json
import math
import os

import numpy as np

STEPS = 1200
EPS = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "Tests", "NormKitTests", "Fixtures")


# ----------------------------------------------------------------------------------------------------------------
# The closed-form inputs.

def x_value(kind, s, n, c, p):
    base = math.sin(0.173 * s + 0.91 * n + 0.57 * c + 0.331 * p) + 0.5 * math.cos(0.061 * s * (c + 1) + 1.7 * p + 0.4 * n)
    scale = math.exp(0.9 * math.sin(2.0 * math.pi * s / 347.0 + 0.8 * c))
    if s % 97 == 0:
        scale *= 12.0
    if kind == "mabn":
        shift = 0.1 * math.sin(s / 50.0 + c)
    else:
        shift = 1.5 * math.sin(2.0 * math.pi * s / 211.0 + c)
        if s % 89 == 0:
            shift += 4.0
    return shift + scale * base


def dy_value(s, n, c, p):
    return math.cos(0.127 * s + 0.53 * n - 0.29 * c + 0.77 * p) * (1.0 + 0.3 * math.sin(0.01 * s))


def make_inputs(kind, s, N, C, M):
    x = np.empty((N, C, M))
    dy = np.empty((N, C, M))
    for n in range(N):
        for c in range(C):
            for p in range(M):
                x[n, c, p] = np.float32(x_value(kind, s, n, c, p))
                dy[n, c, p] = np.float32(dy_value(s, n, c, p))
    return x, dy


def probe(N, C, M):
    return np.array([[[math.cos(0.7 * n + 1.1 * c + 0.3 * p) for p in range(M)] for c in range(C)] for n in range(N)])


# ----------------------------------------------------------------------------------------------------------------
# MABN, spec section 4, float64.

class MABN:
    def __init__(self, C, buffer_size, warmup, momentum, norm_batch, gamma, beta):
        self.C, self.S, self.warmup, self.momentum, self.norm_batch = C, buffer_size, warmup, momentum, norm_batch
        self.gamma, self.beta = gamma, beta
        self.running = np.ones(C)
        self.t = 0
        self.buf_x2 = np.zeros((buffer_size, C))
        self.buf_gz = np.zeros((buffer_size, C))
        self.saved = None

    def forward(self, x):
        N = x.shape[0]
        k = self.norm_batch or N
        y = np.empty_like(x)
        saved, rs = [], []
        for b in range(N // k):
            xc = x[b * k:(b + 1) * k]
            self.t += 1
            t = self.t
            x2 = (xc * xc).mean(axis=(0, 2))
            self.buf_x2[t % self.S] = x2
            use_batch = t <= self.S or t < self.warmup
            v = x2 if use_batch else self.buf_x2.mean(axis=0)
            z = xc / np.sqrt(v + EPS)[None, :, None]
            if t <= max(1000, self.warmup):
                r = np.ones(self.C)
            else:
                r = np.clip(np.sqrt(v + EPS) / np.sqrt(self.running + EPS), 1 / 5, 5)
            self.running = self.momentum * self.running + (1 - self.momentum) * v
            y[b * k:(b + 1) * k] = (self.gamma * r)[None, :, None] * z + self.beta[None, :, None]
            saved.append((z, v, r, t, use_batch))
            rs.append(r)
        self.saved = (k, saved)
        return y, np.array(rs)

    def backward(self, dy):
        k, saved = self.saved
        dx = np.empty_like(dy)
        dgamma = np.zeros(self.C)
        dbeta = np.zeros(self.C)
        for b, (z, v, r, t, use_batch) in enumerate(saved):
            dyc = dy[b * k:(b + 1) * k]
            g = dyc * (self.gamma * r)[None, :, None]
            gz = (g * z).mean(axis=(0, 2))
            self.buf_gz[t % self.S] = gz
            mean_gz = gz if use_batch else self.buf_gz.mean(axis=0)
            dx[b * k:(b + 1) * k] = (g - z * mean_gz[None, :, None]) / np.sqrt(v + EPS)[None, :, None]
            dgamma += (dyc * r[None, :, None] * z).sum(axis=(0, 2))
            dbeta += dyc.sum(axis=(0, 2))
        self.saved = None
        return dx, dgamma, dbeta

    def evaluate(self, x):
        return self.gamma[None, :, None] * x / np.sqrt(self.running + EPS)[None, :, None] + self.beta[None, :, None]

    def state(self):
        return {"running_var": self.running.tolist(), "iters": self.t,
                "buffer_x2": self.buf_x2.reshape(-1).tolist(), "buffer_gz": self.buf_gz.reshape(-1).tolist()}


# ----------------------------------------------------------------------------------------------------------------
# BRN, spec section 3 and the reference BatchRenorm2d, float64.

def scaled_schedule(total):
    pct = lambda q: (total * q + 50) // 100
    return {"warmupSteps": pct(5), "rMax": 3.0, "dMax": 5.0, "rSteps": pct(40), "dSteps": pct(25)}


def limits(sch, t):
    w = sch["warmupSteps"]
    if t <= w:
        return 1.0, 0.0
    fr = min(1.0, (t - w) / max(1, sch["rSteps"] - w))
    fd = min(1.0, (t - w) / max(1, sch["dSteps"] - w))
    return 1.0 + (sch["rMax"] - 1.0) * fr, sch["dMax"] * fd


class BRN:
    def __init__(self, C, momentum, schedule, norm_batch, gamma, beta):
        self.C, self.momentum, self.schedule, self.norm_batch = C, momentum, schedule, norm_batch
        self.gamma, self.beta = gamma, beta
        self.rm = np.zeros(C)
        self.rs = np.ones(C)
        self.t = 0
        self.saved = None
        self.clip_log = []

    def forward(self, x):
        N = x.shape[0]
        k = self.norm_batch or N
        self.t += 1
        rmax, dmax = limits(self.schedule, self.t)
        y = np.empty_like(x)
        saved, means, stds, rs, ds = [], [], [], [], []
        for b in range(N // k):
            xc = x[b * k:(b + 1) * k]
            mean = xc.mean(axis=(0, 2))
            var = ((xc - mean[None, :, None]) ** 2).mean(axis=(0, 2))
            std = np.sqrt(var + EPS)
            r_free = std / self.rs
            d_free = (mean - self.rm) / self.rs
            r = np.clip(r_free, 1 / rmax, rmax)
            d = np.clip(d_free, -dmax, dmax)
            xhat_b = (xc - mean[None, :, None]) / std[None, :, None]
            xhat = xhat_b * r[None, :, None] + d[None, :, None]
            y[b * k:(b + 1) * k] = self.gamma[None, :, None] * xhat + self.beta[None, :, None]
            saved.append((xhat_b, xhat, std, r))
            means.append(mean)
            stds.append(std)
            rs.append(r)
            ds.append(d)
            # (clipped, free) per value, with a margin so that float32 rounding cannot flip the class.
            self.clip_log.append((self.t, (np.abs(r - r_free) > 1e-6 * np.abs(r_free)).sum(),
                                  (np.abs(d - d_free) > 1e-6 * (1 + np.abs(d_free))).sum(), self.C))
        self.rm = self.rm + self.momentum * (np.mean(means, axis=0) - self.rm)
        self.rs = self.rs + self.momentum * (np.mean(stds, axis=0) - self.rs)
        self.saved = (k, saved)
        return y, np.array(rs), np.array(ds)

    def backward(self, dy):
        k, saved = self.saved
        dx = np.empty_like(dy)
        dgamma = np.zeros(self.C)
        dbeta = np.zeros(self.C)
        for b, (xhat_b, xhat, std, r) in enumerate(saved):
            dyc = dy[b * k:(b + 1) * k]
            g = dyc * (self.gamma * r)[None, :, None]
            mg = g.mean(axis=(0, 2))
            mgx = (g * xhat_b).mean(axis=(0, 2))
            dx[b * k:(b + 1) * k] = (g - mg[None, :, None] - xhat_b * mgx[None, :, None]) / std[None, :, None]
            dgamma += (dyc * xhat).sum(axis=(0, 2))
            dbeta += dyc.sum(axis=(0, 2))
        self.saved = None
        return dx, dgamma, dbeta

    def evaluate(self, x):
        xh = (x - self.rm[None, :, None]) / self.rs[None, :, None]
        return self.gamma[None, :, None] * xh + self.beta[None, :, None]

    def state(self):
        return {"running_mean": self.rm.tolist(), "running_std": self.rs.tolist(), "num_batches_tracked": self.t}


# ----------------------------------------------------------------------------------------------------------------

def r7(values):
    """Rounds to 7 significant digits (far below the 1e-4 tolerance) to keep the JSON small; ints stay ints."""
    if isinstance(values, dict):
        return {k: r7(v) for k, v in values.items()}
    if isinstance(values, (int, np.integer)):
        return int(values)
    if np.ndim(values) == 0:
        return float(f"{float(values):.7g}")
    return [float(f"{float(v):.7g}") for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def summary_steps(transitions):
    steps = []
    for s in range(1, STEPS + 1):
        near = any(abs(s - t) <= 3 for t in transitions)
        if s <= 20 or s % 5 == 0 or s % 97 == 0 or s % 89 == 0 or near:
            steps.append(s)
    return steps


def run(kind, spec):
    N, C, spatial = spec["shape"][0], spec["shape"][1], spec["shape"][2:]
    M = int(np.prod(spatial)) if spatial else 1
    k = spec["normBatch"] or N
    chunks = N // k
    gamma = np.array([1 + 0.25 * c for c in range(C)])
    beta = np.array([0.125 * c - 0.125 for c in range(C)])
    pr = probe(N, C, M)
    cw = np.array([1 + 0.5 * c for c in range(C)])
    bw = np.array([[1 + 0.5 * c + 0.25 * b for c in range(C)] for b in range(chunks)])
    if kind == "mabn":
        layer = MABN(C, spec["bufferSize"], spec["warmup"], spec["momentum"], spec["normBatch"], gamma, beta)
        # Steps at which chunk iterations cross S_buf, warmup and the r threshold.
        transitions = [(spec["bufferSize"]) // chunks + 1, spec["warmup"] // chunks + 1,
                       max(1000, spec["warmup"]) // chunks + 1]
    else:
        sch = scaled_schedule(STEPS)
        spec["schedule"] = sch
        layer = BRN(C, spec["momentum"], sch, spec["normBatch"], gamma, beta)
        transitions = [sch["warmupSteps"] + 1, sch["dSteps"], sch["rSteps"]]
    steps = summary_steps(transitions)
    out = dict(spec)
    out.update({"steps": STEPS, "summarySteps": steps, "yP": [], "dxP": [], "dgP": [], "dbP": [], "rP": [],
                "checkpoints": []})
    if kind == "brn":
        out["dP"] = []
    stats = {"rNotOne": 0, "rClipped": 0, "values": 0}
    for s in range(1, STEPS + 1):
        x, dy = make_inputs(kind, s, N, C, M)
        if kind == "mabn":
            y, r = layer.forward(x)
            stats["values"] += r.size
            stats["rNotOne"] += int((np.abs(r - 1) > 1e-6).sum())
            stats["rClipped"] += int(((r == 5) | (r == 0.2)).sum())
        else:
            y, r, d = layer.forward(x)
        dx, dgamma, dbeta = layer.backward(dy)
        ye = layer.evaluate(x)
        if s in steps:
            out["yP"].append((y * pr).sum())
            out["dxP"].append((dx * pr).sum())
            out["dgP"].append((dgamma * cw).sum())
            out["dbP"].append((dbeta * cw).sum())
            out["rP"].append((r * bw).sum())
            if kind == "brn":
                out["dP"].append((d * bw).sum())
        if s % 100 == 0:
            out["checkpoints"].append({"step": s, "y": y.reshape(-1), "dx": dx.reshape(-1), "evalY": ye.reshape(-1),
                                       "dgamma": dgamma, "dbeta": dbeta, "state": layer.state()})
    if kind == "brn":
        log = layer.clip_log
        w, dsteps, rsteps = sch["warmupSteps"], sch["dSteps"], sch["rSteps"]
        after = [e for e in log if e[0] > w]
        stats = {"values": sum(e[3] for e in log),
                 "rClippedAfterWarmup": int(sum(e[1] for e in after)),
                 "rFreeAfterWarmup": int(sum(e[3] - e[1] for e in after)),
                 "dClippedAfterWarmup": int(sum(e[2] for e in after)),
                 "dFreeAfterWarmup": int(sum(e[3] - e[2] for e in after)),
                 "rClippedAfterRelaxed": int(sum(e[1] for e in log if e[0] > rsteps)),
                 "dClippedAfterRelaxed": int(sum(e[2] for e in log if e[0] > dsteps))}
    out["stats"] = stats
    for key in ("yP", "dxP", "dgP", "dbP", "rP", "dP"):
        if key in out:
            out[key] = r7(out[key])
    out["checkpoints"] = [{k2: (v if k2 == "step" else r7(v)) for k2, v in cp.items()} for cp in out["checkpoints"]]
    print(kind, spec["name"], "stats", stats)
    return out


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    mabn_runs = [
        {"name": "whole batch, rank 1, channels-first", "shape": [4, 3, 5], "layout": "channelsFirst",
         "normBatch": None, "bufferSize": 4, "warmup": 100, "momentum": 0.98},
        {"name": "ghost batches of 2, rank 3, channels-last", "shape": [6, 2, 2, 1, 2], "layout": "channelsLast",
         "normBatch": 2, "bufferSize": 4, "warmup": 100, "momentum": 0.98},
    ]
    brn_runs = [
        {"name": "ghost batches of 2, rank 1, channels-first", "shape": [4, 3, 5], "layout": "channelsFirst",
         "normBatch": 2, "momentum": 0.01},
        {"name": "whole batch, rank 2, channels-last", "shape": [3, 2, 2, 2], "layout": "channelsLast",
         "normBatch": None, "momentum": 0.05},
    ]
    doc = __doc__.strip().splitlines()[0]
    for kind, runs in (("mabn", mabn_runs), ("brn", brn_runs)):
        payload = {"description": doc, "generator": "scripts/make_trace_fixtures.py", "epsilon": EPS,
                   "runs": [run(kind, dict(spec)) for spec in runs]}
        path = os.path.join(FIXTURES, f"{kind}_trace.json")
        with open(path, "w") as f:
            json.dump(payload, f, separators=(",", ":"))
            f.write("\n")
        print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
