"""3D centre-out radial with halton-spiral view ordering, the 129Xe consortium's design.

The Duke xenon gas-exchange consortium acquires 3D radial ("kooshball") projections whose
directions are the points of an *ideal spiral* on the sphere (Wong & Roos, MRM 1994) visited in
an order given by a Halton sequence ("haltonized spiral"), so that any run of consecutive views
covers the sphere nearly uniformly. Implemented here from that published description:

* ideal spiral of N points: z_j = -1 + 2 j / N (j = 0..N-1), azimuth phi_0 = 0 and
  phi_j = (phi_{j-1} + 3.6 / sqrt(N (1 - z_j^2))) mod 2 pi; direction
  (sqrt(1 - z^2) cos phi, sqrt(1 - z^2) sin phi, z);
* halton ordering: the spiral points are permuted by the sort order of the Halton polar angles
  theta_i = arccos(2 h_2(i + 1) - 1) (h_2 the base-2 Halton sequence): acquisition view i
  takes spiral point order[i], where order sorts theta ascending (the two lists are sorted
  jointly);
* each view's radial k(t) follows a trapezoidal readout gradient (ramp, plateau, decay) that
  starts at t = delay (per axis; negative = the gradient is early), sampled at t_m = m * dwell
  from the first ADC sample; on the plateau k advances 1 / (readout_os * FOV) per dwell, so
  n_samples plateau samples at readout_os = 2 reach the Nyquist radius matrix / (2 FOV).

The parameters the consortium uses for the 2.89 T Dixon scan in ``shared/data/twix`` are the
defaults of :func:`xenon_radial` (100 us ramp, -5 us gradient delay); FOV, matrix, dwell,
samples, views and readout oversampling come from the raw data header
(:func:`xenon_radial_for`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from recon.errors import TrajectoryError
from recon.trajectory.base import Trajectory

GAMMA_BAR_129XE_HZ_PER_T = 11.777e6
"""Gyromagnetic ratio / 2pi of 129Xe in Hz/T (magnitude)."""

XENON_RAMP_S = 100e-6
"""Readout gradient ramp time of the consortium's radial sequence, in s."""
XENON_PLATEAU_S = 2500e-6
"""Readout gradient plateau (longer than the ADC: the readout ends on the plateau), in s."""
XENON_DECAY_S = 60e-6
"""Readout gradient ramp-down time, in s."""
XENON_DELAY_S = -5e-6
"""Gradient delay the consortium applies on all three axes, in s (the gradient starts 5 us early)."""


def halton(index: np.ndarray | int, base: int) -> np.ndarray:
    """Radical inverse of the integers ``index`` (>= 0) in ``base``: the Halton sequence values in [0, 1)."""
    i = np.atleast_1d(np.asarray(index, dtype=np.int64)).copy()
    out = np.zeros(i.shape, dtype=np.float64)
    f = 1.0
    while np.any(i > 0):
        f /= base
        out += f * (i % base)
        i //= base
    return out


def ideal_spiral_directions(n: int) -> np.ndarray:
    """Unit vectors (n, 3) of the ideal spiral (Wong & Roos 1994), from the south pole upwards."""
    if n < 2:
        raise TrajectoryError(f"the spiral needs at least 2 views, got {n}")
    j = np.arange(n)
    z = -1.0 + 2.0 * j / n
    step = np.zeros(n)
    step[1:] = 3.6 / np.sqrt(n * (1.0 - z[1:] ** 2))
    phi = np.mod(np.cumsum(step), 2 * math.pi)
    r = np.sqrt(1.0 - z**2)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=-1)


def halton_spiral_order(n: int) -> np.ndarray:
    """Permutation (n,): acquisition view i uses ideal-spiral point ``order[i]``."""
    h = halton(np.arange(1, n + 1), 2)
    # the spiral list is sorted jointly with the Halton polar angles (distinct values: no ties)
    polar = np.arccos(2.0 * h - 1.0)
    return np.argsort(polar, kind="stable")


def halton_spiral_directions(n: int) -> np.ndarray:
    """Unit vectors (n, 3) of the ideal spiral in halton-spiral acquisition order."""
    return ideal_spiral_directions(n)[halton_spiral_order(n)]


