"""The 128^3 study protocol end to end against its floor (issue 20: the run's scaling).

Two steps, both writing under ``benchmarks/_work/`` (git-ignored):

``simulate``: the 128^3 protocol scan (15520 x 2476 samples, 2 echoes, the CLI's default phantom
with its tubes beside the head and B0 on, SNR 200) through :func:`recon.sim.simulate` with the
simulator's *numerical* fidelity knobs set for speed: ``--supersample`` sub-points per fine voxel
(the CLI uses 3; 1 point-samples the compartments), the forward NUFFT's ``--eps`` (the CLI uses
1e-7; 1e-5 keeps the NUFFT error about 1000x below the per-sample noise) and threads. The protocol,
trajectory, phantom, noise, bin rule (model error <= 0.1 sigma) and the 2x simulation grid are the
CLI's; the fine-grid label map (``truth_labels_fine``, a 512^3 phantom evaluation) is not written.
The reconstruction's timing does not depend on these knobs (same file size, same samples).

``measure``: the definitions of ``benchmarks/run_floor.py`` (floor = read the raw file's bytes +
one two-echo finufft type-1 adjoint, float32 points, eps 1e-4; the run = ``recon.reconstruct`` +
``recon.write_run`` in this process after one warm-up run, so the caches are warm); each stage's
time from the run's StageTimer; interleaved rounds; the peak resident set (VmHWM) of one fresh
interpreter; results to ``benchmarks/results/run_128.json``.

    nice -n 10 python benchmarks/run_128.py simulate [--matrix 128] [--supersample 1] [--eps 1e-5] [--threads 2]
    nice -n 10 python benchmarks/run_128.py measure [--matrix 128] [--rounds 2] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def _vmhwm() -> int:
    """Peak resident set of this process in bytes (VmHWM; ru_maxrss as a fallback)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def simulate_scan(args) -> int:
    """Simulate the protocol scan with the CLI's phantom and trajectory; print and store the timings."""
    from recon.cli import build_parser
    from recon.cli.simulate import make_phantom, make_trajectory, simulate_options
    from recon.log import setup_logging
    from recon.sim import simulate, write_simulation

    setup_logging(1)
    out = args.work / f"sim{args.matrix}"
    cli = build_parser().parse_args(["simulate", "--matrix", str(args.matrix), "--out", str(out), "--force"])
    t0 = time.perf_counter()
    traj = make_trajectory(cli)
    phantom = make_phantom(cli, traj)
    t1 = time.perf_counter()
    kw = simulate_options(cli) | dict(n_threads=args.threads)  # the CLI's protocol; only the fidelity knobs differ
    res = simulate(
        phantom, traj, **kw, supersample=args.supersample, eps=args.eps, bin_tolerance=args.bin_tolerance, progress=False
    )
    t2 = time.perf_counter()
    settings = {
        "supersample": args.supersample,
        "nufft_eps": args.eps,
        "bin_tolerance": args.bin_tolerance,
        "threads": args.threads,
        "oversampling": cli.oversampling,
    }
    write_simulation(res, traj, out, ismrmrd=args.ismrmrd, overwrite=True, extra_info={"run_128_settings": settings})
    t3 = time.perf_counter()
    sim = res.truth.info["simulation"]
    summary = {
        "matrix": args.matrix,
        "samples": [traj.n_projections, traj.n_samples, len(cli.te_ms)],
        "settings": settings,
        "n_bins": sim["n_bins"],
        "grid": sim["grid"],
        "seconds": {"trajectory+phantom": t1 - t0, "simulate": t2 - t1, "write": t3 - t2, "total": t3 - t0},
        "peak_rss_bytes": _vmhwm(),
        "load_average_1min": os.getloadavg()[0],
    }
    print(json.dumps(summary, indent=1))
    (out / "run_128_simulate.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


def stage_times(res) -> dict[str, float]:
    """Seconds per stage of one run from its log (StageTimer records, name -> s)."""
    stages = getattr(res, "timings", None) or getattr(getattr(res, "log", None), "stages", None)
    if stages is None:
        return {}
    if isinstance(stages, dict):
        return {str(k): float(v) for k, v in stages.items()}
    return {str(name): float(s) for name, s in stages}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("simulate", help="simulate the protocol scan")
    s.add_argument("--supersample", type=int, default=1)
    s.add_argument("--eps", type=float, default=1e-5)
    s.add_argument("--bin-tolerance", type=float, default=0.5, help="bin rule target / noise sigma (CLI: 0.1)")
    s.add_argument("--threads", type=int, default=None)
    s.add_argument("--ismrmrd", action="store_true")
    m = sub.add_parser("measure", help="the run against its floor")
    m.add_argument("--rounds", type=int, default=2)
    m.add_argument("--no-memory", action="store_true")
    m.add_argument("--table-only", action="store_true", help="render the saved results/run_<N>.json")
    m.add_argument("--simulate", action="store_true", help="simulate the scan first when it is missing (fast settings)")
    m.add_argument("--results", type=Path, default=HERE / "results", help="folder of run_<N>.json")
    for p in (s, m):
        p.add_argument("--matrix", type=int, default=128)
        p.add_argument("--work", type=Path, default=HERE / "_work")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "simulate":
        return simulate_scan(args)
    if args.table_only:
        print(render(json.loads((args.results / f"run_{args.matrix}.json").read_text())))
        return 0
    if args.simulate and not (args.work / f"sim{args.matrix}" / "raw.dat").exists():
        simulate_scan(
            argparse.Namespace(
                matrix=args.matrix, work=args.work, supersample=1, eps=1e-5, bin_tolerance=0.5, threads=None, ismrmrd=False
            )
        )
    return measure(args)


def measure(args) -> int:
    """The run against its floor at the protocol of ``--matrix`` (module docstring); writes results/run_<N>.json."""
    from run_floor import floor_adjoint, peak_memory

    n = args.matrix
    raw = args.work / f"sim{n}" / "raw.dat"
    if not raw.exists():
        raise SystemExit(f"{raw}: no scan; run `python benchmarks/run_128.py simulate --matrix {n}` first")
    cache = args.work / f"cache{n}"  # kept between invocations: the warm-up fills it once
    cache.mkdir(exist_ok=True)
    os.environ["NARECON_CACHE_DIR"] = str(cache)

    import recon
    from recon.io import build_trajectory, load_profile, read_raw
    from recon.options import RunOptions

    opts = RunOptions()
    outdir = Path(tempfile.mkdtemp(prefix="narecon_run128_"))

    def whole() -> tuple[float, dict[str, float]]:
        t = time.perf_counter()
        res = recon.reconstruct(str(raw), opts)
        stages = dict(res.timings_s)
        for k, v in recon.write_run(res, outdir / "o", force=True).items():
            stages[f"write: {k}"] = v
        del res
        return time.perf_counter() - t, stages

    t_warm, warm_stages = whole()
    try:  # the calibration the timed runs made (which tubes were found): a wrong one would change the stages
        cal = json.loads((outdir / "o" / "calibration.json").read_text())
        tubes = [
            {k: t.get(k) for k in ("centre_mm", "concentration_mM", "radius_mm", "n_voxels") if k in t}
            for t in cal.get("tubes", [])
        ]
        calibration = {"method": cal.get("method"), "tubes": tubes, "warnings": cal.get("warnings")}
    except (OSError, ValueError):
        calibration = None
    acq = read_raw(raw)
    traj = build_trajectory(acq, load_profile(None))
    samples = [int(acq.n_projections), int(acq.n_samples), int(acq.n_echoes)]
    rounds = []
    for _ in range(args.rounds):
        r = {"load_average_1min": os.getloadavg()[0]}
        t = time.perf_counter()
        raw.read_bytes()
        r["floor: read bytes"] = time.perf_counter() - t
        r["floor: two-echo adjoint"] = floor_adjoint(acq, traj)
        r["run"], r["stages"] = whole()
        rounds.append(r)
    del acq, traj
    res = {
        "matrix": n,
        "samples": samples,
        "raw_bytes": raw.stat().st_size,
        "cpus": os.cpu_count(),
        "warm_up": {"run": t_warm, "stages": warm_stages},
        "calibration": calibration,
        "rounds": rounds,
    }
    if not args.no_memory:
        wall, rss = peak_memory(raw, {}, dict(os.environ))
        res["fresh_interpreter"] = {"wall_s": wall, "peak_rss_bytes": rss}
    shutil.rmtree(outdir, ignore_errors=True)
    out = args.results / f"run_{n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(render(res))
    return 0


def render(res: dict) -> str:
    """A markdown table: the floor, the run and each stage (median over rounds, range, share of the run)."""
    med = statistics.median
    rounds = res["rounds"]
    floor = [r["floor: read bytes"] + r["floor: two-echo adjoint"] for r in rounds]
    runs = [r["run"] for r in rounds]
    f, run = med(floor), med(runs)
    loads = [r["load_average_1min"] for r in rounds]
    s = res["samples"]
    lines = [
        f"{res['matrix']}^3 protocol ({s[0]} x {s[1]} samples, {s[2]} echoes, {res['raw_bytes'] / 1e6:.0f} MB raw); "
        f"{len(rounds)} interleaved rounds after one warm-up run on {res['cpus']} cores, 1-min load average "
        f"{min(loads):.1f}-{max(loads):.1f}. Run / floor: **{run / f:.2f}**.",
        "",
        "| measurement | median s | range s | share of the run |",
        "|---|---|---|---|",
        f"| floor: read bytes | {med(r['floor: read bytes'] for r in rounds):.2f} | | |",
        f"| floor: two-echo adjoint | {med(r['floor: two-echo adjoint'] for r in rounds):.2f} | | |",
        f"| **floor** | {f:.2f} | {min(floor):.2f}-{max(floor):.2f} | |",
        f"| **run** (reconstruct + write_run) | {run:.2f} | {min(runs):.2f}-{max(runs):.2f} | 100 % |",
    ]
    names = list(dict.fromkeys(k for r in rounds for k in r["stages"]))
    for name in names:
        v = [r["stages"].get(name, 0.0) for r in rounds]
        lines.append(f"| {name} | {med(v):.2f} | {min(v):.2f}-{max(v):.2f} | {100 * med(v) / run:.0f} % |")
    lines.append(f"| warm-up run (first in the process) | {res['warm_up']['run']:.2f} | | |")
    fresh = res.get("fresh_interpreter")
    if fresh:
        lines.append(
            f"| fresh interpreter: wall incl. imports; peak RSS (VmHWM) | {fresh['wall_s']:.2f} | "
            f"{fresh['peak_rss_bytes'] / 2**30:.2f} GiB = {fresh['peak_rss_bytes'] / res['raw_bytes']:.1f}x raw | |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
