"""Shared machinery for centre-out 3D trajectory design: speed profiles along a path.

A projection is a curve P(s) in k-space (cycles/m) parametrised by arc length s. Given a speed
limit v_max(s) = gamma_bar * G_max (times a shape factor), the gradient amplitude is
|G| = v / gamma_bar and the slew has a tangential part dv/dt and a centripetal part v^2 * kappa.
``time_optimal`` computes the fastest traversal under |G| <= G_max and |dG/dt| <= S_max (Lustig
et al., IEEE TMI 2008: forward and backward passes on the arc-length grid). It is written here
because no maintained Python package provides it for arbitrary 3D curves (mri-nufft checks
gradients but does not reparametrise; sigpy's rf.trajgrad is 2D-spiral specific).
"""

from __future__ import annotations

import numpy as np

_COMPILED = None


def _passes(v, lim, kap, ds, amax):
    """The forward/backward passes, compiled with numba on first use (importing numba costs ~0.5 s,
    so it is imported only when a slew-limited design needs it)."""
    global _COMPILED
    if _COMPILED is None:
        try:
            from numba import njit
        except ImportError:  # pragma: no cover - numba is a core dependency; pure Python still works
            _COMPILED = _passes_py
        else:
            _COMPILED = njit(cache=True)(_passes_py)
    return _COMPILED(v, lim, kap, ds, amax)


def _passes_py(v, lim, kap, ds, amax):
    n = v.shape[0]
    for i in range(n - 1):  # forward: accelerate within the slew budget
        at2 = amax * amax - (v[i] * v[i] * kap[i]) ** 2
        at = np.sqrt(at2) if at2 > 0 else 0.0
        v[i + 1] = min(lim[i + 1], np.sqrt(v[i] * v[i] + 2 * at * ds[i]))
    for i in range(n - 2, -1, -1):  # backward: brake before curvature peaks and the end
        at2 = amax * amax - (v[i + 1] * v[i + 1] * kap[i + 1]) ** 2
        at = np.sqrt(at2) if at2 > 0 else 0.0
        v[i] = min(v[i], np.sqrt(v[i + 1] * v[i + 1] + 2 * at * ds[i]))
    return v


def arc_length(points: np.ndarray) -> np.ndarray:
    """Cumulative arc length of a polyline (n, 3) -> (n,), starting at 0."""
    seg = np.sqrt((np.diff(points, axis=0) ** 2).sum(-1))
    return np.concatenate([[0.0], np.cumsum(seg)])


def curvature(points: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Curvature |d^2 P / ds^2| of a polyline sampled at arc lengths ``s`` (1/(cycles/m))."""
    d1 = np.gradient(points, s, axis=0)
    d1 /= np.maximum(np.linalg.norm(d1, axis=-1, keepdims=True), 1e-300)
    d2 = np.gradient(d1, s, axis=0)
    return np.linalg.norm(d2, axis=-1)


def time_optimal(
    s: np.ndarray,
    vmax: np.ndarray,
    kappa: np.ndarray | None,
    gamma_hz_per_t: float,
    smax_t_per_m_per_s: float | None,
    v_start: float = 0.0,
    v_end: float | None = 0.0,
) -> np.ndarray:
    """Times t(s) in s of the fastest traversal of the sampled path.

    ``vmax`` is the speed limit gamma_bar * |G|_max (cycles/m/s) at each arc length. Without a
    slew limit the speed is ``vmax`` everywhere (an instant switch-on). With one, the speed
    starts at ``v_start``, ends at ``v_end`` (0: the gradient ramps down to zero at the end of
    the path, inside the readout; None: free) and obeys sqrt(a_t^2 + (v^2 kappa)^2) <= gamma_bar * S_max.
    """
    vmax = np.asarray(vmax, dtype=np.float64)
    ds = np.diff(s)
    if smax_t_per_m_per_s is None:
        v = vmax
    else:
        amax = gamma_hz_per_t * smax_t_per_m_per_s
        kap = np.zeros_like(s) if kappa is None else np.asarray(kappa, dtype=np.float64)
        vcurv = np.full_like(kap, np.inf)
        pos = kap > 1e-12
        vcurv[pos] = np.sqrt(amax / kap[pos])
        lim = np.minimum(vmax, vcurv)
        if v_end is not None:
            lim[-1] = min(lim[-1], v_end)
        v = lim.copy()
        v[0] = min(v_start, lim[0])
        v = _passes(v, lim, np.ascontiguousarray(kap, dtype=np.float64), ds, float(amax))
        v[0] = min(v[0], v_start) if v_start > 0 else v[0]
    vm = 0.5 * (v[1:] + v[:-1])
    # a zero mean speed happens only when both ends of a segment are at rest
    vm = np.where(vm > 0, vm, 1e-12 * vmax.max())
    return np.concatenate([[0.0], np.cumsum(ds / vm)])


def sample_path(t_path: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Interpolate path quantities (n, ...) given at times ``t_path`` onto times ``t``.

    Times past the end of the path hold the last value (the gradient is off, k stays).
    """
    values = np.asarray(values)
    flat = values.reshape(len(t_path), -1)
    out = np.empty((len(t), flat.shape[1]))
    for j in range(flat.shape[1]):
        out[:, j] = np.interp(t, t_path, flat[:, j])
    return out.reshape((len(t),) + values.shape[1:])


def gradient_on_raster(t_path: np.ndarray, points: np.ndarray, raster_s: float, gamma_hz_per_t: float):
    """Gradient waveform (n_raster, 3) in T/m: the k increment per raster interval / (gamma * raster).

    Only whole raster intervals within the path are returned (the switch-off after the readout
    belongs to the rewinder, not to the readout).
    """
    n = max(1, int(np.floor(t_path[-1] / raster_s + 1e-9)))
    tr = np.arange(n + 1) * raster_s
    k = sample_path(t_path, points, tr)
    return np.diff(k, axis=0) / (gamma_hz_per_t * raster_s)
