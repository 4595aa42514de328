#!/usr/bin/env python
"""Peak memory per stage of ``recon.reconstruct`` + ``recon.write_run``, in this fresh interpreter.

Each stage function of :mod:`recon.pipeline` (read raw, trajectory, density weights, k-space,
NUFFT plan, gridding, coil combination, field map, B0 correction, calibration, object support)
is wrapped; after it returns, ``VmRSS`` (resident now) and ``VmHWM`` (the peak so far) are read
from ``/proc/self/status``. A stage's own peak shows where the peak-so-far column rises. Then the
outputs are written into a temporary folder.

    python benchmarks/stage_memory.py RAW [--tree DIR] [--options JSON]

``--tree`` imports narecon from another checkout (e.g. an export of ``main``) for before/after
tables in one sitting. Prints a markdown table (stage | s | RSS MiB | peak MiB). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

STAGES = (
    "load_acquisition",
    "load_trajectory",
    "density_weights",
    "prepare_kspace",
    "plan_nufft",
    "grid",
    "grid_bins",
    "combine",
    "field_map",
    "correct_b0",
    "calibrate_images",
    "object_support",
)


def vm() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in MiB."""
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in ("VmRSS", "VmHWM"):
                d[k] = int(v.split()[0]) // 1024
    return d["VmRSS"], d["VmHWM"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw")
    ap.add_argument("--tree", help="checkout to import narecon from (default: the installed one)")
    ap.add_argument("--options", default="{}", help="run options as JSON (default: the defaults)")
    args = ap.parse_args()
    if args.tree:
        sys.path.insert(0, os.path.abspath(args.tree))
    t0 = time.perf_counter()
    import recon
    from recon import pipeline as P

    rows = [("imports", time.perf_counter() - t0, *vm())]

    def wrap(name):
        f = getattr(P, name)

        def timed(*a, **k):
            t = time.perf_counter()
            r = f(*a, **k)
            rows.append((name, time.perf_counter() - t, *vm()))
            return r

        setattr(P, name, timed)

    for name in STAGES:
        if hasattr(P, name):
            wrap(name)
    res = recon.reconstruct(args.raw, json.loads(args.options))
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        recon.write_run(res, os.path.join(d, "out"))
    rows.append(("write_run", time.perf_counter() - t, *vm()))
    print(f"narecon from {os.path.dirname(os.path.dirname(recon.__file__))}; load average {os.getloadavg()[0]:.1f}")
    print("| stage | s | RSS after, MiB | peak so far, MiB |\n|---|---|---|---|")
    for name, el, rss, hwm in rows:
        print(f"| {name} | {el:.2f} | {rss} | {hwm} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
