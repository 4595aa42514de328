"""Run and measure validation cases: simulate, reconstruct in memory (:func:`recon.reconstruct`), compare to truth.

Measurement (DESIGN.md "What accuracy means"):

* every compartment in the truth's own labels, eroded by the point response: the voxels whose
  centres lie more than :data:`PSF_ERODE_VOX` voxels (the TPI PSF FWHM, 1.6) from any voxel of
  another label; bias = mean reconstructed TSC / mean true (voxel-averaged) TSC - 1 over that mask.
  A compartment with fewer than :data:`MIN_VOXELS` voxels left is "thinner than the point
  response" and not scored;
* the tubes: each tube's back-calculated deviation from the calibration line (mM);
* a 2 mm sphere at the lesion centre (the voxels within 2 mm; the nearest voxel when none), reconstructed
  vs true mean TSC.

Targets (issue 15) by class: tubes |dev| <= 1.5 mM; fluids (CSF, vitreous) +-3 %; lesions (tumour
rim, necrotic core, oedema) +-5 %; GM/WM +-5 %; 2 mm sphere +-10 %. A case is in the validated
regime when all its tubes have radius >= 2 voxels (all lie inside the alias-free sphere by
construction); cases with thinner tubes are held to twice the bounds.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

log = logging.getLogger("recon.validate")

PSF_ERODE_VOX = 1.6
"""Erosion of the truth labels (voxels): the TPI point response FWHM."""
MIN_VOXELS = 3
"""Compartments with fewer voxels after erosion are not scored."""
SPHERE_MM = 2.0
"""Radius of the lesion-centre sphere (mm), as in the clinical study."""

CLASSES = {
    "csf_sulcal": "fluid",
    "csf_ventricles": "fluid",
    "vitreous": "fluid",
    "grey_matter": "tissue",
    "white_matter": "tissue",
    "oedema": "lesion",
    "tumour_rim": "lesion",
    "necrotic_core": "lesion",
}
BOUNDS = {"fluid": 0.03, "lesion": 0.05, "tissue": 0.05, "sphere": 0.10, "tube_mM": 1.5}
MODES = {"default": {}, "iterative": {"b0": "iterative"}}


def tubes_csv(case: dict[str, Any], path: Path) -> Path:
    """The tubes file a user would write for this case (RAS mm centre, radius, mM, length, axis)."""
    rows = ["x_mm,y_mm,z_mm,radius_mm,concentration_mM,length_mm,ax,ay,az"]
    for t in case["tubes"]:
        c = np.asarray(t["centre_m"]) * 1e3
        a = np.asarray(t["axis"])
        vals = (-c[0], -c[1], c[2], t["radius_m"] * 1e3, t["concentration_mM"], t["length_m"] * 1e3, -a[0], -a[1], a[2])
        rows.append(",".join(f"{v:.6g}" for v in vals))
    path.write_text("\n".join(rows) + "\n")
    return path


def simulate_case(case: dict[str, Any]):
    """(SimResult, trajectory) of a case."""
    from recon.sim import simulate
    from recon.validate.cases import phantom_for, trajectory_for

    traj = trajectory_for(case)
    res = simulate(phantom_for(case), traj, snr=case["snr"], seed=case["noise_seed"])
    return res, traj


def _eroded(labels: np.ndarray, lab: int) -> np.ndarray:
    m = labels == lab
    if not m.any():
        return m
    return ndimage.distance_transform_edt(m) > PSF_ERODE_VOX


def measure(case: dict[str, Any], truth, result) -> list[dict[str, Any]]:
    """Rows (quantity, class, value, bound, pass) comparing a reconstruction with the truth."""
    from recon.calibrate.tubes import sphere_mask

    rows: list[dict[str, Any]] = []
    thin = min(t["radius_vox"] for t in case["tubes"]) < 2.0
    scale = 2.0 if thin else 1.0
    tsc = np.asarray(result.tsc_mM, dtype=np.float64)
    info = {c["name"]: c for c in truth.info["compartments"]}
    for name, cls in CLASSES.items():
        if name not in info:
            continue
        m = _eroded(truth.labels, info[name]["label"])
        n = int(m.sum())
        row = {"quantity": name, "class": cls, "n_voxels": n, "bound": BOUNDS[cls] * scale}
        if n < MIN_VOXELS:
            row.update(value=None, passed=None, note="thinner than the point response")
        else:
            bias = float(tsc[m].mean() / truth.tsc_mM[m].astype(np.float64).mean() - 1.0)
            row.update(value=bias, passed=abs(bias) <= row["bound"])
        rows.append(row)
    fit = result.calibration.result.fit
    for c, d in zip(fit.concentrations_mM, fit.deviations_mM):
        rows.append(
            {
                "quantity": f"tube {c:.1f} mM",
                "class": "tube_mM",
                "n_voxels": None,
                "bound": BOUNDS["tube_mM"] * scale,
                "value": float(d),
                "passed": abs(d) <= BOUNDS["tube_mM"] * scale,
            }
        )
    # 2 mm sphere at the lesion centre
    from recon.sim.phantom import HeadPhantom

    lps = np.asarray(case["head_centre_mm"]) + case["head_scale"] * np.asarray(HeadPhantom.tumour_centre) * 1e3
    ras = (-lps[0], -lps[1], lps[2])
    m = sphere_mask(tsc.shape, result.affine, ras, SPHERE_MM)
    if not m.any():
        from recon.calibrate.tubes import mm_to_vox

        v = np.clip(np.round(mm_to_vox(result.affine, ras)).astype(int), 0, np.asarray(tsc.shape) - 1)
        m[tuple(v)] = True
    bias = float(tsc[m].mean() / truth.tsc_mM[m].astype(np.float64).mean() - 1.0)
    rows.append(
        {
            "quantity": "2 mm sphere at lesion centre",
            "class": "sphere",
            "n_voxels": int(m.sum()),
            "bound": BOUNDS["sphere"] * scale,
            "value": bias,
            "passed": abs(bias) <= BOUNDS["sphere"] * scale,
        }
    )
    return rows


def run_case(case: dict[str, Any], modes=("default",), workdir: Path | None = None, plans=None) -> dict[str, Any]:
    """Simulate one case, reconstruct it in each mode, measure; returns a JSON-ready record."""
    import tempfile

    from recon.pipeline import reconstruct

    t0 = time.perf_counter()
    res, traj = simulate_case(case)
    t_sim = time.perf_counter() - t0
    edge_mm = float(res.truth.info["phantom"]["edge_mm"])
    out: dict[str, Any] = {"case": case, "simulation_s": t_sim, "modes": {}}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        csv = tubes_csv(case, Path(tmp) / "tubes.csv")
        for mode in modes:
            t1 = time.perf_counter()
            opts = {"calibration": str(csv), "tube_edge_mm": edge_mm, **MODES[mode]}
            rec: dict[str, Any] = {}
            try:
                r = reconstruct(res.acquisition, opts, trajectory=traj, plans=plans)
                rec["rows"] = measure(case, res.truth, r)
                rec["warnings"] = list(r.calibration.result.warnings)
                f = r.calibration.result.fit
                rec["fit"] = {"slope": f.slope, "intercept": f.intercept, "r2": f.r2}
            except Exception as e:  # a failed case is a result, not a crash of the draw
                log.error("case %d (%s): %s", case["index"], mode, e)
                rec["error"] = f"{type(e).__name__}: {e}"
                rec["rows"] = []
            rec["seconds"] = time.perf_counter() - t1
            out["modes"][mode] = rec
    return out


def summarise(record: dict[str, Any], mode: str) -> dict[str, Any]:
    """One line per case and mode: worst bias per class and pass/fail."""
    rec = record["modes"].get(mode)
    if rec is None:
        return {}
    c = record["case"]
    d: dict[str, Any] = {
        "case": c["index"],
        "mode": mode,
        "trajectory": c["trajectory"],
        "matrix": c["matrix"],
        "snr": c["snr"],
        "n_tubes": len(c["tubes"]),
        "min_tube_radius_vox": min(t["radius_vox"] for t in c["tubes"]),
        "tissue_t2s_short_ms": 1e3 * c["relaxation"]["white_matter"]["t2s_short_s"],
        "error": rec.get("error"),
    }
    scored = [r for r in rec["rows"] if r.get("passed") is not None]
    for cls in ("tube_mM", "fluid", "lesion", "tissue", "sphere"):
        vals = [r["value"] for r in scored if r["class"] == cls]
        d[f"worst_{cls}"] = max(vals, key=abs) if vals else None
    d["passed"] = bool(scored) and all(r["passed"] for r in scored) and not rec.get("error")
    d["n_failed"] = sum(1 for r in scored if not r["passed"])
    return d


def fmt(v, pct: bool = True) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan"
    return f"{100 * v:+.1f} %" if pct else f"{v:+.2f}"
