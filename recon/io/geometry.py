"""Slice geometry from the Siemens protocol and the NIfTI affine of our image grid.

Siemens describes a slab by its centre ``sPosition`` (mm), its normal ``sNormal`` and the
in-plane rotation ``dInPlaneRot`` (rad), all in the patient coordinate system (PCS: x = Sag
towards the patient's left, y = Cor towards posterior, z = Tra towards head, i.e. DICOM LPS).
The phase-encoding direction is derived from the normal by the IDEA rule (``fGSLCalcPRS``:
the slab is classified as transverse, coronal or sagittal by the largest normal component;
the phase direction is the in-plane vector perpendicular to the normal in that class,
rotated by ``-dInPlaneRot`` about the normal), and readout = phase x normal. This is written
by hand because no maintained Python library exposes it without a full mdb list (twixtools'
``Geometry`` needs the image mdbs and prints warnings).

Assumptions, documented and tested:

* The reconstructed image axes (0, 1, 2) follow the trajectory components (kx, ky, kz), and
  these are taken on the logical gradient axes readout, phase and slice, in that order.
* Voxel i of an N-point axis has its centre at ``(i - floor(N/2)) * fov/N`` from the slab
  centre along that axis (DESIGN.md image grid).
* The affine maps to patient RAS+ millimetres (NIfTI's "scanner" space as written by
  dcm2niix from DICOM patient coordinates): RAS = diag(-1, -1, 1) @ LPS.
* Display flips that Siemens' image reconstruction applies to Cartesian images (readout
  and phase sign) are not applied: for non-Cartesian data the trajectory defines the axes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _class_orientation(n: np.ndarray) -> str:
    """IDEA fGSLClassOri: 'tra', 'cor' or 'sag' by the largest |component| (ties: tra, then cor)."""
    s, c, t = np.abs(n)
    eps = 1e-6
    if t >= s - eps and t >= c - eps:
        return "tra"
    if c >= s - eps:
        return "cor"
    return "sag"


def prs_from_normal(normal, inplane_rot_rad: float = 0.0) -> np.ndarray:
    """Rotation (3, 3) whose columns are the readout, phase and slice directions in LPS.

    ``normal`` is sNormal (sag, cor, tra); ``inplane_rot_rad`` is dInPlaneRot.
    """
    gs = np.asarray(normal, dtype=float)
    nrm = np.linalg.norm(gs)
    if not np.isfinite(nrm) or nrm == 0:
        gs = np.array([0.0, 0.0, 1.0])
    else:
        gs = gs / nrm
    ori = _class_orientation(gs)
    if ori == "tra":
        d = math.sqrt(gs[1] ** 2 + gs[2] ** 2)
        gp = np.array([0.0, gs[2] / d, -gs[1] / d])
    elif ori == "cor":
        d = math.sqrt(gs[0] ** 2 + gs[1] ** 2)
        gp = np.array([gs[1] / d, -gs[0] / d, 0.0])
    else:
        d = math.sqrt(gs[0] ** 2 + gs[1] ** 2)
        gp = np.array([-gs[1] / d, gs[0] / d, 0.0])
    gr = np.cross(gp, gs)
    if inplane_rot_rad:
        c, s = math.cos(inplane_rot_rad), math.sin(inplane_rot_rad)
        gp = c * gp - s * gr
        gr = np.cross(gp, gs)
    return np.stack([gr, gp, gs], axis=1)


def inplane_rotation(rotation: np.ndarray) -> tuple[np.ndarray, float]:
    """Inverse of :func:`prs_from_normal`: (sNormal, dInPlaneRot in rad) for a rotation matrix."""
    r = np.asarray(rotation, dtype=float)
    gs = r[:, 2]
    r0 = prs_from_normal(gs, 0.0)
    gp0, gr0 = r0[:, 1], r0[:, 0]
    gp = r[:, 1]
    # gp = cos(a) gp0 - sin(a) gr0
    a = math.atan2(-float(gp @ gr0), float(gp @ gp0))
    return gs, a


def siemens_geometry(aslice: dict[str, Any], patient_position: str = "") -> dict[str, Any]:
    """Geometry dict from a parsed ``sSliceArray.asSlice[0]`` (twixtools' MeasYaps).

    Returns ``position_m`` (3,) in LPS metres, ``rotation`` (3, 3) columns readout, phase,
    slice in LPS, ``inplane_rot_rad``, ``normal`` and ``patient_position``.
    """
    pos = aslice.get("sPosition", {}) or {}
    nor = aslice.get("sNormal", {}) or {}
    position = np.array([float(pos.get(k, 0.0) or 0.0) for k in ("dSag", "dCor", "dTra")]) * 1e-3
    normal = np.array([float(nor.get(k, 0.0) or 0.0) for k in ("dSag", "dCor", "dTra")])
    if not np.any(normal):
        normal = np.array([0.0, 0.0, 1.0])
    rot = float(aslice.get("dInPlaneRot", 0.0) or 0.0)
    return {
        "position_m": position,
        "rotation": prs_from_normal(normal, rot),
        "normal": normal / np.linalg.norm(normal),
        "inplane_rot_rad": rot,
        "patient_position": patient_position.strip().strip('"') or None,
    }


def default_geometry() -> dict[str, Any]:
    """No geometry known: identity orientation (image axes = L, P, S), slab centred at the origin."""
    return {
        "position_m": np.zeros(3),
        "rotation": np.eye(3),
        "normal": np.array([0.0, 0.0, 1.0]),
        "inplane_rot_rad": 0.0,
        "patient_position": None,
    }


def nifti_affine(geometry: dict[str, Any] | None, fov_m, matrix) -> np.ndarray:
    """4x4 affine from voxel indices (i, j, k) of our grid to patient RAS+ millimetres.

    ``geometry`` is ``Acquisition.geometry`` (None = :func:`default_geometry`); ``fov_m`` and
    ``matrix`` are the image FOV in m and matrix size per axis (scalars broadcast). The
    centre of voxel (floor(N/2), ...) maps to the slab centre.
    """
    g = default_geometry() if geometry is None else geometry
    fov = np.broadcast_to(np.asarray(fov_m, dtype=float), (3,))
    n = np.broadcast_to(np.asarray(matrix, dtype=int), (3,))
    vox_mm = fov / n * 1e3
    r_lps = np.asarray(g.get("rotation", np.eye(3)), dtype=float)
    p_lps = np.asarray(g.get("position_m", np.zeros(3)), dtype=float) * 1e3
    m = _LPS_TO_RAS @ r_lps @ np.diag(vox_mm)
    centre = np.floor(n / 2)
    aff = np.eye(4)
    aff[:3, :3] = m
    aff[:3, 3] = _LPS_TO_RAS @ p_lps - m @ centre
    return aff
