"""Exact non-uniform DFT at selected indices: the independent truth for NUFFT tests.

Direct sums in float64, separable over axes, so single entries of a 3D transform cost O(N^3)
(forward, one sample) or O(M) (adjoint, one voxel) and can be checked in CI.
"""

from __future__ import annotations

import numpy as np


def grid_positions(shape, fov) -> list[np.ndarray]:
    """Voxel centre coordinates per axis in m: r_i = (i - floor(N/2)) * fov / N."""
    fov = np.broadcast_to(np.asarray(fov, dtype=np.float64), (3,))
    return [(np.arange(n) - n // 2) * (f / n) for n, f in zip(shape, fov)]


def nudft_forward_at(image: np.ndarray, k: np.ndarray, fov, idx) -> np.ndarray:
    """y_m = sum_j x_j exp(-i 2 pi k_m . r_j) for the flat sample indices ``idx`` of k (M, 3)."""
    x = np.asarray(image, dtype=np.complex128)
    r = grid_positions(x.shape, fov)
    kk = np.asarray(k, dtype=np.float64).reshape(-1, 3)[np.asarray(idx)]
    out = np.empty(len(kk), dtype=np.complex128)
    for i, km in enumerate(kk):
        ex, ey, ez = (np.exp(-2j * np.pi * km[d] * r[d]) for d in range(3))
        out[i] = np.einsum("ijk,i,j,k->", x, ex, ey, ez)
    return out


def nudft_adjoint_at(data: np.ndarray, k: np.ndarray, shape, fov, voxels) -> np.ndarray:
    """x_j = sum_m y_m exp(+i 2 pi k_m . r_j) at voxel indices ``voxels`` (V, 3)."""
    y = np.asarray(data, dtype=np.complex128).reshape(-1)
    kk = np.asarray(k, dtype=np.float64).reshape(-1, 3)
    r = grid_positions(shape, fov)
    vox = np.atleast_2d(np.asarray(voxels))
    out = np.empty(len(vox), dtype=np.complex128)
    for i, (a, b, c) in enumerate(vox):
        phase = kk[:, 0] * r[0][a] + kk[:, 1] * r[1][b] + kk[:, 2] * r[2][c]
        out[i] = np.sum(y * np.exp(2j * np.pi * phase))
    return out


def nudft_matrix(k: np.ndarray, shape, fov) -> np.ndarray:
    """Dense encoding matrix E (M, N0*N1*N2), E[m, j] = exp(-i 2 pi k_m . r_j) (small problems only)."""
    r = grid_positions(shape, fov)
    rr = np.stack(np.meshgrid(*r, indexing="ij"), axis=-1).reshape(-1, 3)
    kk = np.asarray(k, dtype=np.float64).reshape(-1, 3)
    return np.exp(-2j * np.pi * kk @ rr.T)
