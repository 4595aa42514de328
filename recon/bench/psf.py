"""Point response of a trajectory with T2* decay, measured exactly (finufft type 3), and its width."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recon import physics


def decay_tissue(t_s):
    """Bi-exponential tissue T2* decay 0.6 exp(-t/3.5 ms) + 0.4 exp(-t/23 ms) (t in s)."""
    return physics.tissue_decay(t_s)


def decay_csf(t_s):
    """Mono-exponential CSF T2* decay exp(-t/54 ms) (t in s)."""
    return physics.csf_decay(t_s)


def decay_none(t_s):
    """No decay (ones)."""
    return np.ones_like(np.asarray(t_s, dtype=np.float64))


PSF_DECAYS: dict[str, Callable] = {"none": decay_none, "tissue": decay_tissue, "csf": decay_csf}


# --------------------------------------------------------------------------------------- PSF
def sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors (n, 3) spread over the sphere (golden-angle spiral)."""
    from recon.trajectory.radial import fibonacci_directions

    return fibonacci_directions(n)


def point_response(k: np.ndarray, dcf: np.ndarray, values: np.ndarray, points_m: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """Gridding reconstruction of a unit delta at the origin, evaluated at ``points_m`` (..., 3) in m.

    x(r) = sum_m w_m v_m exp(+i 2 pi k_m . r) with k in cycles/m, w the density weights (1/m^3)
    and v the per-sample data of the delta (its decay); exact to ``eps`` (finufft type 3).
    """
    import finufft

    kf = np.asarray(k, dtype=np.float64).reshape(-1, 3) * (2 * np.pi)
    c = (np.asarray(dcf, dtype=np.float64) * np.asarray(values)).reshape(-1).astype(np.complex128)
    pts = np.asarray(points_m, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    out = finufft.nufft3d3(
        np.ascontiguousarray(kf[:, 0]),
        np.ascontiguousarray(kf[:, 1]),
        np.ascontiguousarray(kf[:, 2]),
        c,
        np.ascontiguousarray(flat[:, 0]),
        np.ascontiguousarray(flat[:, 1]),
        np.ascontiguousarray(flat[:, 2]),
        eps=eps,
        isign=1,
    )
    return out.reshape(pts.shape[:-1])


def radial_psf(
    traj,
    dcf: np.ndarray,
    decay: Callable | None = None,
    te_s: float = 0.0,
    n_directions: int = 26,
    n_points: int = 121,
    extent_vox: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged PSF of a trajectory with a signal decay.

    Returns (r in m, profile): the real part of the point response on radial lines from the
    origin in ``n_directions`` directions, averaged over the directions, out to ``extent_vox``
    voxels (of the trajectory's grid, axis 0) in ``n_points`` steps. The delta's data are
    ``decay(te_s + t_m)`` per sample (ones without decay). Without decay the value at r = 0 is
    the sampled k-space volume sum_m w_m (1/m^3); compare peaks as ratios to that.
    """
    dx = traj.fov_m[0] / traj.matrix[0]
    r = np.linspace(0.0, extent_vox * dx, n_points)
    dirs = sphere_directions(n_directions)
    pts = dirs[:, None, :] * r[None, :, None]
    t = traj.sample_times()
    v = np.ones(t.shape) if decay is None else decay(te_s + t)
    x = point_response(traj.k, dcf, v, pts)
    return r, x.real.mean(axis=0)


def fwhm(r: np.ndarray, profile: np.ndarray) -> float:
    """Full width at half maximum of a radial profile (r ascending from 0): 2 x the first radius
    where the profile falls to half its value at r = 0, linearly interpolated (NaN if never)."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(profile, dtype=np.float64)
    half = 0.5 * p[0]
    below = np.nonzero(p < half)[0]
    if p[0] <= 0 or below.size == 0:
        return float("nan")
    i = int(below[0])
    r0, r1, p0, p1 = r[i - 1], r[i], p[i - 1], p[i]
    return float(2 * (r0 + (p0 - half) * (r1 - r0) / (p0 - p1)))


def ball_psf(r_m: np.ndarray, kmax_per_m: float) -> np.ndarray:
    """Analytic PSF of a uniformly sampled k-space ball of radius kmax (1/m), normalised to 1 at r = 0:
    3 (sin u - u cos u) / u^3 with u = 2 pi kmax r."""
    u = 2 * np.pi * kmax_per_m * np.asarray(r_m, dtype=np.float64)
    out = np.ones_like(u)
    m = u > 1e-6
    out[m] = 3 * (np.sin(u[m]) - u[m] * np.cos(u[m])) / u[m] ** 3
    return out
