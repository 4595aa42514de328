"""Iterative model-based reconstruction with B0 and T2* decay (both echoes jointly).

Problem (per DESIGN.md forward model), with x the transverse magnetisation at t = 0 shared by
the echoes::

    min_x  sum_e || W^(1/2) (dV * A_e x - y_e) ||^2 + R(x)

* A_e = time-segmented encoding of echo e (:class:`recon.b0.operator.TimeSegmentedOperator`:
  off-resonance df and an optional mono-exponential R2* map per voxel, at TE_e + t_m), times an
  optional per-sample bi-exponential decay d(TE_e + t_m) that is the same for every voxel (the
  "fixed tissue model" of :data:`DECAY_MODELS`);
* dV the voxel volume (m^3): data are a physical Fourier transform (the unit chain);
* W the density weights (1/m^3), which make A^H W A close to the identity (a well-conditioned
  problem and a warm start that is exactly the gridding reconstruction).

The operator is scaled as A' = sqrt(W dV) A_e and y' = sqrt(W / dV) y so that A'^H A' ~ I and
A'^H y' is the gridding image; the quadratic regularisers then have weights relative to the
identity (lamda = 0.01 means 1 % of the data term's curvature).

Solvers come from SigPy (``sigpy.app.LinearLeastSquares``): conjugate gradient for the
quadratic regularisers (``tikhonov`` lamda ||x||^2, ``gradient`` lamda ||D x||^2 by stacking
sqrt(lamda) D under A), primal-dual hybrid gradient for total variation (``tv``: lamda ||D x||_1).
Our operators enter SigPy as :class:`OperatorLinop`, so SigPy's numpy/CuPy handling applies
and NUFFT plans are built once and reused across iterations. A Toeplitz embedding of A^H A
is not used: with the time segments it would need L^2 kernels; the plain L NUFFT pairs per
iteration cost less for the L (4-12) used here.

Decay handling (:data:`DECAY_MODELS`): ``none``; ``r2star-map`` (a known R2* map in 1/s,
or estimated from the echo ratio of a first reconstruction: R2* = -ln(|x2|/|x1|) / (TE2-TE1),
clipped to [0, 1/T2*_min] and smoothed); ``tissue`` (the fixed bi-exponential tissue model
0.6 x 3.5 ms / 0.4 x 23 ms for every voxel, a per-sample weight).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from recon.errors import InputError
from recon.options import DEFAULT_ITER_LAMDA

log = logging.getLogger(__name__)

DECAY_MODELS = ("none", "r2star-map", "tissue")
REGULARISERS = ("none", "tikhonov", "gradient", "tv")
TISSUE_BIEXP = ((0.6, 3.5e-3), (0.4, 23e-3))  # (fraction, T2* in s): WM-like, notes/sodium_domain.md


def _sigpy():
    try:
        import sigpy as sp
    except ImportError as e:  # pragma: no cover - test/iterative extra
        from recon.errors import BackendUnavailableError

        raise BackendUnavailableError("iterative reconstruction needs SigPy: pip install 'narecon[iterative]'") from e
    return sp


def make_linop(op, ishape: Sequence[int], oshape: Sequence[int], name: str = "narecon"):
    """Wrap an object with ``forward``/``adjoint`` into a SigPy ``Linop`` (shapes checked by SigPy)."""
    sp = _sigpy()

    class OperatorLinop(sp.linop.Linop):
        def __init__(self, fwd, adj, ish, osh, repr_name):
            self._fwd, self._adj = fwd, adj
            super().__init__(tuple(osh), tuple(ish), repr_str=repr_name)

        def _apply(self, input):
            return self._fwd(input)

        def _adjoint_linop(self):
            return OperatorLinop(self._adj, self._fwd, self.oshape, self.ishape, self.repr_str + "^H")

    return OperatorLinop(op.forward, op.adjoint, ishape, oshape, name)


class _Scaled:
    """sqrt(w dV) * sample_decay * A(x), with A a time-segmented or plain operator."""

    def __init__(self, a, scale, shape, kshape):
        self.a, self.scale, self.shape, self.kshape = a, scale, shape, kshape

    def forward(self, x):
        return self.a.forward(x) * self.scale

    def adjoint(self, y):
        return self.a.adjoint(y * np.conj(self.scale))


@dataclasses.dataclass
class IterativeResult:
    """x (complex image at t = 0), echo images x exp(-z TE_e), the R2* map used, objective history."""

    x: np.ndarray
    echoes: np.ndarray
    r2star_hz: np.ndarray | None
    objective: list
    iterations: int
    settings: dict


def r2star_from_echoes(x1: np.ndarray, x2: np.ndarray, te1_s: float, te2_s: float,
                       t2star_min_s: float = 2e-3, smooth_vox: float = 1.0) -> np.ndarray:
    """R2* (1/s) from two echo images: -ln(|x2|/|x1|)/(TE2-TE1), clipped to [0, 1/t2star_min], smoothed."""
    from scipy.ndimage import gaussian_filter

    if te2_s <= te1_s:
        raise InputError(f"TE2 ({te2_s} s) must be later than TE1 ({te1_s} s)")
    a1 = gaussian_filter(np.abs(x1), smooth_vox)
    a2 = gaussian_filter(np.abs(x2), smooth_vox)
    floor = 0.05 * a1.max()
    ratio = np.clip(a2 / np.maximum(a1, floor), 1e-3, 1.0)
    r2 = -np.log(ratio) / (te2_s - te1_s)
    r2[a1 < floor] = 0.0
    return np.clip(r2, 0.0, 1.0 / t2star_min_s)


def _sample_decay(model: str, t_abs: np.ndarray) -> np.ndarray | None:
    if model != "tissue":
        return None
    return sum(f * np.exp(-t_abs / t2) for f, t2 in TISSUE_BIEXP)


def reconstruct_iterative(
    nufft,
    data: np.ndarray,
    dcf: np.ndarray,
    te_s: Sequence[float],
    t_s: np.ndarray,
    fieldmap_hz: np.ndarray | None = None,
    *,
    decay: str = "none",
    r2star_hz: np.ndarray | None = None,
    regulariser: str = "gradient",
    lamda: float = DEFAULT_ITER_LAMDA,
    max_iter: int = 30,
    tol: float = 1e-4,
    x0: np.ndarray | None = None,
    n_segments: int | None = None,
    mask: np.ndarray | None = None,
    callback=None,
) -> IterativeResult:
    """Joint least-squares reconstruction of all echoes sharing one image.

    Parameters
    ----------
    nufft : the plain :class:`recon.nufft.NUFFT` of the trajectory (plan reused).
    data : (n_echo, *nufft.kshape) k-space data in value * m^3 (coil-combined or single coil).
    dcf : density weights (nufft.kshape) in 1/m^3 (the data weighting W).
    te_s : echo times in s; t_s : sample times from the first ADC sample in s.
    fieldmap_hz : off-resonance map in Hz (None: no B0 in the model).
    decay : one of :data:`DECAY_MODELS`; ``r2star-map`` uses ``r2star_hz`` or estimates it from a
        first (gridding) reconstruction of two echoes.
    regulariser, lamda : one of :data:`REGULARISERS` and its weight (relative to the unit-
        curvature data term).
    max_iter, tol : iteration limit and relative-change tolerance (CG stops on its residual).
    x0 : warm start (default: the gridding image of echo 1, decay-compensated at TE1).
    callback : called as ``callback(iteration, x, objective)`` after each iteration.
    """
    sp = _sigpy()
    from recon.b0.operator import TimeSegmentedOperator, sample_times
    from recon.nufft import gridding

    if decay not in DECAY_MODELS:
        raise InputError(f"decay model must be one of {DECAY_MODELS}, got {decay!r}")
    if regulariser not in REGULARISERS:
        raise InputError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    data = np.asarray(data)
    te = [float(t) for t in np.atleast_1d(te_s)]
    if data.shape != (len(te),) + tuple(nufft.kshape):
        raise InputError(f"data must be (n_echo={len(te)}, {', '.join(map(str, nufft.kshape))}), got {data.shape}")
    if not np.all(np.isfinite(data)):
        raise InputError("k-space data contain NaN or infinite values")
    shape = nufft.shape
    dv = float(np.prod(np.asarray(nufft.fov) / np.asarray(shape)))
    w = np.asarray(dcf, dtype=np.float64)
    t_full = sample_times(nufft, t_s)
    f = np.zeros(shape) if fieldmap_hz is None else np.asarray(fieldmap_hz, dtype=np.float64)

    if decay == "r2star-map" and r2star_hz is None:
        if len(te) < 2:
            raise InputError("estimating an R2* map needs two echoes (or give r2star_hz)")
        g = gridding(nufft, data[:2], w)
        r2star_hz = r2star_from_echoes(g[0], g[1], te[0], te[1])
    r2 = r2star_hz if decay == "r2star-map" else None

    ops, segments = [], []
    for e, te_e in enumerate(te):
        a = TimeSegmentedOperator(nufft, t_s, f, te_s=te_e, r2star_hz=r2, n_segments=n_segments, mask=mask)
        segments.append(a.n_segments)
        scale = np.sqrt(w * dv)
        d = _sample_decay(decay, te_e + t_full)
        if d is not None:
            scale = scale * d
        ops.append(make_linop(_Scaled(a, scale.astype(nufft.dtype), shape, nufft.kshape), shape, nufft.kshape,
                              f"A_echo{e + 1}"))
    A = sp.linop.Vstack(ops) if len(ops) > 1 else ops[0]
    y = np.concatenate([(np.sqrt(w / dv) * data[e]).astype(nufft.dtype).ravel() for e in range(len(te))])
    if len(ops) == 1:
        y = y.reshape(nufft.kshape)

    if x0 is None:
        x0 = gridding(nufft, data[0], w)
        comp = np.exp(2j * np.pi * f * te[0])  # undo the TE1 phase so the start matches x(t=0)
        if r2 is not None:
            comp = comp * np.exp(r2 * te[0])
        x0 = (x0 * comp).astype(nufft.dtype)
    x = np.array(x0, dtype=nufft.dtype, copy=True)

    D = sp.linop.FiniteDifference(shape)
    history: list = []

    def objective(xv):
        r = A(xv) - y
        val = float(np.vdot(r, r).real)
        if regulariser == "tikhonov":
            val += lamda * float(np.vdot(xv, xv).real)
        elif regulariser == "gradient":
            g = D(xv)
            val += lamda * float(np.vdot(g, g).real)
        elif regulariser == "tv":
            val += lamda * float(np.abs(D(xv)).sum())
        return val

    if regulariser in ("none", "tikhonov"):
        app = sp.app.LinearLeastSquares(A, y, x=x, lamda=lamda if regulariser == "tikhonov" else 0, max_iter=max_iter,
                                        tol=0, show_pbar=False)
    elif regulariser == "gradient":
        Aa = sp.linop.Vstack([A, np.sqrt(lamda) * D]) if lamda > 0 else A
        ya = np.concatenate([y.ravel(), np.zeros(D.oshape, dtype=y.dtype).ravel()]) if lamda > 0 else y
        app = sp.app.LinearLeastSquares(Aa, ya, x=x, max_iter=max_iter, tol=0, show_pbar=False)
    else:
        app = sp.app.LinearLeastSquares(A, y, x=x, proxg=sp.prox.L1Reg(D.oshape, lamda), G=D, max_iter=max_iter,
                                        show_pbar=False, sigma=1.0, tau=1.0 / (1.0 + 8.0))
    # drive the SigPy algorithm one iteration at a time for progress, callbacks and our stopping rule
    # (construct with the real max_iter: SigPy's CG aliases its search direction when max_iter == 1)
    it = 0
    x_prev = x.copy()
    while not app.alg.done():
        app.alg.update()
        it += 1
        obj = objective(app.x)
        history.append(obj)
        change = float(np.linalg.norm(app.x - x_prev) / max(np.linalg.norm(app.x), 1e-30))
        log.debug("iteration %d: objective %.6g, relative change %.3g", it, obj, change)
        if callback is not None:
            callback(it, app.x, obj)
        x_prev = app.x.copy()
        if change < tol:
            break
    x = app.x
    z = 2j * np.pi * f + (0 if r2 is None else r2)
    echoes = np.stack([x * np.exp(-z * te_e) for te_e in te])
    if decay == "tissue":
        echoes = echoes * np.asarray([_sample_decay("tissue", np.array([te_e]))[0] for te_e in te])[:, None, None, None]
    log.info("iterative reconstruction: %d iterations, objective %.4g -> %.4g", it,
             history[0] if history else float("nan"), history[-1] if history else float("nan"))
    return IterativeResult(x=x, echoes=echoes, r2star_hz=r2, objective=history, iterations=it,
                           settings={"decay": decay, "regulariser": regulariser, "lamda": lamda, "max_iter": max_iter,
                                     "tol": tol, "segments": segments})
