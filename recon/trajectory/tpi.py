"""Twisted projection imaging (TPI) trajectories (Boada et al., MRM 1997; flexible TPI, Lu et al., MRM 2010).

Design (k in cycles/m, gamma_bar in Hz/T, G in T/m):

* kmax = 1/(2 * resolution), k0 = p * kmax.
* Phase 1 (|k| <= k0): straight radial line at constant |G| = G.
* Phase 2 (k0 < |k| <= kmax): the projection twists on a cone of polar angle theta so that the
  sample density stays constant, k^2 dk/dt = gamma_bar * G * k0^2, i.e.
  k(t) = (3 gamma_bar G k0^2 (t - t0) + k0^3)^(1/3), with |G| = G throughout; the angle psi
  between the path and the radial direction is cos(psi) = k0^2 / k^2.
* Readout duration T = kmax / (gamma_bar G) * (1 + 2 p^3) / (3 p^2) (Boada Eq. 14); given T
  instead, G = kmax / (gamma_bar T) * (1 + 2 p^3) / (3 p^2) (Eq. 15).
* Cones: N_R = 2 * ceil(pi * kmax * FOV / 2), theta_n = (n + 1/2) pi / N_R; projections per cone
  round(p * 2 pi * kmax * FOV * sin(theta_n) / undersampling) (Nyquist at k0), about pi p N^2 in all.

With a slew limit (``smax_t_per_m_per_s``) the design becomes the flexible TPI: the onset of the
twist is tapered (psi rises with a raised cosine over ``taper`` * k0) and each cone's gradient
amplitude is reduced wherever the slew rate cannot support it (including the switch-on at the
start of the readout and the tight turns of the cones near the poles), by a time-optimal speed
profile along the fixed path; the gradient also ramps down to zero at kmax within the readout,
so cones that finish early park at kmax without a slew violation. The sample density there rises, which the analytic density
compensation (radial speed at each sample) accounts for.
"""

from __future__ import annotations

import math

import numpy as np

from recon.errors import TrajectoryError
from recon.trajectory.base import GAMMA_BAR_23NA_HZ_PER_T, Trajectory
from recon.trajectory.design import arc_length, curvature, gradient_on_raster, sample_path, time_optimal


def tpi_readout_s(kmax_per_m: float, p: float, gmax_t_per_m: float, gamma_hz_per_t: float) -> float:
    """Boada Eq. 14: readout duration in s of the ideal TPI."""
    return kmax_per_m / (gamma_hz_per_t * gmax_t_per_m) * (1 + 2 * p**3) / (3 * p**2)


def tpi_gradient_t_per_m(kmax_per_m: float, p: float, readout_s: float, gamma_hz_per_t: float) -> float:
    """Boada Eq. 15: gradient amplitude in T/m for a target readout duration in s."""
    return kmax_per_m / (gamma_hz_per_t * readout_s) * (1 + 2 * p**3) / (3 * p**2)


def tpi_cones(kmax_per_m: float, fov_m: float, p: float, undersampling: float = 1.0):
    """Cone polar angles (rad) and projections per cone of the Boada cone distribution."""
    n_r = 2 * math.ceil(math.pi * kmax_per_m * fov_m / 2)
    theta = (np.arange(n_r) + 0.5) * math.pi / n_r
    n_phi = np.maximum(1, np.rint(p * 2 * math.pi * kmax_per_m * fov_m * np.sin(theta) / undersampling))
    return theta, n_phi.astype(int)


def check_design(
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
    p_name="p",
) -> tuple[float, float, float]:
    """Validate centre-out design parameters (SI units); returns (kmax, k0, G) with G from the readout if needed."""
    if not 0 < p <= 1:
        raise TrajectoryError(f"{p_name} p must be in (0, 1], got {p}")
    if fov_m <= 0 or res_m <= 0 or res_m >= fov_m:
        raise TrajectoryError(f"need 0 < resolution < FOV, got FOV {fov_m} m, resolution {res_m} m")
    if dwell_s <= 0 or grad_raster_s <= 0:
        raise TrajectoryError("dwell time and gradient raster must be positive")
    if undersampling < 1:
        raise TrajectoryError(f"undersampling factor must be >= 1, got {undersampling}")
    kmax = 1.0 / (2 * res_m)
    if gmax_t_per_m is None:
        if readout_s is None or readout_s <= 0:
            raise TrajectoryError("give either a gradient amplitude or a positive readout duration")
        gmax_t_per_m = tpi_gradient_t_per_m(kmax, p, readout_s, gamma_hz_per_t)
    if gmax_t_per_m <= 0:
        raise TrajectoryError(f"gradient amplitude must be positive, got {gmax_t_per_m} T/m")
    if smax_t_per_m_per_s is not None and smax_t_per_m_per_s <= 0:
        raise TrajectoryError(f"slew limit must be positive, got {smax_t_per_m_per_s} T/m/s")
    return kmax, p * kmax, gmax_t_per_m


