"""Segment-count rules and interpolation coefficients shared by the B0 operator and corrections.

All times are seconds from the excitation (TE + t, t from the first ADC sample); all
frequencies are off-resonance in Hz with the DESIGN.md sign: a spin at offset df contributes
exp(-i 2 pi df t) to the signal at time t.

Segment-count rules (documented, every one overridable with ``n_segments``):

* time bins / time segments (``tb-cpr``, :class:`~recon.b0.operator.TimeSegmentedOperator`):
  the data are first demodulated at the centre frequency f_c of the field map, so the residual
  field is at most h = max |df - f_c| (half the field span). A sample that sits dt away from its
  bin centre then carries an uncorrected phase 2 pi h dt; with L equal bins over a readout of
  duration T that phase is at most pi h T / L. The rule keeps it under ``tol_rad``
  (0.2 rad by default: at most 0.7 % signal loss at the extreme field value)::

      L = max(1, ceil(pi * h * T / tol_rad))

* frequency segments (``fs-cpr``, ``mfi``): L demodulation frequencies spaced
  delta_f = 1 / (oversampling * t_end) across the field span, t_end = TE + T the latest sample
  time of the echo::

      L = max(1, ceil(oversampling * span * t_end) + 1)

  with oversampling 4 for linear interpolation between frequencies (FS-CPR, after Noll 1992)
  and 2 for least-squares MFI coefficients (Man et al. 1997, who need about half as many).

* the default run's one gridding pass (:func:`recon.b0.correction.grid_time_bins`): the bins are
  gridded *before* the field map exists and without demodulation (their sum is then the plain
  gridding image the map is estimated from), so the rule above runs with h = max |df| and with
  |df| <= :data:`FIRST_PASS_FIELD_HZ` for the first choice; a measured map that needs more bins is
  regridded with the rule for its own centre and span (demodulated), one that needs fewer is
  corrected with the bins already gridded (a smaller phase error than the tolerance).
"""

from __future__ import annotations

import math

import numpy as np

from recon.errors import InputError

DEFAULT_TOL_RAD = 0.2
BIN_EPS = 1e-3
"""NUFFT accuracy (relative) of the time-bin plans of tb-cpr and the one gridding pass.

The binning itself is the larger error: the rule's 0.2 rad keeps each sample's residual phase
under 0.7 % signal loss, and 12 bins differ from a 60-bin conjugate phase by about 1.3 % on the
simulated protocol. 1e-3 is ten times below that; with it, and each bin's upsampling chosen for
its own sample count (a bin holds 1/L of the samples, 1.5 per voxel at the 64^3 protocol: finufft
upsampling 1.25, fine grid 80^3 instead of 128^3), the bins cost about one plain gridding
(benchmarks/README.md, run_floor). The run's plain NUFFT keeps ``eps`` (1e-4 by default).
"""
FIRST_PASS_FIELD_HZ = 60.0
"""Largest |df| (Hz) the first, undemodulated time bins are chosen for (see the module docstring).

Chosen from the simulated 64^3 study protocol (-14..+51 Hz inside the support) with a margin:
at its 12.4 ms readout this gives 12 bins against the 10 its map needs. A larger field costs one
more gridding pass (regridded), never a larger error."""
FREQ_OVERSAMPLING = {"fs-cpr": 4.0, "mfi": 2.0}


