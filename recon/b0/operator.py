"""Time-segmented encoding operator with off-resonance and optional R2* decay (Sutton et al. 2003).

Model (DESIGN.md), for one echo with echo time TE and sample times t_m from the first ADC
sample::

    y_m = sum_j x_j exp(-z_j (TE + t_m)) exp(-i 2 pi k_m . r_j),   z_j = R2*_j + i 2 pi df_j

or, with a tissue-fraction map a_j instead of R2*, x_j d(TE + t_m; a_j) exp(-i 2 pi df_j (TE + t_m))
with d the two-pool decay of :func:`recon.physics.two_pool_decay` (coefficients then fitted to those
functions by :func:`recon.b0.segments.ls_function_coefficients`).

The exponential is split into L time segments at times tau_l (spread evenly over the
readout window) with least-squares interpolation coefficients b_l(t) computed on a histogram of
the voxels' rates z (Sutton, Noll & Fessler, IEEE TMI 22:178, 2003)::

    exp(-z t) ~= sum_l b_l(t) exp(-z tau_l)

so ``forward`` is L NUFFTs of x * exp(-z tau_l) (one batched call through one plan) weighted per
sample by b_l(t_m), and ``adjoint`` is its exact adjoint (conjugate coefficients, conjugate
voxel factors), so <A x, y> = <x, A^H y> holds to rounding. Like :class:`recon.nufft.NUFFT`,
the operator has no voxel-volume factor and no density compensation.

The number of segments, unless given, is :func:`recon.b0.segments.n_time_bins` + 1 for the
complex-rate half-span (field half-span combined with the R2* half-span / 2 pi) with a phase
tolerance of 1 rad: least-squares interpolation is far more accurate than nearest-bin
gridding, so its segments can be ~5x wider (measured against the dense matrix in
tests/test_b0_operator.py: relative error ~1e-3 at the default).
"""

from __future__ import annotations

import numpy as np

from recon.b0.segments import field_fraction_histogram, ls_function_coefficients, ls_time_coefficients, n_time_bins, rate_histogram
from recon.device import get_array_module
from recon.errors import InputError
from recon.linop import LinearOperator
from recon.nufft import NUFFT
from recon.physics import CSF, TISSUE, two_pool_decay

OPERATOR_TOL_RAD = 1.0


def _pool_rates() -> tuple[float, ...]:
    """R2* (1/s) of the exponential pools of the two-pool decay (tissue short and long, fluid)."""
    return tuple(1.0 / t for t in TISSUE.t2star_s + CSF.t2star_s)


def sample_times(op: NUFFT, t_s: np.ndarray) -> np.ndarray:
    """Broadcast readout times (n_samp,) or (n_proj, n_samp) in s to the operator's sample shape."""
    t = np.asarray(t_s, dtype=np.float64)
    try:
        return np.broadcast_to(t, op.kshape)
    except ValueError as e:
        raise InputError(f"sample times of shape {t.shape} do not match the trajectory samples {op.kshape}") from e


