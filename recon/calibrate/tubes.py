"""Calibration tubes: automatic detection, a tubes file, and ROI statistics.

Automatic detection (:func:`detect_tubes`) works on the echo-1 magnitude image:

1. smooth with a Gaussian of ``smooth_vox`` voxels (against noise; ROI statistics use the
   unsmoothed image), threshold at ``rel_threshold`` x its robust maximum (99.9th percentile), or
   above the background noise (median + 4 robust SDs, while that is below 0.3 x the maximum), and
   label connected components (6-connectivity, :func:`scipy.ndimage.label`). If fewer tubes than
   concentrations separate from the head (blurred tails or ringing can bridge a narrow gap), the
   threshold is raised step by step (up to 4x) while the head stays whole (its largest piece
   keeps at least half its volume); tubes separated at any of these thresholds are pooled (the
   lowest threshold at which each one separates gives its geometry) until enough are found;
2. drop the head: components touching a given head mask, or else the largest component when it
   is more than 5x larger than the next, or is alone and larger than 250 ml (a tube phantom
   without a head: nothing is dropped);
3. per remaining component take the half-maximum object (voxels >= 0.5 x its 95th-percentile
   signal, which approximates the true edge of a blurred uniform object), fit a cylinder to it by
   its second moments (axis = principal direction, radius from the mean squared distance to the
   axis, length from the spread along it) and take as ROI the voxels inside that cylinder eroded
   by one PSF width (``psf_fwhm_vox`` voxels, in mm) from its wall and ends. The ROI comes from
   the geometry of the whole object, not from voxel values, so noise does not bias it (selecting
   voxels by their own noisy values raised a 30 mM tube to 48 mM at SNR 3 in a test). A tube too
   narrow for the full erosion gets half a voxel less (``erosion_mm`` records it); components
   whose ROI keeps fewer than ``min_core_voxels`` voxels are rejected (the reason is logged and
   named in the error if too few tubes remain);
4. score how tube-like each candidate is: its cylinder fit (intersection over union of the
   half-maximum object with its moment cylinder: about 0.9 for a tube, 0.77 for a sphere) x
   min(1, length / diameter) x its radius consistency (a Gaussian of SD ``RADIUS_LOG_SD`` in
   ln(radius / the median radius of the ``len(concentrations)`` best-shaped candidates)). The
   threshold sweep of step 1 ends once ``len(concentrations)`` candidates score at least
   ``TUBE_LIKE_SCORE`` (an eye that separates from the head at the first threshold does not end
   it); with more candidates than concentrations the most tube-like are kept (ties: the larger
   ROI) and a warning names each one dropped, its centre and radius in mm and the weakest factor
   of its score;
5. match the tubes to the concentrations by rank of their mean signal (in ``rank_image`` when
   given, e.g. the sensitivity-corrected signal).

A tubes file is CSV (``#`` comments allowed) with the columns ``x_mm, y_mm, z_mm, radius_mm,
concentration_mM`` and optionally ``length_mm`` and the axis ``ax, ay, az`` (RAS, default S-I):
the centre in scanner RAS+ mm (through the image's 4x4 affine), the tube's inner radius in mm, its
concentration, and its length along its axis (the scanner's S-I, RAS z, unless given).
An optional header row names the columns (any order). The ROI is the
sphere of radius ``radius_mm - erode_mm`` about the centre, or with a length the cylinder of that
radius and length ``length_mm - 2 erode_mm`` (more voxels: use it for tubes along B0).

Connected components and distance transforms come from scipy.ndimage; only the selection logic
is written here.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from recon.errors import CalibrationError

log = logging.getLogger("recon.calibrate")

DEFAULT_PSF_FWHM_VOX = 1.6
"""PSF FWHM of an ideal spherical k-space (TPI) in voxels (1.59 x voxel size)."""
THRESHOLD_STEPS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)
"""Multiples of ``rel_threshold`` tried in turn until enough tubes separate from the head."""
NOISE_MADS = 4.0
"""The base threshold is at least the background median + this many robust SDs (background = median)."""
NOISE_CAP = 0.3
"""... unless that exceeds this fraction of the maximum (objects, not noise, fill most of the image)."""
HEAD_MIN_ML = 250.0
"""A lone component larger than this (ml) is taken as the head, not a tube."""
RADIUS_LOG_SD = 0.2
"""Radius consistency of a candidate: a Gaussian in ln(radius / the tubes' median radius) of this SD."""
TUBE_LIKE_SCORE = 0.75
"""A candidate scoring at least this (of 1) counts towards the tubes that end the threshold sweep."""


@dataclasses.dataclass
class Tube:
    """One calibration tube and its ROI statistics.

    Attributes
    ----------
    concentration_mM : nominal concentration.
    centre_mm : ROI centre in scanner RAS+ mm.
    centre_vox : ROI centre in voxel indices (float).
    mean, sd : ROI mean and standard deviation (ddof 1) of the image it was measured on.
    n_voxels : voxels in the ROI.
    radius_mm : tube radius, from the tubes file or fitted to the detected object (moments).
    length_mm : tube length (fitted, or from the file; None for a spherical file ROI).
    axis_ras : unit axis direction in RAS (moments of the detected object; S-I for a tubes file).
    model : the point-response model fit (amplitude, recovery coefficient, background), or None.
    erosion_mm : how far inside the tube edge the ROI stays.
    source : ``auto`` or ``file``.
    mask : boolean ROI mask on the image grid (not serialised).
    """

    concentration_mM: float
    centre_mm: tuple
    centre_vox: tuple
    radius_mm: float
    erosion_mm: float
    source: str
    mask: np.ndarray = dataclasses.field(repr=False)
    mean: float = float("nan")
    sd: float = float("nan")
    n_voxels: int = 0
    length_mm: float | None = None
    axis_ras: tuple | None = None
    model: dict | None = None

    def measure(self, image: np.ndarray) -> Tube:
        """Fill ``mean``, ``sd`` and ``n_voxels`` from ``image`` (real-valued) over the ROI."""
        v = np.asarray(image)[self.mask]
        if np.iscomplexobj(v):
            raise CalibrationError("tube ROI statistics need a real-valued image (magnitude or phase-corrected real)")
        self.n_voxels = int(v.size)
        self.mean = float(v.mean()) if v.size else float("nan")
        self.sd = float(v.std(ddof=1)) if v.size > 1 else 0.0
        return self

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "mask"}
        d["centre_mm"] = [float(x) for x in self.centre_mm]
        d["centre_vox"] = [float(x) for x in self.centre_vox]
        if self.axis_ras is not None:
            d["axis_ras"] = [float(x) for x in self.axis_ras]
        return d


