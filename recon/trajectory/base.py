"""The :class:`Trajectory` container shared by every stage.

Conventions (DESIGN.md): ``k`` has shape (n_projections, n_samples, 3) in cycles/m; ``t`` has
shape (n_samples,) or (n_projections, n_samples) in s, counted from the first ADC sample,
which is at the echo time TE. The optional density compensation ``dcf`` (n_projections,
n_samples) is the k-space volume each sample represents, in 1/m^3 (see
:mod:`recon.trajectory.dcf` for the unit chain).
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.errors import TrajectoryError
from recon.physics import GAMMA_BAR_1H_HZ_PER_T, GAMMA_BAR_23NA_HZ_PER_T  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from recon.nufft import NufftPoints

_VERIFIED = contextvars.ContextVar("narecon_trajectory_verified", default=False)
"""True while :func:`verified_trajectory` builds a trajectory (its validation is skipped)."""

_CHUNK = 256
"""Projections per block in the passes over k that need temporaries (checks, gradients)."""


def max_radius(k: np.ndarray, block: int = 1 << 20) -> float:
    """Largest sample radius |k| of sample positions (..., 3) in cycles/m (in blocks: no full-size temporary)."""
    flat = np.asarray(k).reshape(-1, 3)
    m = 0.0
    for i in range(0, flat.shape[0], block):
        kb = flat[i : i + block].astype(np.float64, copy=False)
        m = max(m, float(np.einsum("ij,ij->i", kb, kb).max(initial=0.0)))
    return math.sqrt(m)


def _as3(v, name: str, dtype=float) -> tuple:
    a = np.atleast_1d(np.asarray(v, dtype=dtype))
    if a.size == 1:
        a = np.repeat(a, 3)
    if a.shape != (3,):
        raise TrajectoryError(f"{name} must be a scalar or 3 values, got shape {a.shape}")
    return tuple(a.tolist())


def _gradient_checks(g: np.ndarray, dt: float) -> tuple[float, float]:
    """Max |G| (T/m) and max slew (T/m/s) of waveforms (n, n_t, 3), including the switch-on from 0
    at the start of the readout (NaN pads ended waveforms and is ignored)."""
    if g.shape[1] == 0:
        return -np.inf, -np.inf
    gmag = np.sqrt(np.einsum("ijk,ijk->ij", g, g))
    g0 = np.concatenate([np.zeros_like(g[:, :1]), g], axis=1)
    d = np.diff(g0, axis=1)
    slew = np.sqrt(np.einsum("ijk,ijk->ij", d, d)) / dt
    return float(np.nanmax(gmag)), float(np.nanmax(slew))


@dataclasses.dataclass
class Trajectory:
    """A 3D non-Cartesian trajectory with its sample times and design parameters.

    Attributes
    ----------
    k : (n_proj, n_samp, 3) float64, cycles/m.
    t : (n_samp,) or (n_proj, n_samp) float64, s from the first ADC sample.
    fov_m : field of view per axis in m.
    matrix : nominal image matrix per axis.
    dwell_s : ADC dwell time in s.
    gamma_hz_per_t : gyromagnetic ratio / 2pi in Hz/T.
    dcf : optional density compensation (n_proj, n_samp) in 1/m^3.
    params : generator name and parameters, and the checks it measured (SI units).
    solid_angle : optional (n_proj,) solid angle in sr that each projection represents
        (used by the analytic density compensation).
    waveforms : optional design gradient waveforms (dict with ``raster_s``, ``g_t_per_m``
        of shape (n_groups, n_raster, 3) in T/m, ``group`` (n_proj,) and ``rotation_rad``
        (n_proj,), a rotation about z that maps a group's waveform to each projection).
    """

    k: np.ndarray
    t: np.ndarray
    fov_m: tuple
    matrix: tuple
    dwell_s: float
    gamma_hz_per_t: float = GAMMA_BAR_23NA_HZ_PER_T
    dcf: np.ndarray | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    solid_angle: np.ndarray | None = None
    waveforms: dict[str, Any] | None = None

    def design_identity(self) -> str | None:
        """Content key of ``k`` and ``t`` known without hashing them, or None.

        Set by :func:`recon.trajectory.design_cache.cached_design` for a built-in design (its
        parameters and the generator code determine k and t), which also makes k and t read-only so
        the key cannot go stale. A new object (``dataclasses.replace``, an import) has none.
        """
        return self.__dict__.get("_design_identity")

    def mark_design(self, key: str) -> None:
        """Record ``key`` as :meth:`design_identity` and make k and t read-only."""
        self.k.setflags(write=False)
        self.t.setflags(write=False)
        self.__dict__["_design_identity"] = str(key)

    def attach_points(self, points: NufftPoints) -> None:
        """Keep ``points`` (:func:`recon.nufft.make_points` of this k) for :meth:`nufft_points`; k is
        made read-only, so they cannot go stale."""
        if points.n_samples != self.k.size // 3:
            raise ValueError(f"{points.n_samples} points for a trajectory of {self.k.size // 3} samples")
        self.k.setflags(write=False)
        self.__dict__["_nufft_points"] = points

    def detach_points(self) -> None:
        """Forget the kept NUFFT points (a run that is done with them lets their memory or mapping go)."""
        self.__dict__.pop("_nufft_points", None)

    def nufft_points(self, shape: Sequence[int], fov_m: Sequence[float], dtype=np.complex64) -> NufftPoints | None:
        """The NUFFT points made for this k on grid ``shape`` with FOV ``fov_m`` (m) and ``dtype``, if
        kept (:meth:`attach_points`; a cached built-in design keeps those of its own matrix and FOV), else None."""
        p = self.__dict__.get("_nufft_points")
        if p is None:
            return None
        real = np.float32 if np.dtype(dtype) == np.complex64 else np.float64
        fov = np.broadcast_to(np.asarray(fov_m, dtype=np.float64), (3,))
        return p if p.fits(shape, fov.tolist(), real, self.k.size // 3) else None

    def content_key(self) -> str:
        """Content key of ``k`` and ``t``: :meth:`design_identity` if known, else a BLAKE2b digest of
        both, computed once (k and t are then read-only, so it cannot go stale). The density-weight
        and point-response caches key on it: one hash of k per trajectory, not one per cache."""
        key = self.design_identity()
        if key is None:
            from recon.plans import array_digest

            key = f"content:{array_digest(self.k)}:{array_digest(self.t)}"
            self.mark_design(key)
        return key

    def __post_init__(self) -> None:
        self.k = np.asarray(self.k, dtype=np.float64)
        self.t = np.asarray(self.t, dtype=np.float64)
        self.fov_m = _as3(self.fov_m, "fov_m")
        self.matrix = tuple(int(round(x)) for x in _as3(self.matrix, "matrix"))
        self.dwell_s = float(self.dwell_s)
        self.gamma_hz_per_t = float(self.gamma_hz_per_t)
        if not _VERIFIED.get():
            self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`TrajectoryError` if shapes, units or values are inconsistent.

        Besides shapes: finite k, t, dcf; t non-negative and strictly increasing along each
        readout; positive finite FOV, matrix, dwell and gyromagnetic ratio; k not all zero and
        not beyond 3x the grid's Nyquist limit (wrong units; k too small for the data is
        :func:`recon.trajectory.units.check_trajectory_units`' job, which knows the raw header).
        The passes over k are whole-array min and max (no temporaries; NaN propagates), per
        axis only when the whole-array bound is inconclusive.
        """
        if self.k.ndim != 3 or self.k.shape[-1] != 3:
            raise TrajectoryError(f"k must have shape (n_projections, n_samples, 3), got {self.k.shape}")
        n_proj, n_samp, _ = self.k.shape
        if n_proj < 1 or n_samp < 1:
            raise TrajectoryError(f"k is empty: shape {self.k.shape}")
        if not all(math.isfinite(f) and f > 0 for f in self.fov_m) or any(m <= 0 for m in self.matrix):
            raise TrajectoryError(f"fov_m {self.fov_m} and matrix {self.matrix} must be positive and finite")
        if not (math.isfinite(self.dwell_s) and self.dwell_s > 0):
            raise TrajectoryError(f"dwell time must be positive, got {self.dwell_s} s")
        if not (math.isfinite(self.gamma_hz_per_t) and self.gamma_hz_per_t != 0):
            raise TrajectoryError(f"gyromagnetic ratio must be finite and non-zero, got {self.gamma_hz_per_t} Hz/T")
        # whole-array min and max (fast, and NaN propagates); per-axis passes only when needed
        lo, hi = float(self.k.min()), float(self.k.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise TrajectoryError("k contains NaN or infinite values")
        if self.t.shape not in ((n_samp,), (n_proj, n_samp)):
            raise TrajectoryError(
                f"t must have shape ({n_samp},) or ({n_proj}, {n_samp}) to match k {self.k.shape}, got {self.t.shape}"
            )
        tmin = float(self.t.min())
        if not (math.isfinite(tmin) and math.isfinite(float(self.t.max()))):
            raise TrajectoryError("t contains NaN or infinite values")
        if tmin < 0:
            raise TrajectoryError(f"t must count from the first ADC sample (>= 0 s), but reaches {tmin:g} s")
        if n_samp > 1:
            dt_min = float(np.diff(self.t, axis=-1).min())
            if dt_min <= 0:
                raise TrajectoryError(f"t must increase along each readout, but two consecutive samples differ by {dt_min:g} s")
        if self.dcf is not None:
            self.dcf = np.asarray(self.dcf, dtype=np.float64)
            if self.dcf.shape != (n_proj, n_samp):
                raise TrajectoryError(f"dcf shape {self.dcf.shape} does not match k {self.k.shape[:2]}")
            dmin = float(self.dcf.min())
            if not (math.isfinite(dmin) and math.isfinite(float(self.dcf.max()))) or dmin < 0:
                raise TrajectoryError("dcf must be finite and non-negative")
        if lo == hi == 0:
            raise TrajectoryError("k is all zero: not a trajectory (k must be in cycles/m)")
        # k beyond the grid's Nyquist limit by more than a few percent means wrong units (1/cm? rad/m?);
        # k too small for the data is checked against the raw header by recon.trajectory.units
        kn = np.asarray(self.matrix) / (2 * np.asarray(self.fov_m))
        if max(abs(lo), abs(hi)) <= 3 * kn.min():
            return  # passes whatever the split over the axes
        kabs = np.array([np.abs(self.k[..., d]).max() for d in range(3)])
        if np.any(kabs > 1.5 * kn * 2):
            raise TrajectoryError(
                f"k reaches {kabs.round(2).tolist()} 1/m, more than 3x the grid's Nyquist limit "
                f"{kn.round(2).tolist()} 1/m for matrix {self.matrix} and FOV {self.fov_m} m: "
                "k must be in cycles/m (not 1/cm, rad/m or grid units)"
            )

    def __repr__(self) -> str:
        gen = self.params.get("generator", "file")
        return (
            f"Trajectory({gen}: {self.n_projections} projections x {self.n_samples} samples, "
            f"fov_m={self.fov_m}, matrix={self.matrix}, dwell_s={self.dwell_s:g}, "
            f"dcf={'yes' if self.dcf is not None else 'no'})"
        )

    # ---------------------------------------------------------------- properties
    @property
    def n_projections(self) -> int:
        return int(self.k.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.k.shape[1])

    @property
    def readout_s(self) -> float:
        """Readout duration covered by the samples, in s (last sample time + one dwell)."""
        return float(np.max(self.t) + self.dwell_s)

    @property
    def kmax_reached(self) -> float:
        """Largest |k| of any sample in cycles/m."""
        return max_radius(self.k)

    def sample_times(self) -> np.ndarray:
        """Sample times broadcast to (n_proj, n_samp) in s (from the first ADC sample)."""
        return np.broadcast_to(self.t, self.k.shape[:2])

    def scan_time_s(self, tr_s: float, n_echoes: int = 1, averages: int = 1) -> float:
        """Acquisition time in s: one projection per TR per echo (echoes in separate TRs)."""
        return float(self.n_projections * tr_s * n_echoes * averages)

    def gradient_t_per_m(self) -> np.ndarray:
        """Gradient between consecutive samples, (n_proj, n_samp - 1, 3) in T/m, from k."""
        return np.diff(self.k, axis=1) / (self.gamma_hz_per_t * self.dwell_s)

    def checks(self) -> dict[str, float]:
        """Measured properties: max |G| (T/m), max slew (T/m/s), kmax reached (1/m), readout (s).

        Uses the design waveforms on the gradient raster when present, otherwise finite
        differences of k at the dwell time.
        """
        if self.waveforms is not None:
            gmax, smax = _gradient_checks(np.asarray(self.waveforms["g_t_per_m"]), float(self.waveforms["raster_s"]))
        else:  # finite differences of k at the dwell time, a block of projections at a time
            gmax = smax = -np.inf
            for i in range(0, self.n_projections, _CHUNK):
                g = np.diff(self.k[i : i + _CHUNK], axis=1) / (self.gamma_hz_per_t * self.dwell_s)
                gm, sm = _gradient_checks(g, self.dwell_s)
                gmax, smax = max(gmax, gm), max(smax, sm)
        return {
            "max_gradient_t_per_m": float(gmax),
            "max_slew_t_per_m_per_s": float(smax),
            "kmax_reached_per_m": self.kmax_reached,
            "readout_s": self.readout_s,
            "n_projections": self.n_projections,
            "n_samples": self.n_samples,
        }

    def with_dcf(self, dcf: np.ndarray) -> Trajectory:
        """A copy that carries ``dcf`` (n_proj, n_samp) in 1/m^3."""
        return dataclasses.replace(self, dcf=np.asarray(dcf, dtype=np.float64))

    def subset(self, projections) -> Trajectory:
        """A trajectory with only the given projections (index array or slice)."""
        idx = np.arange(self.n_projections)[projections]
        t = self.t if self.t.ndim == 1 else self.t[idx]
        wf = None
        if self.waveforms is not None:
            wf = dict(self.waveforms)
            wf["group"] = np.asarray(wf["group"])[idx]
            wf["rotation_rad"] = np.asarray(wf["rotation_rad"])[idx]
        return dataclasses.replace(
            self,
            k=self.k[idx],
            t=t,
            dcf=None if self.dcf is None else self.dcf[idx],
            solid_angle=None if self.solid_angle is None else self.solid_angle[idx],
            waveforms=wf,
        )


def verified_trajectory(**fields: Any) -> Trajectory:
    """``Trajectory(**fields)`` without :meth:`Trajectory.validate`, for arrays already validated.

    Only for a cache entry that stores a trajectory which passed ``validate`` when it was built and
    whose bytes match the entry's digest (:func:`recon.trajectory.design_cache.cached_design`): the
    full-array passes over k (0.03-0.1 s at the 64^3 protocol) would check the same bytes again.
    The conversions of ``__post_init__`` (dtype, FOV and matrix tuples) still run."""
    token = _VERIFIED.set(True)
    try:
        return Trajectory(**fields)
    finally:
        _VERIFIED.reset(token)
