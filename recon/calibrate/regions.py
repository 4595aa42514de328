"""Regional TSC through the system model: a geometric transfer matrix whose transfer functions are the
actual acquisition and reconstruction (as the tube model of :mod:`recon.calibrate.model` is).

Why. At 5.6 mm voxels grey matter, oedema or a tumour rim are barely larger than the point response,
and each compartment's own decay during the readout (tissue: ~60 % of the signal with T2* 2.5-5.5 ms
over a 6-12 ms readout) widens its point response and lowers its k-space-centre weight relative to
the tubes. A voxel mean (eroded or not) is then a mixture of neighbours seen through a compartment-
specific blur. Here every labelled region is modelled instead:

* **Occupancy.** The label map (any grid, its own affine) is resampled to occupancy fractions
  ``O_j`` on a 2x supersampled copy of the reconstruction grid (each reconstruction voxel split in
  2 x 2 x 2 cells). In every cell ``s^3`` points are placed (``s = ceil(cell size / label voxel
  size)``, 1 when the labels are on the reconstruction grid or coarser), taken through the
  reconstruction affine to RAS mm and through the inverse label affine to the nearest label voxel;
  ``O_j`` is the fraction of the cell's points that carry label j (points outside the label map:
  background). Sampling cell points in the label map, rather than histogramming label voxel
  centres into cells, is what keeps cells covered when the labels are coarser than the cells.
* **Template.** ``T_j = Re gridding(op, d_j(t) * F_j(k))`` with ``F_j`` the region's Fourier
  transform: one type-2 NUFFT of the occupancy on the 2x grid (at the trajectory's k) times the cell
  volume ``dV``, the constant shift between the occupancy cells and the 2x NUFFT grid, the
  simulator/wall blur ``object_edge_m`` of the system model, and divided by the response of the
  ``s^3``-point average (a discrete box filter, ``prod_d sin(pi k_d c) / (s sin(pi k_d c / s))`` for
  cells of size ``c``): occupancies are samples of the object averaged over their cell, not a
  staircase object (treating them as boxes put a 2.3-voxel tube 2-4 % high against the closed-form
  cylinder of :meth:`SystemModel.template`); ``d_j(t) = D_j(TE + t) /
  D_j(TE)`` is the region's decay over the readout from its class prior (tissue: bi-exponential
  :data:`recon.physics.TISSUE`; fluid: mono-exponential :data:`recon.physics.CSF`; tube:
  :data:`recon.physics.SALINE_TUBE` or the system model's tube T2*), and the gridding is the
  reconstruction's own (same density weights, same NUFFT, :class:`~recon.calibrate.model.SystemModel`).
  Cost: one type-2 NUFFT per region and one type-1 per region and T2* component
  (:func:`basis_templates`: every echo's and refinement pass's template is a real combination of
  those; regions are streamed in chunks, so memory does not grow with regions x samples).
* **Fit.** Over the object support (the regions' union dilated by :data:`SUPPORT_DILATE_VOX`) the
  calibrated-signal image is modelled as ``S = sum_j c_j T_j + b0``; ``c_j`` (least squares) is the
  signal a large uniform region of that compartment would give, the same kind of number as a tube's
  model amplitude. It is converted with the tube line ``A = a C + b`` and the region's relaxation
  relative to the tubes at TE and in T1 saturation (:func:`recon.calibrate.relax.relaxation_factors`
  without readout: the readout is in the template): ``C_j = (c_j - b) / (a * rel_j)``.
* **Echo 2** (when there is an echo pair): the same fit on the echo-2 signal with echo-2 templates
  gives the regional echo ratio ``q_j = c_j(TE2) / c_j(TE1)``. With ``refine = "echo-ratio"`` (the
  pipeline's default, option ``regions_relaxation``) each tissue region's short-T2* fraction is set
  so that its prior reproduces ``q_j`` (:func:`refine_fraction`, T2* values kept) and the templates
  and fit are redone (:data:`REFINE_PASSES` passes); fluids and tubes keep their priors.
  regions.tsv reports the measured and the (refined) prior's ratio and the value with the
  unrefined prior (``prior_mM``).

Regime (what this covers and what it does not): regions that are uniform inside their labels and
whose labels are registered to the scan (truth labels, or a segmentation on the scan's grid);
relaxation close to the class prior (the validation family draws within literature ranges, the
prior is one point in them); off-resonance already corrected (the B0-corrected image is used);
gridding reconstructions (an iterative run measures the regions on its tb-cpr gridding image). The value is only
as right as the labels: a label map on the reconstruction grid (each voxel its dominant
compartment) misplaces boundaries by up to half a voxel, and at 5.6 mm the sample's 2.3-voxel
tubes read 17-22 % low from such labels but within 1.3 % from labels 8x finer. Regions that are
much thinner than the point response are recovered only as well as their labels are right:
the template recovery (mean ``T_j`` over the region's own voxels) in regions.tsv says how much of
the region's own signal a voxel mean keeps.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from recon import physics
from recon.calibrate.model import SystemModel
from recon.calibrate.relax import RelaxationModel, relaxation_factors
from recon.errors import CalibrationError, InputError

log = logging.getLogger("recon.calibrate")

SUPERSAMPLE = 2
"""Occupancy grid: this many cells per reconstruction voxel and axis."""
SUPPORT_DILATE_VOX = 3
"""The fit support: union of the regions dilated by this many voxels (their blurred tails and ringing)."""
COARSE_LABEL_RATIO = 0.9
"""Labels count as on the reconstruction grid (or coarser) when a label voxel spans at least this
fraction of a reconstruction voxel along some axis."""
THIN_ACROSS_VOX = 6.0
"""A region is thin for coarse labels below this many reconstruction voxels across (twice the 95th
percentile of its voxels' distance to its outside): the validation measured sulcal CSF and 2.3-voxel
radius tubes 17-27 % off from labels on the reconstruction grid, within 1.3 % from 8x finer labels."""
CLASSES = ("tissue", "fluid", "tube", "ignore")
"""Region classes; each but ``ignore`` has a relaxation prior (:func:`class_model`)."""
_FLUID_WORDS = ("csf", "ventric", "vitreous", "fluid", "cyst", "eye")
_TUBE_WORDS = ("tube", "vial", "phantom_ref", "reference_tube")
_IGNORE_WORDS = ("background", "ignore", "air", "unknown", "skull", "bone")


def classify(name: str) -> str:
    """The class of a region from its name: tube, fluid (CSF, ventricles, vitreous), ignore, else tissue."""
    n = str(name).lower()
    if any(w in n for w in _TUBE_WORDS):
        return "tube"
    if any(w in n for w in _IGNORE_WORDS):
        return "ignore"
    if any(w in n for w in _FLUID_WORDS):
        return "fluid"
    return "tissue"


def _model(p: physics.RelaxationPreset) -> RelaxationModel:
    return RelaxationModel(p.name, t1_s=p.t1_s, t2star_s=p.t2star_s, fractions=p.fractions)


def class_model(cls: str, tube_t2star_s: float | None = None) -> RelaxationModel:
    """The literature prior of a class (:mod:`recon.physics` presets): tissue bi-exponential, fluid/tube mono."""
    if cls == "tissue":
        return _model(physics.TISSUE)
    if cls == "fluid":
        return _model(physics.CSF)
    if cls == "tube":
        p = physics.SALINE_TUBE
        return RelaxationModel(p.name, t1_s=p.t1_s, t2star_s=(tube_t2star_s or p.t2star_s[0],), fractions=(1.0,))
    raise CalibrationError(f"region class {cls!r} has no relaxation prior; classes: {CLASSES}")


T1_MS_RANGE = (5.0, 5000.0)
"""Accepted measured T1 (ms) of a region or the tubes (23Na: 20-70 ms in vivo and in saline)."""


@dataclasses.dataclass
class RegionSpec:
    """One labelled region: integer ``label``, ``name``, ``cls`` (one of :data:`CLASSES`) and, when it
    was measured (e.g. by inversion recovery), its T1 ``t1_s`` in s (None: the class prior)."""

    label: int
    name: str
    cls: str
    t1_s: float | None = None

    def __post_init__(self) -> None:
        if self.cls not in CLASSES:
            raise InputError(f"region {self.name!r}: class {self.cls!r} is not one of {CLASSES}")
        if self.t1_s is not None:
            t1 = float(self.t1_s)
            if not (math.isfinite(t1) and T1_MS_RANGE[0] <= t1 * 1e3 <= T1_MS_RANGE[1]):
                raise InputError(f"region {self.name!r}: T1 {t1 * 1e3:g} ms outside {T1_MS_RANGE[0]:g}-{T1_MS_RANGE[1]:g} ms")
            self.t1_s = t1


def with_t1(model: RelaxationModel, t1_s: float | None) -> RelaxationModel:
    """``model`` with a measured T1 (s) in place of its prior (``None``: unchanged)."""
    if t1_s is None:
        return model
    return dataclasses.replace(model, name=f"{model.name}, measured T1 {t1_s * 1e3:.1f} ms", t1_s=float(t1_s))


# ---------------------------------------------------------------- reading a label map and its names
_Named = tuple[str, "str | None", "float | None"]  # name, class, measured T1 (s)


def _t1_from(v: Any, path: Path, label: Any) -> float | None:
    """A sidecar's ``t1_ms`` entry in s (None when absent or empty)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        t1 = float(v)
    except (TypeError, ValueError):
        raise InputError(f"region {label}: t1_ms {v!r} is not a number (ms)", path) from None
    if not (math.isfinite(t1) and T1_MS_RANGE[0] <= t1 <= T1_MS_RANGE[1]):
        raise InputError(f"region {label}: t1_ms {t1:g} outside {T1_MS_RANGE[0]:g}-{T1_MS_RANGE[1]:g} ms", path)
    return t1 * 1e-3


def _names_from_json(path: Path) -> dict[int, _Named]:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read region names: {e}", path) from e
    out: dict[int, _Named] = {}
    if isinstance(d, dict) and isinstance(d.get("compartments"), list):  # truth.json of recon.sim
        for c in d["compartments"]:  # names and classes only: a simulation's true T1 is not a measurement
            out[int(c["label"])] = (str(c["name"]), c.get("class"), None)
        return out
    items = d.get("labels", d) if isinstance(d, dict) else d
    if isinstance(items, dict):  # {"1": "grey_matter", ...} or {"1": {"name": ..., "class": ..., "t1_ms": ...}}
        for k, v in items.items():
            if isinstance(v, dict):
                out[int(k)] = (str(v["name"]), v.get("class"), _t1_from(v.get("t1_ms"), path, k))
            else:
                out[int(k)] = (str(v), None, None)
    elif isinstance(items, list):
        for v in items:
            out[int(v["label"])] = (str(v["name"]), v.get("class"), _t1_from(v.get("t1_ms"), path, v["label"]))
    else:
        raise InputError("region names: expected {label: name}, a list of {label, name[, class, t1_ms]} or truth.json", path)
    return out


def _names_from_tsv(path: Path) -> dict[int, _Named]:
    out: dict[int, _Named] = {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows or "label" not in rows[0] or "name" not in rows[0]:
        raise InputError("region names TSV needs the columns label and name (optional: class, t1_ms)", path)
    for r in rows:
        try:
            lab = int(r["label"])
        except ValueError as e:
            raise InputError(f"region names TSV: bad label {r['label']!r}", path) from e
        out[lab] = (r["name"].strip(), (r.get("class") or "").strip() or None, _t1_from(r.get("t1_ms"), path, lab))
    return out


def names_sidecar(label_path: str | os.PathLike) -> Path | None:
    """The names file of a label NIfTI: ``<file>.json``, ``<file>.tsv`` (with or without .nii[.gz]), or truth.json beside it."""
    p = Path(label_path)
    stem = p.name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    for cand in [p.with_name(p.name + e) for e in (".json", ".tsv")] + [p.with_name(stem + e) for e in (".json", ".tsv")]:
        if cand.is_file():
            return cand
    t = p.with_name("truth.json")
    return t if t.is_file() else None


def check_regions(label_path: str | os.PathLike) -> None:
    """Refuse a label map or names sidecar that :func:`load_regions` would refuse, before a run's long
    work: the NIfTI header (readable, 3-D) and the whole sidecar (names, classes, ``t1_ms``), without the
    voxel data (InputError naming the file)."""
    import nibabel as nib

    try:
        img = nib.load(os.fspath(label_path))
    except FileNotFoundError:
        raise InputError("label map not found", label_path) from None
    except Exception as e:  # nibabel raises several types for foreign/corrupt files
        raise InputError(f"cannot read the label map as NIfTI: {e}", label_path) from e
    shape = tuple(img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(f"label map must be a 3-D volume, got shape {img.shape}", label_path)
    side = names_sidecar(label_path)
    if side is not None:
        named = _names_from_tsv(side) if side.suffix == ".tsv" else _names_from_json(side)
        for lab, (name, cls, t1) in named.items():
            try:
                RegionSpec(lab, name, cls or classify(name), t1)
            except InputError as e:
                raise InputError(e.message, side) from None


def load_regions(label_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, list[RegionSpec]]:
    """A label NIfTI, its affine (voxel -> RAS mm) and its regions (names from the sidecar, classes from names).

    Labels present in the map without a name are named ``label_<n>`` (class tissue, with a warning).
    """
    import nibabel as nib

    try:
        img = nib.load(os.fspath(label_path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except FileNotFoundError:
        raise InputError("label map not found", label_path) from None
    except Exception as e:  # nibabel raises several types for foreign/corrupt files
        raise InputError(f"cannot read the label map as NIfTI: {e}", label_path) from e
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"label map must be a 3-D volume, got shape {data.shape}", label_path)
    lab = np.rint(data).astype(np.int32)
    if np.any(np.abs(data - lab) > 1e-3):
        raise InputError("label map has non-integer values (expected integer labels, 0 = background)", label_path)
    side = names_sidecar(label_path)
    names: dict[int, _Named] = {}
    if side is not None:
        names = _names_from_tsv(side) if side.suffix == ".tsv" else _names_from_json(side)
    specs = []
    for v in sorted(int(x) for x in np.unique(lab) if x != 0):
        name, cls, t1 = names.get(v, (f"label_{v}", None, None))
        if v not in names:
            log.warning("%s: label %d has no name in %s; treated as tissue", label_path, v, side or "any sidecar")
        specs.append(RegionSpec(v, name, cls or classify(name), t1))
    if not specs:
        raise InputError("label map contains no labels (all zero)", label_path)
    return lab, np.asarray(img.affine, dtype=np.float64), specs


# ---------------------------------------------------------------- occupancy on the 2x grid
def label_voxel_ratio(label_affine: np.ndarray, affine: np.ndarray) -> float:
    """The largest extent of one label voxel along a reconstruction axis, in reconstruction voxels
    (1 for labels on the reconstruction grid, 0.125 for labels 8x finer)."""
    to_lab = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    to_rec = np.linalg.inv(to_lab[:3, :3])  # label voxel axes in reconstruction voxels
    return float(np.abs(to_rec).sum(axis=0).max())


def coarse_label_warnings(
    occ_vox: np.ndarray, specs: Sequence[RegionSpec], label_affine: np.ndarray, affine: np.ndarray
) -> list[str]:
    """Warnings for regions too thin to be measured from labels on the reconstruction grid.

    Labels as coarse as the reconstruction voxels (:data:`COARSE_LABEL_RATIO`) misplace each boundary
    by up to half a voxel; a region under :data:`THIN_ACROSS_VOX` voxels across (``occ_vox``: its
    occupancy on the reconstruction grid) then has a regional value set by where its labels put the
    boundary. Returns one warning naming every such region with its size (none for finer labels)."""
    ratio = label_voxel_ratio(label_affine, affine)
    if ratio < COARSE_LABEL_RATIO:
        return []
    thin = []
    for s, occ in zip(specs, occ_vox):
        own = occ >= 0.5
        if not own.any():
            continue
        box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(own))
        d = ndimage.distance_transform_edt(np.pad(own[box], 1))[1:-1, 1:-1, 1:-1][own[box]]
        across = 2.0 * float(np.percentile(d, 95))
        if across < THIN_ACROSS_VOX:
            thin.append(f"{s.name} ({across:.1f})")
    if not thin:
        return []
    return [
        f"labels {ratio:.2f} reconstruction voxels in size and regions under {THIN_ACROSS_VOX:g} voxels across: "
        f"{', '.join(thin)} voxels across; their boundaries are placed to half a voxel, so their regional values "
        f"can be off by 15-30 % (measured 17-27 % at 4-5 voxels across); give labels at least 4x finer than the "
        f"reconstruction (the segmentation's own grid)"
    ]


def points_per_cell(label_affine: np.ndarray, affine: np.ndarray, supersample: int = SUPERSAMPLE) -> int:
    """Points per axis in each occupancy cell: ceil(cell size / label voxel size), at least 1."""
    to_lab = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    cell_in_lab = np.abs(to_lab[:3, :3]) @ np.full(3, 1.0 / int(supersample))  # cell size in label voxels
    return max(1, int(math.ceil(float(cell_in_lab.max()) - 1e-6)))


def occupancy(
    labels: np.ndarray,
    label_affine: np.ndarray,
    wanted: Sequence[int],
    affine: np.ndarray,
    matrix: Sequence[int],
    supersample: int = SUPERSAMPLE,
) -> np.ndarray:
    """Occupancy fractions (n_wanted, *(supersample * matrix)) of each wanted label on the supersampled recon grid.

    Cell ``c`` of axis d covers reconstruction voxel index ``(c + 0.5) / s - 0.5 +- 0.5 / s``. Its points
    go through ``affine`` (recon voxel -> RAS mm) and the inverse ``label_affine`` to the nearest label voxel.
    """
    labels = np.asarray(labels)
    matrix = tuple(int(m) for m in matrix)
    S = int(supersample)
    fine = tuple(S * m for m in matrix)
    to_lab = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(affine, dtype=np.float64)
    n_sub = points_per_cell(label_affine, affine, S)
    idx = {int(v): i for i, v in enumerate(wanted)}
    lut = np.full(int(max(labels.max(), max(wanted))) + 2, -1, dtype=np.int32)
    for v, i in idx.items():
        if v >= 0:
            lut[v] = i
    out = np.zeros((len(idx),) + fine, dtype=np.float32)
    axes = [(np.arange(n) + 0.5) / S - 0.5 for n in fine]  # recon voxel index of each cell centre
    offs = (np.arange(n_sub) + 0.5) / n_sub - 0.5
    shp = np.asarray(labels.shape)
    for o in np.stack(np.meshgrid(offs, offs, offs, indexing="ij"), -1).reshape(-1, 3):
        for i0 in range(fine[0]):  # one plane at a time: bounded memory at 128^3 and beyond
            g1, g2 = np.meshgrid(axes[1] + o[1] / S, axes[2] + o[2] / S, indexing="ij")
            pts = np.stack([np.full(g1.shape, axes[0][i0] + o[0] / S), g1, g2], -1).reshape(-1, 3)
            q = pts @ to_lab[:3, :3].T + to_lab[:3, 3]
            qi = np.rint(q).astype(np.int64)
            ok = np.all((qi >= 0) & (qi < shp), axis=1)
            lv = np.zeros(len(q), dtype=np.int64)
            lv[ok] = labels[qi[ok, 0], qi[ok, 1], qi[ok, 2]]
            lv = np.clip(lv, 0, len(lut) - 1)
            r = lut[lv].reshape(g1.shape)
            for i in range(len(idx)):
                out[i, i0] += r == i
    out /= n_sub**3
    return out


def downsample(occ: np.ndarray, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """Mean of the supersampled cells in each reconstruction voxel: (n, *matrix)."""
    S = int(supersample)
    n, a, b, c = occ.shape
    return occ.reshape(n, a // S, S, b // S, S, c // S, S).mean(axis=(2, 4, 6))


# ---------------------------------------------------------------- templates
def _spectrum_weights(sm: SystemModel, supersample: int, n_sub: int) -> np.ndarray:
    """Per-sample factor (complex64, kshape) that turns the 2x-grid type-2 NUFFT of an occupancy into the
    region's Fourier transform: the cell volume, the constant shift between occupancy cells and the 2x
    NUFFT grid, the ``n_sub``-point box response and the object-edge blur. Computed in blocks of samples
    (no (M, 3) float64 copy of k at 128^3)."""
    S = int(supersample)
    vox = sm.voxel_m
    cell = vox / S
    # the 2x NUFFT grid puts cell c at (c - S N/2) * cell; the occupancy cell c is centred at
    # (c + 0.5) / S - 0.5 - N//2 recon voxels: a constant shift per axis
    N = np.asarray(sm.matrix, dtype=np.float64)
    shift = ((0.5 / S - 0.5 - np.floor(N / 2)) * vox) - (-(S * N // 2) * cell)
    k = sm.k.reshape(-1, 3)
    out = np.empty(len(k), dtype=np.complex64)
    step = 1 << 20
    for i in range(0, len(k), step):
        kf = np.asarray(k[i : i + step], dtype=np.float64)
        w = np.exp(-2j * np.pi * (kf @ shift)) * float(np.prod(cell))
        if n_sub > 1:  # occupancies are n_sub^3-point averages: undo that discrete box filter's response
            for d in range(3):
                x = np.pi * kf[:, d] * cell[d]
                safe = np.where(np.abs(x) > 1e-9, x, 1.0)
                h = np.where(np.abs(x) > 1e-9, np.sin(safe) / (n_sub * np.sin(safe / n_sub)), 1.0)
                w = w / h
        if sm.object_edge_m > 0:
            w = w * np.exp(-2 * np.pi**2 * sm.object_edge_m**2 * np.einsum("ij,ij->i", kf, kf))
        out[i : i + step] = w
    return out.reshape(sm.k.shape[:-1])


def region_spectra(occ: np.ndarray, sm: SystemModel, supersample: int = SUPERSAMPLE, n_sub: int = 1) -> np.ndarray:
    """Fourier transforms (n, n_proj, n_samp) complex64 at the trajectory's k of the occupancies as
    piecewise-constant objects."""
    from recon.plans import plans_or_default

    fine = tuple(int(supersample) * m for m in sm.matrix)
    op2 = plans_or_default(sm.plans).nufft(sm.k, fine, sm.fov_m, eps=sm.eps)
    y = np.asarray(op2.forward(occ.astype(op2.dtype)))  # sum_c O(c) exp(-i 2 pi k . r_c), r_c on the 2x NUFFT grid
    y = y.reshape((len(occ),) + sm.k.shape[:-1])
    y *= _spectrum_weights(sm, supersample, n_sub)[None]
    return y


def readout_decay(model: RelaxationModel, te_s: float, sm: SystemModel) -> np.ndarray:
    """``D(TE + t) / D(TE)`` over the readout (n_proj, n_samp): the region's decay after its TE factor."""
    t = np.broadcast_to(np.asarray(sm.t_s, dtype=np.float64), sm.k.shape[:-1])
    return model.decay(te_s + t) / float(model.decay(te_s))


def templates(spectra: np.ndarray, decays: Sequence[np.ndarray], sm: SystemModel) -> np.ndarray:
    """Real images (n, *matrix) of unit regions through the reconstruction: gridding of decay * spectrum."""
    from recon.nufft.operator import gridding

    op = sm.nufft()
    batch = np.stack([s * np.asarray(d, dtype=np.float32) for s, d in zip(spectra, decays)]).astype(op.dtype)
    return np.real(np.asarray(gridding(op, batch, sm.dcf))).astype(np.float64)


def decay_basis(model: RelaxationModel, readout: bool = True) -> tuple[float, ...]:
    """The T2* values (s) whose ``exp(-t / T2*)`` over the readout span ``model``'s readout decay after any
    TE and any change of its fractions (the echo-ratio refinement keeps the T2* values); () when the
    readout decay is not modelled (one template with d = 1)."""
    return tuple(model.t2star_s) if readout else ()


def basis_coefficients(model: RelaxationModel, te_s: float, readout: bool = True) -> np.ndarray:
    """Coefficients c_i with ``D(TE + t) / D(TE) = sum_i c_i exp(-t / T2*_i)`` (:func:`readout_decay`)."""
    if not readout:
        return np.ones(1)
    fr, t2 = np.asarray(model.fractions), np.asarray(model.t2star_s)
    return fr * np.exp(-te_s / t2) / float(model.decay(te_s))


MAX_SPECTRA_BYTES = 256 << 20
"""Region spectra held at once while the basis templates are made (a chunk of regions; at least one)."""


def basis_templates(
    occ: np.ndarray, sm: SystemModel, bases: Sequence[tuple[float, ...]], supersample: int = SUPERSAMPLE, n_sub: int = 1
) -> list[np.ndarray]:
    """Per region j, real images (n_basis_j or 1, *matrix): ``Re gridding(exp(-t / T2*_i) F_j)`` for each
    T2* of ``bases[j]`` (just ``Re gridding(F_j)`` for an empty basis).

    Every template of a region, for any echo and any refined fraction, is a real combination of these
    (:func:`basis_coefficients`), so the regions' spectra are made once, a chunk of regions at a time
    (:data:`MAX_SPECTRA_BYTES`), and never all held: memory O(chunk x samples) instead of O(regions x
    samples x echoes), and one gridding per region and T2* instead of one per region, echo and pass.
    """
    from recon.nufft.operator import gridding

    op = sm.nufft()
    per = int(np.prod(sm.k.shape[:-1])) * 8
    chunk = max(1, int(MAX_SPECTRA_BYTES // max(per, 1)))
    # per readout time as given ((n_samp,) or (n_proj, n_samp)): broadcast in the product, not stored per sample
    t = np.asarray(sm.t_s, dtype=np.float64)
    factors = {t2: np.exp(-t / t2).astype(np.float32) for b in bases for t2 in b}
    out: list[np.ndarray] = []
    for j0 in range(0, len(occ), chunk):
        spec = region_spectra(occ[j0 : j0 + chunk], sm, supersample, n_sub)
        for j, F in enumerate(spec, start=j0):
            batch = np.stack([F * factors[t2] for t2 in bases[j]]) if bases[j] else F[None]
            out.append(np.real(np.asarray(gridding(op, batch.astype(op.dtype, copy=False), sm.dcf))).astype(np.float64))
            del batch
        del spec
    return out


def _combine(basis: Sequence[np.ndarray], models: Sequence[RelaxationModel], te_s: float, readout: bool) -> np.ndarray:
    """Templates (n, *matrix) at echo time ``te_s`` from :func:`basis_templates` and each region's model."""
    return np.stack([np.tensordot(basis_coefficients(m, te_s, readout), b, axes=1) for b, m in zip(basis, models)])


REFINE_PASSES = 2
"""Passes of the echo-ratio refinement (each: measure the ratio, refit with the refined decays)."""


def refine_fraction(prior: RelaxationModel, echo_ratio: float, te1_s: float, te2_s: float) -> RelaxationModel:
    """A bi-exponential prior with its short fraction f set so that D(TE2) / D(TE1) = ``echo_ratio``.

    Keeps the prior's two T2* values; ``f = (b2 - q b1) / (q (a1 - b1) - a2 + b2)`` with a_e, b_e the short
    and long components at TE_e, clipped to [0, 1]. A mono-exponential prior or a non-finite ratio is returned as is.
    """
    if len(prior.t2star_s) != 2 or not math.isfinite(echo_ratio) or echo_ratio <= 0:
        return prior
    ts, tl = prior.t2star_s
    a1, a2 = math.exp(-te1_s / ts), math.exp(-te2_s / ts)
    b1, b2 = math.exp(-te1_s / tl), math.exp(-te2_s / tl)
    q = float(echo_ratio)
    den = q * (a1 - b1) - a2 + b2
    if abs(den) < 1e-12:
        return prior
    f = min(max((b2 - q * b1) / den, 0.0), 1.0)
    return RelaxationModel(f"{prior.name}, short fraction {f:.3f} from the echo ratio", prior.t1_s, prior.t2star_s, (f, 1.0 - f))


# ---------------------------------------------------------------- the fit
@dataclasses.dataclass
class RegionValue:
    """One region's result (regions.tsv row)."""

    label: int
    name: str
    cls: str
    n_voxels: int
    voxel_mean_mM: float | None
    model_mM: float | None
    amplitude: float | None
    recovery: float | None
    relaxation_relative: float | None
    echo_ratio: float | None = None
    echo_ratio_prior: float | None = None
    prior_mM: float | None = None  # with the class prior unrefined (the first pass)
    t1_prior_pct: float | None = None  # the value's largest change (%) over the literature T1 ranges (:func:`t1_prior_sensitivity`)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RegionalResult:
    """Regional TSC of every labelled region (:func:`regional_tsc`): values, settings, timings."""

    regions: list[RegionValue]
    settings: dict[str, Any]
    timings_s: dict[str, float]
    warnings: list[str] = dataclasses.field(default_factory=list)

    def by_name(self) -> dict[str, RegionValue]:
        return {r.name: r for r in self.regions}

    COLUMNS = (
        "label",
        "name",
        "class",
        "n_voxels",
        "voxel_mean_mM",
        "model_mM",
        "template_recovery",
        "amplitude",
        "relaxation_relative",
        "echo_ratio",
        "echo_ratio_prior",
        "prior_mM",
        "t1_prior_pct",
    )

    def to_tsv(self) -> str:
        """regions.tsv: one row per region (label, name, class, n voxels, voxel-mean mM, model mM, recovery, ...)."""

        def f(v, fmt="{:.4g}"):
            return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)

        lines = ["\t".join(self.COLUMNS)]
        for r in self.regions:
            lines.append(
                "\t".join(
                    (
                        str(r.label),
                        r.name,
                        r.cls,
                        str(r.n_voxels),
                        f(r.voxel_mean_mM, "{:.3f}"),
                        f(r.model_mM, "{:.3f}"),
                        f(r.recovery, "{:.4f}"),
                        f(r.amplitude),
                        f(r.relaxation_relative, "{:.5f}"),
                        f(r.echo_ratio, "{:.4f}"),
                        f(r.echo_ratio_prior, "{:.4f}"),
                        f(r.prior_mM, "{:.3f}"),
                        f(r.t1_prior_pct, "{:.2f}"),
                    )
                )
            )
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": [r.to_dict() for r in self.regions],
            "settings": self.settings,
            "timings_s": self.timings_s,
            "warnings": self.warnings,
        }


def t1_prior_sensitivity(
    tr_s: float,
    flip_deg: float,
    cls: str,
    t1_s: float,
    tube_t1_s: float,
    region_measured: bool = False,
    tube_measured: bool = False,
) -> float | None:
    """Largest change (%) of a region's TSC when its T1 and the tubes' T1 take any values in the literature
    ranges (:data:`recon.physics.RELAXATION_RANGES`: ``tissue`` for tissue regions, ``fluid`` for fluids
    and the tubes) instead of the priors ``t1_s`` and ``tube_t1_s`` (s), at TR (s) and flip (deg).

    One TR cannot measure T1: the regional value is converted with the T1 priors, and this is the
    systematic uncertainty that choice carries (a protocol property, not a fit error). A T1 that was
    measured (``region_measured``, ``tube_measured``: the value given is the measurement) has no
    literature range: it is held at its value, so with both measured the result is 0 (the measurement's
    own error is the user's to state). None for classes without a range (tubes, ignore). The value
    scales as S(T1_tube) / S(T1_region) with S the spoiled steady state
    (:func:`recon.physics.t1_saturation`), so the extremes are corners.
    """
    rng = physics.RELAXATION_RANGES
    if cls not in ("tissue", "fluid"):
        return None
    lo_r, hi_r = (t1_s, t1_s) if region_measured else rng[cls]["t1_s"]
    lo_t, hi_t = (tube_t1_s, tube_t1_s) if tube_measured else rng["fluid"]["t1_s"]

    def sat(t1: float) -> float:
        return physics.t1_saturation(tr_s=tr_s, flip_deg=flip_deg, t1_s=t1)

    prior = sat(tube_t1_s) / sat(t1_s)
    corners = [sat(a) / sat(b) / prior - 1.0 for a in (lo_t, hi_t) for b in (lo_r, hi_r)]
    return 100.0 * max(abs(c) for c in corners)


def _fit(signal: np.ndarray, T: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Least-squares amplitudes of ``S = sum_j c_j T_j + b0`` over ``support``; returns (c_1..c_n, b0)."""
    M = np.column_stack([T.reshape(len(T), -1)[:, support.ravel()].T, np.ones(int(support.sum()))])
    coef, *_ = np.linalg.lstsq(M, np.asarray(signal, dtype=np.float64).ravel()[support.ravel()], rcond=None)
    return coef


def regional_tsc(
    signals: Sequence[np.ndarray],
    sm: SystemModel,
    slope: float,
    intercept: float,
    labels: np.ndarray,
    label_affine: np.ndarray,
    specs: Sequence[RegionSpec],
    affine: np.ndarray,
    *,
    tsc_mM: np.ndarray | None = None,
    supersample: int = SUPERSAMPLE,
    models: Mapping[str, RelaxationModel] | None = None,
    refine: str | None = None,
    readout: bool = True,
    tube_t1_s: float | None = None,
) -> RegionalResult:
    """Regional TSC (mM) of every non-ignored region through the system model (module docstring).

    Parameters
    ----------
    signals : calibrated-signal image(s) on ``sm.matrix``: echo 1, and echo 2 when there is an echo pair.
    sm : the :class:`SystemModel` of the acquisition and reconstruction (k, t, dcf, TEs, TR, flip).
    slope, intercept : the tube calibration line ``A = slope * C + intercept`` (signal per mM, signal).
    labels, label_affine : integer label map (any grid) and its voxel -> RAS mm affine.
    specs : the regions (label, name, class); ``ignore`` regions are left out of the model.
    affine : the reconstruction's voxel -> RAS mm affine. tsc_mM : the TSC map, for the voxel means.
    models : relaxation model per region name, overriding the class priors.
    refine : ``"echo-ratio"``: refine every tissue region's short-T2* fraction from its measured regional
        echo ratio (:func:`refine_fraction`, :data:`REFINE_PASSES` passes); None: the priors as they are.
    readout : model each region's decay over the readout (False: only at TE, as a voxel-wise
        relaxation factor would; kept for comparison and for the test that shows the difference).
    tube_t1_s : the tubes' measured T1 in s (None: the saline prior). A region's own measured T1
        (:attr:`RegionSpec.t1_s`, from the sidecar's ``t1_ms``) replaces its class prior's; tube regions
        without one take ``tube_t1_s``.
    """
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if not slope or not math.isfinite(slope):
        raise CalibrationError(f"regional TSC needs a calibration line with a finite non-zero slope, got {slope}")
    signals = [np.asarray(s, dtype=np.float64) for s in signals]
    for s in signals:
        if s.shape != sm.matrix:
            raise CalibrationError(f"regional TSC: image shape {s.shape} differs from the system model's matrix {sm.matrix}")
    use = [s for s in specs if s.cls != "ignore"]
    if not use:
        raise CalibrationError("regional TSC: every region is of class 'ignore'")
    occ = occupancy(labels, label_affine, [s.label for s in use], affine, sm.matrix, supersample)
    timings["occupancy"] = time.perf_counter() - t0
    present = occ.reshape(len(use), -1).sum(1) > 0
    warnings = []
    for s, p in zip(use, present):
        if not p:
            w = f"region {s.name} (label {s.label}) does not overlap the reconstruction grid; left out"
            log.warning(w)
            warnings.append(w)
    use = [s for s, p in zip(use, present) if p]
    occ = occ[present]
    occ_vox = downsample(occ, supersample)
    for w in coarse_label_warnings(occ_vox, use, label_affine, affine):
        log.warning(w)
        warnings.append(w)
    t1 = time.perf_counter()
    n_sub = points_per_cell(label_affine, affine, supersample)
    models = dict(models or {})

    def own_t1(s: RegionSpec) -> float | None:
        return s.t1_s if s.t1_s is not None else (tube_t1_s if s.cls == "tube" else None)

    mods = [models.get(s.name) or with_t1(class_model(s.cls, sm.tube_t2star_s), own_t1(s)) for s in use]
    basis = basis_templates(occ, sm, [decay_basis(m, readout) for m in mods], supersample, n_sub)
    del occ
    timings["basis templates (type-2 NUFFT on the 2x grid, gridding per T2*)"] = time.perf_counter() - t1
    support = ndimage.binary_dilation(occ_vox.sum(0) > 0, iterations=SUPPORT_DILATE_VOX)
    if refine and len(signals) < 2:
        raise CalibrationError("regional TSC: refine = 'echo-ratio' needs the echo-2 image (an echo pair)")
    prior_mods = list(mods)
    amps: list[np.ndarray] = []
    for it in range(1 + (REFINE_PASSES if refine else 0)):
        if it:  # refine each tissue region's short-T2* fraction from its measured echo ratio
            mods = [
                refine_fraction(p, float(amps[1][j] / amps[0][j]) if amps[0][j] else float("nan"), sm.te_s[0], sm.te_s[1])
                if s.cls == "tissue"
                else p
                for j, (s, p) in enumerate(zip(use, prior_mods))
            ]
        amps = []
        for e, sig in enumerate(signals):
            t2 = time.perf_counter()
            T = _combine(basis, mods, float(sm.te_s[e]), readout)
            timings[f"templates echo {e + 1} pass {it + 1}"] = time.perf_counter() - t2
            amps.append(_fit(sig, T, support))
            if e == 0:
                T1 = T
        if it == 0:
            amps_prior = [a.copy() for a in amps]
    log.info(
        "regional TSC: %d regions through the system model (%d echo(es)), %.1f s",
        len(use),
        len(signals),
        time.perf_counter() - t0,
    )
    ref = with_t1(class_model("tube", sm.tube_t2star_s), tube_t1_s)
    te1 = float(sm.te_s[0])
    out = []
    for j, (s, m) in enumerate(zip(use, mods)):
        own = occ_vox[j] >= 0.5
        n = int(own.sum())
        rel = relaxation_factors(sm.tr_s, sm.flip_deg, te1, target=m, reference=ref).relative
        c = float(amps[0][j])
        mM = (c - intercept) / (slope * rel)
        p = prior_mods[j]
        rel_p = relaxation_factors(sm.tr_s, sm.flip_deg, te1, target=p, reference=ref).relative
        mM_prior = (float(amps_prior[0][j]) - intercept) / (slope * rel_p)
        vm = float(np.asarray(tsc_mM)[own].mean()) if tsc_mM is not None and n else None
        rec = float(T1[j][own].mean()) if n else None
        er = erp = None
        if len(signals) > 1:
            er = float(amps[1][j] / c) if c else None
            erp = float(m.decay(sm.te_s[1]) / m.decay(te1))
        t1_pct = t1_prior_sensitivity(
            sm.tr_s, sm.flip_deg, s.cls, m.t1_s, ref.t1_s, region_measured=s.t1_s is not None, tube_measured=tube_t1_s is not None
        )
        out.append(RegionValue(s.label, s.name, s.cls, n, vm, float(mM), c, rec, float(rel), er, erp, float(mM_prior), t1_pct))
    timings["total"] = time.perf_counter() - t0
    spread: dict[str, float] = {}
    for r in out:
        if r.t1_prior_pct is not None:
            spread[r.cls] = max(spread.get(r.cls, 0.0), r.t1_prior_pct)
    if spread:
        log.info(
            "regional TSC: the T1 priors carry up to %s (literature T1 ranges unless measured; one TR cannot measure T1)",
            ", ".join(f"+-{v:.1f} % for {c} regions" for c, v in sorted(spread.items())),
        )
    settings = {
        "method": "GTM through the system model (recon.calibrate.regions)",
        "supersample": int(supersample),
        "points_per_cell": n_sub,
        "label_voxel_ratio": label_voxel_ratio(label_affine, affine),
        "support_dilate_vox": SUPPORT_DILATE_VOX,
        "support_voxels": int(support.sum()),
        "background_signal": float(amps[0][-1]),
        "echoes_fitted": len(signals),
        "refine": refine,
        "readout_decay": bool(readout),
        "calibration_line": {"slope": float(slope), "intercept": float(intercept)},
        "relaxation": {s.name: m.to_dict() for s, m in zip(use, mods)},
        "t1_ranges_s": {c: physics.RELAXATION_RANGES[c]["t1_s"] for c in ("tissue", "fluid")},
        "t1_measured_s": {
            **({"tubes": float(tube_t1_s)} if tube_t1_s is not None else {}),
            **{s.name: s.t1_s for s in use if s.t1_s is not None},
        },
    }
    return RegionalResult(out, settings, timings, warnings)
