"""``narecon run`` and its stages against their floor, at one protocol, in one process.

Floor: read the raw file's bytes + one two-echo finufft type-1 adjoint (plan, setpts with
float32 points, execute; eps 1e-4 as the pipeline's NUFFT). Stages: raw reading (twix and the
same scan as ISMRMRD), the built-in TPI trajectory, density weights (analytic, the lean
Pipe-Menon; optionally the previous 30-iteration Pipe-Menon), and the whole run
(``recon.reconstruct`` + ``recon.write_run``) with the built-in TPI and with a trajectory file
(a site's own file without weights: Pipe-Menon from the disk cache after the first run; the
cold first run is measured separately with the cache off). Rounds are interleaved (every
measurement once per round), medians and ranges are reported with the machine's load average.
Peak memory: the peak resident set (``VmHWM``; ``resource.getrusage`` max RSS elsewhere) of one
fresh interpreter per configuration. ru_maxrss is not used on Linux because it survives exec:
a child forked from this (large) process would report the parent's size.
Start-up: ``import recon.cli`` + ``build_parser()`` in fresh interpreters. Gridding stages
(:func:`gridding_stages`): plain gridding, the previous two-pass tb-cpr and the one-pass time bins,
and the calibration's point-response kernel built and read from the disk cache.

    python benchmarks/run_floor.py --matrix 64 --rounds 3 [--old-pipe] [--readme]

Simulated data go to ``benchmarks/_work/`` (git-ignored; made once with ``python -m recon
simulate``); results to ``benchmarks/results/run_floor_<N>.json``; ``--readme`` rewrites the
table between the ``run_floor`` markers of benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def simulate(n: int, work: Path) -> Path:
    d = work / f"sim{n}"
    if not (d / "raw.dat").exists() or not (d / "raw.h5").exists():
        subprocess.run(
            [sys.executable, "-m", "recon", "simulate", "--matrix", str(n), "--out", str(d), "--ismrmrd", "--force"],
            cwd=ROOT,
            check=True,
        )
    return d


def trajectory_file(raw: Path, work: Path, n: int) -> Path:
    """The built-in TPI of the scan written as a site's trajectory file (no weights, generator 'site')."""
    import h5py

    from recon.io import build_trajectory, load_profile, read_raw
    from recon.trajectory import write_trajectory

    p = work / f"traj{n}_site.h5"
    if not p.exists():
        tr = build_trajectory(read_raw(raw), load_profile(None))
        tr.dcf = None
        write_trajectory(tr, p)
        with h5py.File(p, "r+") as f:
            f.attrs["generator"] = "site"
    return p


def floor_adjoint(acq, traj):
    """One two-echo finufft type-1 adjoint: plan + setpts (float32 points) + execute."""
    import finufft
    import numpy as np

    from recon.nufft import default_threads

    k = traj.k.reshape(-1, 3)
    pts = [np.ascontiguousarray(2 * np.pi * k[:, d] * traj.fov_m[d] / traj.matrix[d], dtype=np.float32) for d in range(3)]
    data = np.ascontiguousarray(acq.data[:, 0].reshape(acq.n_echoes, -1), dtype=np.complex64)
    t0 = time.perf_counter()
    p = finufft.Plan(1, tuple(traj.matrix), acq.n_echoes, 1e-4, +1, dtype="complex64", nthreads=default_threads())
    p.setpts(*pts)
    p.execute(data)
    return time.perf_counter() - t0