def _psi(k: np.ndarray, k0: float, taper: float) -> np.ndarray:
    """Angle between path and radial direction: 0 up to k0, arccos(k0^2/k^2) beyond (tapered)."""
    psi = np.zeros_like(k)
    m = k > k0
    psi[m] = np.arccos(np.clip(k0**2 / k[m] ** 2, -1, 1))
    if taper > 0:
        x = np.clip((k - k0) / (taper * k0), 0, 1)
        psi *= 0.5 * (1 - np.cos(np.pi * x))
    return psi


def _rotate_cones(cone_k: np.ndarray, n_per_cone, rot: np.ndarray) -> np.ndarray:
    """k (n_proj, n_samp, 3): each cone's path (n_cones, n_samp, 3) rotated about z by ``rot``.

    Written cone by cone into one output array (no gathered copy of the cone paths), with the
    same arithmetic as the rotation matrix [[c, -s], [s, c]].
    """
    n_cones, n_samp, _ = cone_k.shape
    k = np.empty((len(rot), n_samp, 3))
    i = 0
    for n, m in enumerate(np.asarray(n_per_cone).tolist()):
        c, s = np.cos(rot[i : i + m])[:, None], np.sin(rot[i : i + m])[:, None]
        x, y = cone_k[n, None, :, 0], cone_k[n, None, :, 1]
        k[i : i + m, :, 0] = c * x - s * y
        k[i : i + m, :, 1] = s * x + c * y
        k[i : i + m, :, 2] = cone_k[n, None, :, 2]
        i += m
    return k