@dataclasses.dataclass(frozen=True)
class TubeSpec:
    """A tube as given in a tubes file: centre (RAS+ mm), radius (mm), concentration (mM), and
    optionally its length (mm) along its axis (None: a spherical ROI) and the axis (RAS unit vector,
    default S-I)."""

    centre_mm: tuple
    radius_mm: float
    concentration_mM: float
    length_mm: float | None = None
    axis_ras: tuple = (0.0, 0.0, 1.0)


# ------------------------------------------------------------------------------------ geometry
def voxel_sizes_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm from a 4x4 voxel-to-RAS affine."""
    return np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(0))


def vox_to_mm(affine: np.ndarray, ijk) -> np.ndarray:
    """Voxel indices (..., 3) to RAS+ mm."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(ijk, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def mm_to_vox(affine: np.ndarray, xyz) -> np.ndarray:
    """RAS+ mm (..., 3) to (fractional) voxel indices."""
    a = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    return np.asarray(xyz, dtype=np.float64) @ a[:3, :3].T + a[:3, 3]


def sphere_mask(
    shape: Sequence[int], affine: np.ndarray, centre_mm, radius_mm: float, half_length_mm: float | None = None
) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of ``centre_mm`` (RAS+ mm).

    With ``half_length_mm`` the region is a cylinder along the RAS z (S-I) axis instead:
    in-plane distance <= ``radius_mm`` and |z - z_centre| <= ``half_length_mm``.
    """
    shape = tuple(int(s) for s in shape)
    c = mm_to_vox(affine, centre_mm)
    half = max(radius_mm, half_length_mm or 0.0) / voxel_sizes_mm(affine).min() + 1.5
    lo = np.maximum(np.floor(c - half).astype(int), 0)
    hi = np.minimum(np.ceil(c + half).astype(int) + 1, shape)
    mask = np.zeros(shape, dtype=bool)
    if np.any(hi <= lo):
        return mask
    grids = np.meshgrid(*[np.arange(lo[d], hi[d]) for d in range(3)], indexing="ij")
    ijk = np.stack(grids, axis=-1)
    rel = vox_to_mm(affine, ijk) - np.asarray(centre_mm, dtype=np.float64)
    if half_length_mm is None:
        inside = (rel**2).sum(-1) <= radius_mm**2
    else:
        inside = ((rel[..., :2] ** 2).sum(-1) <= radius_mm**2) & (np.abs(rel[..., 2]) <= half_length_mm)
    mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = inside
    return mask


# ----------------------------------------------------------------------------------- detection
def _check_image(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    if img.ndim != 3:
        raise CalibrationError(f"calibration needs a 3D image, got shape {img.shape}")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise CalibrationError("the image affine must be a finite, invertible 4x4 matrix")
    return img, aff


def _cylinder_fit(idx: np.ndarray, aff: np.ndarray, vox: np.ndarray):
    """Cylinder from the second moments of voxel centres ``idx`` (n, 3): centre, axis (RAS mm), R, L.

    For a uniform solid cylinder mean(perp^2) = R^2 / 2 and var(along) = L^2 / 12. Lattice points
    inside a disc sample it uniformly (mean perp^2 = R^2 / 2 within 0.3 % for R >= 2 voxels,
    checked by simulation); along the axis n points spaced d have variance (n^2 - 1) d^2 / 12, so
    d^2 / 12 is added back for the length.
    """
    xyz = vox_to_mm(aff, idx.astype(np.float64))
    c = xyz.mean(0)
    x = xyz - c
    _, vecs = np.linalg.eigh(x.T @ x / len(x))
    axis = vecs[:, -1]
    along = x @ axis
    perp2 = (x**2).sum(1) - along**2
    cell = float(np.mean(vox)) ** 2 / 12.0
    radius = math.sqrt(2.0 * perp2.mean())
    length = math.sqrt(12.0 * (along.var() + cell))
    return c, axis, radius, length


def _cylinder_box(shape, aff, centre, radius, half_length) -> tuple[slice, ...]:
    """Voxel box (slices) that holds every voxel centre of the cylinder: its bounding sphere, plus one voxel."""
    reach = math.sqrt(radius**2 + half_length**2)
    ijk = np.linalg.solve(np.asarray(aff, dtype=float), np.append(np.asarray(centre, dtype=float), 1.0))[:3]
    vox = voxel_sizes_mm(aff)
    out = []
    for d, n in enumerate(shape):
        h = reach / float(vox[d]) + 1.0
        out.append(slice(max(int(math.floor(ijk[d] - h)), 0), min(int(math.ceil(ijk[d] + h)) + 1, n)))
    return tuple(out)


def _cylinder_mask(shape, aff, sl, centre, axis, radius, half_length) -> np.ndarray:
    """Voxels (within the box ``sl``) whose centres lie inside the given cylinder (RAS mm)."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij")
    x = vox_to_mm(aff, np.stack(grids, axis=-1)) - centre
    along = x @ axis
    perp2 = (x**2).sum(-1) - along**2
    mask = np.zeros(shape, dtype=bool)
    mask[sl] = (perp2 <= radius**2) & (np.abs(along) <= half_length)
    return mask


