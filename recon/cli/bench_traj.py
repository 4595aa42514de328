"""``narecon bench-traj``: benchmark trajectory variants on the digital phantom."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "bench-traj",
        help="benchmark trajectory variants (PSF with T2* decay, pseudo-replica SNR, phantom bias, cost)",
        description="Simulate and reconstruct every [[variant]] of a TOML variants file on the digital "
        "head phantom; write results.csv, results.md and PNG plots into --out (atomically).",
    )
    p.add_argument("variants", help="variants file (TOML): [settings], [defaults], [[variant]] tables")
    p.add_argument("--out", required=True, help="output directory (created; must not exist unless --force)")
    p.add_argument("--quick", action="store_true", help="fewer pseudo-replicas (4) and PSF directions (6) for a fast look")
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only the named variants")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.atomic import check_output
    from recon.bench import run_bench

    check_output(args.out, force=args.force, inputs=[args.variants], kind="dir")
    rows = run_bench(args.variants, args.out, quick=args.quick, force=args.force, only=args.only)
    print(f"{len(rows)} variant(s) benchmarked; results in {args.out}/results.md and results.csv")
    return 0
