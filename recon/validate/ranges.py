"""The validation family: parameter ranges, fixed in advance, and the seeded draw of one case.

These ranges are the one place that defines the family (DESIGN.md "What accuracy means"). They
were committed before any validation result was looked at; changing them after seeing results
would turn the validation into tuning. Every case is drawn from them with ``numpy``'s PCG64 seeded
by ``(seed, case index)``, so case i of seed S is the same whatever N is.

Geometry of the draw (patient LPS metres, relative to the FOV centre):

* trajectory alternates TPI / radial with the case index; the matrix is 64 for every third case
  (index % 3 == 2), else 40 (64^3 costs several times a 40^3 case on the CPU);
* the supported (alias-free) sphere has radius ``FOV / 2 / sqrt(undersampling)``;
* the head (the phantom's brain ellipsoid, scaled and shifted) must fit inside it;
* tubes (3-6) are finite cylinders, radius 1.5-5 voxels and at most 17.5 mm (no vial wider than
  35 mm; at 40^3 that caps the range at 3.1 voxels: a 5-voxel tube of 28 mm radius does not fit
  beside a head inside the supported sphere), along B0 (z) or oblique, anywhere inside
  the supported sphere (the whole cylinder) and at least one voxel
  clear of the head and of each other; positions by rejection sampling, the length shrinks (never
  below 4 voxels) when no position is found;
* tube concentrations: distinct, at least 15 mM apart, in 20-150 mM;
* relaxation of every compartment within the literature ranges of :data:`recon.physics.RELAXATION_RANGES`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from recon.physics import RELAXATION_RANGES

FAMILY_VERSION = 1
"""Bump when the ranges change (a new family: earlier results are not comparable)."""

RANGES: dict[str, Any] = {
    "fov_mm": 224.0,
    "trajectory": ("tpi", "radial"),  # alternating with the case index
    "matrix": (40, 64),  # 64 for index % 3 == 2
    "tpi_p": (0.2, 0.4),
    "gmax_mt_m": (3.0, 5.0),
    "undersampling": (1.0, 1.25),
    "snr": (100.0, 150.0, 300.0),  # raw-data SNR (recon.sim), one of these
    "b0_scale": (0.5, 1.5),
    "tumour": ("rim-core", "solid"),
    "head_scale": (0.85, 1.0),
    "head_offset_mm": (-5.0, 5.0),  # per axis
    "n_tubes": (3, 6),  # inclusive
    "tube_radius_vox": (1.5, 5.0),
    "tube_radius_max_mm": 17.5,  # no vial wider than 35 mm: at 40^3 the radius range is 1.5-3.1 voxels
    "tube_length_mm": (30.0, 90.0),
    "tube_oblique_probability": 0.4,
    "tube_tilt_deg": (10.0, 40.0),  # oblique tubes: angle to z
    "tube_mM": (20.0, 150.0),
    "tube_min_separation_mM": 15.0,
    "tube_clearance_vox": 1.0,
    "relaxation": RELAXATION_RANGES,
}
"""The family's ranges (uniform draws unless a tuple of choices is listed)."""

BRAIN_SEMI_M = (0.068, 0.084, 0.060)
"""Semi-axes of the phantom's head (outer CSF surface) at head_scale 1 (recon.sim.HeadPhantom)."""
EYES_M = (((-0.032, -0.080, -0.038), 0.011), ((0.032, -0.080, -0.038), 0.011))
"""Eyes (centre relative to the head, radius) at head_scale 1: they protrude from the ellipsoid."""

TISSUE_COMPARTMENTS = ("grey_matter", "white_matter", "oedema", "tumour_rim", "necrotic_core")
FLUID_COMPARTMENTS = ("csf_sulcal", "csf_ventricles", "vitreous")


def alias_free_radius_m(fov_m: float, undersampling: float = 1.0) -> float:
    """Radius (m) of the sphere a 3D radial/TPI acquisition supports without aliasing: FOV/2/sqrt(U)."""
    return 0.5 * float(fov_m) / math.sqrt(max(float(undersampling), 1.0))