def _tube_candidates(labels, n, excluded, det, mag, aff, vox, erode_mm, min_core_voxels):
    """Eroded cylinder ROIs of the labelled components not in ``excluded``: (tubes, rejected).

    The ROI geometry comes from the moments of the whole half-maximum object, not from single
    voxels, so noise does not pick bright voxels into the ROI (no selection bias at low SNR).
    """
    slices = ndimage.find_objects(labels)
    candidates, rejected = [], []
    for lab in range(1, n + 1):
        if lab in excluded or slices[lab - 1] is None:
            continue
        sl = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, dim)) for s, dim in zip(slices[lab - 1], mag.shape))
        comp = labels[sl] == lab
        vals = det[sl]
        peak = float(np.percentile(vals[comp], 95))
        obj = comp & (vals >= 0.5 * peak)
        idx = np.argwhere(obj) + np.array([s.start for s in sl])
        if len(idx) < 4:
            rejected.append((len(idx), f"object at voxel {np.round(idx.mean(0), 1).tolist()} ({len(idx)} voxels)"))
            continue
        centre, axis, radius, length = _cylinder_fit(idx, aff, vox)
        fit = _cylinder_overlap(obj, sl, mag.shape, aff, centre, axis, radius, length / 2)
        mask, used = None, erode_mm
        for er in (erode_mm, erode_mm - 0.5 * float(vox.min())):  # small tubes: half a voxel less
            if radius - er > 0 and length / 2 - er > 0:
                m = _cylinder_mask(mag.shape, aff, sl, centre, axis, radius - er, length / 2 - er)
                if m.sum() >= min_core_voxels:
                    mask, used = m, er
                    break
        centre_vox = mm_to_vox(aff, centre)
        if mask is None:
            rejected.append(
                (
                    len(idx),
                    f"object at voxel {np.round(centre_vox, 1).tolist()} ({len(idx)} voxels, radius "
                    f"{radius:.1f} mm) keeps < {min_core_voxels} voxels after eroding {erode_mm:.1f} mm",
                )
            )
            continue
        tube = Tube(
            float("nan"),
            tuple(centre),
            tuple(centre_vox),
            radius_mm=radius,
            erosion_mm=used,
            source="auto",
            mask=mask,
            length_mm=length,
            axis_ras=tuple(float(v) for v in axis),
        ).measure(mag)
        candidates.append((tube, fit))
    return candidates, rejected