class TimeSegmentedOperator(LinearOperator):
    """Encoding with B0 (and optional R2*) for one echo: ``forward(image)``, ``adjoint(data)``.

    Parameters
    ----------
    nufft : the plain :class:`recon.nufft.NUFFT` of the trajectory (its plan is reused).
    t_s : readout sample times in s from the first ADC sample, (n_samp,) or the operator's
        sample shape.
    fieldmap_hz : off-resonance df (N0, N1, N2) in Hz (DESIGN.md sign).
    te_s : echo time in s (added to every sample time).
    r2star_hz : optional R2* = 1/T2* map (N0, N1, N2) or scalar, in 1/s.
    tissue_fraction : optional map (N0, N1, N2) or scalar in [0, 1] of the two-pool decay
        :func:`recon.physics.two_pool_decay` (instead of ``r2star_hz``): each voxel decays as
        ``a tissue(t) + (1 - a) csf(t)``; the coefficients are fitted on a histogram of (df, a).
    n_segments : number of time segments L; default from the rule in the module docstring.
    tol_rad : phase tolerance of that rule.
    mask : voxels whose rates the interpolator is fitted to (default: all).

    Shapes: ``forward`` takes (..., N0, N1, N2) and returns (..., *nufft.kshape); ``adjoint`` the
    reverse (the :class:`recon.linop.LinearOperator` contract checks them). Leading axes (coils,
    batch) are transformed together with the L segments in one call. Inputs may be numpy or CuPy
    (with a GPU NUFFT backend): the coefficient arrays are copied to the device once.
    :meth:`toeplitz_term` gives what :class:`recon.b0.toeplitz.ToeplitzNormal` needs.
    """

    def __init__(
        self,
        nufft: NUFFT,
        t_s: np.ndarray,
        fieldmap_hz: np.ndarray,
        te_s: float = 0.0,
        r2star_hz: np.ndarray | float | None = None,
        n_segments: int | None = None,
        tol_rad: float = OPERATOR_TOL_RAD,
        mask: np.ndarray | None = None,
        tissue_fraction: np.ndarray | float | None = None,
    ):
        self.nufft = nufft
        self.shape = nufft.shape
        self.kshape = nufft.kshape
        self.ishape, self.oshape = tuple(self.shape), tuple(self.kshape)
        f = np.asarray(fieldmap_hz, dtype=np.float64)
        if f.shape != self.shape:
            raise InputError(f"field map shape {f.shape} does not match the image grid {self.shape}")
        if not np.all(np.isfinite(f)):
            raise InputError("field map contains NaN or infinite values")
        r2 = None
        if r2star_hz is not None:
            r2 = np.broadcast_to(np.asarray(r2star_hz, dtype=np.float64), self.shape)
            if not np.all(np.isfinite(r2)) or np.any(r2 < 0):
                raise InputError("R2* must be finite and non-negative (1/s)")
        frac = None
        if tissue_fraction is not None:
            if r2 is not None:
                raise InputError("give an R2* map or a tissue-fraction map, not both")
            frac = np.broadcast_to(np.asarray(tissue_fraction, dtype=np.float64), self.shape)
            if not np.all(np.isfinite(frac)) or np.any(frac < 0) or np.any(frac > 1):
                raise InputError("tissue fraction must be finite and within [0, 1]")
        if mask is not None and np.shape(mask) != self.shape:
            raise InputError(f"mask shape {np.shape(mask)} does not match the image grid {self.shape}")
        t_rel = sample_times(nufft, t_s)
        lead = t_rel.ndim - 1
        if t_rel.ndim >= 1 and all(t_rel.strides[i] == 0 or t_rel.shape[i] == 1 for i in range(lead)):
            # one time per readout sample (the usual case): coefficients over those times only
            t_line = np.asarray(t_rel[(0,) * lead], dtype=np.float64)
            bshape = (1,) * lead + t_line.shape
        else:
            t_line, bshape = np.asarray(t_rel, dtype=np.float64).ravel(), self.kshape
        t_unique, inverse = np.unique(t_line, return_inverse=True)
        r0, r1 = float(t_unique[0]), float(t_unique[-1])
        sel = np.ones(self.shape, bool) if mask is None else np.asarray(mask, bool)
        if n_segments is None:
            fv = f[sel] if sel.any() else np.zeros(1)
            half = 0.5 * float(fv.max() - fv.min())
            if r2 is not None:
                rv = r2[sel] if sel.any() else np.zeros(1)
                half = float(np.hypot(half, 0.5 * (rv.max() - rv.min()) / (2 * np.pi)))
            elif frac is not None:
                half = float(np.hypot(half, 0.5 * (max(_pool_rates()) - min(_pool_rates())) / (2 * np.pi)))
            n_segments = n_time_bins(half, r1 - r0, tol_rad) + 1
        n_segments = int(n_segments)
        if n_segments < 1:
            raise InputError(f"number of time segments must be >= 1, got {n_segments}")
        self.n_segments = n_segments
        tau_rel = np.linspace(r0, r1, n_segments) if n_segments > 1 else np.array([0.5 * (r0 + r1)])
        self.tau_s = float(te_s) + tau_rel
        if frac is not None:
            df, av, counts = field_fraction_histogram(f, frac, sel)
            t_abs = float(te_s) + t_unique
            at_tau = two_pool_decay(self.tau_s[None, :], av[:, None]) * np.exp(-2j * np.pi * df[:, None] * self.tau_s[None, :])
            at_t = two_pool_decay(t_abs[None, :], av[:, None]) * np.exp(-2j * np.pi * df[:, None] * t_abs[None, :])
            b = ls_function_coefficients(at_tau, at_t, counts)
        elif r2 is None:
            rates, counts = rate_histogram(f, r2, sel)
            # shift-invariant fit (|exp(-z TE)| = 1): on times from the first ADC sample, so every
            # echo gets bit-identical coefficients (and shares Toeplitz kernels)
            b = ls_time_coefficients(t_unique, tau_rel, rates, counts)  # (L, n_unique)
        else:
            rates, counts = rate_histogram(f, r2, sel)
            b = ls_time_coefficients(float(te_s) + t_unique, self.tau_s, rates, counts)
        rdt = np.float32 if nufft.dtype == np.complex64 else np.float64
        self.t_compact_s = t_line.reshape(bshape)  # readout times (from the first ADC sample) in b's layout
        # (L, *bshape), broadcastable to (L, *kshape): per readout time, not per sample
        self._b = b[:, inverse.ravel()].reshape((n_segments,) + tuple(bshape)).astype(nufft.dtype)
        z = 2j * np.pi * f + (0.0 if r2 is None else r2)
        tau4 = self.tau_s.reshape(-1, 1, 1, 1)
        e = np.exp(-z[None] * tau4)
        if frac is not None:
            e *= two_pool_decay(tau4, frac[None])
        self._e = e.astype(nufft.dtype)  # (L, *shape)
        self._real = rdt
        self.te_s = float(te_s)

    def _arrays(self, xp):
        """(b, e) in the array module ``xp`` (device copies made once)."""
        if xp is np:
            return self._b, self._e
        dev = self.__dict__.setdefault("_dev", {})
        if xp.__name__ not in dev:
            dev[xp.__name__] = (xp.asarray(self._b), xp.asarray(self._e))
        return dev[xp.__name__]

    def _forward(self, image, lead):
        """Image (..., N0, N1, N2) -> data (..., *kshape): sum_l b_l(t) NUFFT(x exp(-z tau_l))."""
        xp = get_array_module(image)
        b, e = self._arrays(xp)
        x = image.astype(self.nufft.dtype, copy=False)
        seg = x[..., None, :, :, :] * e  # (..., L, *shape)
        y = self.nufft.forward(seg)  # (..., L, *kshape)
        return (y * b).sum(axis=-1 - len(self.kshape))

    def _adjoint(self, data, lead):
        """Data (..., *kshape) -> image (..., N0, N1, N2): sum_l conj(exp(-z tau_l)) NUFFT^H(conj(b_l) y)."""
        xp = get_array_module(data)
        b, e = self._arrays(xp)
        y = data.astype(self.nufft.dtype, copy=False)
        seg = y.reshape(lead + (1,) + self.kshape) * xp.conj(b)  # (..., L, *kshape)
        x = self.nufft.adjoint(seg)  # (..., L, *shape)
        return (x * xp.conj(e)).sum(axis=-4)

    def toeplitz_term(self, time_factor: np.ndarray | None = None) -> tuple:
        """``(b, time_factor, e)`` of this operator for :class:`recon.b0.toeplitz.ToeplitzNormal`.

        With ``base_weights`` W there, the term is A^H diag(W time_factor) A; ``time_factor`` is a
        per-sample weight in the layout of the coefficients (one value per readout time, e.g. a
        decay squared), or None.
        """
        return self._b, time_factor, self._e

    def __repr__(self) -> str:
        return f"TimeSegmentedOperator(shape={self.shape}, samples={self.kshape}, segments={self.n_segments}, te_s={self.te_s:g})"
