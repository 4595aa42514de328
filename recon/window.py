"""Target point response of a reconstructed image: a radial k-space window applied on the image grid.

Why (the physics): a 3D radial/TPI acquisition samples a ball of radius k_max. A reconstruction that
deconvolves the decay during the readout (the iterative path, :mod:`recon.iterative`) gives every
compartment the point response of that ball with flat weights: a sharp cut-off. Its ringing does not
fade at the centre of a compact object in 3D. The value at the centre of a uniform sphere of radius R
seen through a sharp k-ball of radius k_c is

    f(0) = (2 / pi) (Si(U) - sin U),   U = 2 pi k_c R,

which tends to 1 - (2 / pi) sin U as Si(U) tends to pi / 2: an oscillation of +-64 % that does not decay with R (Pinsky's
divergence of spherical Fourier partial sums). A 2 mm ROI at a lesion's centre reads it. Gridding hides
this for short-T2* tissue (its decay tapers the high k) but not for fluids. A window that goes smoothly
to (near) zero at k_max removes the discontinuity: with ``hamming`` the centre of a sphere of radius
>= 2 voxels is within 0.6 % of its value (computed from the formula's integral; tests check it on the
grid), at the cost of a wider main lobe (FWHM 2.0 voxels against 1.6 for the sharp ball).

Which regime: objects of >= 2 voxels radius are recovered at their centre; objects of 1 voxel are
dominated by the main lobe with any window (blur, not ringing). Windows with a short taper (Tukey)
do not help at these sizes: the taper must span the whole radius to be smooth on the scale 1/R.

The windows are functions of u = |k| / k_max (k in cycles/m, k_max the trajectory's largest sample
radius, :func:`recon.trajectory.base.max_radius`), 1 at u = 0 and 0 beyond u = 1. Applied by FFT on
the image grid (circular convolution with a real, even kernel: no shift, the value at k = 0
unchanged, so a calibration made at k = 0 holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recon.errors import InputError

WINDOWS = ("none", "hamming", "hann")
"""Radial k-space windows: ``none`` (the sharp ball), ``hamming`` (0.54 + 0.46 cos(pi u); 0.08 at k_max),
``hann`` (cos^2(pi u / 2); 0 at k_max)."""


def check_window(name: str) -> str:
    """``name`` if it is one of :data:`WINDOWS`, else :class:`recon.errors.InputError` naming the choices."""
    if name not in WINDOWS:
        raise InputError(f"k-space window must be one of {WINDOWS}, got {name!r}")
    return name


def check_kmax(kmax_per_m: float) -> float:
    """``kmax_per_m`` (cycles/m) if it is positive and finite, else :class:`recon.errors.InputError`."""
    if not np.isfinite(kmax_per_m) or kmax_per_m <= 0:
        raise InputError(f"k_max must be positive and finite (cycles/m), got {kmax_per_m}")
    return float(kmax_per_m)


def window_profile(name: str, u: np.ndarray) -> np.ndarray:
    """The window ``name`` of :data:`WINDOWS` at normalised radius u = |k| / k_max (dimensionless), 0 beyond 1."""
    check_window(name)
    u = np.asarray(u, dtype=np.float64)
    inside = u <= 1.0
    if name == "none":
        w = np.ones_like(u)
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(np.pi * np.minimum(u, 1.0))
    else:
        w = np.cos(0.5 * np.pi * np.minimum(u, 1.0)) ** 2
    return np.where(inside, w, 0.0)


def grid_window(name: str, shape: Sequence[int], fov_m: Sequence[float], kmax_per_m: float) -> np.ndarray:
    """The window on the FFT grid of an image (shape) with field of view ``fov_m`` (m): (N0, N1, N2) float64.

    Entry [i, j, l] belongs to the DFT frequency (fftfreq(N_d) N_d / FOV_d) in cycles/m of ``numpy.fft.fftn``.
    """
    check_kmax(kmax_per_m)
    axes = [np.fft.fftfreq(int(n), d=float(f) / int(n)) for n, f in zip(shape, fov_m)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return window_profile(name, np.sqrt(r2) / float(kmax_per_m))


def apodize(image, name: str, fov_m: Sequence[float], kmax_per_m: float):
    """``image`` (..., N0, N1, N2; numpy or CuPy) seen through the window ``name``: F^-1[W F image] per volume.

    ``none`` returns the image unchanged (no copy). The dtype is kept (complex64 stays complex64).
    """
    if check_window(name) == "none":
        return image
    from recon.device import get_array_module

    xp = get_array_module(image)
    shape = tuple(image.shape[-3:])
    real = np.float32 if image.dtype in (np.complex64, np.float32) else np.float64
    w = xp.asarray(grid_window(name, shape, fov_m, kmax_per_m).astype(real))
    out = xp.fft.ifftn(xp.fft.fftn(image, axes=(-3, -2, -1)) * w, axes=(-3, -2, -1))
    if not xp.iscomplexobj(image):
        out = out.real
    return out.astype(image.dtype, copy=False)