def _u(rng, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def _head_distance(p: np.ndarray, centre: np.ndarray, semi: np.ndarray) -> np.ndarray:
    """Approximate distance (m) from points p (..., 3) to the head (ellipsoid and eyes; negative inside)."""
    u = np.asarray(p, dtype=np.float64) - centre
    q = np.sqrt(((u / semi) ** 2).sum(-1))
    r = np.sqrt((u**2).sum(-1))
    d = (q - 1.0) * np.where(q > 1e-9, r / np.maximum(q, 1e-9), float(semi.min()))
    scale = float(semi[0] / BRAIN_SEMI_M[0])
    for c, rad in EYES_M:
        d = np.minimum(d, np.sqrt(((u - scale * np.asarray(c)) ** 2).sum(-1)) - scale * rad)
    return d


def _cylinder_points(centre, axis, radius, length, n_ring: int = 16, n_len: int = 9) -> np.ndarray:
    """Points on the surface of a cylinder (for clearance tests)."""
    axis = axis / np.linalg.norm(axis)
    a = np.array([1.0, 0, 0]) if abs(axis[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(axis, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    ang = np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
    ring = np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2
    pts = [centre + s * axis + radius * ring for s in np.linspace(-length / 2, length / 2, n_len)]
    pts += [centre + s * axis for s in (-length / 2, length / 2)]
    return np.concatenate([np.atleast_2d(p) for p in pts])


def _segment_distance(c1, a1, l1, c2, a2, l2) -> float:
    """Approximate shortest distance between two axis segments (sampled)."""
    s = np.linspace(-0.5, 0.5, 21)
    p = c1 + s[:, None] * l1 * a1
    q = c2 + s[:, None] * l2 * a2
    return float(np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1)).min())


def draw_case(seed: int, index: int) -> dict[str, Any]:
    """Case ``index`` of the family for ``seed``: a JSON-ready dict of every simulation parameter."""
    rng = np.random.default_rng([int(seed), int(index)])
    R = RANGES
    fov = R["fov_mm"] * 1e-3
    traj = R["trajectory"][index % 2]
    matrix = R["matrix"][1] if index % 3 == 2 else R["matrix"][0]
    vox = fov / matrix
    us = _u(rng, R["undersampling"])
    r_sup = alias_free_radius_m(fov, us)
    case: dict[str, Any] = {
        "index": int(index),
        "seed": int(seed),
        "family_version": FAMILY_VERSION,
        "trajectory": traj,
        "matrix": int(matrix),
        "fov_mm": R["fov_mm"],
        "undersampling": us,
        "tpi_p": _u(rng, R["tpi_p"]),
        "gmax_mt_m": _u(rng, R["gmax_mt_m"]),
        "snr": float(rng.choice(R["snr"])),
        "noise_seed": int(rng.integers(0, 2**31 - 1)),
        "b0_scale": _u(rng, R["b0_scale"]),
        "tumour": str(rng.choice(R["tumour"])),
        "supported_radius_mm": r_sup * 1e3,
    }
    # head: scale and offset; shrink the offset until the head fits inside the supported sphere
    scale = _u(rng, R["head_scale"])
    semi = np.asarray(BRAIN_SEMI_M) * scale
    off = np.array([_u(rng, R["head_offset_mm"]) for _ in range(3)]) * 1e-3
    while np.linalg.norm(off) + semi.max() > r_sup - vox and np.linalg.norm(off) > 1e-4:
        off *= 0.5
    case["head_scale"] = scale
    case["head_centre_mm"] = (off * 1e3).tolist()
    # relaxation per compartment
    rr = R["relaxation"]
    relax = {}
    for name in TISSUE_COMPARTMENTS:
        relax[name] = {k: _u(rng, v) for k, v in rr["tissue"].items()}
    for name in FLUID_COMPARTMENTS + ("tubes",):
        d = {k: _u(rng, v) for k, v in rr["fluid"].items()}
        d.update(t2s_short_s=d["t2s_long_s"], frac_short=0.0)
        relax[name] = d
    case["relaxation"] = relax
    # tubes
    n = int(rng.integers(R["n_tubes"][0], R["n_tubes"][1] + 1))
    conc: list[float] = []
    while len(conc) < n:
        c = _u(rng, R["tube_mM"])
        if all(abs(c - x) >= R["tube_min_separation_mM"] for x in conc):
            conc.append(c)
    clear = R["tube_clearance_vox"] * vox
    tubes: list[dict[str, Any]] = []
    for c in conc:
        r_hi = min(R["tube_radius_vox"][1], R["tube_radius_max_mm"] * 1e-3 / vox)
        radius = _u(rng, (R["tube_radius_vox"][0], r_hi)) * vox
        length = _u(rng, R["tube_length_mm"]) * 1e-3
        if rng.uniform() < R["tube_oblique_probability"]:
            tilt = math.radians(_u(rng, R["tube_tilt_deg"]))
            az = rng.uniform(0, 2 * np.pi)
            axis = np.array([math.sin(tilt) * math.cos(az), math.sin(tilt) * math.sin(az), math.cos(tilt)])
        else:
            axis = np.array([0.0, 0.0, 1.0])
        placed = None
        while placed is None:
            for _ in range(400):
                p = rng.uniform(-r_sup, r_sup, 3)
                if np.linalg.norm(p) > r_sup:
                    continue
                pts = _cylinder_points(p, axis, radius, length)
                if np.sqrt((pts**2).sum(1)).max() > r_sup:
                    continue
                if _head_distance(pts, off, semi).min() < clear:
                    continue
                ok = all(
                    _segment_distance(p, axis, length, np.asarray(t["centre_m"]), np.asarray(t["axis"]), t["length_m"])
                    >= radius + t["radius_m"] + clear
                    for t in tubes
                )
                if ok:
                    placed = p
                    break
            else:
                if length > 4 * vox:
                    length = max(0.8 * length, 4 * vox)
                elif radius > R["tube_radius_vox"][0] * vox:
                    radius = max(0.9 * radius, R["tube_radius_vox"][0] * vox)
                else:
                    raise RuntimeError(f"case {index}: no room for tube {len(tubes) + 1}")
        tubes.append(
            {
                "centre_m": placed.tolist(),
                "axis": axis.tolist(),
                "radius_m": radius,
                "length_m": length,
                "radius_vox": radius / vox,
                "concentration_mM": c,
            }
        )
    case["tubes"] = tubes
    return case