def _cylinder_overlap(obj, sl, shape, aff, centre, axis, radius, half_length) -> float:
    """Intersection over union of the object ``obj`` (boolean, on the box ``sl``) and its fitted cylinder.

    About 0.9 for a blurred cylinder on the lattice, 0.77 for a sphere (whose moment cylinder has
    0.89 x its radius and 1.55 x its radius as length), less for irregular shapes.
    """
    box = _cylinder_box(shape, aff, centre, radius, half_length)
    cyl = _cylinder_mask(shape, aff, box, centre, axis, radius, half_length)
    full = np.zeros(shape, dtype=bool)
    full[sl] = obj
    union = int((cyl | full).sum())
    return float((cyl & full).sum()) / union if union else 0.0


@dataclasses.dataclass
class _Candidate:
    """A tube candidate during detection: the tube, its cylinder fit (IoU) and its tube-likeness."""

    tube: Tube
    fit: float
    score: float = 0.0
    radius_ref_mm: float = float("nan")

    @property
    def elongation(self) -> float:
        """Fitted length / diameter."""
        return float(self.tube.length_mm or 0.0) / (2.0 * self.tube.radius_mm)

    def describe(self) -> str:
        """Centre (mm), the score's factors and the weakest of them, for the warning."""
        t = self.tube
        factors = {
            "not a cylinder": self.fit,
            "shorter than wide": min(1.0, self.elongation),
            "radius unlike the tubes'": _radius_consistency(t.radius_mm, self.radius_ref_mm),
        }
        return (
            f"{np.round(t.centre_mm, 1).tolist()} mm (radius {t.radius_mm:.1f} mm vs the tubes' {self.radius_ref_mm:.1f} mm, "
            f"length {t.length_mm or 0.0:.1f} mm, cylinder fit {self.fit:.2f}, {t.n_voxels} ROI voxels; "
            f"score {self.score:.2f}, mainly: {min(factors, key=factors.get)})"
        )


