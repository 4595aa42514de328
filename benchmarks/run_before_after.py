"""The default run of two checkouts of narecon on one scan, interleaved, each in fresh interpreters.

    python benchmarks/run_before_after.py BEFORE_TREE [AFTER_TREE] [--raw RAW] [--rounds 3]

``BEFORE_TREE`` e.g. ``git archive 06dc464 | tar -x -C /tmp/before``; ``AFTER_TREE`` defaults to
this checkout. Each round runs ``recon.reconstruct`` + ``recon.write_run`` (default options) once
per tree in a fresh interpreter (imports excluded from the time; peak RSS = ``VmHWM``), after one
warm-up run per tree that fills the disk caches (``NARECON_CACHE_DIR`` set to a temporary folder,
shared by both). Prints the times, the per-round ratios and the load; writes
``results/run_before_after_<LABEL>.json`` with ``--save LABEL``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run_floor import _CHILD  # noqa: E402

CHILD = _CHILD.replace("t0 = time.perf_counter()\nimport recon\n", "import recon\nt0 = time.perf_counter()\n")


def one(tree: str, raw: str, env: dict) -> tuple[float, float]:
    code = CHILD.format(root=tree, opts={}, raw=raw)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=tree)
    wall, rss = p.stdout.split()[-2:]
    return float(wall), float(rss) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before")
    ap.add_argument("after", nargs="?", default=str(HERE.parent))
    ap.add_argument("--raw", default=str(HERE / "_work" / "sim64" / "raw.dat"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save", help="write results/run_before_after_<SAVE>.json (a label, e.g. h20c_64)")
    args = ap.parse_args(argv)
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    env = dict(os.environ, NARECON_CACHE_DIR=tempfile.mkdtemp(prefix="narecon_ba_"))
    for tree in trees.values():
        one(tree, args.raw, env)
    runs: dict[str, list] = {k: [] for k in trees}
    loads = []
    for r in range(args.rounds):
        loads.append(os.getloadavg()[0])
        for name, tree in trees.items():
            runs[name].append(one(tree, args.raw, env))
            print(r, name, *(round(v, 2) for v in runs[name][-1]), flush=True)
    for name, v in runs.items():
        w = [a for a, _ in v]
        print(f"{name}: median {statistics.median(w):.2f} s ({min(w):.2f}-{max(w):.2f}), peak {max(b for _, b in v):.0f} MiB")
    ratios = [a[0] / b[0] for a, b in zip(runs["before"], runs["after"])]
    print("before/after per round:", [round(x, 2) for x in ratios], "load", [round(x, 1) for x in loads])
    if args.save:
        out = HERE / "results" / f"run_before_after_{args.save}.json"
        out.write_text(json.dumps({"trees": trees, "raw": args.raw, "runs": runs, "ratios": ratios, "loads": loads}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
