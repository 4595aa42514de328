"""``narecon traj``: generate trajectories and write trajectory files."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("traj", help="generate a trajectory (TPI or density-adapted radial) and write it")
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


def run(args: argparse.Namespace) -> int:
    from recon.log import stage
    from recon.trajectory import compute_dcf, density_adapted_radial, tpi, write_trajectory

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
    import os

    from recon.atomic import atomic_file  # noqa: F401  (checked early: refuse before computing)
    from recon.errors import OutputError

    if os.path.exists(args.out) and not args.force:
        raise OutputError("exists (use --force to overwrite)", args.out)
    with stage(f"{args.kind} design"):
        traj = tpi(**common) if args.kind == "tpi" else density_adapted_radial(n_projections=args.projections, **common)
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
        print(
            f"  readout              {summary['readout_ms']:.3f} ms  (ideal design {summary['readout_design_ms']:.3f} ms)"
        )
        print(
            f"  max |G| reached      {summary['max_gradient_reached_mt_m']:.3f} mT/m  (design {summary['gmax_design_mt_m']:.3f})"
        )
        lim = f", limit {args.smax_t_m_s:g}" if args.smax_t_m_s else ", no slew limit: instant switch-on"
        print(
            f"  max slew reached     {summary['max_slew_reached_t_m_s']:.1f} T/m/s{lim}  ({args.raster_us:g} us raster)"
        )
        print(
            f"  kmax                 {summary['kmax_reached_per_m']:.2f} 1/m reached (design {summary['kmax_per_m']:.2f})"
        )
        print(f"  scan time            {st:.1f} s = {st / 60:.1f} min at TR {args.tr_ms:g} ms, {args.echoes} echo(es)")
    return 0
