"""B0 field maps: dual-echo estimation and external (NIfTI) maps, in Hz at 23Na.

Sign (DESIGN.md forward model): a spin at off-resonance df contributes
exp(-i 2 pi df (TE + t)), so the image of echo e carries the phase -2 pi df TE_e and::

    df = -angle(x2 * conj(x1)) / (2 pi (TE2 - TE1))

Unaliased range: +-1 / (2 (TE2 - TE1)) (+-247.5 Hz for TE 0.30 / 2.32 ms); beyond it the phase
is unwrapped spatially (scikit-image's 3D unwrapper, Herraez et al. 2002).

Estimation (:func:`estimate_fieldmap`): the Hermitian product z = sum_coils x2 conj(x1) is
magnitude-weighted by construction (|z| = |x1||x2|). Inside a support mask it is regularised by

* ``smooth``: normalised complex Gaussian smoothing G(z m) / G(|z| m) (a magnitude-weighted
  circular mean, robust to the low SNR of echo 2 and to wraps), then unwrapping, or
* ``poly``: a weighted least-squares fit of a low-order 3D polynomial to the unwrapped raw
  phase (weights |z|); unbiased at the mask edge, for strong smooth gradients.

Smoothing pulls a steep gradient towards the interior at the mask edge (measured: 38 Hz/voxel
gives 0.9 Hz RMS inside, 3.6 Hz RMS over the mask with sigma 0.7 voxel); ``poly`` does not.
The map is extrapolated ``extrapolate_vox`` voxels past the mask (normalised convolution
carries the smoothed phase outward; the polynomial is simply evaluated there). Outside, the map is 0 Hz.

External maps (:func:`load_fieldmap_nifti`): a NIfTI in Hz, resampled through both affines onto
the sodium grid (nibabel + scipy), scaled by gamma(23Na)/gamma(1H) = 0.2645 when measured on
protons.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import ndimage

from recon.errors import InputError
from recon.physics import GAMMA_RATIO_NA_H


def unaliased_range_hz(te1_s: float, te2_s: float) -> float:
    """Half-width of the unaliased field range, 1 / (2 |TE2 - TE1|), in Hz."""
    return 1.0 / (2.0 * abs(te2_s - te1_s))


def support_mask(magnitude: np.ndarray, threshold: float = 0.15, min_voxels: int = 8) -> np.ndarray:
    """Signal support: |x| (lightly smoothed) above ``threshold`` x its 99.5th percentile.

    Holes are filled and connected components smaller than ``min_voxels`` are dropped (noise).
    ``magnitude`` may be a CuPy array (its magnitude comes to the host); the mask is a numpy array.
    """
    from recon.device import get_array_module, to_host

    xp = get_array_module(magnitude)
    m = xp.abs(magnitude if xp is not np else np.asarray(magnitude))
    if m.ndim > 3:
        m = xp.sqrt((m.reshape((-1,) + tuple(m.shape[-3:])) ** 2).sum(0))
    m = to_host(m)  # N^3 reals: the morphology runs on the host
    ms = ndimage.gaussian_filter(m.astype(np.float64), 0.7)
    ref = np.percentile(ms, 99.5)
    if not ref > 0:
        return np.zeros(ms.shape, bool)
    mask = ndimage.binary_fill_holes(ms > threshold * ref)
    lab, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sizes >= min_voxels])
        mask = keep[lab]
    return mask


def dephasing_factor(fieldmap_hz: np.ndarray, t_s: float, mask: np.ndarray | None = None, floor: float = 0.5) -> np.ndarray:
    """Intravoxel dephasing |mean over the voxel of exp(i 2 pi df t)| at time ``t_s`` (s) after excitation.

    For a field varying linearly across a voxel by g_i Hz along axis i (central differences of
    ``fieldmap_hz``), the mean is prod_i sinc(g_i t) (numpy's normalised sinc). Differences that would
    reach outside ``mask`` are left out on that axis (0 Hz), so the map's cut-off at the support edge
    does not read as a gradient. Clipped below at ``floor``: where the field changes by more than
    about half a cycle per voxel, the linear model is not trusted.
    """
    f = np.asarray(fieldmap_hz, dtype=np.float64)
    inside = np.ones(f.shape, bool) if mask is None else np.asarray(mask, bool)
    out = np.ones(f.shape)
    for ax in range(f.ndim):
        fwd, bwd = np.roll(f, -1, ax), np.roll(f, 1, ax)
        ok = inside & np.roll(inside, -1, ax) & np.roll(inside, 1, ax)
        edge = np.zeros(f.shape, bool)
        idx = [slice(None)] * f.ndim
        for i in (0, -1):
            idx[ax] = i
            edge[tuple(idx)] = True  # no wrap-around differences
        g = np.where(ok & ~edge, 0.5 * (fwd - bwd), 0.0)
        out *= np.abs(np.sinc(g * float(t_s)))
    return np.maximum(out, floor)


def _poly_design(shape, order: int, where: np.ndarray) -> np.ndarray:
    coords = [(np.arange(n) - (n - 1) / 2) / max(n / 2, 1) for n in shape]
    idx = np.nonzero(where)
    x, y, z = (coords[d][idx[d]] for d in range(3))
    cols = [x**i * y**j * z**k for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j)]
    return np.stack(cols, axis=1)


def _unwrap(phase: np.ndarray, region: np.ndarray) -> np.ndarray:
    from skimage.restoration import unwrap_phase

    masked = np.ma.array(phase, mask=~region)
    out = unwrap_phase(masked)
    return np.ma.filled(out, 0.0).astype(np.float64)


def estimate_fieldmap(
    img_e1: np.ndarray,
    img_e2: np.ndarray,
    te1_s: float,
    te2_s: float,
    mask: np.ndarray | None = None,
    *,
    method: str = "smooth",
    sigma_vox: float = 1.5,
    poly_order: int = 3,
    unwrap: bool = True,
    extrapolate_vox: int = 3,
    mask_threshold: float = 0.15,
) -> np.ndarray:
    """Dual-echo off-resonance map df (N0, N1, N2) in Hz (sign in the module docstring).

    Parameters
    ----------
    img_e1, img_e2 : complex images of the two echoes from the same operator, (..., N0, N1, N2);
        leading axes (coils) are combined in the Hermitian product.
    te1_s, te2_s : echo times in s.
    mask : support where the phase is trusted; default :func:`support_mask` of |echo 1|.
    method : ``smooth`` (Gaussian, ``sigma_vox``) or ``poly`` (order ``poly_order`` fit).
    unwrap : unwrap the phase spatially (needed when |df| may exceed the unaliased range).
        CuPy echo images are accepted: the Hermitian product is formed on the device, the
        regularisation and unwrapping (scipy/scikit-image) run on the host on that one N^3 array,
        and the map is returned as a CuPy array.
    extrapolate_vox : voxels past the mask that receive extrapolated values (0 elsewhere).
    mask_threshold : relative threshold of the default mask.
    """
    from recon.device import get_array_module, to_host

    xp = get_array_module(img_e1)
    if xp is not np:  # device images: only the Hermitian product (N^3) comes to the host
        if tuple(img_e1.shape) != tuple(img_e2.shape) or img_e1.ndim < 3:
            raise InputError(f"echo images must have the same shape (..., N0, N1, N2), got {img_e1.shape} and {img_e2.shape}")
        z = to_host((img_e2 * xp.conj(img_e1)).reshape((-1,) + tuple(img_e1.shape[-3:])).sum(0))
        mask = support_mask(img_e1, mask_threshold) if mask is None else to_host(mask)
        # x2 conj(x1) with x1 = 1, x2 = z is z itself: the host path below from the product
        return xp.asarray(
            estimate_fieldmap(
                np.ones(z.shape),
                z,
                0.0,
                float(te2_s) - float(te1_s),
                mask,
                method=method,
                sigma_vox=sigma_vox,
                poly_order=poly_order,
                unwrap=unwrap,
                extrapolate_vox=extrapolate_vox,
                mask_threshold=mask_threshold,
            )
        )
    x1 = np.asarray(img_e1)
    x2 = np.asarray(img_e2)
    if x1.shape != x2.shape or x1.ndim < 3:
        raise InputError(f"echo images must have the same shape (..., N0, N1, N2), got {x1.shape} and {x2.shape}")
    dte = float(te2_s) - float(te1_s)
    if abs(dte) < 1e-9:
        raise InputError(f"echo times must differ, got TE1 {te1_s} s and TE2 {te2_s} s")
    if not (np.all(np.isfinite(x1)) and np.all(np.isfinite(x2))):
        raise InputError("echo images contain NaN or infinite values")
    if method not in ("smooth", "poly"):
        raise InputError(f"field map method must be 'smooth' or 'poly', got {method!r}")
    shape = x1.shape[-3:]
    z = (x2 * np.conj(x1)).reshape((-1,) + shape).sum(0).astype(np.complex128)
    if mask is None:
        mask = support_mask(x1, mask_threshold)
    mask = np.asarray(mask, bool)
    if mask.shape != shape:
        raise InputError(f"mask shape {mask.shape} does not match the images {shape}")
    out = np.zeros(shape, np.float64)
    if not mask.any():
        return out
    ball = ndimage.generate_binary_structure(3, 1)
    region = ndimage.binary_dilation(mask, ball, iterations=int(extrapolate_vox)) if extrapolate_vox > 0 else mask
    zm = np.where(mask, z, 0)
    wm = np.abs(zm)
    if method == "smooth":
        s = float(sigma_vox)
        num = ndimage.gaussian_filter(zm.real, s) + 1j * ndimage.gaussian_filter(zm.imag, s)
        den = ndimage.gaussian_filter(wm, s)
        # the extrapolation band needs some support within reach of the kernel
        region &= den > 1e-3 * den[mask].max()
        phase = np.angle(num)
        if unwrap:
            phase = _unwrap(phase, region)
    else:
        # fit the raw phase (smoothing would bias it at the mask edge); unwrap it by the
        # 2 pi multiples of the unwrapped, lightly smoothed phase
        raw = np.angle(zm)
        if unwrap:
            sm = np.angle(ndimage.gaussian_filter(zm.real, 1.0) + 1j * ndimage.gaussian_filter(zm.imag, 1.0))
            sm = _unwrap(sm, mask)
            raw = raw + 2 * np.pi * np.round((sm - raw) / (2 * np.pi))
        phase = raw
        a = _poly_design(shape, int(poly_order), mask)
        sw = np.sqrt(wm[mask] / wm[mask].max())
        coef, *_ = np.linalg.lstsq(a * sw[:, None], phase[mask] * sw, rcond=None)
        phase = np.zeros(shape)
        phase[region] = _poly_design(shape, int(poly_order), region) @ coef
    # remove the global 2 pi ambiguity of the unwrapped phase: weighted mean inside (-pi, pi]
    wmean = np.sum(wm[mask] * phase[mask]) / max(np.sum(wm[mask]), 1e-30)
    phase = phase - 2 * np.pi * np.round(wmean / (2 * np.pi))
    out[region] = -phase[region] / (2 * np.pi * dte)
    return out


def refine_fieldmap(
    op,
    data: np.ndarray,
    dcf: np.ndarray,
    te_s,
    t_s: np.ndarray,
    fieldmap_hz: np.ndarray,
    mask: np.ndarray | None = None,
    passes: int = 1,
    method: str = "tb-cpr",
    plans=None,
    **estimate_options,
) -> np.ndarray:
    """Refine a dual-echo field map with the echoes corrected by it (Hz).

    The first estimate comes from images blurred by the very off-resonance it measures, so steep
    features (a susceptibility hot spot) are smeared. Correcting both echoes with the current map
    removes the off-resonance phase at TE as well (conjugate phase of TE + t), so the phase
    difference of the corrected echoes measures the residual field, -2 pi (df - map) dTE; adding
    it sharpens the map. Each pass costs one B0-corrected reconstruction of both echoes. On the
    digital phantom (25 ms readout, +57 Hz hot spot) one pass lowers the error inside the brain
    from 2.4 to 1.9 Hz RMS (benchmarks/b0.md). ``plans`` is handed to :func:`recon.b0.correct`
    (tb-cpr's bin plans); ``data`` may be a CuPy array (the map is then returned as one).
    """
    from recon.b0.correction import correct
    from recon.device import get_array_module, to_host

    xp = get_array_module(data)
    f = np.asarray(to_host(fieldmap_hz), dtype=np.float64).copy()
    te = list(np.atleast_1d(te_s))
    for _ in range(int(passes)):
        x = correct(method, op, data, dcf, te, t_s, f, mask=mask, plans=plans)
        res = estimate_fieldmap(x[0], x[1], te[0], te[1], mask=mask, unwrap=False, **estimate_options)
        f = f + to_host(res)
    return f if xp is np else xp.asarray(f)


def load_fieldmap_nifti(
    path: str | os.PathLike,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    nucleus: str = "1H",
    order: int = 1,
) -> np.ndarray:
    """External field map in Hz resampled onto the sodium grid, returned in Hz at 23Na.

    Parameters
    ----------
    path : NIfTI file of the field map in Hz (3D, or 4D with one volume).
    target_affine : (4, 4) voxel-to-RAS+ mm affine of the sodium grid.
    target_shape : sodium matrix (N0, N1, N2).
    nucleus : ``1H`` (scale by 0.2645) or ``23Na`` (already sodium Hz).
    order : spline order of the resampling (1 = trilinear); points outside the map get 0 Hz.

    Refused before reading the voxels: grids above the limit ``fieldmap_voxels`` (or the memory
    limit); after reading: values beyond +-``fieldmap_hz`` (:mod:`recon.limits`). NaN/inf become 0 Hz.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    if nucleus not in ("1H", "23Na"):
        raise InputError(f"field map nucleus must be '1H' or '23Na', got {nucleus!r}", path)
    if not os.path.exists(path):
        raise InputError("field map file not found", path)
    from recon import limits

    def why(e: Exception) -> str:
        text = str(e).strip()
        return f"{type(e).__name__}: {text}" if text else f"{type(e).__name__} (the file is truncated or corrupt)"

    try:
        img = nib.load(os.fspath(path))
        shape = tuple(int(v) for v in img.shape)
    except Exception as e:  # nibabel raises several types for foreign/corrupt files
        raise InputError(f"cannot read the field map as NIfTI: {why(e)}", path) from e
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"field map must be a 3D volume, got shape {shape}", path)
    n_vox = float(np.prod(shape, dtype=np.float64))
    limits.check("fieldmap_voxels", n_vox, f"field map grid {shape}", path, need_bytes=n_vox * 8 * 3)
    limits.check_bytes(n_vox * 8 * 3, f"field map grid {shape} (float64, resampled)", path)
    try:
        data = np.asarray(img.dataobj, dtype=np.float64).reshape(shape)
    except Exception as e:
        raise InputError(f"cannot read the field map as NIfTI: {why(e)}", path) from e
    if not np.all(np.isfinite(data)):
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(np.max(np.abs(data))) if data.size else 0.0
    lim = limits.get("fieldmap_hz")
    if peak > lim:
        raise InputError(
            f"field map reaches |{peak:.6g}| Hz ({nucleus}), beyond the plausible +-{lim:g} Hz: not a field map in Hz? "
            f"(raise the limit with {limits.ENV}=fieldmap_hz=<Hz>)",
            path,
        )
    src = nib.Nifti1Image(data, img.affine)
    out = resample_from_to(
        src,
        (tuple(int(s) for s in target_shape), np.asarray(target_affine)),
        order=order,
        mode="constant",
        cval=0.0,
    )
    hz = np.asarray(out.dataobj, dtype=np.float64)
    return hz * GAMMA_RATIO_NA_H if nucleus == "1H" else hz
