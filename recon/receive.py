"""Stage 8b: the receive profile of a coil array, from a reference scan with a homogeneous coil.

Why (the physics): the adaptive combination of an array (:mod:`recon.io.coils`) gives ||S(r)|| rho(r),
the object times the root-sum-of-squares sensitivity of the array. For a birdcage ||S|| is nearly
uniform; for an array of loops it falls from the periphery to the centre (on the simulator's ring of 8
loops by ~30 % from beside the head, where the tubes are, to its centre). The tube line is fitted where
the tubes are, so without a correction the TSC of the brain reads low by the ratio of the sensitivities
there and at the tubes: white matter −24 %, grey matter −40 % on that simulated array (gridding, 40³).
||S|| is not identifiable from the array data alone (rho ||S|| is one product), so it is measured: a
second scan of the same object, in the same position, with the same trajectory and a homogeneous receive
coil (the birdcage or volume coil), gives |S_ref| rho with |S_ref| ~ 1. Their ratio, smoothed, is the
array's relative receive profile; every combined image of the array scan is divided by it before the
calibration, so the tubes and the tissue are seen with the same gain.

How: both scans' plain gridding echo-1 images (no B0 correction: the same trajectory, field and decay
give both the same point response, so their ratio is the sensitivity ratio up to its variation over the
point response); the ratio q = |x_array| / |x_ref| is smoothed by normalised convolution with a Gaussian
of :data:`SMOOTH_MM` mm SD and weights |x_ref|^2 inside the support (the ratio's inverse variance),
and normalised to median 1 over the support. Outside the support (no signal) the map is 1.

Which regime: a receive profile smooth on the scale of :data:`SMOOTH_MM` mm; a reference coil whose
own profile is uniform (a birdcage's ±10 % over a head remains as error); no motion between the scans;
the reference scan's trajectory, matrix and geometry equal the array scan's (checked).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from scipy import ndimage

from recon.errors import InputError

log = logging.getLogger(__name__)

SMOOTH_MM = 10.0
"""SD in mm of the Gaussian that smooths the array/reference ratio: well below the scale on which a head
array's profile varies (a loop's ~90 mm), and about two voxels at the 40^3 protocol (5.6 mm)."""

SUPPORT_FRACTION = 0.15
"""Voxels where the reference's smoothed echo-1 magnitude is above this fraction of its 99th percentile
form the support over which the profile is measured."""

RANGE_WARN = 0.25
"""A profile that varies by more than this (max/min - 1 over the support) is reported in the log."""


def array_warning(n_coils: int) -> str:
    """The warning of a calibrated run of an ``n_coils``-coil array without a receive reference."""
    return (
        f"{n_coils}-coil array without a receive reference: the TSC map is the object times the array's "
        "sensitivity (root sum of squares), calibrated where the tubes are; where the sensitivity differs the mM "
        "differ by the same factor (give --receive-reference RAW, a scan with a homogeneous coil)"
    )


@dataclasses.dataclass
class ReceiveProfile:
    """Relative receive profile of an array (dimensionless, median 1 over ``support``) and how it was made."""

    map: np.ndarray
    support: np.ndarray
    info: dict


def receive_profile(array_echo1: np.ndarray, reference_echo1: np.ndarray, voxel_mm, smooth_mm: float = SMOOTH_MM) -> ReceiveProfile:
    """The array's relative receive profile from the plain echo-1 images of the array and the reference scan.

    ``array_echo1``, ``reference_echo1``: (N0, N1, N2) coil-combined gridding images (complex or magnitude) of
    the same object, trajectory and grid; ``voxel_mm``: the voxel size (mm, one value or three);
    ``smooth_mm``: the smoothing SD in mm. Raises :class:`recon.errors.InputError` when their shapes differ or
    the reference has no signal.
    """
    a = np.abs(np.asarray(array_echo1, dtype=np.complex128 if np.iscomplexobj(array_echo1) else np.float64))
    r = np.abs(np.asarray(reference_echo1, dtype=np.complex128 if np.iscomplexobj(reference_echo1) else np.float64))
    if a.shape != r.shape or a.ndim != 3:
        raise InputError(f"receive reference: images of shape {r.shape} for an array image of shape {a.shape}")
    rs = ndimage.gaussian_filter(r, 1.0)
    top = float(np.percentile(rs, 99))
    if not np.isfinite(top) or top <= 0:
        raise InputError("receive reference: the reference scan's image has no signal")
    support = rs > SUPPORT_FRACTION * top
    w = np.where(support, r**2, 0.0)
    q = np.divide(a, r, out=np.zeros_like(a), where=r > 0)
    sigma = float(smooth_mm) / np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    num = ndimage.gaussian_filter(w * q, sigma, mode="nearest")
    den = ndimage.gaussian_filter(w, sigma, mode="nearest")
    prof = np.divide(num, den, out=np.ones_like(num), where=den > 1e-6 * float(den.max()))
    med = float(np.median(prof[support]))
    if not np.isfinite(med) or med <= 0:
        raise InputError("receive reference: the array and reference images do not overlap")
    prof = np.where(support, prof / med, 1.0)
    lo, hi = float(prof[support].min()), float(prof[support].max())
    info = {
        "method": "ratio to a homogeneous-coil reference scan (plain gridding echo 1), smoothed",
        "smooth_mm": float(smooth_mm),
        "support_voxels": int(support.sum()),
        "profile_min": lo,
        "profile_max": hi,
    }
    if hi / max(lo, 1e-12) - 1 > RANGE_WARN:
        log.info("receive profile varies %.2f..%.2f over the object (divided out of the TSC)", lo, hi)
    return ReceiveProfile(prof.astype(np.float32), support, info)


def divide_profile(images: np.ndarray | None, profile: ReceiveProfile | None):
    """``images`` (..., N0, N1, N2) divided by the profile (None passes through); the dtype is kept."""
    if images is None or profile is None:
        return images
    return (images / profile.map).astype(images.dtype, copy=False)
