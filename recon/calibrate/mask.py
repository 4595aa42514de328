"""Object mask of a reconstruction and QA statistics of the background.

The rule of :func:`object_mask` (documented, tested on the phantom's truth labels):

1. **Noise level.** Background voxels are those below the Otsu threshold of the echo-1
   magnitude (``skimage.filters.threshold_otsu``). In the background a magnitude image of
   complex Gaussian noise of SD sigma per channel is Rayleigh distributed, E|x|^2 = 2 sigma^2,
   so sigma = sqrt(mean(|x|^2) / 2) over those voxels (gridding streaks and spill-in make this
   an upper bound, which errs on the side of a tighter mask).
2. **Threshold.** A voxel is object when |x| > max(``k_noise`` * sigma, ``frac`` * P99), P99
   the 99th percentile of |x| (defaults 5 and 0.1: five noise SDs, or a tenth of the bright
   signal when blur and ringing, not noise, dominate the background).
3. **Hole filling** in 3D (``scipy.ndimage.binary_fill_holes``), so dark structures enclosed by
   the head (necrotic cores, low-signal white matter at low SNR) stay inside.
4. **Components.** Connected components (26-connectivity) are kept when their volume is at
   least ``min_volume_mm3`` (default 500 mm^3 = 0.5 mL, smaller than a calibration tube) or
   they are the largest one; specks of noise and ringing are dropped.

:func:`background_stats` then gives mean, SD, min and max of a map (the TSC in mM) outside
the mask, beyond a margin of ``margin_vox`` voxels (the point response spreads the object's
edge into the first voxels outside it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from recon.errors import InputError

K_NOISE = 5.0
"""Default threshold in background noise SDs."""
FRACTION_OF_P99 = 0.1
"""Default threshold as a fraction of the 99th percentile of the magnitude."""
MIN_VOLUME_MM3 = 500.0
"""Default smallest kept component, mm^3."""


def noise_sigma(magnitude: np.ndarray) -> float:
    """Per-channel noise SD sigma of a magnitude image from its background (Otsu, Rayleigh); rule step 1."""
    from skimage.filters import threshold_otsu

    m = np.abs(np.asarray(magnitude, dtype=np.float64))
    finite = m[np.isfinite(m)]
    if finite.size < 8 or not np.any(finite > 0):
        raise InputError("cannot estimate the background noise of an empty image")
    bg = finite[finite < threshold_otsu(finite)]
    if bg.size == 0:
        bg = finite[finite <= np.percentile(finite, 10)]
    return float(np.sqrt(np.mean(bg**2) / 2.0))


def object_mask(
    magnitude: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    k_noise: float = K_NOISE,
    frac: float = FRACTION_OF_P99,
    min_volume_mm3: float = MIN_VOLUME_MM3,
) -> np.ndarray:
    """Boolean object mask (same shape) of an echo-1 magnitude image by the module's rule.

    ``affine``: 4x4 voxel-to-RAS mm (only the voxel volume is used; None = 1 mm^3 voxels).
    """
    m = np.abs(np.asarray(magnitude, dtype=np.float64))
    if m.ndim != 3:
        raise InputError(f"object mask needs a 3D image, got shape {m.shape}")
    m = np.where(np.isfinite(m), m, 0.0)
    sigma = noise_sigma(m)
    thr = max(k_noise * sigma, frac * float(np.percentile(m, 99)))
    mask = ndimage.binary_fill_holes(m > thr)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return mask
    vox_mm3 = 1.0 if affine is None else float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))
    sizes = np.bincount(lab.ravel())[1:]
    keep = (sizes * vox_mm3 >= min_volume_mm3) | (sizes == sizes.max())
    return np.isin(lab, np.flatnonzero(keep) + 1)


def background_stats(values: np.ndarray, mask: np.ndarray, margin_vox: int = 2) -> dict[str, Any]:
    """Statistics of ``values`` (e.g. TSC in mM) outside ``mask`` dilated by ``margin_vox`` voxels.

    Returns ``mean``, ``sd`` (ddof 1), ``min``, ``max``, ``n_voxels``, ``margin_vox`` and
    ``mask_voxels`` (JSON-ready floats; NaN statistics when no voxel is left).
    """
    v = np.asarray(values, dtype=np.float64)
    mk = np.asarray(mask, dtype=bool)
    if v.shape != mk.shape:
        raise InputError(f"values {v.shape} and mask {mk.shape} differ in shape")
    grown = ndimage.binary_dilation(mk, iterations=int(margin_vox)) if margin_vox > 0 else mk
    bg = v[~grown & np.isfinite(v)]
    nan = float("nan")
    return {
        "mean": float(bg.mean()) if bg.size else nan,
        "sd": float(bg.std(ddof=1)) if bg.size > 1 else nan,
        "min": float(bg.min()) if bg.size else nan,
        "max": float(bg.max()) if bg.size else nan,
        "n_voxels": int(bg.size),
        "margin_vox": int(margin_vox),
        "mask_voxels": int(mk.sum()),
    }
