"""``narecon batch manifest.csv --out DIR``: reconstruct many scans on a Dask cluster.

Exit codes: 0 every scan done or skipped; 1 one or more scans failed (they are listed);
2 a user error before any scan ran (bad manifest, config, missing Dask).
"""

from __future__ import annotations

import argparse
import sys

BATCH_EXCLUDED = ("force", "traj", "profile")
"""Run options that are per scan (manifest columns) or batch-level (``--force`` redoes scans)."""


def register(sub) -> None:
    from recon.options import add_arguments

    p = sub.add_parser(
        "batch",
        help="reconstruct the scans of a manifest CSV on a Dask cluster (resumable)",
        description="Reconstruct every scan listed in a manifest CSV (columns id, raw[, raw2, traj, profile, "
        "tubes, config]) as `narecon run` would, one Dask task per scan, into DIR/<id>/. Complete "
        "scans are skipped on a rerun; failed scans are listed and the others go on.",
    )
    p.add_argument("manifest", help="manifest CSV, one scan per row (see docs/batch.md)")
    p.add_argument("--out", required=True, help="batch output directory: DIR/<id>/ per scan, DIR/batch_summary.csv")
    p.add_argument(
        "--scheduler",
        default="local",
        help="local (default: a local cluster for this command), tcp://HOST:PORT (an existing "
        "scheduler), slurm or pbs (dask-jobqueue; settings from the Dask config)",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="local worker processes (default: one per 2 cores; one per GPU with --device gpu) or SLURM/PBS jobs (default 1)",
    )
    p.add_argument(
        "--gpus-per-worker",
        type=int,
        default=0,
        help="GPUs per SLURM/PBS job (one Dask worker per GPU with dask-cuda); locally 0 or 1",
    )
    p.add_argument(
        "--memory-limit",
        default="auto",
        help="memory per local worker, e.g. 8GB (auto: RAM / workers); per job for SLURM/PBS",
    )
    p.add_argument("--config", help="TOML with a [run] table applied to every row (a row's config overrides it)")
    p.add_argument("--force", action="store_true", help="redo every scan, even complete ones")
    p.add_argument(
        "--allowed-failures",
        type=int,
        default=3,
        help="reruns of a scan whose worker died (killed, out of memory) before it counts as failed (3)",
    )
    p.add_argument(
        "--no-plan-cache",
        dest="plan_cache",
        action="store_false",
        help="rebuild trajectory, density weights and NUFFT plans for every scan (for benchmarks)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar (log lines only)")
    g = p.add_argument_group("reconstruction options for every scan (the schema of narecon run; they win over every config)")
    add_arguments(g, exclude=BATCH_EXCLUDED)
    s = p.add_argument_group(
        "security",
        "the local cluster always uses TLS with a temporary certificate of this run; SLURM/PBS use "
        "temporary certificates too unless these files are given; a tls:// scheduler needs them",
    )
    s.add_argument("--tls-ca-file", help="CA certificate (PEM) that signed the scheduler's and workers' certificates")
    s.add_argument("--tls-cert", help="certificate (PEM) of this client (and of the scheduler/workers narecon starts)")
    s.add_argument("--tls-key", help="private key (PEM) of --tls-cert, unless that file holds it")
    s.add_argument(
        "--dashboard",
        metavar="ADDRESS",
        help="serve the Dask dashboard at ADDRESS (e.g. 127.0.0.1:8787); off by default",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from recon.batch.cluster import open_client, parse_memory_limit
    from recon.batch.engine import check_batch_output, run_batch
    from recon.batch.manifest import load_global_config, read_manifest
    from recon.options import RunOptions, from_args

    base = load_global_config(args.config)
    specs = read_manifest(args.manifest, base)
    cli = from_args(args, exclude=BATCH_EXCLUDED)  # the command line wins over every config
    if cli:
        RunOptions.from_mapping(cli)
        specs = [dataclasses.replace(s, options={**s.options, **cli}) for s in specs]
    # everything that can be checked is checked before a cluster starts
    check_batch_output(args.out, specs)
    if args.scheduler not in ("slurm", "pbs"):
        parse_memory_limit(args.memory_limit)
    device = base.get("device", "cpu")
    if any(s.options.get("device", "cpu") == "gpu" for s in specs):
        device = "gpu"
    with open_client(
        args.scheduler,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        memory_limit=args.memory_limit,
        device=device,
        allowed_failures=args.allowed_failures,
        tls_ca_file=args.tls_ca_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        dashboard=args.dashboard,
    ) as bc:
        report = run_batch(
            specs,
            args.out,
            bc.client,
            force=args.force,
            plan_cache=args.plan_cache,
            resources=bc.resources,
            progress=args.progress,
            worker_timeout_s=bc.worker_timeout_s,
        )
    print(
        f"{len(report.rows)} scan(s): {report.count('done')} done, {report.count('skipped')} skipped, "
        f"{report.count('failed')} failed in {report.wall_s:.1f} s; summary {report.summary_csv}"
    )
    if report.failed:
        print("failed scans:", file=sys.stderr)
        for r in report.failed:
            print(f"  {r['id']}: {r['error']}", file=sys.stderr)
        return 1
    return 0
