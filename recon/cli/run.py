"""``narecon run RAW [RAW2] --out DIR``: the main job, raw data to calibrated TSC volumes."""

from __future__ import annotations

import argparse
import json
import sys


def _floats(s: str) -> tuple:
    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e


def _sphere(s: str) -> tuple:
    v = _floats(s)
    if len(v) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,z,radius in mm, got {s!r}")
    return v


def register(sub) -> None:
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
    p.add_argument("--traj", help="trajectory file (HDF5, DESIGN.md format) instead of the profile's")
    p.add_argument("--profile", help="sequence profile TOML mapping header fields to the trajectory design")
    p.add_argument("--device", choices=["cpu", "gpu"], help="compute device (cpu)")
    p.add_argument("--b0", help="B0 correction: auto (default: tb-cpr with two echoes), none, tb-cpr, fs-cpr, mfi, iterative")
    p.add_argument(
        "--recon",
        choices=["gridding", "iterative"],
        help="gridding (default) or iterative (model-based with T2* decay; implied by --b0 iterative)",
    )
    p.add_argument("--iter-decay", choices=["none", "r2star-map", "tissue"], help="iterative decay model (r2star-map)")
    p.add_argument("--iter-regulariser", choices=["none", "tikhonov", "gradient", "tv"], help="iterative regulariser (gradient)")
    p.add_argument("--iter-lamda", type=float, help="regularisation weight (0.1)")
    p.add_argument("--iter-max", type=int, help="iterations (30)")
    p.add_argument("--b0-segments", type=int, help="time bins / frequency segments (default: the documented rule)")
    p.add_argument(
        "--b0-refine", type=int, help="refinement passes of the dual-echo field map (default 1 with --b0 iterative, else 0)"
    )
    p.add_argument("--fieldmap", help="external field map NIfTI in Hz (instead of the dual-echo estimate)")
    p.add_argument("--fieldmap-nucleus", help="nucleus of the external map: 23Na (default) or 1H (scaled by 0.2645)")
    p.add_argument("--calibration", help="auto (detect tubes, default), internal, or a tubes CSV file")
    p.add_argument("--tube-mM", type=_floats, help="tube concentrations for auto detection (30,60,90,120)")
    p.add_argument(
        "--reference",
        type=_sphere,
        action="append",
        dest="reference_spheres",
        help="internal reference sphere x,y,z,r in mm (RAS); repeatable",
    )
    p.add_argument("--reference-mM", type=float, help="internal reference concentration (145 mM)")
    p.add_argument(
        "--ratio-ref",
        type=_sphere,
        action="append",
        dest="ratio_spheres",
        help="sphere x,y,z,r in mm of the ratio-map reference region (e.g. CSF); repeatable",
    )
    p.add_argument(
        "--relaxation",
        choices=["none", "tissue", "echo-ratio"],
        help="T1/T2* correction vs the tube model: none (default), tissue (one factor for every voxel), "
        "echo-ratio (per voxel: tissue or fluid by the measured echo ratio)",
    )
    p.add_argument("--matrix", type=int, help="reconstruction matrix (default: the protocol's)")
    p.add_argument("--dcf", choices=["auto", "analytic", "pipe"], help="density compensation (auto)")
    p.add_argument("--eps", type=float, help="NUFFT accuracy (1e-4)")
    p.add_argument("--echo-from", choices=["eco", "order"], help="echo index from the Eco counter or ADC order")
    p.add_argument("--nucleus", help="nucleus for ISMRMRD files that do not name it")
    p.add_argument("--no-qa", dest="qa", action="store_const", const=False, help="skip qa.png")
    p.add_argument("--force", action="store_const", const=True, help="replace an existing output directory")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.pipeline import RunOptions, load_config, reconstruct

    values = load_config(args.config) if args.config else {}
    for name in (
        "traj",
        "profile",
        "device",
        "b0",
        "recon",
        "iter_decay",
        "iter_regulariser",
        "iter_lamda",
        "iter_max",
        "b0_segments",
        "b0_refine",
        "fieldmap",
        "fieldmap_nucleus",
        "calibration",
        "tube_mM",
        "reference_spheres",
        "reference_mM",
        "ratio_spheres",
        "relaxation",
        "matrix",
        "dcf",
        "eps",
        "echo_from",
        "nucleus",
        "qa",
        "force",
    ):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    for key in ("tube_mM",):
        if key in values:
            values[key] = tuple(values[key])
    for key in ("reference_spheres", "ratio_spheres"):
        if key in values:
            values[key] = tuple(tuple(s) for s in values[key])
    opts = RunOptions(**values)
    summary = reconstruct(list(args.raw), args.out, opts)
    cal = summary["calibration"]
    if args.json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        print()
        return 0
    print(f"wrote {summary['out']} in {summary['total_s']:.1f} s (B0 correction: {summary['b0_method']})")
    fit = cal.get("fit") or {}
    if fit:
        print(
            f"  calibration: signal = {fit.get('slope', float('nan')):.4g} * C + {fit.get('intercept', float('nan')):.4g}"
            f"  (R^2 {fit.get('r2', float('nan')):.4f})"
        )
    for t in cal.get("tubes", []):
        print(
            f"  tube {t.get('concentration_mM', '?'):>6} mM: mean signal {t.get('mean', float('nan')):.4g}, "
            f"{t.get('n_voxels', '?')} voxels"
        )
    for w in cal.get("warnings", []):
        print(f"  WARNING: {w}")
    return 0
