"""``narecon simulate``: simulate a 23Na acquisition of the digital head phantom and write it.

Writes DIR/raw.dat (Siemens twix VE, trajectory design in sWipMemBlock), the truth NIfTIs
(TSC in mM, B0 in Hz, labels) and DIR/truth.json, atomically; deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def register(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="simulate a sodium acquisition of the digital head phantom (raw.dat + truth)",
        description="Simulate a 23Na acquisition of the analytic head phantom (GM, WM, CSF, eyes, tumour, "
        "oedema, four tubes 30/60/90/120 mM) with T1 saturation, bi-exponential T2* decay and B0 "
        "during the readout, on a grid finer than the reconstruction, and write DIR/raw.dat, "
        "DIR/truth_tsc_mM.nii.gz, DIR/truth_b0_hz.nii.gz, DIR/truth_labels.nii.gz and DIR/truth.json.",
    )
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    g = p.add_argument_group("grid and trajectory")
    g.add_argument("--matrix", type=int, default=64, help="reconstruction matrix N (N^3; default 64)")
    g.add_argument("--fov-mm", type=float, default=224.0, help="isotropic FOV in mm (224); resolution = FOV / N")
    g.add_argument("--traj", choices=["tpi", "radial"], default="tpi", help="trajectory generator (tpi)")
    g.add_argument(
        "--traj-file",
        default=None,
        help="use this trajectory file (.h5); its FOV and matrix replace --matrix/--fov-mm",
    )
    g.add_argument("--traj-p", type=float, default=0.3, help="twist / density-adaptation fraction p (0.3)")
    gg = g.add_mutually_exclusive_group()
    gg.add_argument("--traj-gmax-mt-m", type=float, default=None, help="gradient amplitude in mT/m (default 4)")
    gg.add_argument("--traj-readout-ms", type=float, default=None, help="readout duration in ms (sets Gmax)")
    g.add_argument("--traj-smax-t-m-s", type=float, default=None, help="slew limit in T/m/s (flexible design)")
    g.add_argument("--traj-undersampling", type=float, default=1.0, help="angular undersampling factor (1)")
    g.add_argument("--traj-projections", type=int, default=None, help="projections (radial only)")
    g.add_argument("--dwell-us", type=float, default=10.0, help="ADC dwell time in us (10)")
    q = p.add_argument_group("protocol")
    q.add_argument("--te-ms", type=_floats, default=[0.30, 2.32], help="echo times in ms (0.30,2.32)")
    q.add_argument("--tr-ms", type=float, default=174.0, help="TR in ms (174)")
    q.add_argument("--flip-deg", type=float, default=90.0, help="flip angle in degrees (90)")
    q.add_argument("--field-t", type=float, default=7.0, help="B0 in T (7; Larmor 78.8 MHz)")
    s = p.add_argument_group("phantom and noise")
    s.add_argument("--seed", type=int, default=0, help="noise seed (0)")
    s.add_argument(
        "--snr",
        type=float,
        default=200.0,
        help="raw-data SNR: |s(k=0)| of echo 1 / per-sample complex noise SD (200; 0 = noise-free)",
    )
    s.add_argument("--b0-scale", type=float, default=1.0, help="scale of the B0 map (1; 0 = no off-resonance)")
    s.add_argument("--tumour", choices=["rim-core", "solid", "none"], default="rim-core", help="tumour model")
    s.add_argument("--marker", action="store_true", help="add the right-anterior-superior orientation marker")
    s.add_argument(
        "--tube",
        action="append",
        type=_floats,
        default=None,
        metavar="X,Y,Z,R,L,MM[,AX,AY,AZ]",
        help="a calibration tube (repeatable; replaces the default four): centre x,y,z in RAS mm, radius and length in mm, "
        "concentration in mM, optional axis (RAS; default S-I = along B0)",
    )
    s.add_argument("--tube-t1-ms", type=float, default=None, help="T1 of the tubes in ms (saline 55)")
    s.add_argument("--tube-t2s-ms", type=float, default=None, help="T2* of the tubes in ms (saline 50)")
    s.add_argument("--head-scale", type=float, default=None, help="scale of the head about its centre (0.85; 0.5-1.5)")
    s.add_argument("--head-offset-mm", type=_floats, default=None, metavar="X,Y,Z", help="head centre in RAS mm (0,0,0)")
    s.add_argument(
        "--relax",
        action="append",
        default=None,
        metavar="NAME=T1,T2S,T2L,F",
        help="relaxation of one compartment (repeatable): T1, short and long T2* in ms and the short fraction; NAME one of "
        "grey_matter, white_matter, csf_sulcal, csf_ventricles, vitreous, oedema, tumour_rim, necrotic_core",
    )
    s.add_argument(
        "--family-case",
        default=None,
        metavar="SEED,INDEX",
        help="simulate case INDEX of the validation family drawn with SEED (recon.validate): its trajectory, matrix, "
        "tubes, head, relaxation, SNR and B0 replace the other options",
    )
    s.add_argument("--coils", type=int, default=1, help="receive channels (1)")
    s.add_argument(
        "--receive",
        choices=["uniform", "birdcage"],
        default="uniform",
        help="single-channel receive profile (uniform)",
    )
    s.add_argument("--oversampling", type=float, default=2.0, help="simulation grid / reconstruction grid (>= 2)")
    s.add_argument("--threads", type=int, default=None, help="NUFFT threads (1 gives bit-reproducible files)")
    p.add_argument("--ismrmrd", action="store_true", help="also write DIR/raw.h5 (ISMRMRD with trajectory)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def make_trajectory(args: argparse.Namespace):
    """The trajectory the options describe."""
    from recon.errors import ConfigError
    from recon.trajectory import design_trajectory, read_trajectory

    if args.traj_file:
        return read_trajectory(args.traj_file)
    if args.matrix < 4:
        raise ConfigError(f"--matrix must be >= 4, got {args.matrix}")
    gmax = None if args.traj_readout_ms is not None else (args.traj_gmax_mt_m or 4.0) * 1e-3
    kw = dict(
        fov_m=args.fov_mm * 1e-3,
        res_m=args.fov_mm * 1e-3 / args.matrix,
        p=args.traj_p,
        gmax_t_per_m=gmax,
        readout_s=None if args.traj_readout_ms is None else args.traj_readout_ms * 1e-3,
        smax_t_per_m_per_s=args.traj_smax_t_m_s,
        dwell_s=args.dwell_us * 1e-6,
        undersampling=args.traj_undersampling,
    )
    from recon import limits

    limits.check_matrix(args.matrix, "--matrix")
    limits.check_design({"generator": args.traj, "n_projections": args.traj_projections, **kw})
    if args.traj != "radial" and args.traj_projections is not None:
        raise ConfigError("--traj-projections applies to --traj radial only")
    return design_trajectory(args.traj, n_projections=args.traj_projections, **kw)


def make_phantom(args: argparse.Namespace, traj):
    """The phantom the options describe (tubes, head scale and offset, relaxation); warns about tubes too thin."""
    import dataclasses
    import logging

    from recon.errors import ConfigError
    from recon.sim.phantom import DEFAULT_COMPARTMENTS, DEFAULT_HEAD_SCALE, HeadPhantom, Tube, default_tubes

    log = logging.getLogger("recon.sim")
    comps = dict(DEFAULT_COMPARTMENTS)
    for item in args.relax or []:
        name, _, vals = item.partition("=")
        if name not in comps:
            raise ConfigError(f"--relax: unknown compartment {name!r}; one of {', '.join(comps)}")
        v = _floats(vals)
        if len(v) != 4 or min(v[:3]) <= 0 or not 0 <= v[3] <= 1:
            raise ConfigError(f"--relax {item}: expected T1,T2S,T2L (ms, > 0) and a fraction in [0, 1]")
        comps[name] = dataclasses.replace(
            comps[name], t1_s=v[0] * 1e-3, t2s_short_s=v[1] * 1e-3, t2s_long_s=v[2] * 1e-3, frac_short=v[3]
        )
    extra = {}
    if args.tube_t1_ms is not None:
        extra["t1_s"] = args.tube_t1_ms * 1e-3
    if args.tube_t2s_ms is not None:
        extra["t2s_s"] = args.tube_t2s_ms * 1e-3
    vox = float(min(traj.fov_m)) / float(max(traj.matrix))
    if args.tube:
        tubes = []
        for i, t in enumerate(args.tube):
            if len(t) not in (6, 9):
                raise ConfigError(f"--tube {t}: expected X,Y,Z,R,L,MM or X,Y,Z,R,L,MM,AX,AY,AZ")
            axis = (0.0, 0.0, 1.0) if len(t) == 6 else (-t[6], -t[7], t[8])  # RAS -> LPS
            tubes.append(
                Tube(
                    f"tube_{i + 1}_{t[5]:g}mM",
                    (-t[0] * 1e-3, -t[1] * 1e-3, t[2] * 1e-3),
                    t[3] * 1e-3,
                    t[4] * 1e-3,
                    t[5],
                    axis=axis,
                    **extra,
                )
            )
    else:
        tubes = [dataclasses.replace(t, **extra) for t in default_tubes()]
        small = min(t.radius_m for t in tubes) / vox
        if small < 2.0:
            scale = 2.0 / small
            corners = vox > COARSE_VOXEL_M
            if corners:  # 2-voxel tubes do not fit beside the head: the FOV's corners, outside the supported sphere
                tubes = [dataclasses.replace(t, **extra) for t in default_tubes(layout="corners")]
            tubes = [dataclasses.replace(t, radius_m=t.radius_m * scale) for t in tubes]
            log.warning(
                "the default tubes (radius 13 mm) are %.1f voxels at %.1f mm voxels: scaled to %.1f mm so that narecon run "
                "can calibrate (it needs about 2 voxels)%s; give --tube to place your own",
                small,
                vox * 1e3,
                tubes[0].radius_m * 1e3,
                ", in the FOV's corners (outside the alias-free sphere)" if corners else "",
            )
    off = args.head_offset_mm or [0.0, 0.0, 0.0]
    if len(off) != 3:
        raise ConfigError(f"--head-offset-mm needs three numbers, got {off}")
    return HeadPhantom(
        tumour=args.tumour,
        marker=args.marker,
        b0_scale=args.b0_scale,
        tubes=tuple(tubes),
        compartments=comps,
        head_scale=DEFAULT_HEAD_SCALE if args.head_scale is None else args.head_scale,
        centre_m=(-off[0] * 1e-3, -off[1] * 1e-3, off[2] * 1e-3),
    )


def simulate_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`recon.sim.simulate` from the ``narecon simulate`` options (SI units)."""
    return dict(
        te_s=[t * 1e-3 for t in args.te_ms],
        tr_s=args.tr_ms * 1e-3,
        flip_deg=args.flip_deg,
        field_t=args.field_t,
        snr=None if args.snr == 0 else args.snr,
        n_coils=args.coils,
        receive=args.receive,
        oversampling=args.oversampling,
        seed=args.seed,
        n_threads=args.threads,
    )