def gridding_stages(raw: Path) -> dict:
    """Timed callables of the gridding stages on the scan's prepared k-space (set-up outside the timing).

    ``plain``: density-compensated gridding of both echoes through the run's NUFFT (plan reused);
    ``two_pass``: the previous default's B0 work, plain gridding then tb-cpr with the rule's bins
    for the map's centre and span (demodulated; per-bin plans built inside); ``one_pass``: the
    default now, both echoes gridded into the first-pass time bins (plans built inside), their sum
    (the plain image) and the tb-cpr combination; the point-response kernel of the calibration
    built (2N-box adjoint) and read from the disk cache.
    """
    import numpy as np

    from recon import pipeline as P
    from recon.b0 import correct, first_time_bins, grid_time_bins, support_mask
    from recon.calibrate import SystemModel
    from recon.options import RunOptions
    from recon.plans import Plans

    opts = RunOptions()
    plans = Plans()
    acq = P.load_acquisition(str(raw), opts)
    traj, _ = P.load_trajectory(acq, opts, plans)
    dcf, _ = P.density_weights(traj, opts, plans)
    ks = P.prepare_kspace(acq, traj, dcf)
    op = P.plan_nufft(ks, tuple(traj.matrix), traj.fov_m, opts, plans)
    plain = P.grid(op, ks, acq.te_s)
    cplain = P.combine(plain)
    fmap = P.field_map(op, ks, acq, plain, cplain, np.eye(4), "tb-cpr", opts, plans).hz
    mask = support_mask(np.abs(cplain[0]))
    n_first = first_time_bins(op, ks.t_s)
    sm = SystemModel.from_trajectory(traj, dcf, acq.te_s, acq.tr_s, acq.flip_deg, eps=max(opts.eps, 1e-4))
    sm.kernel_image(0.05)  # stored in the disk cache once

    def two_pass():
        x = P.grid(op, ks, acq.te_s)
        return x, correct("tb-cpr", op, ks.data, ks.dcf, acq.te_s, ks.t_s, fmap, mask=mask)

    def one_pass():
        tb = grid_time_bins(op, ks.data, ks.dcf, ks.t_s, n_first)
        return tb.plain(), tb.combine(acq.te_s, fmap)

    def fresh_model():
        return SystemModel.from_trajectory(traj, dcf, acq.te_s, acq.tr_s, acq.flip_deg, eps=max(opts.eps, 1e-4))

    return {
        "plain": lambda: P.grid(op, ks, acq.te_s),
        "plain_built": lambda: P.grid(P.plan_nufft(ks, tuple(traj.matrix), traj.fov_m, opts, Plans()), ks, acq.te_s),
        "two_pass": two_pass,
        "one_pass": one_pass,
        "kernel_built": lambda: fresh_model()._build_kernel(0.05),
        "kernel_cached": lambda: fresh_model().kernel_image(0.05),
    }


def measure(fn) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    el = time.perf_counter() - t
    gc.collect()
    return el


def startup(rounds: int) -> dict[str, list[float]]:
    """Wall time of fresh interpreters: bare, ``import numpy``, ``import recon.cli`` + parser (interleaved)."""
    codes = {
        "bare interpreter": "pass",
        "import numpy": "import numpy",
        "import recon.cli + parser": "import recon.cli; recon.cli.build_parser()",
    }
    out: dict[str, list[float]] = {k: [] for k in codes}
    for _ in range(rounds):
        for name, code in codes.items():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
            out[name].append(time.perf_counter() - t)
    return out


_CHILD = """
import os, resource, sys, tempfile, time
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
import recon
from recon.options import RunOptions
opts = RunOptions.from_mapping({opts!r})
res = recon.reconstruct({raw!r}, opts)
with tempfile.TemporaryDirectory() as d:
    recon.write_run(res, os.path.join(d, "out"))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # VmHWM is per address space (reset by exec); ru_maxrss also counts the parent's pages at fork
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
except (OSError, StopIteration):
    pass
print(time.perf_counter() - t0, peak)
"""


def peak_memory(raw: Path, opts: dict, env: dict | None = None) -> tuple[float, float]:
    """(wall s including imports, max RSS in bytes) of one whole run in a fresh interpreter."""
    code = _CHILD.format(root=str(ROOT), opts=opts, raw=str(raw))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=True)
    wall, rss = r.stdout.split()[-2:]
    return float(wall), float(rss)


