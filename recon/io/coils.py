"""Multi-channel helpers: noise prewhitening and coil combination for few-channel coils.

* :func:`noise_covariance`, :func:`whitening_matrix`, :func:`prewhiten`: from the noise-adjust
  samples (``Acquisition.noise``, (coil, samples)) estimate the coil noise covariance Psi and
  apply W = L^-1 (Psi = L L^H, Cholesky) along the coil axis, so that the whitened noise is
  uncorrelated with unit variance per channel.
* :func:`adaptive_combine`: Walsh et al. (MRM 2000) adaptive combination. The coil correlation
  matrix R(r) = sum over a box of width ``kernel`` voxels of x(r) x(r)^H is a low-resolution
  (smoothed) estimate of S S^H |rho|^2; its dominant eigenvector is the low-resolution coil
  sensitivity s(r) (unit norm, phase referenced to the strongest coil), and the combined
  image is s^H x = ||S|| rho (optimal SNR for whitened data). Written by hand: it is a few
  lines of numpy (``eigh`` on C x C matrices per voxel), and sigpy's coil tools need k-space
  calibration data rather than images.
* :func:`sos_combine`: root sum of squares, the fallback (magnitude only).
* :func:`combine_coils`: dispatch, with a single coil passed through unchanged.

Unit chain: prewhitening divides the data by the noise level (W = L^-1), so whitened images
are in noise units (a 4-coil scan came out at ~7e5 instead of the one-coil ~100). Given the
noise covariance, the combination undoes that scaling: with x_w = W S rho and the whitened
sensitivity estimate s_w = W S / ||W S|| (Walsh), the combined image is
(s_w^H x_w) * ||L s_w|| = ||S|| rho, i.e. the raw signal units of the data, with the coils'
root-sum-of-squares sensitivity ||S|| in the place a single coil's |S| has. A single coil of
sensitivity S thus gives S rho as before, and several coils whose sensitivities have an RSS of 1
give the same value as one uniform coil; the SNR-optimal weighting is unchanged (a per-voxel
real scale). ``sos`` on the same terms is the RSS of the unwhitened images, ||S rho||.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from recon.errors import InputError


def noise_covariance(noise: np.ndarray) -> np.ndarray:
    """Coil noise covariance (C, C) from noise samples (C, N): Psi = n n^H / N (complex)."""
    n = np.asarray(noise)
    if n.ndim != 2 or n.shape[1] < 2:
        raise InputError(f"noise samples must be (n_coils, n_samples >= 2), got shape {n.shape}")
    n = n.astype(np.complex128)
    return (n @ n.conj().T) / n.shape[1]


def whitening_matrix(cov: np.ndarray) -> np.ndarray:
    """W = L^-1 with cov = L L^H, so that W cov W^H = I. Raises InputError if cov is singular."""
    cov = np.asarray(cov, dtype=np.complex128)
    try:
        L = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as e:
        raise InputError("noise covariance is not positive definite (dead or duplicated channel?)") from e
    return np.linalg.inv(L)


def prewhiten(data: np.ndarray, noise: np.ndarray | None = None, coil_axis: int = 1, cov: np.ndarray | None = None) -> np.ndarray:
    """Whiten ``data`` along ``coil_axis`` with the covariance of ``noise`` (C, N) or ``cov``.

    Example: ``acq.data = prewhiten(acq.data, acq.noise)`` (data (echo, coil, proj, sample)).
    Returns complex64 data of the same shape.
    """
    if cov is None:
        if noise is None:
            raise InputError("prewhitening needs noise samples or a covariance")
        cov = noise_covariance(noise)
    W = whitening_matrix(cov)
    d = np.moveaxis(np.asarray(data), coil_axis, -1)
    if d.shape[-1] != W.shape[0]:
        raise InputError(f"data have {d.shape[-1]} coils, noise covariance {W.shape[0]}")
    out = d @ W.T.astype(np.complex64 if d.dtype == np.complex64 else np.complex128)
    return np.moveaxis(out, -1, coil_axis).astype(np.complex64)


def sos_combine(images: np.ndarray, coil_axis: int = 0) -> np.ndarray:
    """Root sum of squares over ``coil_axis`` (real, float32)."""
    return np.sqrt((np.abs(np.asarray(images)) ** 2).sum(axis=coil_axis)).astype(np.float32)


def coil_sensitivities(images: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Low-resolution coil sensitivities (C, ...) of unit norm per voxel (Walsh eigenvector)."""
    x = np.asarray(images)
    c = x.shape[0]
    spatial = x.shape[1:]
    r = np.empty(spatial + (c, c), dtype=np.complex128)
    for i in range(c):
        for j in range(i, c):
            p = x[i] * np.conj(x[j])
            sm = ndimage.uniform_filter(p.real, kernel, mode="nearest") + 1j * ndimage.uniform_filter(
                p.imag, kernel, mode="nearest"
            )
            r[..., i, j] = sm
            r[..., j, i] = np.conj(sm)
    _, v = np.linalg.eigh(r)
    s = v[..., :, -1]  # dominant eigenvector (..., C)
    ref = int(np.argmax((np.abs(x) ** 2).reshape(c, -1).sum(1)))
    ph = s[..., ref]
    s = s * (np.conj(ph) / np.maximum(np.abs(ph), 1e-30))[..., None]
    return np.moveaxis(s, -1, 0)