def _radius_consistency(radius_mm: float, ref_mm: float) -> float:
    """exp(-(ln(r / r_ref) / RADIUS_LOG_SD)^2 / 2): 1 at the reference radius, 0.61 at +-22 %."""
    return math.exp(-0.5 * (math.log(radius_mm / ref_mm) / RADIUS_LOG_SD) ** 2)


def _score_candidates(cands: Sequence[_Candidate], n_tubes: int) -> None:
    """Tube-likeness in [0, 1] of each candidate, in place (module docstring, step 4).

    score = cylinder fit (IoU) x min(1, length / diameter) x exp(-(ln(r / r_ref) / RADIUS_LOG_SD)^2 / 2):
    tubes are cylinders, usually longer than wide, and of one size; an eye or another blob beside the
    head is round and of its own size. r_ref is the median fitted radius of the ``n_tubes`` candidates
    of best shape (fit x elongation), so that small irregular blobs do not set the tubes' size.
    """
    if not cands:
        return
    shape = sorted(cands, key=lambda c: -c.fit * min(1.0, c.elongation))
    r_ref = float(np.median([c.tube.radius_mm for c in shape[: max(n_tubes, 1)]]))
    for c in cands:
        c.radius_ref_mm = r_ref
        c.score = c.fit * min(1.0, c.elongation) * _radius_consistency(c.tube.radius_mm, r_ref)


