#!/usr/bin/env python
"""The shipped sample measured in its own truth labels: the table of benchmarks/validation.md.

Reconstructs ``data_samples/raw.dat`` with the README's defaults and with ``--regions`` over the
shipped labels (4x finer, ``truth_labels_fine.nii.gz``; recon grid, ``truth_labels.nii.gz``), and
measures each compartment against ``truth.json``: the eroded voxel mean of the TSC map (truth labels
eroded by the point response, as :func:`recon.validate.run.measure`, and by one voxel), also for
``--b0 iterative`` with either decay model, with the hamming window and with TV (``--variants iterative
iterative-r2star iterative-hamming iterative-tv``), and the regional value
(``regions.tsv``'s ``model_mM``). Prints a Markdown table of relative biases (%).

    python benchmarks/sample_accuracy.py [--variants readme fine coarse] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT / "data_samples"

VARIANTS = {
    "readme": ("README command", {}),
    "iterative": ("--b0 iterative", {"b0": "iterative"}),
    "iterative-r2star": ("--b0 iterative --iter-decay r2star-map", {"b0": "iterative", "iter_decay": "r2star-map"}),
    "iterative-hamming": ("--b0 iterative --iter-window hamming", {"b0": "iterative", "iter_window": "hamming"}),
    "iterative-tv": ("--b0 iterative --iter-regulariser tv", {"b0": "iterative", "iter_regulariser": "tv"}),
    "fine": ("regional, shipped 4x labels", {"regions": str(SAMPLE / "truth_labels_fine.nii.gz")}),
    "coarse": ("regional, recon-grid labels", {"regions": str(SAMPLE / "truth_labels.nii.gz")}),
}
VOXEL_MAP = ("readme", "iterative", "iterative-r2star", "iterative-hamming", "iterative-tv")
"""Variants whose voxel map is measured (eroded means); the others are measured by their regional values."""


def measure(options: dict) -> dict[str, dict]:
    """Per compartment: eroded voxel-mean bias, regional bias (None where not measured), eroded voxels."""
    import nibabel as nib
    from scipy import ndimage

    import recon
    from recon.validate.run import MIN_VOXELS, PSF_ERODE_VOX

    info = json.loads((SAMPLE / "truth.json").read_text())
    labels = nib.load(SAMPLE / "truth_labels.nii.gz").get_fdata()
    truth = nib.load(SAMPLE / "truth_tsc_mM.nii.gz").get_fdata()
    edge = float(info["phantom"].get("edge_mm", 0.0))
    r = recon.reconstruct(SAMPLE / "raw.dat", {"qa": False, "tube_edge_mm": edge, **options})
    regional = r.regions.by_name() if r.regions is not None else {}
    out = {}
    for c in info["compartments"]:
        dist = ndimage.distance_transform_edt(labels == c["label"])
        m, m1 = dist > PSF_ERODE_VOX, dist > 1.0
        n = int(m.sum())
        eroded = float(r.tsc_mM[m].mean() / truth[m].mean() - 1) if n >= MIN_VOXELS else None
        eroded1 = float(r.tsc_mM[m1].mean() / truth[m1].mean() - 1) if m1.sum() >= MIN_VOXELS else None
        reg = regional.get(c["name"])
        out[c["name"]] = {
            "truth_mM": float(c["tsc_mM"]),
            "eroded": eroded,
            "eroded_voxels": n,
            "eroded_1vox": eroded1,
            "regional": None if reg is None else float(reg.model_mM / c["tsc_mM"] - 1),
        }
    return out


def table(results: dict[str, dict]) -> str:
    names = list(next(iter(results.values())))
    cols = []
    for key, res in results.items():
        label = VARIANTS[key][0]
        if key in VOXEL_MAP:
            cols.append((f"eroded voxel mean ({label})", res, "eroded"))
            cols.append((f"eroded by one voxel ({label})", res, "eroded_1vox"))
        else:
            cols.append((label, res, "regional"))
    lines = ["| compartment | truth mM | " + " | ".join(c[0] for c in cols) + " |", "|---" * (2 + len(cols)) + "|"]
    for name in names:
        cells = []
        for _, res, field in cols:
            v = res[name][field]
            cell = "n/a" if v is None else f"{100 * v:+.1f} %"
            if field == "eroded" and v is not None:
                cell += f" ({res[name]['eroded_voxels']} voxels)"
            cells.append(cell)
        lines.append(f"| {name} | {next(iter(results.values()))[name]['truth_mM']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["readme", "fine", "coarse"])
    ap.add_argument("--out", type=Path, help="write the measurements as JSON here")
    args = ap.parse_args(argv)
    results = {v: measure(VARIANTS[v][1]) for v in args.variants}
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