COARSE_VOXEL_M = 6.5e-3
"""Above this voxel size the default tubes, scaled to 2 voxels, go to the FOV's corners (no room beside the head).

At 32^3 (7 mm voxels) 2-voxel tubes beside the head do not separate from it or from each other
(`narecon run` found 3 of 4), so the corners start below 7 mm."""


def run(args: argparse.Namespace) -> int:
    from recon.atomic import check_output
    from recon.errors import ConfigError
    from recon.log import stage
    from recon.sim import simulate, write_simulation

    check_output(args.out, force=args.force, inputs=[args.traj_file], kind="dir")
    if args.snr < 0 or not math.isfinite(args.snr) and args.snr != math.inf:
        raise ConfigError(f"--snr must be >= 0 (0 = noise-free), got {args.snr}")
    if args.family_case:
        from recon.validate import draw_case
        from recon.validate.cases import phantom_for, trajectory_for

        try:
            seed, index = (int(v) for v in args.family_case.split(","))
        except ValueError:
            raise ConfigError(f"--family-case must be SEED,INDEX, got {args.family_case!r}") from None
        case = draw_case(seed, index)
        with stage("trajectory"):
            traj = trajectory_for(case)
        phantom = phantom_for(case)
        args.snr, args.seed = case["snr"], case["noise_seed"]
    else:
        with stage("trajectory"):
            traj = make_trajectory(args)
        phantom = make_phantom(args, traj)
    res = simulate(phantom, traj, **simulate_options(args))
    with stage("write outputs"):
        write_simulation(res, traj, args.out, ismrmrd=args.ismrmrd, overwrite=args.force, phantom=phantom)
    sim = res.truth.info["simulation"]
    summary = {
        "out": args.out,
        "trajectory": traj.params.get("generator", "file"),
        "projections": traj.n_projections,
        "samples": traj.n_samples,
        "echoes_ms": list(args.te_ms),
        "coils": args.coils,
        "matrix": list(traj.matrix),
        "simulation_grid": sim["grid"],
        "time_bins": sim["n_bins"],
        "bin_width_us": sim["bin_width_s"] * 1e6,
        "bin_error_over_sigma": sim["bin_error_bound_over_sigma"],
        "snr": sim["snr"],
        "image_noise_mM": sim["image_noise_mM_gridding_analytic_dcf"],
        "seed": args.seed,
    }
    if args.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    else:
        print(
            f"wrote {args.out}/raw.dat and truth ({traj.params.get('generator', 'file')}, "
            f"{traj.n_projections} projections x {traj.n_samples} samples, {len(args.te_ms)} echoes, "
            f"{args.coils} coil(s))"
        )
        print(
            f"  simulation grid {sim['grid'][0]}^3 for a {traj.matrix[0]}^3 reconstruction, "
            f"{sim['n_bins']} time bins of {sim['bin_width_s'] * 1e6:.0f} us"
        )
        if sim["snr"]:
            print(
                f"  SNR {sim['snr']:g} (raw DC), "
                f"bin model error <= {sim['bin_error_bound_over_sigma']:.2f} sigma, "
                f"gridding image noise ~ {sim['image_noise_mM_gridding_analytic_dcf']:.2f} mM"
            )
        else:
            print("  noise-free")
    return 0
