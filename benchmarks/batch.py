#!/usr/bin/env python
"""Batch throughput: ``narecon batch`` on 1 and 2 local workers versus one process per scan.

Measured on this machine, in one run, for N copies of simulated scans (``narecon simulate``,
not timed):

* ``loop``: one fresh process per scan, one after the other, as a shell loop over
  ``narecon run`` does (interpreter start, imports, trajectory design, density weights and NUFFT
  plans every time);
* ``batch-1w``, ``batch-2w``: ``narecon batch`` engine on a local cluster of 1 / 2 worker
  processes (cores split among them), with the per-worker plan cache (what ``narecon batch`` does);
* ``batch-2w-warm``: 2 workers warmed when they start (:mod:`recon.batch.warm`: the stages'
  imports and first-use costs paid before the first scan; ``open_client(warm=True)``);
* ``batch-2w-2t``: 2 workers with 2 NUFFT/NumPy threads each (not pinned to one core each: one
  worker's serial stages overlap the other's threaded ones);
* ``batch-1w-nocache``: 1 worker without the plan cache: the difference to ``batch-1w`` is the
  time saved by plan reuse.

Scans per minute are counted over the whole command (cluster start-up included) and over the
scans alone (``run_batch``). The job is the whole reconstruction, ``recon.pipeline.run`` (what
``narecon run`` does), in every configuration: the batch worker passes its persistent plans.

Usage::

    python benchmarks/batch.py [--scans 8] [--matrix 32] [--rounds 3] [--out FILE.json]

Rounds are interleaved (each configuration once per round, the order rotated between rounds);
the JSON holds every round, the medians and each round's ratio to the loop of the same round.

Why by hand: no tool times a Dask batch against a process-per-scan loop with the same job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# this checkout's recon, also in the loop's processes and the Dask workers (an installed narecon,
# e.g. `pip install -e` of another checkout, would otherwise be what is measured)
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=8)
    ap.add_argument("--matrix", type=int, default=32)
    ap.add_argument("--distinct", type=int, default=2, help="distinct simulated scans (copied to --scans)")
    ap.add_argument("--configs", nargs="+", default=["loop", "batch-1w", "batch-2w", "batch-2w-warm", "batch-1w-nocache"])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "batch_results.json"))
    ap.add_argument("--work", help="work folder (default: a temporary one)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds (every configuration once per round)")
    args = ap.parse_args()

    job = "full"
    work = Path(args.work or tempfile.mkdtemp(prefix="narecon-bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"job: the whole reconstruction (recon.pipeline.run); work folder {work}")

    from recon.cli import main as cli

    # 6-7.5 mm voxels (32^3): the CLI's default tubes (scaled to 2 voxels beside the head) do not all
    # separate, so `narecon run` stops ("found 3 tubes"); tubes of 2 voxels in the FOV's corners do
    vox_mm = 224.0 / args.matrix
    tubes = []
    if 6.0 < vox_mm <= 7.5:
        r = 2 * vox_mm
        corners = ((88, 72, 30), (88, -72, 60), (-88, 72, 90), (-88, -72, 120))
        tubes = [f"--tube={x},{y},0,{r:.1f},80,{mm}" for x, y, mm in corners]
    for i in range(args.distinct):
        d = work / f"sim{i}"
        if not (d / "raw.dat").exists():
            t = time.perf_counter()
            cli(
                [
                    "-q",
                    "simulate",
                    "--out",
                    str(d),
                    "--matrix",
                    str(args.matrix),
                    "--seed",
                    str(i + 1),
                    "--snr",
                    "80",
                    "--force",
                    *tubes,
                ]
            )
            print(f"simulated {d / 'raw.dat'} in {time.perf_counter() - t:.1f} s")
    raws = []
    for s in range(args.scans):
        p = work / f"scan{s:03d}.dat"
        if not p.exists():
            shutil.copyfile(work / f"sim{s % args.distinct}" / "raw.dat", p)
        raws.append(p)
    manifest = work / "manifest.csv"
    manifest.write_text("id,raw\n" + "".join(f"S{s:03d},{p.name}\n" for s, p in enumerate(raws)))

    from recon.batch.cluster import open_client
    from recon.batch.engine import run_batch
    from recon.batch.manifest import read_manifest

    def measure(cfg: str) -> dict:
        out = work / f"out-{cfg}"
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        if cfg == "loop":
            out.mkdir()
            for s, p in enumerate(raws):
                cmd = [sys.executable, "-m", "recon", "-q", "run", str(p), "--out", str(out / f"S{s:03d}")]
                subprocess.run(cmd, check=True)
            total = time.perf_counter() - t0
            return {"total_s": total, "scans_per_min": 60 * len(raws) / total, "load_1min": load}
        workers = 2 if "2w" in cfg else 1
        threads = 2 if cfg.endswith("-2t") else None
        with open_client("local", workers=workers, warm="warm" in cfg, threads_per_worker=threads) as bc:
            bc.client.wait_for_workers(workers)
            t1 = time.perf_counter()
            rep = run_batch(
                read_manifest(manifest),
                out,
                bc.client,
                progress=False,
                plan_cache="nocache" not in cfg,
            )
            t2 = time.perf_counter()
        assert rep.ok, rep.failed
        total = time.perf_counter() - t0
        per_scan = sorted(r["seconds"] for r in rep.rows)
        return {
            "total_s": total,
            "scans_s": t2 - t1,
            "scans_per_min": 60 * len(raws) / total,
            "scans_per_min_excl_startup": 60 * len(raws) / (t2 - t1),
            "first_scan_s": max(per_scan),
            "median_scan_s": per_scan[len(per_scan) // 2],
            "load_1min": load,
        }

    # interleaved rounds: every configuration once per round, the order rotated from round to round
    rounds: dict[str, list[dict]] = {cfg: [] for cfg in args.configs}
    for r in range(args.rounds):
        k = r % len(args.configs)
        for cfg in args.configs[k:] + args.configs[:k]:
            rounds[cfg].append(measure(cfg))
            print(f"round {r + 1} {cfg:18s} {json.dumps({k: round(v, 2) for k, v in rounds[cfg][-1].items()})}")
    results = {}
    for cfg, rs in rounds.items():
        results[cfg] = {key: statistics.median(x[key] for x in rs) for key in rs[0]}
        results[cfg]["rounds"] = rs
        if "loop" in rounds:  # the ratio of each round to the loop of the same round
            ratios = [x["scans_per_min"] / lp["scans_per_min"] for x, lp in zip(rs, rounds["loop"])]
            results[cfg]["x_loop_per_round"] = ratios
            results[cfg]["x_loop_median"] = statistics.median(ratios)

    meta = {
        "job": job,
        "scans": len(raws),
        "rounds": args.rounds,
        "matrix": args.matrix,
        "cpus": len(os.sched_getaffinity(0)),
        "load_avg_at_end": os.getloadavg(),
        "python": platform.python_version(),
        "host": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    if "batch-1w" in results and "batch-1w-nocache" in results:
        a, b = results["batch-1w"], results["batch-1w-nocache"]
        meta["plan_reuse_saving_s_per_scan"] = (b["scans_s"] - a["scans_s"]) / len(raws)
        meta["plan_reuse_saving_fraction"] = 1 - a["scans_s"] / b["scans_s"]
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(json.dumps(meta, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
