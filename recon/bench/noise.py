"""Noise of a linear reconstruction: pseudo-replicas and the analytic propagation of gridding."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from recon.errors import InputError


# ------------------------------------------------------------------------------------ noise
def pseudo_replica_sd(
    op, dcf: np.ndarray, sigma: float, replicas: int = 16, seed: int = 0, batch: int = 4, recon: Callable | None = None
) -> np.ndarray:
    """Noise SD per voxel (N0, N1, N2) of a linear reconstruction by pseudo-replicas.

    Each replica is white complex Gaussian noise (E|n|^2 = sigma^2 per sample, real and imaginary
    parts sigma^2 / 2 each) on every sample of ``op``; ``recon(noise)`` (default: gridding with
    ``dcf``) is applied to batches of ``batch`` replicas. The SD is the complex one,
    sqrt(mean |x - mean x|^2) with the n - 1 normalisation.
    """
    from recon.nufft import gridding

    if replicas < 2:
        raise InputError(f"pseudo-replica SD needs at least 2 replicas, got {replicas}")
    recon = recon or (lambda y: gridding(op, y, dcf))
    rng = np.random.default_rng(seed)
    s1 = np.zeros(op.shape, dtype=np.complex128)
    s2 = np.zeros(op.shape, dtype=np.float64)
    done = 0
    while done < replicas:
        b = min(batch, replicas - done)
        shp = (b,) + tuple(op.kshape)
        n = rng.standard_normal(shp, dtype=np.float32) + 1j * rng.standard_normal(shp, dtype=np.float32)
        n *= np.float32(sigma / math.sqrt(2))
        x = np.asarray(recon(n.astype(np.complex64)))
        s1 += x.sum(0)
        s2 += (np.abs(x) ** 2).sum(0)
        done += b
    var = (s2 - np.abs(s1) ** 2 / replicas) / (replicas - 1)
    return np.sqrt(np.clip(var, 0, None))


def analytic_noise_sd(dcf: np.ndarray, sigma: float) -> float:
    """Noise SD of a gridding reconstruction at any voxel: sigma sqrt(sum_m w_m^2)."""
    w = np.asarray(dcf, dtype=np.float64)
    return float(sigma * math.sqrt(float((w**2).sum())))
