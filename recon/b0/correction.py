"""Off-resonance correction of gridding reconstructions: one registry of methods, selected by name.

Conjugate-phase target (DESIGN.md sign), per echo e with echo time TE_e::

    x(r) = sum_m w_m y_m exp(+i 2 pi k_m . r) exp(+i 2 pi df(r) (TE_e + t_m))

Methods (:data:`CORRECTIONS`):

* ``none``: plain gridding (the reference for cost and bias).
* ``tb-cpr`` (default, fast): time-binned conjugate phase. The data are demodulated at the
  centre frequency f_c of the field map, the samples are binned by readout time into L bins of
  equal duration, and each bin is gridded once with its own NUFFT plan over only that bin's
  samples (all bins together are one spreading pass over all samples plus one FFT per bin).
  Every voxel then forms its own conjugate phase from the bin images::

      x(r) = sum_b exp(+i 2 pi (df(r) - f_c) (TE + tau_b)) X_b(r)

  with tau_b the midpoint of bin b's sample times, so no sample is more than half a bin from it
  and the residual phase inside a bin obeys the rule of :mod:`recon.b0.segments` (the
  density-weighted mean time used before sat up to 1.5x further from a bin's first samples, and
  gave a 1.6x larger image error at the 64^3 protocol). No interpolation between frequencies is
  involved; the only error is that residual phase. The default run grids the bins once, before
  the field map exists and without demodulation (f_c = 0): their sum is the plain gridding image
  the map is estimated from, their combination the correction (:func:`grid_time_bins`,
  :class:`TimeBins`; the bin rule then uses max |df|). Plans are built once and shared by all echoes and coils.
* ``fs-cpr``: frequency-segmented conjugate phase (Noll et al. 1992; Lu et al. 2010): the data
  are demodulated at L frequencies f_l, each is gridded (one batched NUFFT call through one
  plan, in chunks bounded by ``max_batch``), and every voxel interpolates linearly between the
  two images whose frequencies bracket its df.
* ``mfi``: multi-frequency interpolation (Man, Pauly & Macovski 1997): the same L images,
  combined with least-squares coefficients c_l(df) that fit exp(+i 2 pi df t) by
  sum_l c_l exp(+i 2 pi f_l t) over the echo's sample times t (tabulated on a fine frequency
  grid and interpolated linearly per voxel).

All methods take the same arguments; ``correct`` is the single entry point.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from recon.b0.operator import sample_times
from recon.b0.segments import (
    BIN_EPS,
    DEFAULT_TOL_RAD,
    FREQ_OVERSAMPLING,
    field_range,
    n_frequency_segments,
    n_time_bins,
)
from recon.errors import InputError
from recon.nufft import NUFFT, gridding
from recon.plans import Plans, plans_or_default

log = logging.getLogger(__name__)

CORRECTIONS: dict[str, Callable[..., np.ndarray]] = {}
"""Registered off-resonance correction methods by name."""


def register_correction(name: str):
    """Register ``f(op, data, dcf, te_s, t_s, fieldmap_hz, n_segments=None, mask=None, plans=None, **opts)``.

    ``data`` is (n_echo, ..., *op.kshape), numpy or CuPy; the function returns (n_echo, ..., *op.shape)
    in the same array module. Every NUFFT it builds goes through ``plans_or_default(plans).nufft``.
    """

    def deco(f):
        CORRECTIONS[name] = f
        f.correction_name = name
        return f

    return deco


def correct(
    method: str,
    op: NUFFT,
    data: np.ndarray,
    dcf: np.ndarray,
    te_s: Sequence[float],
    t_s: np.ndarray,
    fieldmap_hz: np.ndarray,
    *,
    n_segments: int | None = None,
    mask: np.ndarray | None = None,
    plans: Plans | None = None,
    **options,
) -> np.ndarray:
    """B0-corrected gridding reconstruction of every echo.

    Parameters
    ----------
    method : a name in :data:`CORRECTIONS` (``tb-cpr``, ``fs-cpr``, ``mfi``, ``none``).
    op : the plain NUFFT of the trajectory.
    data : k-space data (n_echo, ..., *op.kshape) in value * m^3 (leading axes e.g. coils).
    dcf : density weights (op.kshape) in 1/m^3.
    te_s : echo times in s, one per echo.
    t_s : readout sample times in s from the first ADC sample, (n_samp,) or op.kshape.
    fieldmap_hz : off-resonance df (N0, N1, N2) in Hz (DESIGN.md sign).
    n_segments : time bins (tb-cpr) or frequencies (fs-cpr, mfi); default by the documented rule.
    mask : voxels whose field values set the segment rule (default: all voxels).
    plans : plan factory for the NUFFTs the method builds (tb-cpr's per-bin plans); None: fresh plans.
    options : method options (``tol_rad`` for tb-cpr, ``oversampling`` and ``max_batch`` for
        fs-cpr/mfi).

    Returns
    -------
    Complex images (n_echo, ..., N0, N1, N2) in the object's units (DESIGN.md unit chain), in the
    array module of ``data`` (numpy, or CuPy with a GPU backend: no host copies of the data).
    """
    from recon.device import is_device_array

    if method not in CORRECTIONS:
        raise InputError(f"unknown B0 correction {method!r}; choose one of {sorted(CORRECTIONS)}")
    if not is_device_array(data):
        data = np.asarray(data)
    te = np.atleast_1d(np.asarray(te_s, dtype=np.float64))
    nk = len(op.kshape)
    if data.ndim < nk + 1 or tuple(data.shape[data.ndim - nk :]) != tuple(op.kshape):
        raise InputError(f"data must have shape (n_echo, ..., {', '.join(map(str, op.kshape))}), got {data.shape}")
    if len(te) != data.shape[0]:
        raise InputError(f"{len(te)} echo times for {data.shape[0]} echoes in the data")
    from recon.device import to_host

    f = np.asarray(to_host(fieldmap_hz), dtype=np.float64)  # small: the segment rules run on the host
    if f.shape != op.shape:
        raise InputError(f"field map shape {f.shape} does not match the image grid {op.shape}")
    if np.shape(dcf) != tuple(op.kshape):
        raise InputError(f"density weights have shape {np.shape(dcf)}, data samples {op.kshape}")
    if mask is not None and np.shape(mask) != op.shape:
        raise InputError(f"mask shape {np.shape(mask)} does not match the image grid {op.shape}")
    if mask is not None:
        from recon.device import to_host

        mask = to_host(mask)
    return CORRECTIONS[method](op, data, dcf, te, t_s, f, n_segments=n_segments, mask=mask, plans=plans, **options)


# ---------------------------------------------------------------------------------------- none
@register_correction("none")
def correct_none(op, data, dcf, te_s, t_s, fieldmap_hz, n_segments=None, mask=None, plans=None) -> np.ndarray:
    """Plain gridding of every echo (no B0 correction)."""
    return gridding(op, data, dcf)


# -------------------------------------------------------------------------------------- tb-cpr
def _time_columns(op: NUFFT, t_s: np.ndarray) -> tuple[int, np.ndarray]:
    """The sample layout (P, C) with one time per column: (P, times (C,) in s).

    Readout times given per readout sample (n_samp,) (or broadcast that way) give C = n_samp
    distinct times shared by all P projections; times given per sample give P = 1, C = M.
    """
    t = sample_times(op, t_s)
    lead = t.ndim - 1
    if t.ndim >= 1 and all(t.strides[i] == 0 or t.shape[i] == 1 for i in range(lead)):
        return int(np.prod(t.shape[:lead])) if lead else 1, np.array(t[(0,) * lead], dtype=np.float64)
    return 1, np.array(t, dtype=np.float64).reshape(-1)


class TimeBinnedGridder:
    """Grid the samples of each readout-time bin separately, one NUFFT plan per bin.

    Parameters
    ----------
    op : the plain NUFFT (its trajectory, grid, backend, eps and dtype are reused).
    t_s : readout times (s) broadcastable to op.kshape.
    n_bins : number of bins of equal duration over the readout.
    dcf : density weights (op.kshape) in 1/m^3; not used since the bin times are midpoints (kept for
        callers; the data are weighted in :meth:`grid`).
    eps : NUFFT accuracy of the bin plans (default: the operator's).
    plans : plan factory the bin plans are built through (:mod:`recon.plans`; a cached one
        reuses them for the next scan of the same trajectory).
    share_plan : one backend plan re-pointed to each bin's points in turn
        (:class:`recon.nufft.operator.SharedPlan`: the plan set-up once, not per bin; less memory);
        False: a plan per bin, each keeping its sorted points (a gridder kept for the next scan by a
        plan cache then skips the sorts too).

    Layout (why it is cheap): the samples are viewed as (P, C) with one time per column (C = the
    distinct readout times, 1238 for the study protocol), the columns sorted by time once, and a
    bin is a contiguous range of sorted columns. A bin's points and data are slices (no fancy
    indexing when the times are already sorted, as for every readout), and the demodulation at
    the centre frequency is computed over the C distinct times, not per sample.
    """

    def __init__(
        self,
        op: NUFFT,
        t_s: np.ndarray,
        n_bins: int,
        dcf: np.ndarray,
        eps: float | None = None,
        plans: Plans | None = None,
        share_plan: bool = True,
    ):
        n_bins = int(n_bins)
        if n_bins < 1:
            raise InputError(f"number of time bins must be >= 1, got {n_bins}")
        p_rows, t_col = _time_columns(op, t_s)
        n_col = t_col.size
        order = np.argsort(t_col, kind="stable")
        self._sorted = bool(np.all(order == np.arange(n_col)))
        t_sorted = t_col[order]
        t0, t1 = float(t_sorted[0]), float(t_sorted[-1])
        edges = np.linspace(t0, t1, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, t_sorted, side="right") - 1, 0, n_bins - 1)
        starts = np.searchsorted(idx, np.arange(n_bins + 1), side="left")  # idx is sorted
        k2 = np.asarray(op.k).reshape(p_rows, n_col, 3)
        # each bin's settings (finufft's upsampling) chosen for its own sample count, at the bins' accuracy
        factory = plans_or_default(plans)
        from recon.nufft.operator import SharedPlan

        shared = SharedPlan() if share_plan else None
        self.op = op
        self.shape = (p_rows, n_col)
        self.bins: list[tuple[slice | np.ndarray, NUFFT]] = []
        tau = []
        for b in range(n_bins):
            s0, s1 = int(starts[b]), int(starts[b + 1])
            if s1 <= s0:
                continue
            cols: slice | np.ndarray = slice(s0, s1) if self._sorted else order[s0:s1]
            tb = t_col[cols]
            tau.append(0.5 * float(tb.min() + tb.max()))  # midpoint: no sample is more than half a bin away
            # one shared plan serves every bin: it is executed n_bins times per gridding
            opts = op.subset_options(eps=eps or op.eps, n_points=p_rows * (s1 - s0), n_executes=n_bins)
            if plans is None and tuple(op.kshape) == (p_rows, n_col):  # cut from the operator's converted points
                nb = op.subset((slice(None), cols), eps=eps or op.eps, shared=shared, **opts)
            else:
                nb = factory.nufft(
                    k2[:, cols],
                    op.shape,
                    op.fov,
                    backend=op.backend_name,
                    device=op.device,
                    eps=eps or op.eps,
                    dtype=op.dtype,
                    **opts,
                )
            self.bins.append((cols, nb))
        self.tau_s = np.asarray(tau)
        self.t_col = t_col

    @property
    def n_bins(self) -> int:
        return len(self.bins)

    def grid(self, data, factor=None, col_factor=None):
        """Data (B, *op.kshape) (or (B, M)) times ``factor`` (op.kshape) times ``col_factor`` (one value per
        time column, (C,)) -> bin images (B, n_bins, N0, N1, N2).

        The factors (density weights, demodulation at the distinct times) multiply each bin's data
        while it is cut out, so the bin arrays are made in one pass and no weighted copy of all the
        data exists at once (39 MB at the 64^3 protocol); None: that factor is 1.
        """
        from recon.device import get_array_module

        xp = get_array_module(data)
        y2 = data.reshape((-1,) + self.shape)
        f2 = None if factor is None else factor.reshape(self.shape)
        out = xp.empty((y2.shape[0], self.n_bins) + self.op.shape, dtype=self.op.dtype)
        rdt = np.float32 if self.op.dtype == np.complex64 else np.float64
        fdt = None if f2 is None else (self.op.dtype if f2.dtype.kind == "c" else rdt)
        for i, (cols, nb) in enumerate(self.bins):
            fb = None if f2 is None else f2[:, cols].astype(fdt, copy=False)  # cast per bin: no full-size copy
            if col_factor is not None:
                cb = col_factor[cols][None, :]
                fb = cb if fb is None else fb * cb
            yb = y2[:, :, cols] * fb if fb is not None else xp.ascontiguousarray(y2[:, :, cols])
            out[:, i] = nb.adjoint(yb.astype(self.op.dtype, copy=False))
        return out


def _centre(f, mask):
    lo, hi = field_range(f, mask)
    return 0.5 * (lo + hi), 0.5 * (hi - lo), hi - lo


class TimeBins:
    """Time-bin images of every echo from one spreading pass, before the field map is needed.

    ``images`` (n_echo, B, n_bins, N0, N1, N2): bin b of echo e is the density-compensated gridding
    of the samples of bin b, demodulated at ``centre_hz`` (0: not demodulated). Made by
    :func:`grid_time_bins`. Without demodulation the bins are a partition of the data, so
    :meth:`plain` (their sum) *is* the plain gridding image (up to float rounding), and the same
    bins give tb-cpr's correction once the field map is known (:meth:`combine`): one gridding pass
    serves the field map and the correction (the default run).
    """

    def __init__(self, images, tau_s: np.ndarray, duration_s: float, lead: tuple, centre_hz: float, dtype):
        self.images = images
        self.tau_s = np.asarray(tau_s, dtype=np.float64)
        self.duration_s = float(duration_s)
        self.lead = tuple(lead)
        self.centre_hz = float(centre_hz)
        self.dtype = np.dtype(dtype)

    @property
    def n_bins(self) -> int:
        return int(self.tau_s.size)

    @property
    def shape(self) -> tuple:
        return tuple(self.images.shape[-3:])

    def plain(self):
        """Plain gridding of every echo (n_echo, *lead, N0, N1, N2): the sum of the bins (no demodulation only)."""
        if self.centre_hz != 0.0:
            raise InputError("the sum of demodulated time bins is not the plain gridding image")
        n_echo = self.images.shape[0]
        return self.images.sum(axis=2).reshape((n_echo,) + self.lead + self.shape)

    def bins_needed(self, fieldmap_hz: np.ndarray, mask: np.ndarray | None = None, tol_rad: float = DEFAULT_TOL_RAD) -> int:
        """Bins the rule of :mod:`recon.b0.segments` asks for this field (largest |df - centre| in ``mask``)."""
        from recon.device import to_host

        lo, hi = field_range(to_host(fieldmap_hz), None if mask is None else to_host(mask))
        h = max(abs(lo - self.centre_hz), abs(hi - self.centre_hz))
        return n_time_bins(h, self.duration_s, tol_rad)

    def combine(self, te_s: Sequence[float], fieldmap_hz: np.ndarray):
        """tb-cpr images (n_echo, *lead, N0, N1, N2) of the field map ``fieldmap_hz`` (Hz, N^3).

        x_e(r) = exp(+i 2 pi df(r) TE_e) sum_b exp(+i 2 pi (df(r) - f_c) tau_b) X_{e,b}(r), the
        module docstring's sum with its phase split: one phase image per bin shared by all echoes
        and one per echo (not one per bin and echo).
        """
        from recon.device import get_array_module, to_host

        xp = get_array_module(self.images)
        rdt = np.float32 if self.dtype == np.complex64 else np.float64
        f = xp.asarray(np.asarray(to_host(fieldmap_hz), dtype=np.float64).astype(rdt))
        delta = f - rdt(self.centre_hz) if self.centre_hz else f
        bins = self.images
        acc = xp.zeros(bins.shape[:2] + self.shape, dtype=self.dtype)
        tmp = xp.empty_like(acc)
        ph = xp.empty(self.shape, dtype=self.dtype)
        for b in range(self.n_bins):
            _phase(xp, delta, rdt(2 * np.pi * self.tau_s[b]), ph)
            xp.multiply(bins[:, :, b], ph, out=tmp)
            acc += tmp
        for e in range(acc.shape[0]):
            _phase(xp, f, rdt(2 * np.pi * float(te_s[e])), ph)
            acc[e] *= ph
        return acc.reshape((acc.shape[0],) + self.lead + self.shape)


def _phase(xp, f, scale, out):
    """out = exp(+i * scale * f) for a real array f (complex ``out``; numpy: no complex temporaries)."""
    theta = f * scale
    if xp is np:  # numpy's .real/.imag of a complex array are writable views
        np.cos(theta, out=out.real)
        np.sin(theta, out=out.imag)
    else:
        out[...] = xp.exp(theta * out.dtype.type(1j))
    return out


def time_binned_gridder(op: NUFFT, t_s: np.ndarray, n_bins: int, dcf, eps: float | None = None, plans: Plans | None = None):
    """A :class:`TimeBinnedGridder`, reused whole from a plan cache (kind ``time-bins``).

    With a cache the bins' plans are one entry keyed by the operator's k and settings, the readout
    times, the bin count and the accuracy: a batch worker keeps the whole set for the next scan of the
    protocol, where caching the bins one by one as ``nufft`` plans would evict them (and the run's own
    operator) every scan. Without a cache: built fresh.
    """
    from recon.plans import array_digest, nufft_key

    factory = plans_or_default(plans)

    def key():
        k = nufft_key(op.k, op.shape, op.fov, backend=op.backend_name, device=op.device, eps=eps or op.eps, dtype=op.dtype)
        return (k, array_digest(np.asarray(t_s, dtype=np.float64)), int(n_bins))

    keep = factory.cache is not None  # a gridder kept for the next scan keeps each bin's sorted plan
    return factory.get("time-bins", key, lambda: TimeBinnedGridder(op, t_s, n_bins, dcf, eps=eps, plans=None, share_plan=not keep))


def grid_time_bins(
    op: NUFFT,
    data,
    dcf,
    t_s: np.ndarray,
    n_bins: int,
    *,
    centre_hz: float = 0.0,
    bin_eps: float | None = BIN_EPS,
    plans: Plans | None = None,
) -> TimeBins:
    """Grid every echo of ``data`` (n_echo, ..., *op.kshape) into ``n_bins`` readout-time bins.

    One NUFFT plan per bin (:class:`TimeBinnedGridder`), all echoes and coils in one call per bin;
    the data are demodulated at ``centre_hz`` (Hz) over the distinct sample times (0: not at all,
    so the bins' sum is the plain gridding). ``bin_eps``: accuracy of the bin plans,
    max(op.eps, bin_eps) (None: op.eps). Returns the :class:`TimeBins`.
    """
    from recon.device import get_array_module

    xp = get_array_module(data)
    p_rows, t_col = _time_columns(op, t_s)
    gr = time_binned_gridder(op, t_s, n_bins, dcf, eps=max(op.eps, bin_eps) if bin_eps else None, plans=plans)
    n_echo = data.shape[0]
    lead = data.shape[1 : data.ndim - len(op.kshape)]
    col = None
    if centre_hz:
        col = xp.asarray(np.exp(2j * np.pi * centre_hz * t_col).astype(op.dtype))  # (C,) over the distinct times
    imgs = gr.grid(data, xp.asarray(dcf), col)  # (n_echo * B, n_bins, *shape)
    imgs = imgs.reshape((n_echo, -1, gr.n_bins) + op.shape)
    return TimeBins(imgs, gr.tau_s, float(t_col.max() - t_col.min()), lead, centre_hz, op.dtype)


def first_time_bins(op: NUFFT, t_s: np.ndarray, tol_rad: float = DEFAULT_TOL_RAD, field_hz: float | None = None) -> int:
    """Bins to grid before the field map is known: the rule for |df| up to ``field_hz``.

    ``field_hz`` defaults to :data:`recon.b0.segments.FIRST_PASS_FIELD_HZ`; a measured map that needs
    more bins is regridded (:func:`recon.pipeline.correct_b0`), one that needs fewer uses these.
    """
    from recon.b0.segments import FIRST_PASS_FIELD_HZ

    _, t_col = _time_columns(op, t_s)
    bound = FIRST_PASS_FIELD_HZ if field_hz is None else float(field_hz)
    return n_time_bins(bound, float(t_col.max() - t_col.min()), tol_rad)


@register_correction("tb-cpr")
def correct_tb_cpr(
    op,
    data,
    dcf,
    te_s,
    t_s,
    fieldmap_hz,
    n_segments=None,
    mask=None,
    tol_rad: float = DEFAULT_TOL_RAD,
    bin_eps: float | None = BIN_EPS,
    plans: Plans | None = None,
) -> np.ndarray:
    """Time-binned conjugate phase (see the module docstring).

    ``bin_eps``: NUFFT accuracy of the bin plans, max(op.eps, bin_eps); the default
    :data:`recon.b0.segments.BIN_EPS` (1e-3) is ten times below the binning error (~1e-2) and
    narrows the spreading kernel (cost). None: op.eps.

    All echoes (and leading axes) go through each bin's plan in one call: the demodulation at
    the centre frequency f_c splits into exp(+i 2 pi f_c t) (shared, over the distinct times t)
    and a constant exp(+i 2 pi f_c TE_e) per echo applied to the image. (The default run grids
    the bins without demodulation once, for the field map and this correction:
    :func:`grid_time_bins`, :class:`TimeBins`.)
    """
    fc, half, _ = _centre(fieldmap_hz, mask)
    _, t_col = _time_columns(op, t_s)
    if n_segments is None:
        n_segments = n_time_bins(half, float(t_col.max() - t_col.min()), tol_rad)
    tb = grid_time_bins(op, data, dcf, t_s, n_segments, centre_hz=fc, bin_eps=bin_eps, plans=plans)
    log.debug("tb-cpr: %d time bins, centre %.1f Hz, half span %.1f Hz", tb.n_bins, fc, half)
    return tb.combine(te_s, fieldmap_hz)


# ------------------------------------------------------------------------------ fs-cpr and mfi
def _frequency_images(op, y, w2, t_abs, freqs, max_batch):
    """Gridded images at each demodulation frequency: (B, L, *shape).

    ``y`` (B, P, C) data in the (projection, time column) layout, ``w2`` (P, C) density weights,
    ``t_abs`` (C,) the column times from excitation: the demodulation is computed over the C
    distinct times and broadcast over the P rows.
    """
    from recon.device import get_array_module

    xp = get_array_module(y)
    rdt = np.float32 if op.dtype == np.complex64 else np.float64
    out = xp.empty((y.shape[0], len(freqs)) + op.shape, dtype=op.dtype)
    step = max(1, int(max_batch))
    for s in range(0, len(freqs), step):
        fs = np.asarray(freqs[s : s + step])
        demod = xp.asarray(np.exp(2j * np.pi * fs[:, None] * t_abs[None, :]).astype(op.dtype))  # (l, C)
        batch = y[:, None] * (w2.astype(rdt, copy=False)[None] * demod[:, None, :])[None]  # (B, l, P, C)
        out[:, s : s + len(fs)] = op.adjoint(batch.reshape((y.shape[0], len(fs)) + op.kshape))
    return out


def _frequencies(fieldmap_hz, mask, t_end, n_segments, oversampling):
    lo, hi = field_range(fieldmap_hz, mask)
    if n_segments is None:
        n_segments = n_frequency_segments(hi - lo, t_end, oversampling)
    n_segments = int(n_segments)
    if n_segments < 1:
        raise InputError(f"number of frequency segments must be >= 1, got {n_segments}")
    if n_segments == 1:
        return np.array([0.5 * (lo + hi)])
    return np.linspace(lo, hi, n_segments)


def _default_batch(op, lead_size):
    # keep the demodulated batch (B * l * M complex values) near 512 MiB
    per = lead_size * op.n_samples * op.dtype.itemsize
    return max(1, int(2**29 // max(per, 1)))


def _segment_images(op, data, dcf, te_s, t_s, fieldmap_hz, mask, n_segments, oversampling, max_batch, method):
    """Per echo: (echo index, sample times from excitation, demodulation frequencies, their images).

    Shared by the frequency-segment methods (fs-cpr, mfi); the images come from one batched
    NUFFT of the data demodulated at every frequency, shape (lead, L, N0, N1, N2).
    """
    from recon.device import get_array_module

    xp = get_array_module(data)
    p_rows, t_col = _time_columns(op, t_s)
    w2 = xp.asarray(dcf).reshape(p_rows, t_col.size)
    lead = data.shape[1 : data.ndim - len(op.kshape)]
    nlead = int(np.prod(lead)) if lead else 1
    for e in range(data.shape[0]):
        t_abs = te_s[e] + t_col
        freqs = _frequencies(fieldmap_hz, mask, float(t_abs.max()), n_segments, oversampling or FREQ_OVERSAMPLING[method])
        y = data[e].reshape((-1, p_rows, t_col.size))
        yield e, t_abs, freqs, _frequency_images(op, y, w2, t_abs, freqs, max_batch or _default_batch(op, nlead))


@register_correction("fs-cpr")
def correct_fs_cpr(
    op,
    data,
    dcf,
    te_s,
    t_s,
    fieldmap_hz,
    n_segments=None,
    mask=None,
    oversampling: float | None = None,
    max_batch: int | None = None,
    plans: Plans | None = None,
) -> np.ndarray:
    """Frequency-segmented conjugate phase with linear interpolation between frequencies."""
    from recon.device import get_array_module

    xp = get_array_module(data)
    lead = data.shape[1 : data.ndim - len(op.kshape)]
    out = xp.empty((data.shape[0],) + lead + op.shape, dtype=op.dtype)
    segs = _segment_images(op, data, dcf, te_s, t_s, fieldmap_hz, mask, n_segments, oversampling, max_batch, "fs-cpr")
    for e, _t_abs, freqs, imgs in segs:
        if len(freqs) == 1:
            out[e] = imgs[:, 0].reshape(lead + op.shape)
            continue
        pos = np.clip((fieldmap_hz - freqs[0]) / (freqs[1] - freqs[0]), 0, len(freqs) - 1)
        i0 = np.minimum(np.floor(pos).astype(np.intp), len(freqs) - 2)
        a = xp.asarray((pos - i0).astype(np.float32))
        i0 = xp.asarray(i0)
        g0 = xp.take_along_axis(imgs, i0[None, None], axis=1)[:, 0]
        g1 = xp.take_along_axis(imgs, (i0 + 1)[None, None], axis=1)[:, 0]
        out[e] = ((1 - a) * g0 + a * g1).reshape(lead + op.shape)
        log.debug("fs-cpr echo %d: %d frequencies %.1f..%.1f Hz", e, len(freqs), freqs[0], freqs[-1])
    return out


def mfi_coefficients(freqs_hz: np.ndarray, t_abs_s: np.ndarray, f_table_hz: np.ndarray) -> np.ndarray:
    """Least-squares MFI coefficients c (len(f_table), L): exp(+i2pi f t) ~= sum_l c_l exp(+i2pi f_l t).

    The fit runs over the distinct sample times ``t_abs_s`` (s from excitation) of the echo.
    """
    t = np.unique(np.asarray(t_abs_s, dtype=np.float64))
    a = np.exp(2j * np.pi * t[:, None] * np.asarray(freqs_hz)[None, :])  # (n_t, L)
    target = np.exp(2j * np.pi * t[:, None] * np.asarray(f_table_hz)[None, :])  # (n_t, n_f)
    c, *_ = np.linalg.lstsq(a, target, rcond=1e-10)
    return c.T  # (n_f, L)


@register_correction("mfi")
def correct_mfi(
    op,
    data,
    dcf,
    te_s,
    t_s,
    fieldmap_hz,
    n_segments=None,
    mask=None,
    oversampling: float | None = None,
    max_batch: int | None = None,
    table_step_hz: float = 0.25,
    plans: Plans | None = None,
) -> np.ndarray:
    """Multi-frequency interpolation with least-squares coefficients over the readout window."""
    from recon.device import get_array_module

    xp = get_array_module(data)
    lead = data.shape[1 : data.ndim - len(op.kshape)]
    out = xp.empty((data.shape[0],) + lead + op.shape, dtype=op.dtype)
    fmin, fmax = float(fieldmap_hz.min()), float(fieldmap_hz.max())
    segs = _segment_images(op, data, dcf, te_s, t_s, fieldmap_hz, mask, n_segments, oversampling, max_batch, "mfi")
    for e, t_abs, freqs, imgs in segs:
        n_tab = max(2, int(np.ceil((fmax - fmin) / table_step_hz)) + 1)
        table = np.linspace(fmin, fmax, n_tab) if fmax > fmin else np.array([fmin, fmin + 1e-3])
        coef = mfi_coefficients(freqs, t_abs, table).astype(op.dtype)  # (n_tab, L)
        pos = np.clip((fieldmap_hz - table[0]) / (table[1] - table[0]), 0, len(table) - 1)
        i0 = np.minimum(np.floor(pos).astype(np.intp), len(table) - 2)
        a = (pos - i0)[..., None].astype(np.float32)
        c = xp.asarray((1 - a) * coef[i0] + a * coef[i0 + 1])  # (*shape, L)
        out[e] = xp.einsum("blijk,ijkl->bijk", imgs, c).reshape(lead + op.shape)
        log.debug("mfi echo %d: %d frequencies %.1f..%.1f Hz", e, len(freqs), freqs[0], freqs[-1])
    return out