def field_range(fieldmap_hz: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """(min, max) of the field map in Hz, inside ``mask`` when given (else over all voxels)."""
    f = np.asarray(fieldmap_hz, dtype=np.float64)
    vals = f[np.asarray(mask, dtype=bool)] if mask is not None else f.ravel()
    if vals.size == 0:
        return 0.0, 0.0
    if not np.all(np.isfinite(vals)):
        raise InputError("field map contains NaN or infinite values")
    return float(vals.min()), float(vals.max())


def n_time_bins(half_span_hz: float, duration_s: float, tol_rad: float = DEFAULT_TOL_RAD) -> int:
    """Time bins so that the uncorrected phase inside a bin stays below ``tol_rad``.

    ``half_span_hz``: largest |df - f_c| (Hz) after demodulation at the centre frequency f_c;
    ``duration_s``: readout duration covered by the samples (s).
    """
    if tol_rad <= 0:
        raise InputError(f"phase tolerance must be positive, got {tol_rad} rad")
    return max(1, int(math.ceil(math.pi * abs(half_span_hz) * max(duration_s, 0.0) / tol_rad - 1e-9)))


def n_frequency_segments(span_hz: float, t_end_s: float, oversampling: float) -> int:
    """Demodulation frequencies for a field span (Hz) and latest sample time t_end (s)."""
    if span_hz <= 0:
        return 1
    return max(1, int(math.ceil(oversampling * span_hz * t_end_s - 1e-9)) + 1)


def ls_time_coefficients(
    t_s: np.ndarray,
    tau_s: np.ndarray,
    rates: np.ndarray,
    weights: np.ndarray | None = None,
    rcond: float = 1e-8,
) -> np.ndarray:
    """Least-squares time-segmentation coefficients b (L, len(t)) (Sutton et al. 2003).

    Minimises sum_z w_z |exp(-z t) - sum_l b_l(t) exp(-z tau_l)|^2 over the complex rates
    ``rates`` z = R2* + i 2 pi df (1/s), e.g. a histogram of the field map with ``weights``.
    """
    t = np.asarray(t_s, dtype=np.float64).ravel()
    tau = np.asarray(tau_s, dtype=np.float64).ravel()
    z = np.asarray(rates, dtype=np.complex128).ravel()
    return ls_function_coefficients(np.exp(-z[:, None] * tau[None, :]), np.exp(-z[:, None] * t[None, :]), weights, rcond)


def ls_function_coefficients(
    at_tau: np.ndarray, at_t: np.ndarray, weights: np.ndarray | None = None, rcond: float = 1e-8
) -> np.ndarray:
    """Least-squares interpolation coefficients b (L, n_t) for any family of voxel time functions g_n.

    ``at_tau`` (n, L) holds g_n at the segment times, ``at_t`` (n, n_t) at the sample times; b minimises
    sum_n w_n |g_n(t) - sum_l b_l(t) g_n(tau_l)|^2 (:func:`ls_time_coefficients` is the exponential case).
    """
    g_tau = np.asarray(at_tau, dtype=np.complex128)
    g_t = np.asarray(at_t, dtype=np.complex128)
    w = np.ones(g_tau.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    sw = np.sqrt(w / w.max())[:, None]
    b, *_ = np.linalg.lstsq(sw * g_tau, sw * g_t, rcond=rcond)
    return b  # (L, n_t)


def _histogram_2d(fv: np.ndarray, sv: np.ndarray, n_f: int, n_s: int, pad: float):
    """2-D histogram of voxel pairs (field, second quantity) over their covered ranges: bin centres and counts
    with the 1 % floor (one bin on an axis whose range is flat). ``pad`` widens the upper range ends."""
    fl, fh, sl, sh = fv.min(), fv.max(), sv.min(), sv.max()
    n_f = 1 if fh - fl < 1e-6 else n_f
    n_s = 1 if sh - sl < 1e-6 else n_s
    cnt, fe, se = np.histogram2d(fv, sv, bins=(n_f, n_s), range=((fl, fh + pad), (sl, sh + pad)))
    return 0.5 * (fe[1:] + fe[:-1]), 0.5 * (se[1:] + se[:-1]), _floored(cnt.ravel())


def _floored(counts: np.ndarray) -> np.ndarray:
    """Counts plus 1 % of the largest: every bin of the covered range stays in the fit."""
    return counts + 0.01 * max(counts.max(), 1.0)


def field_fraction_histogram(
    fieldmap_hz: np.ndarray, fraction: np.ndarray, mask: np.ndarray | None, n_f: int = 64, n_a: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Histogram of (off-resonance in Hz, tissue fraction) pairs over the voxels: (df, a, counts).

    The two-pool decay's counterpart of :func:`rate_histogram` (same 1 % floor), for
    :func:`ls_function_coefficients`.
    """
    f = np.asarray(fieldmap_hz, dtype=np.float64)
    sel = np.ones(f.shape, bool) if mask is None else np.asarray(mask, bool)
    fv, av = f[sel], np.broadcast_to(np.asarray(fraction, dtype=np.float64), f.shape)[sel]
    if fv.size == 0:
        fv, av = np.zeros(1), np.zeros(1)
    fc, ac, counts = _histogram_2d(fv, av, n_f, n_a, pad=1e-9)
    return np.repeat(fc, ac.size), np.tile(ac, fc.size), counts


def rate_histogram(
    fieldmap_hz: np.ndarray,
    r2star_hz: np.ndarray | None,
    mask: np.ndarray | None,
    n_f: int = 64,
    n_r: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of complex rates z = R2* + i 2 pi df over the voxels: (rates, counts).

    A floor of 1 % of the largest count keeps every bin of the covered range in the fit, so
    the interpolator is good for the whole range, not only for the most frequent values.
    """
    f = np.asarray(fieldmap_hz, dtype=np.float64)
    sel = np.ones(f.shape, bool) if mask is None else np.asarray(mask, bool)
    fv = f[sel]
    if fv.size == 0:
        fv = np.zeros(1)
    if r2star_hz is None:
        fl, fh = fv.min(), fv.max()
        cnt, edges = np.histogram(fv, bins=1 if fh - fl < 1e-6 else n_f, range=(fl, fh))  # one field value: exact
        rates = 2j * np.pi * (0.5 * (edges[1:] + edges[:-1]))
        counts = _floored(cnt.astype(np.float64))
    else:
        rv = np.asarray(r2star_hz, dtype=np.float64)[sel] if np.ndim(r2star_hz) else np.full(fv.shape, float(r2star_hz))
        fc, rc, counts = _histogram_2d(fv, rv, n_f, n_r, pad=0.0)
        rates = (rc[None, :] + 2j * np.pi * fc[:, None]).ravel()
    return rates, counts