def _check_cov(x: np.ndarray, noise_cov: np.ndarray) -> np.ndarray:
    cov = np.asarray(noise_cov, dtype=np.complex128)
    if cov.shape != (x.shape[0], x.shape[0]):
        raise InputError(f"{x.shape[0]} coil images but a noise covariance of shape {cov.shape}")
    return cov


def adaptive_combine(
    images: np.ndarray,
    kernel: int = 5,
    noise_cov: np.ndarray | None = None,
    prewhitened: bool = False,
    sens: np.ndarray | None = None,
) -> np.ndarray:
    """Adaptive (Walsh) combination of coil images (C, ...) -> complex64 (...).

    ``noise_cov`` (C, C): the coil noise covariance of the data. Without ``prewhitened`` the
    images are whitened with it first; in both cases the result is put back into the data's
    signal units, ||S|| rho (see the module docstring). Without ``noise_cov`` the images are
    taken as they are and the result is ||S_x|| rho in their own units (noise units when they
    were prewhitened).
    ``sens``: sensitivities (C, ...) of :func:`coil_sensitivities` estimated once (from echo 1, in
    the same whitened space) and used for every image of the scan: the combination is then one
    fixed linear map, so the echoes and reconstructions of a scan keep their ratios and phase
    differences (estimating them per image gives echo 2 its own, noisier weights).
    """
    x = np.asarray(images)
    if x.ndim < 2:
        raise InputError(f"coil images must be (n_coils, ...), got shape {x.shape}")
    L = None
    if noise_cov is not None:
        cov = _check_cov(x, noise_cov)
        L = _cholesky(cov)
        if not prewhitened:
            x = np.tensordot(np.linalg.inv(L), x, axes=(1, 0))
    if x.shape[0] == 1:
        out = x[0] if L is None else x[0] * L[0, 0].real
        return out.astype(np.complex64)
    if sens is not None and np.shape(sens) != x.shape:
        raise InputError(f"coil sensitivities of shape {np.shape(sens)} for coil images of shape {x.shape}")
    s = coil_sensitivities(x, kernel) if sens is None else np.asarray(sens)
    out = (np.conj(s) * x).sum(axis=0)
    if L is not None:  # ||L s_w|| = ||S|| / ||W S||: back from noise units to signal units
        out = out * np.linalg.norm(np.tensordot(L, s, axes=(1, 0)), axis=0)
    return out.astype(np.complex64)


def _cholesky(cov: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as e:
        raise InputError("noise covariance is not positive definite (dead or duplicated channel?)") from e


def combine_coils(
    images: np.ndarray,
    method: str = "adaptive",
    kernel: int = 5,
    noise_cov: np.ndarray | None = None,
    prewhitened: bool = False,
    sens: np.ndarray | None = None,
) -> np.ndarray:
    """Combine coil images (C, ...): ``"adaptive"`` (complex) or ``"sos"`` (magnitude).

    With ``noise_cov`` (and ``prewhitened=True`` when the images were made from data whitened
    by :func:`prewhiten` with that covariance) the result is in the data's signal units, so one
    coil and several coils give the same scale (module docstring). ``sens``: fixed sensitivities
    for ``adaptive`` (:func:`adaptive_combine`).
    """
    if method == "adaptive":
        return adaptive_combine(images, kernel, noise_cov, prewhitened, sens)
    if method == "sos":
        x = np.asarray(images)
        if noise_cov is not None and prewhitened:  # unwhiten: the RSS of the images in signal units
            x = np.tensordot(_cholesky(_check_cov(x, noise_cov)), x, axes=(1, 0))
        return sos_combine(x)
    raise InputError(f"coil combination must be 'adaptive' or 'sos', got {method!r}")
