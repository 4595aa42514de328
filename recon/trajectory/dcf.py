"""Density compensation weights and the unit chain.

Unit chain (DESIGN.md): a weight w_m is the k-space volume that sample m represents, in
1/m^3. Data y are a physical Fourier transform of the object, y(k) = int rho(r)
exp(-i 2 pi k.r) d^3r (value * m^3), so the density-compensated adjoint
x(r) = sum_m w_m y_m exp(+i 2 pi k_m.r) approximates int y(k) exp(+i 2 pi k.r) d^3k = rho(r):
a uniform object of value c reconstructs to c. The sum of the weights is the covered k-space
volume (4/3 pi kmax^3 for a full sphere).

Methods (registry :data:`DCF_METHODS`, selected by name):

* ``analytic``: w_m = Omega_p * |k_m|^2 * (d|k|/dt)_m * dwell, with Omega_p the solid angle a
  projection represents (from the generator, or 4 pi / n_projections). This is the TPI weight
  (|k|^2 up to k0, constant beyond) scaled by the local radial speed, so gradient ramps and
  slew-limited stretches are right; the first sample (k = 0) gets weight 0.
* ``pipe``: Pipe & Menon (MRM 1999) fixed point w <- w / (C C^T w) with C the convolution by
  FINUFFT's spreading kernel (its spread/interpolate-only mode), then scaled to 1/m^3 with the
  kernel's integral measured on the same grid. Works for any trajectory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from recon.errors import InputError
from recon.trajectory.base import Trajectory

log = logging.getLogger(__name__)

DCF_METHODS: dict[str, Callable[..., np.ndarray]] = {}


def register_dcf(name: str):
    """Register a density compensation method ``f(traj, **options) -> (n_proj, n_samp)`` in 1/m^3."""

    def deco(f):
        DCF_METHODS[name] = f
        return f

    return deco


def compute_dcf(traj: Trajectory, method: str = "analytic", **options) -> np.ndarray:
    """Density compensation (n_proj, n_samp) in 1/m^3 by the named method."""
    if method not in DCF_METHODS:
        raise InputError(f"unknown density compensation {method!r}; choose one of {sorted(DCF_METHODS)}")
    return DCF_METHODS[method](traj, **options)


@register_dcf("analytic")
def dcf_analytic(traj: Trajectory) -> np.ndarray:
    """Analytic weights for centre-out trajectories (TPI, radial): Omega * k^2 * d|k|/dt * dwell."""
    kr = np.sqrt((traj.k**2).sum(-1))
    t = traj.sample_times()
    if traj.n_samples < 2:
        raise InputError("analytic density compensation needs at least 2 samples per projection")
    vr = np.gradient(kr, axis=1) / np.gradient(t, axis=1)
    vr = np.clip(vr, 0.0, None)  # samples parked at kmax after a readout ends carry no new volume
    omega = (
        traj.solid_angle
        if traj.solid_angle is not None
        else np.full(traj.n_projections, 4 * np.pi / traj.n_projections)
    )
    dt = np.gradient(t, axis=1)
    w = omega[:, None] * kr**2 * vr * dt
    w[:, 0] = 0.0
    return w


@register_dcf("pipe")
def dcf_pipe(traj: Trajectory, n_iter: int = 30, eps: float = 1e-3, n_threads: int | None = None) -> np.ndarray:
    """Pipe-Menon iterative weights with FINUFFT's spread/interp-only mode, in 1/m^3.

    The spreading grid has spacing 1/FOV (Nyquist) and covers +-2 kmax (twice the image
    matrix per axis), so k-space does not wrap. Reported: the final max |C C^T w - 1| inside
    the sampled region, at DEBUG level.
    """
    import finufft

    from recon.nufft import default_threads

    fov = np.asarray(traj.fov_m)
    grid = tuple(int(2 * m) for m in traj.matrix)
    kg = traj.k.reshape(-1, 3) * fov  # cycles per FOV: one grid cell per unit
    pts = [np.ascontiguousarray(2 * np.pi * kg[:, d] / grid[d]) for d in range(3)]
    kw = dict(spreadinterponly=1, nthreads=n_threads or default_threads(), modeord=0, upsampfac=2.0)
    spread = finufft.Plan(1, grid, 1, eps, +1, dtype="complex128", **kw)
    spread.setpts(*pts)
    interp = finufft.Plan(2, grid, 1, eps, -1, dtype="complex128", **kw)
    interp.setpts(*pts)

    def cct(w):
        return interp.execute(spread.execute(w.astype(np.complex128))).real

    w = np.ones(kg.shape[0])
    for it in range(n_iter):
        d = cct(w)
        w = w / np.maximum(d, 1e-12 * d.max())
        if log.isEnabledFor(logging.DEBUG) and it == n_iter - 1:
            log.debug("pipe dcf: iteration %d, max |CC^T w - 1| = %.3g", it + 1, np.abs(cct(w) - 1).max())
    # C C^T convolves with the kernel's autocorrelation, whose integral is (sum of the kernel)^2;
    # the kernel sum on this grid: spread one unit point at the origin and sum the grid
    one = finufft.Plan(1, grid, 1, eps, +1, dtype="complex128", **kw)
    z = np.zeros(1)
    one.setpts(z, z, z)
    kernel_sum = one.execute(np.ones(1, dtype=np.complex128)).real.sum()
    cell = np.prod(1.0 / fov)  # grid cell volume in 1/m^3
    return (w * kernel_sum**2 * cell).reshape(traj.k.shape[:2])
