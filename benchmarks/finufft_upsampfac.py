#!/usr/bin/env python
"""finufft upsampling-factor and thread sweep on the TPI problem: the evidence for
recon.nufft.finufft_backend.choose_upsampfac.

For each requested accuracy, times finufft's type 2 (forward) and type 1 (adjoint) in complex64
with its default choice and with fixed upsampling factors, interleaved over rounds (random order
per round), and prints the median seconds and the ratio to the fastest configuration, next to
what choose_upsampfac picks.

    python benchmarks/finufft_upsampfac.py [--quick] [--matrix 128] [--eps 1e-3 1e-4 1e-6]
        [--upsampfac 1.25 1.5 2] [--threads 1 2] [--repeats 5] [--out sweep.json]

``--matrix N`` grids the same samples onto N^3 (the 64^3 protocol's 4.85 M samples onto 128^3 is
the sparse case where 2.0 loses). Also times the set-up (plan + setpts) of each configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def setup_rounds(k, shape, fov, eps, rounds):
    """NUFFT set-up (points + plan + setpts) of recon.nufft.NUFFT from float64 k and with the points a
    cached design stores (recon.nufft.NufftPoints), against finufft's own plan + setpts
    with float32 points already made, against finufft from the same float64 k in cycles/m (the
    numpy conversion a finufft user writes, then plan + setpts), at the same upsampling, and against
    the former set-up path (float64 finiteness and extent passes, a float64 k * fov copy, then
    float32 points per axis)."""
    import finufft

    from recon.nufft import NUFFT, make_points
    from recon.nufft.finufft_backend import choose_threads, choose_upsampfac

    n = np.asarray(shape, dtype=np.float64)
    uf = choose_upsampfac(len(k), shape, eps) or 1.25
    kw = dict(nthreads=choose_threads(len(k), 1), modeord=0, upsampfac=uf)
    pts = [np.ascontiguousarray((2 * np.pi * fov / n[d] * k[:, d]).astype(np.float32)) for d in range(3)]

    def ours():
        NUFFT(k, shape, fov, eps=eps, upsampfac=uf)._plan(1)

    stored = make_points(k, shape, fov, np.complex64)  # what a cached design carries (made when it was built)

    def ours_stored():
        NUFFT(k, shape, fov, eps=eps, upsampfac=uf, points=stored)._plan(1)

    def own():
        finufft.Plan(2, shape, 1, eps, -1, dtype="complex64", **kw).setpts(*pts)

    def own_from_k():  # what a finufft user with k in cycles/m (float64) writes: convert per axis, then plan + setpts
        p = [(2 * np.pi * fov / n[d] * k[:, d]).astype(np.float32) for d in range(3)]
        finufft.Plan(2, shape, 1, eps, -1, dtype="complex64", **kw).setpts(*p)

    def before():
        kk = np.asarray(k)
        assert np.all(np.isfinite(kk))
        np.abs(kk.reshape(-1, 3)).max(axis=0)
        kg = kk.reshape(-1, 3).astype(np.float64) * fov
        p = [np.ascontiguousarray((2 * np.pi * kg[:, d] / n[d]).astype(np.float32)) for d in range(3)]
        finufft.Plan(2, shape, 1, eps, -1, dtype="complex64", **kw).setpts(*p)

    jobs = {
        "finufft plan+setpts": own,
        "finufft from float64 k (numpy conversion + plan + setpts)": own_from_k,
        "NUFFT from float64 k (now)": ours,
        "NUFFT with the design's stored points (cached design)": ours_stored,
        "NUFFT (before)": before,
    }
    times = {j: [] for j in jobs}
    rng = np.random.default_rng(2)
    for _ in range(rounds):
        for j in rng.permutation(list(jobs)):
            t = time.perf_counter()
            jobs[j]()
            times[j].append(time.perf_counter() - t)
    ref = np.asarray(times["finufft plan+setpts"])
    print(f"\nset-up at {shape}, eps {eps:g}, upsampfac {uf}: median s, ratio to finufft's own per round: median (range)")
    for j, t in times.items():
        r = np.asarray(t) / ref
        print(f"| {j} | {np.median(t):.3f} | {np.median(r):.2f} ({r.min():.2f}-{r.max():.2f}) |")
    return times


def main(argv=None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's recon
    import finufft
    from nufft_cpu import make_problem  # sibling module

    from recon.nufft.finufft_backend import choose_upsampfac
    from recon.nufft.operator import default_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--eps", type=float, nargs="+", default=[1e-3, 1e-4, 1e-6])
    ap.add_argument("--upsampfac", type=float, nargs="+", default=[1.25, 1.5, 1.75, 2.0])
    ap.add_argument("--threads", type=int, nargs="+", default=[default_threads()])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--matrix", type=int, help="grid the samples onto N^3 instead of the protocol's matrix")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--setup", type=int, default=0, metavar="ROUNDS", help="only time the set-up, ROUNDS interleaved rounds")
    args = ap.parse_args(argv)

    prob = make_problem(args.quick)
    print(prob["desc"], flush=True)
    shape = prob["shape"] if not args.matrix else (args.matrix,) * 3
    if args.matrix:
        rng0 = np.random.default_rng(0)
        prob["x"] = (rng0.standard_normal(shape) + 1j * rng0.standard_normal(shape)).astype(np.complex64)
        print(f"gridded onto {shape}: {len(prob['k']) / np.prod(shape):.2f} samples per voxel", flush=True)
    n = np.asarray(shape, dtype=np.float64)
    kg = prob["k"] * prob["fov"]
    pts = [np.ascontiguousarray((2 * np.pi * kg[:, d] / n[d]).astype(np.float32)) for d in range(3)]
    if args.setup:
        for eps in args.eps:
            setup_rounds(prob["k"], shape, prob["fov"], eps, args.setup)
        return 0
    x, y = prob["x"], prob["y"]
    configs = []
    for eps in args.eps:
        for th in args.threads:
            for uf in [None, *args.upsampfac]:
                kw = dict(nthreads=th, modeord=0)
                if uf is not None:
                    kw["upsampfac"] = uf
                t0 = time.perf_counter()
                p2 = finufft.Plan(2, shape, 1, eps, -1, dtype="complex64", **kw)
                p2.setpts(*pts)
                t_setup = time.perf_counter() - t0
                p1 = finufft.Plan(1, shape, 1, eps, +1, dtype="complex64", **kw)
                p1.setpts(*pts)
                configs.append(dict(eps=eps, threads=th, upsampfac=uf, p2=p2, p1=p1, fwd=[], adj=[], setup=t_setup))
    rng = np.random.default_rng(0)
    for r in range(args.repeats):
        for i in rng.permutation(len(configs)):
            c = configs[i]
            t = time.perf_counter()
            c["p2"].execute(x)
            c["fwd"].append(time.perf_counter() - t)
            t = time.perf_counter()
            c["p1"].execute(y)
            c["adj"].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.repeats}", flush=True)
    rows = []
    for eps in args.eps:
        group = [c for c in configs if c["eps"] == eps]
        best = {op: min(np.median(c[op]) for c in group) for op in ("fwd", "adj")}
        pick = choose_upsampfac(len(kg), shape, eps)
        print(f"\neps {eps:g}: choose_upsampfac picks {pick or 'finufft default'}")
        print("| threads | upsampfac | set-up s | forward s (min-max) | ratio | adjoint s (min-max) | ratio |")
        print("|---|---|---|---|---|---|---|")
        for c in group:
            f, a = np.median(c["fwd"]), np.median(c["adj"])
            fr = f"{min(c['fwd']):.3f}-{max(c['fwd']):.3f}"
            ar = f"{min(c['adj']):.3f}-{max(c['adj']):.3f}"
            print(
                f"| {c['threads']} | {c['upsampfac'] or 'default'} | {c['setup']:.3f} | {f:.3f} ({fr}) | {f / best['fwd']:.2f} "
                f"| {a:.3f} ({ar}) | {a / best['adj']:.2f} |"
            )
            rows.append({k: c[k] for k in ("eps", "threads", "upsampfac", "fwd", "adj", "setup")})
    if args.out:
        args.out.write_text(json.dumps({"problem": prob["desc"], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
