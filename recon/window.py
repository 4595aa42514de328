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

``tube-decay`` is not a taper of fixed shape but the trajectory's own: W(u) = exp(-t(u) / T2*_tube),
t(u) the readout time (from the first ADC sample) at which the trajectory reaches radius u k_max
(:func:`readout_profile`) and T2*_tube the calibration tubes' prior (:data:`recon.physics.SALINE_TUBE`,
50 ms). It is the k-space weighting that a tube (or CSF, 54 ms) has in a gridding reconstruction:
an image seen through it gives every compartment the point response that the tubes have under
gridding, the one the tube model describes and the line is fitted through. Which regime: it
undoes the extra blur and amplitude loss of short-T2* tissue during the readout and leaves fluids
as gridding shows them (their ringing included); it does not sharpen anything beyond gridding's
response for fluids.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recon.errors import InputError

WINDOWS = ("none", "hamming", "hann", "tube-decay")
"""Radial k-space windows: ``none`` (the sharp ball), ``hamming`` (0.54 + 0.46 cos(pi u); 0.08 at k_max),
``hann`` (cos^2(pi u / 2); 0 at k_max), ``tube-decay`` (the tubes' decay over the trajectory's readout,
exp(-t(u) / T2*_tube); needs the readout profile of :func:`readout_profile`)."""

TRAJECTORY_WINDOWS = ("tube-decay",)
"""Windows whose shape comes from the trajectory (its readout time against radius)."""

READOUT_BINS = 256
"""Radius bins (over 0..k_max) of :func:`readout_profile`."""


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


def readout_profile(
    k: np.ndarray, t_s: np.ndarray, kmax_per_m: float, bins: int = READOUT_BINS, block: int = 1 << 20
) -> np.ndarray:
    """Readout time t(u) in s against normalised radius u = |k| / k_max, on ``bins + 1`` nodes u = 0..1.

    ``k`` (..., 3) sample positions in cycles/m; ``t_s`` their times from the first ADC sample (broadcast
    to ``k.shape[:-1]``). Each node is the mean time of the samples in its bin (the first node is 0 s, the
    centre is where the readout starts); empty bins are interpolated, and the profile is made
    non-decreasing (a centre-out readout reaches each radius once; a trajectory that returns lowers
    nothing). Raises :class:`recon.errors.InputError` for times that do not match the samples or are
    not finite.
    """
    check_kmax(kmax_per_m)
    k = np.asarray(k)
    try:
        t = np.broadcast_to(np.asarray(t_s, dtype=np.float64), k.shape[:-1])
    except ValueError as e:
        raise InputError(f"sample times of shape {np.shape(t_s)} do not match the samples {k.shape[:-1]}") from e
    if not np.all(np.isfinite(t)):
        raise InputError("sample times contain NaN or infinite values")
    kk, tt = k.reshape(-1, 3), t.reshape(-1)  # views where k is contiguous; t a broadcast view until a block is taken
    counts, sums = np.zeros(bins), np.zeros(bins)
    for i in range(0, kk.shape[0], block):  # blocks: no full-size float64 copy of k
        kb = kk[i : i + block].astype(np.float64, copy=False)
        idx = np.minimum((np.sqrt(np.einsum("ij,ij->i", kb, kb)) / float(kmax_per_m) * bins).astype(np.int64), bins - 1)
        counts += np.bincount(idx, minlength=bins)
        sums += np.bincount(idx, weights=tt[i : i + block], minlength=bins)
    centres = (np.arange(bins) + 0.5) / bins
    have = counts > 0
    mean = np.interp(centres, centres[have], sums[have] / counts[have])
    nodes = np.linspace(0.0, 1.0, bins + 1)
    prof = np.interp(nodes, np.concatenate([[0.0], centres]), np.concatenate([[0.0], mean]))
    return np.maximum.accumulate(np.maximum(prof, 0.0))


def window_profile(name: str, u: np.ndarray, readout: np.ndarray | None = None) -> np.ndarray:
    """The window ``name`` of :data:`WINDOWS` at normalised radius u = |k| / k_max (dimensionless), 0 beyond 1.

    ``readout``: the readout time profile of :func:`readout_profile` (s on equispaced nodes u = 0..1),
    needed by the windows of :data:`TRAJECTORY_WINDOWS`.
    """
    from recon.physics import SALINE_TUBE

    check_window(name)
    u = np.asarray(u, dtype=np.float64)
    inside = u <= 1.0
    if name == "none":
        w = np.ones_like(u)
    elif name == "hamming":
        w = 0.54 + 0.46 * np.cos(np.pi * np.minimum(u, 1.0))
    elif name == "hann":
        w = np.cos(0.5 * np.pi * np.minimum(u, 1.0)) ** 2
    else:  # tube-decay
        if readout is None:
            raise InputError(f"the {name} window needs the trajectory's readout time profile")
        prof = np.asarray(readout, dtype=np.float64)
        t = np.interp(np.minimum(u, 1.0), np.linspace(0.0, 1.0, prof.size), prof)
        w = np.exp(-t / SALINE_TUBE.t2star_s[0])
    return np.where(inside, w, 0.0)


def grid_window(
    name: str, shape: Sequence[int], fov_m: Sequence[float], kmax_per_m: float, readout: np.ndarray | None = None
) -> np.ndarray:
    """The window on the FFT grid of an image (shape) with field of view ``fov_m`` (m): (N0, N1, N2) float64.

    Entry [i, j, l] belongs to the DFT frequency (fftfreq(N_d) N_d / FOV_d) in cycles/m of ``numpy.fft.fftn``.
    ``readout``: as for :func:`window_profile`.
    """
    check_kmax(kmax_per_m)
    axes = [np.fft.fftfreq(int(n), d=float(f) / int(n)) for n, f in zip(shape, fov_m)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return window_profile(name, np.sqrt(r2) / float(kmax_per_m), readout)


def apodize(image, name: str, fov_m: Sequence[float], kmax_per_m: float, readout: np.ndarray | None = None):
    """``image`` (..., N0, N1, N2; numpy or CuPy) seen through the window ``name``: F^-1[W F image] per volume.

    ``none`` returns the image unchanged (no copy). The dtype is kept (complex64 stays complex64).
    ``readout``: as for :func:`window_profile`.
    """
    if check_window(name) == "none":
        return image
    from recon.device import get_array_module

    xp = get_array_module(image)
    shape = tuple(image.shape[-3:])
    real = np.float32 if image.dtype in (np.complex64, np.float32) else np.float64
    w = xp.asarray(grid_window(name, shape, fov_m, kmax_per_m, readout).astype(real))
    out = xp.fft.ifftn(xp.fft.fftn(image, axes=(-3, -2, -1)) * w, axes=(-3, -2, -1))
    if not xp.iscomplexobj(image):
        out = out.real
    return out.astype(image.dtype, copy=False)
