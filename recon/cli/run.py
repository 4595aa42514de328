"""``narecon run RAW [RAW2] --out DIR``: the main job, raw data to calibrated TSC volumes.

Every option comes from the schema in :mod:`recon.options` (flags, types, defaults, help).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    from recon.options import add_arguments

    p = sub.add_parser(
        "run",
        help="reconstruct raw data into calibrated TSC maps (mM)",
        description="Reconstruct Siemens twix (.dat) or ISMRMRD (.h5) sodium raw data: "
        "trajectory, gridding, dual-echo B0 correction, tube calibration, outputs "
        "written atomically into DIR.",
    )
    p.add_argument("raw", nargs="+", help="raw file, or two files holding one echo each")
    p.add_argument("--out", required=True, help="output directory (must not exist unless --force)")
    p.add_argument("--config", help="TOML file with a [run] table of options (command-line options win)")
    add_arguments(p)
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def _num(v, fmt: str = ".4g") -> str:
    return "n/a" if v is None else format(v, fmt)


def run(args: argparse.Namespace) -> int:
    from recon.options import RunOptions, from_args, load_config
    from recon.pipeline import run as run_pipeline

    base = load_config(args.config) if args.config else {}
    opts = RunOptions.from_mapping(from_args(args, base), args.config)
    if args.config:  # the config is an input too: never inside (or replaced by) the output
        from recon.atomic import check_output

        check_output(args.out, force=bool(opts.force), inputs=[args.config])
    summary = run_pipeline(list(args.raw), args.out, opts)
    cal = summary["calibration"]
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"wrote {summary['out']} in {summary['total_s']:.1f} s (B0 correction: {summary['b0_method']})")
    fit = cal.get("fit") or {}
    if cal.get("method") == "none":
        print("  calibration: none (images only)")
    elif fit:
        slope, icpt, r2 = _num(fit.get("slope")), _num(fit.get("intercept")), _num(fit.get("r2"), ".4f")
        b = fit.get("intercept")
        icpt = "n/a" if b is None else f"{'-' if b < 0 else '+'} {abs(b):.4g}"
        print(f"  calibration: signal = {slope} * C {icpt}  (R^2 {r2})")
    for t in cal.get("tubes", []):
        conc, mean = _num(t.get("concentration_mM"), "g"), _num(t.get("mean"))
        print(f"  tube {conc:>6} mM: mean signal {mean}, {t.get('n_voxels', '?')} voxels")
    for w in cal.get("warnings", []):
        print(f"  WARNING: {w}")
    return 0