def tpi(
    fov_m: float = 0.224,
    res_m: float = 0.0035,
    p: float = 0.3,
    gmax_t_per_m: float | None = 4e-3,
    readout_s: float | None = None,
    smax_t_per_m_per_s: float | None = None,
    dwell_s: float = 10e-6,
    gamma_hz_per_t: float = GAMMA_BAR_23NA_HZ_PER_T,
    undersampling: float = 1.0,
    grad_raster_s: float = 10e-6,
    taper: float = 0.1,
    n_fine: int = 20000,
) -> Trajectory:
    """Generate a 3D TPI trajectory.

    Parameters
    ----------
    fov_m : isotropic field of view in m.
    res_m : nominal isotropic resolution in m (kmax = 1 / (2 res)).
    p : twist fraction, 0 < p <= 1 (the twist starts at k0 = p * kmax).
    gmax_t_per_m : gradient amplitude G in T/m; or None to derive it from ``readout_s``.
    readout_s : target readout duration in s (used only when ``gmax_t_per_m`` is None).
    smax_t_per_m_per_s : slew limit in T/m/s; None gives the ideal Boada design (instant
        switch-on, hard twist onset); a value gives the slew-limited flexible TPI.
    dwell_s : ADC dwell time in s (sample m is at t = m * dwell from the first ADC sample).
    gamma_hz_per_t : gyromagnetic ratio / 2pi in Hz/T (default 23Na, 11.262 MHz/T).
    undersampling : angular undersampling factor (>= 1 divides the projections per cone).
    grad_raster_s : gradient raster in s for the design waveforms and the slew check.
    taper : width of the tapered twist onset as a fraction of k0 (flexible design only).
    n_fine : points of the fine path grid used for the numerical design.
    """
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
        "twist fraction",
    )
    t_ideal = tpi_readout_s(kmax, p, gmax_t_per_m, gamma_hz_per_t)
    if t_ideal / dwell_s > 200000:
        raise TrajectoryError(f"readout of {t_ideal * 1e3:.1f} ms is too long for dwell {dwell_s * 1e6} us")

    theta, n_phi = tpi_cones(kmax, fov_m, p, undersampling)
    n_r = len(theta)
    flexible = smax_t_per_m_per_s is not None
    kf = np.linspace(0.0, kmax, n_fine)
    psi = _psi(kf, k0, taper if flexible else 0.0)
    vmax = np.full(n_fine, gamma_hz_per_t * gmax_t_per_m)

    def cone_path(th: float):
        st = max(math.sin(th), 1e-12)
        integrand = np.tan(psi) / np.maximum(kf, 1e-300) / st
        phi = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(kf))])
        pts = np.stack([kf * st * np.cos(phi), kf * st * np.sin(phi), kf * math.cos(th)], axis=-1)
        return pts

    def design(smax):
        profiles = {}
        for n in range(n_r):
            mirror = n_r - 1 - n  # cones theta and pi - theta have the same speed profile
            pts = cone_path(theta[n])
            s = arc_length(pts)
            if mirror in profiles:
                t_path = profiles[mirror][0]
            elif smax is None:
                t_path = s / vmax[0]
            else:
                t_path = time_optimal(s, vmax, curvature(pts, s), gamma_hz_per_t, smax)
            profiles[n] = (t_path, pts)
        return profiles

    smax_design = None if not flexible else 0.97 * smax_t_per_m_per_s
    for _attempt in range(6):
        profiles = design(smax_design)
        waves = [gradient_on_raster(tp, pts, grad_raster_s, gamma_hz_per_t) for tp, pts in profiles.values()]
        n_rast = max(w.shape[0] for w in waves)
        g = np.zeros((n_r, n_rast, 3))  # gradient off after a cone's readout ends
        for n, w in enumerate(waves):
            g[n, : w.shape[0]] = w
        if not flexible:
            break
        g0 = np.concatenate([np.zeros_like(g[:, :1]), g], axis=1)
        slew = np.nanmax(np.sqrt((np.diff(g0, axis=1) ** 2).sum(-1)) / grad_raster_s)
        if slew <= smax_t_per_m_per_s:
            break
        smax_design *= 0.95 * smax_t_per_m_per_s / slew
    else:
        raise TrajectoryError(f"could not meet the slew limit {smax_t_per_m_per_s} T/m/s on a {grad_raster_s * 1e6:g} us raster")

    t_end = max(tp[-1] for tp, _ in profiles.values())
    n_samp = int(math.ceil(t_end / dwell_s - 1e-9))
    t = np.arange(n_samp) * dwell_s
    cone_k = np.stack([sample_path(tp, pts, t) for tp, pts in profiles.values()])  # (n_r, n_samp, 3)

    cone_idx = np.repeat(np.arange(n_r), n_phi)
    rot = np.concatenate([2 * np.pi * np.arange(m) / m for m in n_phi])
    k = _rotate_cones(cone_k, n_phi, rot)
    solid = 4 * np.pi * np.sin(theta) * np.sin(np.pi / (2 * n_r)) / n_phi
    matrix = int(round(fov_m / res_m))
    params = {
        "generator": "tpi",
        "fov_m": fov_m,
        "res_m": res_m,
        "p": p,
        "gmax_t_per_m": gmax_t_per_m,
        "smax_t_per_m_per_s": smax_t_per_m_per_s if flexible else None,
        "undersampling": undersampling,
        "grad_raster_s": grad_raster_s,
        "taper": taper if flexible else 0.0,
        "n_cones": n_r,
        "kmax_per_m": kmax,
        "k0_per_m": k0,
        "readout_design_s": t_ideal,
        "readout_reached_s": float(t_end),
    }
    traj = Trajectory(
        k=k,
        t=t,
        fov_m=fov_m,
        matrix=matrix,
        dwell_s=dwell_s,
        gamma_hz_per_t=gamma_hz_per_t,
        params=params,
        solid_angle=solid[cone_idx],
        waveforms={"raster_s": grad_raster_s, "g_t_per_m": g, "group": cone_idx, "rotation_rad": rot},
    )
    chk = traj.checks()
    params["max_gradient_reached_t_per_m"] = chk["max_gradient_t_per_m"]
    params["max_slew_reached_t_per_m_per_s"] = chk["max_slew_t_per_m_per_s"]
    params["kmax_reached_per_m"] = chk["kmax_reached_per_m"]
    params["projections_per_cone"] = n_phi.tolist()
    return traj