def peak_memories(raw: Path, traj_path: Path) -> dict[str, float]:
    """Peak resident memory (VmHWM) of one whole run per configuration, each in a fresh interpreter."""
    env = dict(os.environ)
    return {
        "run, built-in TPI": peak_memory(raw, {}, env)[1],
        "run, trajectory file (DCF cached)": peak_memory(raw, {"traj": str(traj_path)}, env)[1],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--results", type=Path, default=HERE / "results", help="folder of run_floor_<N>.json")
    ap.add_argument("--old-pipe", action="store_true", help="also time the previous 30-iteration Pipe-Menon (slow)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--readme", action="store_true", help="write the table into benchmarks/README.md")
    ap.add_argument("--table-only", action="store_true", help="render the saved results/run_floor_<N>.json, measure nothing")
    ap.add_argument("--memory-only", action="store_true", help="re-measure only the peak memory into the saved JSON")
    args = ap.parse_args(argv)
    if args.memory_only:
        out = args.results / f"run_floor_{args.matrix}.json"
        res = json.loads(out.read_text())
        d = args.work / f"sim{args.matrix}"
        res["peak_rss_bytes"] = peak_memories(d / "raw.dat", args.work / f"traj{args.matrix}_site.h5")
        out.write_text(json.dumps(res, indent=1))
        args.table_only = True
    if args.table_only:
        table = render(json.loads((args.results / f"run_floor_{args.matrix}.json").read_text()))
        print(table)
        if args.readme:
            write_readme(table, args.matrix)
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    n = args.matrix
    d = simulate(n, args.work)
    raw, raw_h5 = d / "raw.dat", d / "raw.h5"
    traj_path = trajectory_file(raw, args.work, n)
    cache = Path(tempfile.mkdtemp(prefix="narecon_dcf_bench_"))
    os.environ["NARECON_CACHE_DIR"] = str(cache)

    import recon
    from recon.io import build_trajectory, load_profile, read_raw
    from recon.options import RunOptions
    from recon.trajectory import compute_dcf, read_trajectory

    acq = read_raw(raw)
    traj = build_trajectory(acq, load_profile(None))
    site = read_trajectory(traj_path)
    opts_tpi = RunOptions()
    opts_file = RunOptions.from_mapping({"traj": str(traj_path)})
    outdir = Path(tempfile.mkdtemp(prefix="narecon_bench_out_"))

    def whole(opts):
        def run():
            res = recon.reconstruct(str(raw), opts)
            recon.write_run(res, outdir / "o", force=True)

        return run

    # warm the disk cache for the trajectory file (the cold first run is measured separately below)
    t_first = measure(whole(opts_file))
    # the built-in TPI with every disk cache cold (design, point-response kernel): a first run of a protocol
    os.environ["NARECON_CACHE_DIR"] = str(Path(tempfile.mkdtemp(prefix="narecon_cold_bench_")))
    t_cold_tpi = measure(whole(opts_tpi))
    os.environ["NARECON_CACHE_DIR"] = str(cache)
    stage = gridding_stages(raw)
    tests = {
        "floor: read bytes": lambda: raw.read_bytes(),
        "floor: two-echo adjoint": None,  # timed inside (plan + setpts + execute)
        "read twix": lambda: read_raw(raw),
        "read ISMRMRD (same scan)": lambda: read_raw(raw_h5),
        "trajectory (built-in TPI)": lambda: build_trajectory(acq, load_profile(None)),
        "DCF analytic": lambda: compute_dcf(traj, "analytic"),
        "DCF Pipe-Menon (lean)": lambda: compute_dcf(site, "pipe"),
        "gridding, plain (both echoes)": stage["plain"],
        "gridding, plain (both echoes, plan built)": stage["plain_built"],
        "tb-cpr, previous (plain gridding + rule bins, demodulated)": stage["two_pass"],
        "tb-cpr, one pass (time bins: plain image + correction)": stage["one_pass"],
        "point-response kernel, built": stage["kernel_built"],
        "point-response kernel, from the disk cache": stage["kernel_cached"],
        "run, built-in TPI": whole(opts_tpi),
        "run, trajectory file (DCF cached)": whole(opts_file),
    }
    if args.old_pipe:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_dcf_fast import pipe_reference

        tests["DCF Pipe-Menon (previous, 30 it.)"] = lambda: pipe_reference(site)
    times: dict[str, list[float]] = {k: [] for k in tests}
    loads = []
    for _ in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, fn in tests.items():
            times[name].append(floor_adjoint(acq, traj) if fn is None else measure(fn))
    times["run, trajectory file (first run, cold cache)"] = [t_first]
    times["run, built-in TPI (first run: design and kernel caches cold)"] = [t_cold_tpi]
    floor = [a + b for a, b in zip(times["floor: read bytes"], times["floor: two-echo adjoint"])]
    times["floor (read bytes + adjoint)"] = floor
    adj = statistics.median(times["floor: two-echo adjoint"])
    f_med = statistics.median(floor)

    def per_round(a: str, b: list[float] | str) -> list[float]:
        den = times[b] if isinstance(b, str) else b
        return [x / y for x, y in zip(times[a], den)]

    ratios = {
        "run, built-in TPI / floor": per_round("run, built-in TPI", floor),
        "run, trajectory file (DCF cached) / floor": per_round("run, trajectory file (DCF cached)", floor),
        "tb-cpr one pass / plain gridding (plans built in both)": per_round(
            "tb-cpr, one pass (time bins: plain image + correction)", "gridding, plain (both echoes, plan built)"
        ),
        "tb-cpr one pass (plans built) / plain gridding (plan reused)": per_round(
            "tb-cpr, one pass (time bins: plain image + correction)", "gridding, plain (both echoes)"
        ),
    }
    res = {
        "matrix": n,
        "per_round_ratios": ratios,
        "samples": [int(acq.n_projections), int(acq.n_samples), int(acq.n_echoes)],
        "raw_bytes": raw.stat().st_size,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average_1min": loads,
        "startup_s": startup(max(3, args.rounds)),
        "stages_s": times,
        "floor_median_s": f_med,
        "adjoint_median_s": adj,
    }
    if not args.no_memory:
        res["peak_rss_bytes"] = peak_memories(raw, traj_path)
    out = args.results / f"run_floor_{n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    table = render(res)
    print(table)
    if args.readme:
        write_readme(table, n)
    return 0


def render(res: dict) -> str:
    med = statistics.median
    f = res["floor_median_s"]
    adj = res["adjoint_median_s"]
    lines = [
        f"{res['matrix']}^3 protocol ({res['samples'][0]} x {res['samples'][1]} samples, {res['samples'][2]} echoes, "
        f"{res['raw_bytes'] / 1e6:.0f} MB raw); {res['rounds']} interleaved rounds on {res['cpus']} cores, "
        f"1-min load average {min(res['load_average_1min']):.1f}-{max(res['load_average_1min']):.1f}.",
        "",
        "| measurement | median s | range s | / floor | / adjoint |",
        "|---|---|---|---|---|",
    ]
    for name, v in res["stages_s"].items():
        lines.append(f"| {name} | {med(v):.3f} | {min(v):.3f}-{max(v):.3f} | {med(v) / f:.2f} | {med(v) / adj:.1f} |")
    rr = res.get("per_round_ratios") or {}
    if rr:
        lines += ["", "| ratio in the same round | median | per round |", "|---|---|---|"]
        for name, v in rr.items():
            lines.append(f"| {name} | **{med(v):.2f}** | {', '.join(f'{x:.2f}' for x in v)} |")
        lines += ["", "| measurement | median s | range s | / floor | / adjoint |", "|---|---|---|---|---|"]
    for name, s in res["startup_s"].items():
        lines.append(f"| start-up (fresh interpreter, wall): {name} | {med(s):.3f} | {min(s):.3f}-{max(s):.3f} | | |")
    for name, b in (res.get("peak_rss_bytes") or {}).items():
        lines.append(f"| peak RSS, {name} (fresh interpreter, VmHWM) | {b / 2**20:.0f} MiB | | {b / res['raw_bytes']:.1f}x raw | |")
    return "\n".join(lines)


def write_readme(table: str, n: int) -> None:
    p = HERE / "README.md"
    text = p.read_text()
    start, end = f"<!-- run_floor {n} start -->", f"<!-- run_floor {n} end -->"
    block = f"{start}\n{table}\n{end}"
    if start in text and end in text:
        a, b = text.index(start), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + f"\n\n## `narecon run` against its floor ({n}^3; `benchmarks/run_floor.py`)\n\n{block}\n"
    p.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