def trapezoid_radius(
    t_s: np.ndarray,
    k_per_s: float,
    ramp_s: float = XENON_RAMP_S,
    plateau_s: float = XENON_PLATEAU_S,
    decay_s: float = XENON_DECAY_S,
    delay_s: float = 0.0,
) -> np.ndarray:
    """Radial k (1/m) at times ``t_s`` (s from the first ADC sample) under a trapezoidal gradient.

    The gradient starts at ``delay_s``, rises linearly for ``ramp_s`` to the plateau, where k
    grows at ``k_per_s`` (1/m per s, = gamma_bar * G), holds for ``plateau_s`` and falls to 0
    in ``decay_s``; k stays constant afterwards and is 0 before the gradient starts.
    """
    s = np.asarray(t_s, dtype=np.float64) - delay_s
    r, p, d = float(ramp_s), float(plateau_s), float(decay_s)
    if r < 0 or p < 0 or d < 0:
        raise TrajectoryError(f"ramp, plateau and decay times must be >= 0, got {r}, {p}, {d} s")
    s1 = np.clip(s, 0.0, r)
    k = np.where(r > 0, 0.5 * s1**2 / max(r, 1e-30), 0.0)
    k = k + np.clip(s - r, 0.0, p)
    sd = np.clip(s - r - p, 0.0, d)
    k = k + (sd - 0.5 * sd**2 / d if d > 0 else 0.0)
    return k * k_per_s


def xenon_radial(
    n_projections: int,
    n_samples: int,
    dwell_s: float,
    fov_m: float | Sequence[float],
    matrix: int | Sequence[int],
    readout_os: float = 2.0,
    ramp_s: float = XENON_RAMP_S,
    plateau_s: float = XENON_PLATEAU_S,
    decay_s: float = XENON_DECAY_S,
    delay_s: float | Sequence[float] = XENON_DELAY_S,
    gamma_hz_per_t: float = GAMMA_BAR_129XE_HZ_PER_T,
    ordering: str = "halton-spiral",
) -> Trajectory:
    """The consortium's 3D radial trajectory (k in 1/m, DESIGN.md conventions).

    ``delay_s`` is one value or one per axis (kx, ky, kz): axis a's k is the nominal radius
    evaluated at t - delay[a]. ``ordering`` is ``"halton-spiral"`` (the consortium's
    clinical choice) or ``"spiral"`` (the plain ideal spiral).
    """
    if n_projections < 2 or n_samples < 2:
        raise TrajectoryError(f"need >= 2 projections and samples, got {n_projections} x {n_samples}")
    if dwell_s <= 0 or readout_os <= 0:
        raise TrajectoryError(f"dwell {dwell_s} s and readout oversampling {readout_os} must be positive")
    fov = np.broadcast_to(np.asarray(fov_m, dtype=float), (3,))
    if ordering == "halton-spiral":
        dirs = halton_spiral_directions(n_projections)
    elif ordering == "spiral":
        dirs = ideal_spiral_directions(n_projections)
    else:
        raise TrajectoryError(f"ordering must be 'halton-spiral' or 'spiral', got {ordering!r}")
    delays = np.broadcast_to(np.asarray(delay_s, dtype=float), (3,))
    t = np.arange(n_samples) * dwell_s
    # plateau: 1 / (os * FOV) per dwell along the readout (FOV of the first axis: isotropic designs)
    k_per_s = 1.0 / (readout_os * fov[0] * dwell_s)
    radius = np.stack([trapezoid_radius(t, k_per_s, ramp_s, plateau_s, decay_s, d) for d in delays], axis=-1)
    k = dirs[:, None, :] * radius[None, :, :]
    params = {
        "generator": "xenon-radial",
        "ordering": ordering,
        "readout_os": float(readout_os),
        "ramp_s": float(ramp_s),
        "plateau_s": float(plateau_s),
        "decay_s": float(decay_s),
        "gradient_delay_s": [float(d) for d in delays],
        "plateau_gradient_t_per_m": float(k_per_s / gamma_hz_per_t),
        "reference": "Wong & Roos MRM 1994 (ideal spiral); Duke xenon consortium halton-spiral ordering",
    }
    return Trajectory(
        k=k,
        t=t,
        fov_m=tuple(fov.tolist()),
        matrix=matrix,
        dwell_s=dwell_s,
        gamma_hz_per_t=gamma_hz_per_t,
        params=params,
        solid_angle=np.full(n_projections, 4 * math.pi / n_projections),
    )


def xenon_radial_for(acq, **overrides) -> Trajectory:
    """:func:`xenon_radial` with views, samples, dwell, FOV, matrix and oversampling from ``acq``'s header.

    ``acq`` is an :class:`recon.io.Acquisition` (views = projections per echo); keyword
    arguments override the design parameters (ramp_s, delay_s, ...).
    """
    from recon.io.profile import gamma_for

    if acq.fov_m is None or acq.matrix is None:
        raise TrajectoryError("the header has no FOV/matrix: give fov_m and matrix", acq.sources[0] if acq.sources else None)
    kw = dict(
        n_projections=acq.n_projections,
        n_samples=acq.n_samples,
        dwell_s=acq.dwell_s,
        fov_m=acq.fov_m,
        matrix=acq.matrix,
        readout_os=float(acq.header.get("readout_os") or 2.0),
        gamma_hz_per_t=gamma_for(acq.nucleus) or GAMMA_BAR_129XE_HZ_PER_T,
    )
    kw.update(overrides)
    return xenon_radial(**kw)
