"""``narecon traj``: generate trajectories and write trajectory files."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("traj", help="generate (TPI, radial, xenon) or import (Pulseq, BART, MRI-NUFFT, arrays) a trajectory")
    ts = p.add_subparsers(dest="kind", metavar="KIND")
    ts.required = True
    for kind, helptext in (
        ("tpi", "twisted projection imaging (Boada 1997, flexible TPI Lu 2010)"),
        ("radial", "3D density-adapted radial (Nagel 2009)"),
    ):
        q = ts.add_parser(kind, help=helptext)
        q.add_argument("--fov-mm", type=float, default=224.0, help="isotropic field of view in mm (224)")
        q.add_argument("--res-mm", type=float, default=3.5, help="nominal isotropic resolution in mm (3.5)")
        q.add_argument("--p", type=float, default=0.3, help="twist / density-adaptation fraction p (0.3)")
        g = q.add_mutually_exclusive_group()
        g.add_argument("--gmax-mt-m", type=float, default=None, help="gradient amplitude in mT/m (default 4)")
        g.add_argument("--readout-ms", type=float, default=None, help="readout duration in ms (sets Gmax)")
        q.add_argument(
            "--smax-t-m-s",
            type=float,
            default=None,
            help="slew limit in T/m/s: enables the slew-limited (flexible) design",
        )
        q.add_argument("--dwell-us", type=float, default=10.0, help="ADC dwell time in us (10)")
        q.add_argument("--raster-us", type=float, default=10.0, help="gradient raster in us (10)")
        q.add_argument("--undersampling", type=float, default=1.0, help="angular undersampling factor (1)")
        q.add_argument("--gamma-mhz-t", type=float, default=11.262, help="gyromagnetic ratio/2pi in MHz/T (23Na)")
        if kind == "radial":
            q.add_argument("--projections", type=int, default=None, help="number of projections")
        q.add_argument(
            "--dcf",
            choices=["analytic", "pipe", "none"],
            default="analytic",
            help="density compensation stored in the file (analytic)",
        )
        q.add_argument("--tr-ms", type=float, default=174.0, help="TR in ms for the scan-time estimate (174)")
        q.add_argument("--echoes", type=int, default=2, help="echoes acquired in separate TRs, for scan time (2)")
        q.add_argument("--out", required=True, help="output trajectory file (.h5)")
        q.add_argument("--force", action="store_true", help="overwrite an existing output file")
        q.add_argument("--json", action="store_true", help="print the summary as JSON")
        q.set_defaults(func=run)
    _register_import(ts)


def _register_import(ts) -> None:
    """``traj import`` (other formats -> narecon HDF5) and ``traj xenon`` (the 129Xe consortium's radial)."""
    from recon.options import LazyChoices  # the importers (and numpy) load only when --format/--units are used

    q = ts.add_parser("import", help="convert a trajectory (Pulseq .seq, BART .cfl, MRI-NUFFT .bin, .npy/.txt) to narecon's .h5")
    q.add_argument("src", help="trajectory file: .seq, .cfl/.hdr, .bin, .npy, .txt, .csv or .h5")
    q.add_argument(
        "--format",
        choices=LazyChoices("recon.trajectory.importers:FORMATS"),
        metavar="FORMAT",
        default=None,
        help="format: %(choices)s (default: from the extension)",
    )
    q.add_argument(
        "--units",
        choices=LazyChoices("recon.trajectory.importers:UNITS"),
        metavar="UNITS",
        default=None,
        help="k units of arrays and BART files: %(choices)s (BART: cycles/fov)",
    )
    q.add_argument("--fov-mm", type=float, nargs="+", default=None, help="FOV in mm (1 or 3 values), where the file lacks it")
    q.add_argument("--matrix", type=int, nargs="+", default=None, help="nominal matrix (1 or 3 values)")
    q.add_argument("--dwell-us", type=float, default=None, help="ADC dwell in us (BART, arrays, MRI-NUFFT)")
    q.add_argument("--gamma-mhz-t", type=float, default=None, help="gyromagnetic ratio/2pi in MHz/T")
    q.add_argument("--samples", type=int, default=None, help="samples per projection of a point list (text files)")
    q.add_argument("--echoes", type=int, default=1, help="ADCs per repetition in a .seq (echoes sharing k)")
    q.add_argument("--echo", type=int, default=None, help="take this echo's ADCs of a .seq (default: all must agree)")
    _add_corrections(q)
    q.add_argument("--raw", default=None, help="raw data file: check the units against its header and k-space centre")
    _add_out(q)
    q.set_defaults(func=run_import)

    q = ts.add_parser("xenon", help="3D radial with halton-spiral ordering (Duke 129Xe consortium), sized from a raw file")
    q.add_argument("--raw", required=True, help="raw data file whose header gives views, samples, dwell, FOV, matrix")
    q.add_argument("--ramp-us", type=float, default=100.0, help="readout gradient ramp in us (100)")
    q.add_argument("--fov-mm", type=float, default=None, help="isotropic FOV in mm (default: the header's)")
    q.add_argument("--ordering", choices=["halton-spiral", "spiral"], default="halton-spiral", help="view ordering")
    q.add_argument(
        "--gradient-delay-us",
        type=float,
        nargs="+",
        default=[-5.0],
        help="gradient delay in us, 1 or 3 values (kx ky kz); negative = early (-5)",
    )
    _add_out(q, dcf="analytic")
    q.set_defaults(func=run_xenon)


def _add_corrections(q) -> None:
    q.add_argument(
        "--gradient-delay-us", type=float, nargs="+", default=None, help="gradient delay in us along the readout, 1 or 3 values"
    )
    q.add_argument("--skip", type=int, default=0, help="drop the first N projections (steady state)")
    q.add_argument("--drop", default=None, help="projections to drop: '3,7,10-12' or a file of such indices")


def _add_out(q, dcf: str = "none") -> None:
    q.add_argument(
        "--dcf", choices=["analytic", "pipe", "none"], default=dcf, help=f"density compensation stored in the file ({dcf})"
    )
    q.add_argument("--out", required=True, help="output trajectory file (.h5)")
    q.add_argument("--force", action="store_true", help="overwrite an existing output file")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")


def _write_and_report(traj, args, extra: dict | None = None) -> int:
    import os

    from recon.errors import OutputError
    from recon.log import stage
    from recon.trajectory import compute_dcf, write_trajectory

    if os.path.exists(args.out) and not args.force:
        raise OutputError("exists (use --force to overwrite)", args.out)
    if args.dcf != "none":
        with stage(f"density compensation ({args.dcf})"):
            traj = traj.with_dcf(compute_dcf(traj, args.dcf))
    with stage("write trajectory file"):
        write_trajectory(traj, args.out, overwrite=True)
    summary = {
        "file": args.out,
        "generator": traj.params.get("generator"),
        "projections": traj.n_projections,
        "samples": traj.n_samples,
        "dwell_us": round(traj.dwell_s * 1e6, 6),
        "fov_mm": [round(f * 1e3, 3) for f in traj.fov_m],
        "matrix": list(traj.matrix),
        "kmax_reached_per_m": round(traj.kmax_reached, 3),
        "gradient_delay_us": [round(d * 1e6, 3) for d in traj.params.get("gradient_delay_s", [0.0, 0.0, 0.0])],
        "dcf": args.dcf,
    }
    summary.update(extra or {})
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(f"wrote {args.out}")
        for key, val in summary.items():
            if key != "file":
                print(f"  {key:<20} {val}")
    return 0


def _vec(v, scale: float):
    if v is None:
        return None
    return [x * scale for x in v] if len(v) > 1 else v[0] * scale


def run_import(args: argparse.Namespace) -> int:
    from recon.log import stage
    from recon.trajectory.importers import import_trajectory, parse_index_list

    with stage("read trajectory"):
        traj = import_trajectory(
            args.src,
            fmt=args.format,
            units=args.units,
            fov_m=_vec(args.fov_mm, 1e-3),
            matrix=args.matrix if args.matrix is None or len(args.matrix) > 1 else args.matrix[0],
            dwell_s=None if args.dwell_us is None else args.dwell_us * 1e-6,
            gamma_hz_per_t=None if args.gamma_mhz_t is None else args.gamma_mhz_t * 1e6,
            n_samples=args.samples,
            echoes=args.echoes,
            echo=args.echo,
            gradient_delay_s=_vec(args.gradient_delay_us, 1e-6),
            skip=args.skip,
            drop=parse_index_list(args.drop),
        )
    extra = {"source": args.src}
    if args.raw:
        from recon.io import read_raw
        from recon.trajectory.units import check_trajectory_units

        with stage("units check against the raw data"):
            m = check_trajectory_units(traj, read_raw(args.raw))
        extra["kmax_over_nyquist"] = round(m["kmax_ratio"], 4)
    return _write_and_report(traj, args, extra)


def run_xenon(args: argparse.Namespace) -> int:
    from recon.io import read_raw
    from recon.log import stage
    from recon.trajectory.units import check_trajectory_units
    from recon.trajectory.xenon import xenon_radial_for

    acq = read_raw(args.raw)
    kw = {"ramp_s": args.ramp_us * 1e-6, "delay_s": _vec(args.gradient_delay_us, 1e-6), "ordering": args.ordering}
    if args.fov_mm:
        kw["fov_m"] = args.fov_mm * 1e-3
    with stage("xenon radial design"):
        traj = xenon_radial_for(acq, **kw)
    m = check_trajectory_units(traj, acq)
    extra = {"raw": args.raw, "ordering": args.ordering, "kmax_over_nyquist": round(m["kmax_ratio"], 4)}
    return _write_and_report(traj, args, extra)


def run(args: argparse.Namespace) -> int:
    from recon.log import stage
    from recon.trajectory import compute_dcf, design_trajectory, write_trajectory

    gmax = None if args.readout_ms is not None else (args.gmax_mt_m if args.gmax_mt_m is not None else 4.0) * 1e-3
    common = dict(
        fov_m=args.fov_mm * 1e-3,
        res_m=args.res_mm * 1e-3,
        p=args.p,
        gmax_t_per_m=gmax,
        readout_s=None if args.readout_ms is None else args.readout_ms * 1e-3,
        smax_t_per_m_per_s=args.smax_t_m_s,
        dwell_s=args.dwell_us * 1e-6,
        gamma_hz_per_t=args.gamma_mhz_t * 1e6,
        undersampling=args.undersampling,
        grad_raster_s=args.raster_us * 1e-6,
    )
    from recon.atomic import check_output

    check_output(args.out, force=args.force, kind="file")  # refuse before computing
    from recon import limits

    limits.check_design({"generator": args.kind, "n_projections": getattr(args, "projections", None), **common})
    with stage(f"{args.kind} design"):
        traj = design_trajectory(args.kind, n_projections=getattr(args, "projections", None), **common)
    if args.dcf != "none":
        with stage(f"density compensation ({args.dcf})"):
            traj = traj.with_dcf(compute_dcf(traj, args.dcf))
    with stage("write trajectory file"):
        write_trajectory(traj, args.out, overwrite=True)
    c = traj.checks()
    summary = {
        "file": args.out,
        "generator": args.kind,
        "cones": traj.params.get("n_cones"),
        "projections": c["n_projections"],
        "samples": c["n_samples"],
        "readout_ms": round(c["readout_s"] * 1e3, 4),
        "readout_design_ms": round(traj.params["readout_design_s"] * 1e3, 4),
        "gmax_design_mt_m": round(traj.params["gmax_t_per_m"] * 1e3, 4),
        "max_gradient_reached_mt_m": round(c["max_gradient_t_per_m"] * 1e3, 4),
        "max_slew_reached_t_m_s": round(c["max_slew_t_per_m_per_s"], 2),
        "kmax_per_m": round(traj.params["kmax_per_m"], 3),
        "kmax_reached_per_m": round(c["kmax_reached_per_m"], 3),
        "scan_time_s": round(traj.scan_time_s(args.tr_ms * 1e-3, args.echoes), 1),
        "tr_ms": args.tr_ms,
        "echoes": args.echoes,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        st = summary["scan_time_s"]
        print(f"wrote {args.out}")
        if summary["cones"] is not None:
            print(f"  cones                {summary['cones']}")
        print(f"  projections          {summary['projections']}")
        print(f"  samples/projection   {summary['samples']}  (dwell {args.dwell_us:g} us)")
        print(f"  readout              {summary['readout_ms']:.3f} ms  (ideal design {summary['readout_design_ms']:.3f} ms)")
        print(f"  max |G| reached      {summary['max_gradient_reached_mt_m']:.3f} mT/m  (design {summary['gmax_design_mt_m']:.3f})")
        lim = f", limit {args.smax_t_m_s:g}" if args.smax_t_m_s else ", no slew limit: instant switch-on"
        print(f"  max slew reached     {summary['max_slew_reached_t_m_s']:.1f} T/m/s{lim}  ({args.raster_us:g} us raster)")
        print(f"  kmax                 {summary['kmax_reached_per_m']:.2f} 1/m reached (design {summary['kmax_per_m']:.2f})")
        print(f"  scan time            {st:.1f} s = {st / 60:.1f} min at TR {args.tr_ms:g} ms, {args.echoes} echo(es)")
    return 0
