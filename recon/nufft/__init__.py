"""The NUFFT operator and its backends.

Semantics (pinned, tested against an exact non-uniform DFT):

    forward   y_m = sum_j x_j exp(-i 2 pi k_m . r_j)
    adjoint   x_j = sum_m y_m exp(+i 2 pi k_m . r_j)

with k in cycles/m, r_j = (j - floor(N/2)) * fov / N per axis (m), and image axes (0, 1, 2)
following (kx, ky, kz). No density compensation and no voxel-volume factor are inside the
operator; :func:`gridding` applies the density weights of :mod:`recon.trajectory.dcf` so that
the unit chain of DESIGN.md holds.

Backends register themselves in :data:`BACKENDS` (``finufft`` on the CPU here; the GPU
backends ``cupy`` and ``cufinufft`` register from their own modules) and are created through
:class:`NUFFT`; callers never touch a backend directly. Every backend subclasses
:class:`NufftBackend` (the abstract base: what a backend must provide).
"""

from __future__ import annotations

from recon.nufft.operator import (
    BACKENDS,
    NUFFT,
    POINTS_FORMAT,
    NufftBackend,
    NufftPoints,
    available_backends,
    default_threads,
    gridding,
    make_points,
    register_backend,
)

__all__ = [
    "NUFFT",
    "NufftBackend",
    "NufftPoints",
    "make_points",
    "POINTS_FORMAT",
    "BACKENDS",
    "register_backend",
    "available_backends",
    "default_threads",
    "gridding",
]
