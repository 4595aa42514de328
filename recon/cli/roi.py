"""``narecon roi``: ROI statistics (spheres with fractional-overlap weights, label masks) on NIfTI volumes."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys


def register(sub) -> None:
    p = sub.add_parser(
        "roi",
        help="ROI statistics (mean, SD, min, max, volume, ratio to CSF) on NIfTI volumes",
        description="Measure ROIs from a CSV (columns name, x,y,z in mm or i,j,k in voxels, "
        "radius_mm; or mask, label) on one or more NIfTI images.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="NIfTI volume(s): TSC map, echo images, field map")
    p.add_argument("--rois", required=True, help="ROI table (CSV)")
    p.add_argument("--ref", default="CSF", help="reference ROI name for ratio_ref (CSF); 'none' for no ratio")
    p.add_argument("--out", default=None, help="output CSV (default: print the table)")
    p.add_argument(
        "--weights",
        default=None,
        help="also write the per-voxel ROI weights (CSV: image, roi, i, j, k, weight)",
    )
    p.add_argument(
        "--supersample",
        type=int,
        default=None,
        help="sub-voxel points per axis for sphere boundary voxels (32)",
    )
    p.add_argument(
        "--psf-fwhm-mm",
        type=float,
        default=None,
        help="FWHM (mm) of the Gaussian point response for the partial-volume corrected mean_pvc "
        "(GTM); default 1.6 voxels, the ideal 3D radial/TPI PSF",
    )
    p.add_argument("--no-pvc", action="store_true", help="skip the partial-volume correction (mean_pvc)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recon.analysis import roi as R
    from recon.atomic import check_output
    from recon.errors import ConfigError
    from recon.log import stage

    for out in (args.out, args.weights):
        if out:
            check_output(out, force=args.force, inputs=[*args.images, args.rois], kind="file")
    ss = R.SUPERSAMPLE if args.supersample is None else args.supersample
    if ss < 1:
        raise ConfigError(f"--supersample must be >= 1, got {ss}")
    rois = R.read_roi_table(args.rois)
    ref = None if args.ref.lower() == "none" else args.ref
    if ref is not None and not any(
        r.name.lower() == ref.lower() or R.tissue_of(r.name, r.tissue) == R.tissue_of(ref) for r in rois
    ):
        if args.ref != "CSF":
            raise ConfigError(f"reference ROI {args.ref!r} is not in the ROI table {args.rois}")
        logging.getLogger("recon.cli").warning("no CSF ROI in %s: the ratio column stays empty", args.rois)
        ref = None
    images = [R.load_image(p, name=p) for p in args.images]
    with stage("ROI statistics"):
        res = R.measure(images, rois, ref=ref, supersample=ss, keep_weights=bool(args.weights), source=args.rois)
    if not args.no_pvc:
        from recon.analysis.pvc import apply_pvc

        if args.psf_fwhm_mm is not None and not args.psf_fwhm_mm > 0:
            raise ConfigError(f"--psf-fwhm-mm must be positive, got {args.psf_fwhm_mm}")
        with stage("partial-volume correction (GTM)"):
            apply_pvc(res, images, rois, args.psf_fwhm_mm)
    if args.out:
        R.write_table(res, args.out)
        print(f"wrote {args.out} ({len(res)} rows)")
    if args.weights:
        R.write_weights(res, args.weights)
        print(f"wrote {args.weights}")
    if not args.out:
        w = max(len(os.path.basename(r.image)) for r in res)
        nw = max(len(r.roi) for r in res)
        print(
            f"{'image':<{w}}  {'roi':<{nw}}  {'unit':<6} {'mean':>9} {'sd':>9} {'min':>9} {'max':>9} {'vol_mm3':>9} "
            f"{'voxels':>6} {'ratio':>6} {'mean_pvc':>9}"
        )
        for r in res:
            f = lambda v, n=2: "" if isinstance(v, float) and math.isnan(v) else f"{v:.{n}f}"  # noqa: E731
            print(
                f"{os.path.basename(r.image):<{w}}  {r.roi:<{nw}}  {r.unit:<6} {f(r.mean):>9} {f(r.sd):>9} "
                f"{f(r.min):>9} {f(r.max):>9} {f(r.volume_mm3, 1):>9} {r.n_voxels:>6} {f(r.ratio_ref):>6} "
                f"{f(r.mean_pvc):>9}",
                file=sys.stdout,
            )
        models = sorted({r.pvc_model for r in res if r.pvc_model})
        for m in models:
            print(f"mean_pvc: {m}")
    return 0
