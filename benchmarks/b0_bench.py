"""B0 correction benchmark: cost relative to plain gridding, and phantom ROI bias.

Cost (``--cost``): the study TPI (64^3, FOV 224 mm) at the given readouts, two echoes of
random data, a smooth field of +-``--field-hz``; times plain gridding of both echoes (plan
included) and every correction of both echoes (plans included), in the same run.

Bias (``--phantom``): the digital phantom (recon.sim) at ``--matrix`` for every readout and B0
scale; for none / tb-cpr / fs-cpr / mfi, with the field map estimated from the two plain echo
images, reports the mean of each ROI (tubes, GM, WM, CSF, tumour rim) of echo 1 relative to the
same ROI of the reconstruction of B0-free data (same noise seed): bias in %.

    python benchmarks/b0_bench.py --cost --readouts 12.38 [--rounds 3] [--before HEAD~1]
    python benchmarks/b0_bench.py --phantom --matrix 32 --readouts 5 12 35 --scales 0.5 1 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from recon.b0 import correct, estimate_fieldmap
from recon.nufft import NUFFT, gridding
from recon.trajectory import compute_dcf, tpi

TE = (0.30e-3, 2.32e-3)
METHODS = ("tb-cpr", "fs-cpr", "mfi")


def _reference_module(ref: str):
    """recon/b0/correct.py (or correction.py) as of git ``ref``, loaded as a module (the "before")."""
    import importlib.util
    import subprocess
    import tempfile

    for path in ("recon/b0/correction.py", "recon/b0/correct.py"):
        r = subprocess.run(["git", "show", f"{ref}:{path}"], capture_output=True, text=True)
        if r.returncode == 0:
            break
    else:
        raise SystemExit(f"no B0 correction module at {ref}")
    f = Path(tempfile.mkdtemp()) / "b0_before.py"
    f.write_text(r.stdout)
    spec = importlib.util.spec_from_file_location("b0_before", f)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cost_jobs(tr, y, dcf, fmap, n, fov, methods, before):
    def plain():
        gridding(NUFFT(tr.k, (n,) * 3, fov), y, dcf)

    jobs = {"plain": plain}
    for m in methods:
        # fresh plans: the correction pays its own set-up
        jobs[m] = lambda m=m: correct(m, NUFFT(tr.k, (n,) * 3, fov), y, dcf, TE, tr.t, fmap)
    if before is not None:
        ref, mod = before
        jobs[f"tb-cpr@{ref}"] = lambda: mod.correct("tb-cpr", NUFFT(tr.k, (n,) * 3, fov), y, dcf, TE, tr.t, fmap)
    return jobs


def _time_jobs(jobs, rounds):
    """Seconds per job and round; each round runs every job once in a random order."""
    times = {k: [] for k in jobs}
    order = np.random.default_rng(1)
    for _ in range(rounds):
        for name in order.permutation(list(jobs)):
            t0 = time.perf_counter()
            jobs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def _ratio(times, name, ref="plain"):
    """Median seconds and the per-round ratio to ``ref`` (same round, same load): median (range)."""
    r = np.asarray(times[name]) / np.asarray(times[ref])
    return f"{np.median(times[name]):.2f} s, {np.median(r):.2f}x ({r.min():.2f}-{r.max():.2f})"


def cost(readouts_ms, n=64, fov=0.224, field_hz=60.0, rounds=3, methods=METHODS, before=None):
    """Plain gridding vs each correction (plans included), interleaved rounds in one process."""
    rows = []
    for ro in readouts_ms:
        tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=ro * 1e-3, p=0.3)
        dcf = compute_dcf(tr, "analytic")
        rng = np.random.default_rng(0)
        shp = (2,) + tr.k.shape[:2]
        y = (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)).astype(np.complex64)
        ax = np.linspace(-1, 1, n)
        fmap = field_hz * (0.6 * ax[:, None, None] + 0.4 * ax[None, :, None] ** 2) * np.ones((n, n, n))

        times = _time_jobs(_cost_jobs(tr, y, dcf, fmap, n, fov, methods, before), rounds)
        row = {"readout_ms": ro, "samples": tr.k.shape[0] * tr.k.shape[1], "times_s": times}
        rows.append(row)
        tp = np.median(times["plain"])
        print(
            f"| {ro} | {row['samples'] / 1e6:.2f} M | {tp:.2f} s | "
            + " | ".join(_ratio(times, m) for m in times if m != "plain")
            + " |",
            flush=True,
        )
    return rows


def phantom(readouts_ms, scales, n=32, fov=0.224, snr=50.0):
    from recon.sim import HeadPhantom, simulate

    rois = {"tubes": [9, 10, 11, 12], "GM": [1], "WM": [2], "CSF": [3, 4], "tumour": [7]}
    for ro in readouts_ms:
        tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=ro * 1e-3, p=0.3, dwell_s=20e-6)
        dcf = compute_dcf(tr, "analytic")
        op = NUFFT(tr.k, (n,) * 3, fov)
        ref_res = simulate(HeadPhantom(b0_scale=0.0), tr, snr=snr, seed=1)
        ref = gridding(op, ref_res.acquisition.data[:, 0], dcf)[0]
        lab = ref_res.truth.labels
        for sc in scales:
            res = simulate(HeadPhantom(b0_scale=sc), tr, snr=snr, seed=1)
            d = res.acquisition.data[:, 0]
            plain = gridding(op, d, dcf)
            fmap = estimate_fieldmap(plain[0], plain[1], TE[0], TE[1])
            brain = np.isin(lab, [1, 2, 3, 4, 6, 7, 8])
            fm_rms = float(np.sqrt(np.mean((fmap[brain] - res.truth.b0_hz[brain]) ** 2)))
            for m in ("none",) + METHODS:
                t0 = time.perf_counter()
                x = correct(m, op, d, dcf, TE, tr.t, fmap)[0]
                dt = time.perf_counter() - t0
                bias = {
                    k: 100 * (np.abs(x[np.isin(lab, v)]).mean() / np.abs(ref[np.isin(lab, v)]).mean() - 1) for k, v in rois.items()
                }
                nrmse = np.linalg.norm(x - ref) / np.linalg.norm(ref)
                print(
                    f"| {ro} | {sc} | {m} | "
                    + " | ".join(f"{bias[k]:+.1f}" for k in rois)
                    + f" | {nrmse:.3f} | {fm_rms:.1f} | {dt:.1f} s |",
                    flush=True,
                )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--phantom", action="store_true")
    ap.add_argument("--readouts", type=float, nargs="+", default=[5, 12, 35])
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    ap.add_argument("--matrix", type=int, default=32)
    ap.add_argument("--snr", type=float, default=50.0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (cost)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help="corrections to time (cost)")
    ap.add_argument("--before", help="git ref whose B0 correction module is timed too (cost)")
    a = ap.parse_args()
    if a.cost:
        methods = tuple(a.methods)
        before = (a.before, _reference_module(a.before)) if a.before else None
        extra = [f"tb-cpr@{a.before}"] if a.before else []
        print(f"load average {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")
        print("| readout ms | samples | plain (2 echoes) | " + " | ".join(list(methods) + extra) + " |")
        cost(a.readouts, rounds=a.rounds, methods=methods, before=before)
    if a.phantom:
        cols = "tubes | GM | WM | CSF | tumour | NRMSE | fieldmap RMS Hz | time"
        print(f"| readout ms | B0 scale | method | {cols} |")
        phantom(a.readouts, a.scales, a.matrix, snr=a.snr)


if __name__ == "__main__":
    main()
