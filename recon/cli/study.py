"""``narecon study``: longitudinal analysis of a sessions table (ROIs, paired tests, volumes, report)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="longitudinal study analysis: tables, paired t-tests, volumes, figures, report",
        description="Measure the ROIs of every session in SESSIONS.csv (columns subject, lesion, "
        "timepoint, path, rois; optional a_mm, b_mm, m_mm, c) and write CSV tables, "
        "PNG figures and report.md into --out.",
    )
    p.add_argument("sessions", help="sessions table (CSV)")
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--ref", default="CSF", help="reference tissue for ratios (CSF)")
    p.add_argument("--baseline", default=None, help="baseline time point label (default: the earliest, e.g. pre)")
    p.add_argument(
        "--rise-threshold-mM",
        dest="rise_threshold_mM",
        type=float,
        default=0.0,
        help="flag a lesion when TSC at the last time point exceeds the previous one by more than this concentration (mM; 0)",
    )
    # the old spelling read as millimetres: kept as a deprecated alias
    p.add_argument("--rise-threshold-mm", dest="rise_threshold_old", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--supersample", type=int, default=None, help="sub-voxel points per axis for sphere ROIs (32)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.analysis import roi as R
    from recon.analysis.report import write_study_outputs
    from recon.analysis.study import measure_study
    from recon.atomic import atomic_dir, check_output
    from recon.errors import ConfigError
    from recon.log import stage

    if args.rise_threshold_old is not None:
        import logging

        logging.getLogger("recon.cli").warning("--rise-threshold-mm is deprecated (it is a concentration): use --rise-threshold-mM")
        args.rise_threshold_mM = args.rise_threshold_old
    out = check_output(args.out, force=args.force, inputs=[args.sessions], kind="dir")
    ss = R.SUPERSAMPLE if args.supersample is None else args.supersample
    if ss < 1:
        raise ConfigError(f"--supersample must be >= 1, got {ss}")
    with stage("ROI measurements"):
        data = measure_study(args.sessions, ref=args.ref, baseline=args.baseline, supersample=ss)
    with stage("tables, figures, report"), atomic_dir(out, overwrite=args.force) as tmp:
        written = write_study_outputs(data, tmp, args.rise_threshold_mM, sessions_path=args.sessions)
    n_files = sum(1 for f in out.iterdir() if f.is_file())
    print(f"wrote {out}/ ({n_files} files: {len(written) - 1} CSV tables, figures, report.md)")
    return 0
