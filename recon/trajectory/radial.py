"""3D density-adapted radial trajectories (Nagel et al., MRM 2009), the comparison variant.

Each projection is a straight centre-out line. Up to k0 = p * kmax the gradient is constant
(|G| = G); beyond, the gradient decays as G * k0^2 / k^2 so that k^2 dk/dt is constant (the
same radial sample density as TPI, without the twist): k(t) = (3 gamma_bar G k0^2 (t - t0)
+ k0^3)^(1/3), readout T = kmax / (gamma_bar G) * (1 + 2 p^3) / (3 p^2). Directions are a
Fibonacci (golden-angle spiral) set, uniform on the sphere; by default Nyquist at kmax
(4 pi (kmax FOV)^2 projections) divided by the undersampling factor.
"""

from __future__ import annotations

import math

import numpy as np

from recon.errors import TrajectoryError
from recon.trajectory.base import GAMMA_BAR_23NA_HZ_PER_T, Trajectory
from recon.trajectory.design import gradient_on_raster, sample_path, time_optimal
from recon.trajectory.tpi import check_design, tpi_readout_s


def fibonacci_directions(n: int) -> np.ndarray:
    """n unit vectors (n, 3) spread uniformly on the sphere by the golden-angle spiral."""
    i = np.arange(n)
    z = 1 - (2 * i + 1) / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = np.sqrt(1 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def density_adapted_radial(
    fov_m: float = 0.224,
    res_m: float = 0.0035,
    p: float = 0.3,
    gmax_t_per_m: float | None = 4e-3,
    readout_s: float | None = None,
    smax_t_per_m_per_s: float | None = None,
    dwell_s: float = 10e-6,
    gamma_hz_per_t: float = GAMMA_BAR_23NA_HZ_PER_T,
    n_projections: int | None = None,
    undersampling: float = 1.0,
    grad_raster_s: float = 10e-6,
    n_fine: int = 20000,
) -> Trajectory:
    """Generate a 3D density-adapted radial trajectory (same parameter meanings as :func:`tpi`)."""
    kmax, k0, gmax_t_per_m = check_design(
        fov_m,
        res_m,
        p,
        gmax_t_per_m,
        readout_s,
        smax_t_per_m_per_s,
        dwell_s,
        grad_raster_s,
        undersampling,
        gamma_hz_per_t,
        "density-adaptation fraction",
    )
    if n_projections is None:
        n_projections = int(round(4 * math.pi * (kmax * fov_m) ** 2 / undersampling))
    if n_projections < 1:
        raise TrajectoryError(f"need at least one projection, got {n_projections}")
    kf = np.linspace(0.0, kmax, n_fine)
    vmax = gamma_hz_per_t * gmax_t_per_m * (k0 / np.maximum(kf, k0)) ** 2
    t_path = time_optimal(kf, vmax, None, gamma_hz_per_t, smax_t_per_m_per_s)
    n_samp = int(math.ceil(t_path[-1] / dwell_s - 1e-9))
    t = np.arange(n_samp) * dwell_s
    kr = sample_path(t_path, kf, t)
    dirs = fibonacci_directions(n_projections)
    k = dirs[:, None, :] * kr[None, :, None]
    pts = np.stack([np.zeros_like(kf), np.zeros_like(kf), kf], axis=-1)
    g = gradient_on_raster(t_path, pts, grad_raster_s, gamma_hz_per_t)[None]
    # rotation about z alone cannot map the z-axis waveform to a direction; checks only need |G|
    params = {
        "generator": "radial",
        "fov_m": fov_m,
        "res_m": res_m,
        "p": p,
        "gmax_t_per_m": gmax_t_per_m,
        "smax_t_per_m_per_s": smax_t_per_m_per_s,
        "undersampling": undersampling,
        "grad_raster_s": grad_raster_s,
        "kmax_per_m": kmax,
        "k0_per_m": k0,
        "readout_design_s": tpi_readout_s(kmax, p, gmax_t_per_m, gamma_hz_per_t),
        "readout_reached_s": float(t_path[-1]),
    }
    traj = Trajectory(
        k=k,
        t=t,
        fov_m=fov_m,
        matrix=int(round(fov_m / res_m)),
        dwell_s=dwell_s,
        gamma_hz_per_t=gamma_hz_per_t,
        params=params,
        solid_angle=np.full(n_projections, 4 * math.pi / n_projections),
        waveforms={
            "raster_s": grad_raster_s,
            "g_t_per_m": g,
            "group": np.zeros(n_projections, dtype=int),
            "rotation_rad": np.zeros(n_projections),
            "note": "one radial waveform along +z; each projection is its rotation onto its direction",
        },
    )
    chk = traj.checks()
    params["max_gradient_reached_t_per_m"] = chk["max_gradient_t_per_m"]
    params["max_slew_reached_t_per_m_per_s"] = chk["max_slew_t_per_m_per_s"]
    params["kmax_reached_per_m"] = chk["kmax_reached_per_m"]
    return traj