def detect_tubes(
    magnitude: np.ndarray,
    affine: np.ndarray,
    concentrations_mM: Sequence[float],
    *,
    psf_fwhm_vox: float = DEFAULT_PSF_FWHM_VOX,
    head_mask: np.ndarray | None = None,
    rel_threshold: float = 0.1,
    threshold: float | None = None,
    min_core_voxels: int = 3,
    exclude_largest: bool | None = None,
    rank_image: np.ndarray | None = None,
    smooth_vox: float = 0.7,
) -> tuple[list[Tube], list[str]]:
    """Find the calibration tubes in a magnitude image (see the module docstring).

    Parameters
    ----------
    magnitude : 3D echo-1 magnitude image.
    affine : 4x4 voxel-to-RAS+ mm affine.
    concentrations_mM : one per expected tube (matched by rank of the tubes' mean signal).
    psf_fwhm_vox : erosion, in voxels, from the half-maximum edge of each tube.
    head_mask : optional boolean mask of the head; components touching it are not tubes.
    rel_threshold : detection threshold as a fraction of the robust maximum (ignored if
        ``threshold`` is given, an absolute signal level).
    min_core_voxels : fewest eroded ROI voxels a tube must keep.
    smooth_vox : Gaussian SD (voxels) of the smoothing applied before segmentation (noise robustness);
        ROI statistics use the unsmoothed image.
    exclude_largest : drop the largest component as the head (None: automatic, see above).
    rank_image : real image whose ROI means rank the tubes (default ``magnitude``); its statistics
        are the ones returned.

    Returns
    -------
    tubes (sorted by concentration, ROI stats measured on ``magnitude``) and warnings.
    Raises :class:`CalibrationError` when no tubes or fewer tubes than concentrations are found.
    """
    mag, aff = _check_image(np.abs(magnitude), affine)
    conc = sorted(float(c) for c in concentrations_mM)
    if len(conc) < 1:
        raise CalibrationError("no tube concentrations given")
    warnings: list[str] = []
    finite = np.isfinite(mag)
    robust_max = float(np.percentile(mag[finite], 99.9)) if finite.any() else 0.0
    if not robust_max > 0:
        raise CalibrationError("no tubes found: the image is empty (all zero or not finite)")
    det = np.where(finite, mag, 0.0)
    if smooth_vox > 0:
        det = ndimage.gaussian_filter(det, smooth_vox)
    hm = None
    if head_mask is not None:
        hm = np.asarray(head_mask, dtype=bool)
        if hm.shape != mag.shape:
            raise CalibrationError(f"head mask shape {hm.shape} differs from the image {mag.shape}")
        hm = ndimage.binary_dilation(hm)
    vox = voxel_sizes_mm(aff)
    erode_mm = float(psf_fwhm_vox) * float(vox.mean())
    det_max = float(np.percentile(det, 99.9))
    base = rel_threshold * det_max
    med = float(np.median(det))
    noise_level = med + NOISE_MADS * 1.4826 * float(np.median(np.abs(det - med)))
    if base < noise_level <= NOISE_CAP * det_max:  # noisy background: stay above it
        log.debug("detection threshold raised to the noise level %.4g", noise_level)
        base = noise_level
    levels = [float(threshold)] if threshold is not None else [base * f for f in THRESHOLD_STEPS]
    best: tuple | None = None
    head0 = 0
    for thr in levels:
        labels, n = ndimage.label(det > thr)
        if n == 0:
            break
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        excluded: set[int] = set()
        if hm is not None:
            excluded |= set(np.unique(labels[hm]).tolist()) - {0}
        else:
            order = np.argsort(sizes)[::-1]
            if head0 and sizes[order[0]] < 0.5 * head0:
                log.debug("threshold %.4g fragments the head; stopping the threshold sweep", thr)
                break
            second = int(sizes[order[1]]) if n > 1 else 0
            big = sizes[order[0]] * float(np.prod(vox)) > HEAD_MIN_ML * 1e3
            auto = bool(sizes[order[0]] > 5 * second) if n > 1 else big
            if exclude_largest if exclude_largest is not None else auto:
                excluded.add(int(order[0]) + 1)
                head0 = head0 or int(sizes[order[0]])
        cands, rej = _tube_candidates(labels, n, excluded, det, mag, aff, vox, erode_mm, min_core_voxels)
        # union over thresholds: a tube that separated at a lower threshold is kept (low-concentration tubes
        # vanish at the thresholds that separate bright tubes bridged to the head, and vice versa)
        merged = list(best[1]) if best is not None else []
        for t, fit in cands:
            if not any(
                float(np.linalg.norm(np.subtract(t.centre_mm, f.tube.centre_mm))) < max(f.tube.radius_mm, t.radius_mm)
                for f in merged
            ):
                merged.append(_Candidate(t, fit))
        if best is None or len(merged) > len(best[1]):
            best = (thr if best is None else best[0], merged, rej if best is None else best[2] + rej)
        _score_candidates(merged, len(conc))
        log.debug(
            "threshold %.4g: candidates (centre mm, score) %s",
            thr,
            "; ".join(f"{np.round(c.tube.centre_mm, 1).tolist()} {c.score:.2f}" for c in merged),
        )
        # enough tube-like candidates end the sweep; an eye or other blob that separated early does not count
        if sum(c.score >= TUBE_LIKE_SCORE for c in merged) >= len(conc):
            break
    if best is None:
        raise CalibrationError(f"no tubes found: nothing above the detection threshold {levels[0]:.4g}")
    thr, candidates, rejected = best
    if thr != levels[0]:
        log.info("tubes separated from the head at threshold %.4g (%.3g x the robust maximum)", thr, thr / det_max)
    for _, r in rejected:
        log.debug("tube candidate rejected: %s", r)
    rejected.sort(key=lambda x: -x[0])
    why = ""
    if rejected:
        why = f"; {len(rejected)} object(s) too small for a tube ROI, the largest: " + "; ".join(r for _, r in rejected[:3])
    tried = f"thresholds {levels[0]:.4g}..{levels[-1]:.4g}" if len(levels) > 1 else f"threshold {levels[0]:.4g}"
    if not candidates:
        raise CalibrationError(f"no tubes found outside the head ({tried}){why}")
    if len(candidates) < len(conc):
        raise CalibrationError(
            f"found {len(candidates)} tubes but {len(conc)} concentrations were given ({', '.join(f'{c:g}' for c in conc)} mM){why}"
        )
    if len(candidates) > len(conc):  # keep the most tube-like, then the largest
        _score_candidates(candidates, len(conc))
        candidates.sort(key=lambda c: (-c.score, -c.tube.n_voxels))
        kept, extra = candidates[: len(conc)], candidates[len(conc) :]
        w = (
            f"{len(candidates)} candidate objects for {len(conc)} concentrations: kept the {len(conc)} most "
            f"tube-like (scores {min(c.score for c in kept):.2f}..{max(c.score for c in kept):.2f}; "
            "score = cylinder fit x min(1, length / diameter) x radius consistency); ignored "
            + "; ".join(c.describe() for c in extra)
        )
        log.warning(w)
        warnings.append(w)
        candidates = kept
    candidates = [c.tube for c in candidates]
    if rank_image is not None:
        ri = np.asarray(rank_image)
        if ri.shape != mag.shape:
            raise CalibrationError(f"rank image shape {ri.shape} differs from the image {mag.shape}")
        for t in candidates:
            t.measure(ri)
    candidates.sort(key=lambda t: t.mean)
    for t, c in zip(candidates, conc):
        t.concentration_mM = c
    return candidates, warnings


