"""Write a simulation to disk: raw file(s) plus the ground truth, atomically.

Layout of the output directory (all or nothing, :func:`recon.atomic.atomic_dir`):

* ``raw.dat`` -- Siemens twix, VE layout (:func:`recon.io.write_twix`), with the trajectory's
  design parameters in ``sWipMemBlock`` encoded by the default sequence profile
  (:func:`recon.io.encode_params`), so ``narecon run DIR/raw.dat`` rebuilds the trajectory
  without flags;
* ``raw.h5`` -- the same acquisition as ISMRMRD with the trajectory (optional);
* ``truth_tsc_mM.nii.gz`` (float32, mM), ``truth_b0_hz.nii.gz`` (float32, Hz at 23Na),
  ``truth_labels.nii.gz`` (int16, labels of ``truth.json``), all on the reconstruction grid
  with the affine of :func:`recon.io.nifti_affine` (patient RAS+ mm);
* ``truth.json`` -- compartments with their TSC, T1, T2* and expected signal, tubes (centres in
  mm, LPS and RAS, radii), the protocol and the simulation settings (seed, SNR, noise, bins).

Outputs are deterministic for a seed: NIfTI files are gzipped with a zero time stamp and the
JSON has sorted keys.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from recon.atomic import atomic_dir
from recon.sim.simulate import SimResult, _jsonable
from recon.trajectory.base import Trajectory

#: trajectory parameters the default profile stores in sWipMemBlock
_ENCODED = (
    "generator",
    "p",
    "gmax_t_per_m",
    "smax_t_per_m_per_s",
    "undersampling",
    "fov_m",
    "res_m",
    "grad_raster_s",
    "n_projections",
)


def design_params(traj: Trajectory) -> dict:
    """The generator parameters of ``traj`` that the default sequence profile encodes."""
    prm = dict(traj.params)
    gen = prm.get("generator")
    if gen not in ("tpi", "radial"):
        return {}
    out = {k: prm[k] for k in _ENCODED if k in prm}
    out["generator"] = gen
    out.setdefault("fov_m", float(traj.fov_m[0]))  # trajectory files keep these as attributes
    out.setdefault("res_m", float(traj.fov_m[0]) / traj.matrix[0])
    if gen == "radial":
        out["n_projections"] = traj.n_projections
    else:
        out["n_projections"] = None
    return out


def attach_profile_params(result: SimResult, traj: Trajectory) -> bool:
    """Put the trajectory design into ``acq.header['wip_long'/'wip_double']`` (default profile).

    Returns False (and stores nothing) for a trajectory that no generator of narecon made
    (e.g. read from a foreign file): reconstructing such a file needs ``--traj``.
    """
    from recon.io import encode_params

    prm = design_params(traj)
    if not prm:
        return False
    wl, wd = encode_params(prm)
    result.acquisition.header["wip_long"] = wl
    result.acquisition.header["wip_double"] = wd
    return True


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file as bytes, gzipped with mtime 0 (byte-reproducible)."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(arr), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)  # scanner
    img.set_sform(affine, code=1)
    raw = img.to_bytes()
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, compresslevel=6, filename="") as f:
        f.write(raw)
    return buf.getvalue()


FINE_LABEL_FACTOR = 4
"""Label voxels per reconstruction voxel and axis of ``truth_labels_fine.nii.gz``."""


def fine_label_map(phantom, info: dict[str, Any], affine: np.ndarray, factor: int = FINE_LABEL_FACTOR):
    """The phantom's dominant-compartment labels on a grid ``factor`` times finer than the reconstruction's.

    Label voxel f of an axis sits at reconstruction voxel index (f + 0.5) / factor - 0.5 (the voxel split
    evenly); returns (labels, affine of the fine grid). Evaluated one slab at a time (bounded memory).
    """
    prot = info["protocol"]
    n = np.asarray(prot["matrix"], dtype=int)
    dx = np.asarray(prot["fov_m"], dtype=np.float64) / n
    pos = np.asarray(prot["position_m"], dtype=np.float64)
    ax = [((np.arange(factor * n[d]) + 0.5) / factor - 0.5 - n[d] // 2) * dx[d] + pos[d] for d in range(3)]
    out = np.zeros(tuple(len(a) for a in ax), dtype=np.int16)
    g1, g2 = np.meshgrid(ax[1], ax[2], indexing="ij")
    step = 8
    for i in range(0, len(ax[0]), step):
        a0 = ax[0][i : i + step]
        pts = np.stack(np.broadcast_arrays(a0[:, None, None], g1[None], g2[None]), -1)
        out[i : i + step] = phantom.labels(pts, 0.0)  # the sharp sets the simulator box-averages
    m = np.eye(4)
    m[:3, :3] /= factor
    m[:3, 3] = 0.5 / factor - 0.5
    return out, np.asarray(affine, dtype=np.float64) @ m


def write_simulation(
    result: SimResult,
    traj: Trajectory,
    out_dir: str | os.PathLike,
    *,
    ismrmrd: bool = False,
    overwrite: bool = False,
    extra_info: dict | None = None,
    phantom=None,
) -> Path:
    """Write ``result`` into ``out_dir`` (see the module docstring); returns the directory.

    ``phantom``: the :class:`~recon.sim.phantom.HeadPhantom` simulated; when given, the dominant
    compartment is also written on a grid :data:`FINE_LABEL_FACTOR` times finer per axis
    (``truth_labels_fine.nii.gz``, its own affine): labels on the reconstruction grid misplace
    boundaries by up to half a voxel, which regional measures (``--regions``) cannot tolerate.
    """
    from recon.io import nifti_affine, write_twix

    acq = result.acquisition
    encoded = attach_profile_params(result, traj)
    truth = result.truth
    affine = nifti_affine(acq.geometry, acq.fov_m, acq.matrix)
    info = dict(truth.info)
    info["files"] = {
        "raw.dat": "Siemens twix VE; trajectory design in sWipMemBlock (default sequence profile)",
        "truth_tsc_mM.nii.gz": "voxel-averaged true TSC in mM (float32)",
        "truth_b0_hz.nii.gz": "true off-resonance in Hz at 23Na (float32)",
        "truth_labels.nii.gz": "label of the dominant compartment (int16; see compartments)",
    }
    if phantom is not None:
        info["files"]["truth_labels_fine.nii.gz"] = (
            f"label of the dominant compartment on a grid {FINE_LABEL_FACTOR}x finer per axis (int16; its own affine)"
        )
    if ismrmrd:
        info["files"]["raw.h5"] = "ISMRMRD with the trajectory (cycles per FOV)"
    info["sequence_profile"] = {"wip_long": acq.header["wip_long"], "wip_double": acq.header["wip_double"]} if encoded else None
    info["nifti_affine_ras_mm"] = np.round(affine, 9).tolist()
    if extra_info:
        info.update(extra_info)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_twix(acq, tmp / "raw.dat", layout="VE")
        if ismrmrd:
            from recon.io import write_ismrmrd

            write_ismrmrd(acq, tmp / "raw.h5", traj=traj)
        for name, arr in (
            ("truth_tsc_mM", truth.tsc_mM.astype(np.float32)),
            ("truth_b0_hz", truth.b0_hz.astype(np.float32)),
            ("truth_labels", truth.labels.astype(np.int16)),
        ):
            (tmp / f"{name}.nii.gz").write_bytes(_nifti_bytes(arr, affine))
        if phantom is not None:
            fine, fine_aff = fine_label_map(phantom, truth.info, affine)
            (tmp / "truth_labels_fine.nii.gz").write_bytes(_nifti_bytes(fine, fine_aff))
        (tmp / "truth.json").write_text(json.dumps(_jsonable(info), indent=1, sort_keys=True) + "\n")
    return Path(out_dir)