# ---------------------------------------------------------------------------------- tubes file
_COLUMNS = {
    "x": ("x", "x_mm"),
    "y": ("y", "y_mm"),
    "z": ("z", "z_mm"),
    "radius": ("r", "radius", "radius_mm", "r_mm"),
    "conc": ("c", "conc", "concentration", "concentration_mm", "mm", "c_mm"),
    "length": ("length", "length_mm", "l_mm"),  # optional
    "ax": ("ax", "axis_x"),  # optional axis direction (RAS), all three or none
    "ay": ("ay", "axis_y"),
    "az": ("az", "axis_z"),
}


def read_tubes_file(path: str | os.PathLike) -> list[TubeSpec]:
    """Read a tubes CSV (``x_mm, y_mm, z_mm, radius_mm, concentration_mM``; see module docstring)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise CalibrationError(f"cannot read tubes file: {e.strerror}", p) from e
    rows = [
        (i + 1, r)
        for i, r in enumerate(csv.reader(text.splitlines()))
        if r and any(x.strip() for x in r) and not r[0].strip().startswith("#")
    ]
    if not rows:
        raise CalibrationError("tubes file has no rows (expected x_mm,y_mm,z_mm,radius_mm,concentration_mM)", p)
    order: list[int | None] = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    first = [x.strip() for x in rows[0][1]]
    try:
        [float(x) for x in first]
    except ValueError:
        names = [x.lower() for x in first]
        order = []
        for key, aliases in _COLUMNS.items():
            hit = [i for i, nm in enumerate(names) if nm in aliases]
            if not hit and key not in ("length", "ax", "ay", "az"):
                raise CalibrationError(
                    f"tubes file header {first} lacks a column for {key} (accepted names: {', '.join(aliases)})",
                    p,
                ) from None
            order.append(hit[0] if hit else None)
        rows = rows[1:]
    specs = []
    for line, r in rows:
        try:
            v = [float(r[i]) for i in order[:5]]
            ln = order[5]
            length = float(r[ln]) if ln is not None and ln < len(r) and r[ln].strip() else None
            ax = [order[i] for i in (6, 7, 8)]
            axis = (0.0, 0.0, 1.0)
            if all(i is not None and i < len(r) and r[i].strip() for i in ax):
                axis = tuple(float(r[i]) for i in ax)
                if not math.isfinite(sum(axis)) or math.hypot(*axis) == 0:
                    raise ValueError
                axis = tuple(a / math.hypot(*axis) for a in axis)
        except (ValueError, IndexError):
            raise CalibrationError(
                f"line {line}: expected numbers x_mm,y_mm,z_mm,radius_mm,concentration_mM[,length_mm], got {r}",
                p,
            ) from None
        if not all(math.isfinite(x) for x in v + [length or 0.0]):
            raise CalibrationError(f"line {line}: values must be finite, got {v}", p)
        if v[3] <= 0:
            raise CalibrationError(f"line {line}: radius must be positive, got {v[3]} mm", p)
        if v[4] < 0:
            raise CalibrationError(f"line {line}: concentration must be >= 0, got {v[4]} mM", p)
        if length is not None and length <= 0:
            raise CalibrationError(f"line {line}: length must be positive, got {length} mm", p)
        specs.append(TubeSpec((v[0], v[1], v[2]), v[3], v[4], length, axis))
    if not specs:
        raise CalibrationError("tubes file lists no tubes", p)
    return specs


def tubes_from_specs(
    shape: Sequence[int],
    affine: np.ndarray,
    specs: Sequence[TubeSpec],
    erode_mm: float,
    path: str | os.PathLike | None = None,
) -> tuple[list[Tube], list[str]]:
    """ROIs eroded by ``erode_mm`` inside each tube (sphere, or cylinder with a length), and warnings.

    A tube narrower than the erosion keeps the voxel nearest its centre (with a warning). A centre
    outside the image is a :class:`CalibrationError` naming ``path``.
    """
    shape = tuple(int(s) for s in shape)
    aff = np.asarray(affine, dtype=np.float64)
    tubes, warnings = [], []
    for i, s in enumerate(specs):
        cv = mm_to_vox(aff, s.centre_mm)
        if np.any(cv < -0.5) or np.any(cv > np.asarray(shape) - 0.5):
            raise CalibrationError(
                f"tube {i + 1} ({s.concentration_mM:g} mM) centre {list(s.centre_mm)} mm lies "
                f"outside the image (voxel {np.round(cv, 1).tolist()} of {list(shape)})",
                path,
            )
        r = s.radius_mm - erode_mm
        hl = None if s.length_mm is None else s.length_mm / 2 - erode_mm
        if r > 0 and hl is not None and hl > 0:
            full = tuple(slice(0, n) for n in shape)
            mask = _cylinder_mask(shape, aff, full, np.asarray(s.centre_mm, float), np.asarray(s.axis_ras, float), r, hl)
        elif r > 0 and hl is None:
            mask = sphere_mask(shape, aff, s.centre_mm, r)
        else:
            mask = np.zeros(shape, dtype=bool)
        if not mask.any():
            near = tuple(np.clip(np.round(cv).astype(int), 0, np.asarray(shape) - 1))
            mask[near] = True
            w = (
                f"tube {i + 1} ({s.concentration_mM:g} mM): radius {s.radius_mm:g} mm leaves no ROI after "
                f"eroding "
                f"{erode_mm:.1f} mm; using the voxel nearest its centre"
            )
            log.warning(w)
            warnings.append(w)
        tubes.append(
            Tube(
                s.concentration_mM,
                tuple(float(x) for x in s.centre_mm),
                tuple(cv.tolist()),
                radius_mm=s.radius_mm,
                erosion_mm=float(erode_mm),
                source="file",
                mask=mask,
                length_mm=s.length_mm,
                axis_ras=tuple(float(v) for v in s.axis_ras),
            )
        )
    return tubes, warnings
