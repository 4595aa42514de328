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

Solvers: conjugate gradient on the normal equations (A'^H A' + lamda R) x = A'^H y' for the
quadratic regularisers (``tikhonov`` R = I, ``gradient`` R = D^H D with D the circular forward
differences of ``sigpy.linop.FiniteDifference``, applied here as the periodic Laplacian) by
:class:`_CG`, the same recursion as ``sigpy.alg.ConjugateGradient`` (not imported: SigPy's import
costs ~3 s, mostly ``scipy.signal``); for total variation (``tv``: lamda s ||D x||_1, s the image
scale :func:`tv_scale`) ADMM (:class:`_ADMMTV`) whose x-updates are a few of those CG iterations on
the same normal operator plus rho D^H D.

Normal operator (``normal="toeplitz"``, the default for CG): A'^H A' by Toeplitz embedding
(:class:`recon.b0.toeplitz.ToeplitzNormal`: L (L + 1) / 2 FFT kernels per echo on the 2N grid,
computed once from a few adjoint NUFFTs of a real basis of the weight functions; each iteration
then costs 2 L FFTs per echo on the 2N grid instead of 2 L NUFFTs of all samples). ``normal="nufft"`` applies A'^H A' through the
NUFFTs (the reference). Measured in benchmarks/README.md.

Cost per iteration: no objective is computed unless asked (``objective=True``); progress
(iteration, CG residual, time left) is logged at INFO, or drawn as a tqdm bar on a terminal.
Arrays may be numpy or CuPy (GPU NUFFT backend): the solver uses the array module of ``data``.

Memory (the default CG path): the right-hand side A'^H y' is computed first, one time segment at a
time with the echoes as the batch (the (n_echo, samples) work array and the caller's NUFFT plan
for that batch, the one that gridded the echoes), then the Toeplitz kernels; the scaled echo
operators (square roots of the weights per sample) are only built where they are applied (the
objective, ``normal="nufft"``, TV).

Decay handling (:data:`DECAY_MODELS`): ``none``; ``r2star-map`` (a known R2* map in 1/s,
or estimated from the echo ratio of a first reconstruction: R2* = -ln(|x2|/|x1|) / (TE2-TE1),
clipped to [0, 1/T2*_min] and smoothed); ``tissue`` (the fixed bi-exponential tissue model
0.6 x 3.5 ms / 0.4 x 23 ms for every voxel, a per-sample weight); ``two-pool`` (each voxel a
partial-volume mixture a tissue(t) + (1 - a) csf(t) of the :data:`recon.physics.TISSUE` and
:data:`recon.physics.CSF` decays, :func:`recon.physics.two_pool_decay`, with the tissue fraction a
per voxel from the echo ratio of a first reconstruction, :func:`tissue_fraction_from_echoes`). Both
echo-ratio estimates divide the field map's intravoxel dephasing out of the ratio
(:func:`recon.b0.dephasing_factor`): a field gradient is not decay.

Which regime each decay model covers: ``r2star-map`` fits one exponential through TE1 and TE2,
which for bi-exponential tissue (60 % at 2.5-5.5 ms) over-states the decay late in a readout of
several T2*_short (the long pool is left), so the solver over-amplifies the late (high-k) samples
of short-T2* tissue: a sharper point response that rings at compartment boundaries. ``two-pool``
describes tissue, fluid and their boundary voxels over the whole readout with the literature pools;
a compartment whose pools differ from the priors (oedema, tumour: a lower short fraction) lies
between the two ends and is represented by an intermediate a, exact at TE1 and TE2 but only
approximate over the readout.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from recon import physics as _physics
from recon.errors import InputError
from recon.linop import LinearOperator, sigpy_linop
from recon.options import default_lamda
from recon.physics import two_pool_decay
from recon.trajectory.base import max_radius
from recon.window import TRAJECTORY_WINDOWS, apodize, check_kmax, check_window, readout_profile

log = logging.getLogger(__name__)

DECAY_MODELS = ("none", "r2star-map", "tissue", "two-pool")
REGULARISERS = ("none", "tikhonov", "gradient", "tv")
TV_SCALE_PERCENTILE = 99.5
"""Percentile of |x0| that scales the TV weight (:func:`tv_scale`): the bright fluid, not the background."""
TV_RHO = 1.0
"""ADMM penalty of TV (dimensionless, against the unit-curvature data term; :class:`_ADMMTV`)."""
TV_INNER = 4
"""Conjugate-gradient iterations of each ADMM x-update (warm-started from the previous x)."""
TISSUE_BIEXP = tuple(zip(_physics.TISSUE.fractions, _physics.TISSUE.t2star_s))  # (fraction, T2* in s): recon.physics


def _sigpy():
    try:
        import sigpy as sp
    except ImportError as e:  # pragma: no cover - test/iterative extra
        from recon.errors import BackendUnavailableError

        raise BackendUnavailableError("iterative reconstruction needs SigPy: pip install 'narecon[iterative]'") from e
    return sp


def make_linop(op, ishape: Sequence[int], oshape: Sequence[int], name: str = "narecon"):
    """Wrap an object with ``forward``/``adjoint`` into a SigPy ``Linop`` (shapes checked by SigPy)."""
    _sigpy()
    return sigpy_linop(op.forward, op.adjoint, ishape, oshape, name)


class _Scaled(LinearOperator):
    """sqrt(w dV) * sample_decay * A(x), with A a time-segmented or plain operator (the contract's shapes)."""

    def __init__(self, a, scale):
        self.a, self.scale = a, scale
        self.ishape, self.oshape = tuple(a.ishape), tuple(a.oshape)
        self._dev: dict = {}

    def _scale(self, xp):
        if xp is np:
            return self.scale
        if xp.__name__ not in self._dev:
            self._dev[xp.__name__] = xp.asarray(self.scale)
        return self._dev[xp.__name__]

    def _forward(self, x, lead):
        from recon.device import get_array_module

        return self.a._forward(x, lead) * self._scale(get_array_module(x))

    def _adjoint(self, y, lead):
        from recon.device import get_array_module

        xp = get_array_module(y)
        return self.a._adjoint(y * xp.conj(self._scale(xp)), lead)


class _Progress:
    """Per-iteration progress: a tqdm bar on a terminal, else INFO log lines (iteration, residual, time left)."""

    def __init__(self, total: int, desc: str = "iterative"):
        import sys
        import time

        self.total, self.t0, self._time = total, time.perf_counter(), time.perf_counter
        self.bar = None
        if sys.stderr.isatty() and log.isEnabledFor(logging.INFO):
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="it", leave=False)
            except ImportError:  # pragma: no cover - tqdm ships with the install
                self.bar = None

    def update(self, it: int, resid: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(residual=f"{resid:.3g}", refresh=False)
            self.bar.update(1)
            return
        el = self._time() - self.t0
        left = el / it * (self.total - it)
        log.info("iteration %d/%d: relative residual %.3g, %.1f s/iteration, <= %.0f s left", it, self.total, resid, el / it, left)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _CG:
    """Conjugate gradient for A x = b, A Hermitian positive definite: ``sigpy.alg.ConjugateGradient``'s
    recursion (no preconditioner), one :meth:`update` per iteration; ``resid`` is ||r||."""

    def __init__(self, a, b, x, max_iter: int):
        from recon.device import get_array_module

        self.xp = xp = get_array_module(x)
        self.a, self.x, self.max_iter, self.iter = a, x, int(max_iter), 0
        self.r = b - a(x)
        self.p = self.r.copy()
        self.rz = xp.real(xp.vdot(self.r, self.r))
        self.resid = float(self.rz) ** 0.5
        self.not_positive_definite = False

    def update(self) -> None:
        xp = self.xp
        ap = self.a(self.p)
        pap = float(xp.real(xp.vdot(self.p, ap)))
        if pap <= 0:
            self.not_positive_definite = True
            self.iter += 1
            return
        alpha = self.rz / pap
        self.x += alpha * self.p
        if self.iter < self.max_iter - 1:
            self.r -= alpha * ap
            rz = xp.real(xp.vdot(self.r, self.r))
            self.p *= rz / self.rz
            self.p += self.r
            self.rz = rz
        self.resid = float(self.rz) ** 0.5
        self.iter += 1

    def done(self) -> bool:
        return self.iter >= self.max_iter or self.not_positive_definite or self.resid <= 0


def _diff(v, xp):
    """D v: the circular forward differences on every axis, stacked (ndim, *shape) (``sigpy.linop.FiniteDifference``)."""
    return xp.stack([xp.roll(v, -1, axis=a) - v for a in range(v.ndim)])


def _diff_adjoint(g, xp):
    """D^H g for :func:`_diff` (g of shape (ndim, *shape))."""
    out = xp.zeros_like(g[0])
    for a in range(g.shape[0]):
        out += xp.roll(g[a], 1, axis=a) - g[a]
    return out


def tv_scale(x0) -> float:
    """The image scale of the TV weight: the :data:`TV_SCALE_PERCENTILE` percentile of |x0| (x0's units).

    Multiplying the data by c multiplies this scale, and so the weight lamda * scale, by c: the TV
    solution is then c times the solution of the unscaled data (homogeneous of degree 1), so that
    ``lamda`` does not depend on the receiver gain or the unit of the data."""
    from recon.device import to_host

    return float(np.percentile(np.abs(to_host(x0)), TV_SCALE_PERCENTILE))


class _ADMMTV:
    """ADMM (scaled form) for  min_x  ||A x - y||^2 + mu ||D x||_1, with D the circular forward
    differences and |.| the complex magnitude of each difference (anisotropic TV)::

        x <- (A^H A + rho D^H D)^-1 (A^H y + rho D^H (z - u))     (``inner`` CG iterations, warm)
        z <- soft(D x + u, mu / (2 rho)),   u <- u + D x - z

    ``normal`` applies A^H A (the Toeplitz embedding or the NUFFTs), ``rhs`` is A^H y. The data term
    has unit curvature (A^H A ~ I), so the penalty ``rho`` is dimensionless. One :meth:`update` is
    one outer iteration; ``primal`` is ||D x - z|| / ||D x|| after it. Written here rather than
    SigPy's PDHG so that TV uses the same Toeplitz normal operator as CG (no NUFFT per iteration)
    and its step needs no operator-norm bound."""

    def __init__(self, normal, rhs, x, mu: float, rho: float, max_iter: int, inner: int):
        from recon.device import get_array_module

        self.xp = xp = get_array_module(x)
        self.normal, self.rhs, self.x = normal, rhs, x
        self.mu, self.rho, self.max_iter, self.inner, self.iter = float(mu), float(rho), int(max_iter), int(inner), 0
        self.z = _diff(x, xp)
        self.u = xp.zeros_like(self.z)
        self.primal = 0.0

    def _system(self, v):
        return self.normal(v) + self.rho * _gradient_normal(v, self.xp)

    def update(self) -> None:
        xp = self.xp
        b = self.rhs + self.rho * _diff_adjoint(self.z - self.u, xp)
        cg = _CG(self._system, b, self.x, self.inner)
        while not cg.done():
            cg.update()
        self.x = cg.x
        dx = _diff(self.x, xp)
        v = dx + self.u
        mag = xp.abs(v)
        t = self.mu / (2 * self.rho)
        self.z = v * xp.maximum(1 - t / xp.maximum(mag, 1e-30), 0)
        self.u = v - self.z
        self.primal = float(xp.linalg.norm(dx - self.z) / max(float(xp.linalg.norm(dx)), 1e-30))
        self.iter += 1

    def done(self) -> bool:
        return self.iter >= self.max_iter


def _gradient_normal(v, xp):
    """D^H D v for D the circular forward differences on every axis (``sigpy.linop.FiniteDifference``):
    sum_a (2 v - roll(v, 1, a) - roll(v, -1, a)), the negative periodic Laplacian."""
    out = (2 * v.ndim) * v
    for a in range(v.ndim):
        out -= xp.roll(v, 1, axis=a)
        out -= xp.roll(v, -1, axis=a)
    return out


def _gradient_sq(v, xp) -> float:
    """||D v||^2 (the gradient regulariser's value)."""
    d = _diff(v, xp)
    return float(xp.vdot(d, d).real)


@dataclasses.dataclass
class IterativeResult:
    """x (complex image at t = 0), echo images x exp(-z TE_e), the R2* map used, histories.

    ``objective``: the objective per iteration when asked for (``objective=True``), else empty;
    ``residual``: the relative CG residual ||r_i|| / ||r_0|| per iteration (free; for TV the ADMM
    primal residual ||D x - z|| / ||D x|| per outer iteration).
    """

    x: np.ndarray
    echoes: np.ndarray
    r2star_hz: np.ndarray | None
    objective: list
    iterations: int
    settings: dict
    residual: list = dataclasses.field(default_factory=list)
    tissue_fraction: np.ndarray | None = None
    """The two-pool decay's tissue fraction per voxel (dimensionless, 0..1) when ``decay='two-pool'``."""


def _echo_ratio(x1, x2, te1_s, te2_s, smooth_vox, fieldmap_hz, mask):
    """(smoothed |x2| / |x1| with the intravoxel B0 dephasing divided out, smoothed |x1|, floor)."""
    from scipy.ndimage import gaussian_filter

    if te2_s <= te1_s:
        raise InputError(f"TE2 ({te2_s} s) must be later than TE1 ({te1_s} s)")
    a1 = gaussian_filter(np.abs(x1), smooth_vox)
    a2 = gaussian_filter(np.abs(x2), smooth_vox)
    floor = 0.05 * a1.max()
    ratio = a2 / np.maximum(a1, floor)
    if fieldmap_hz is not None:
        from recon.b0.fieldmap import dephasing_factor

        f = np.asarray(fieldmap_hz, dtype=np.float64)
        ratio = ratio * dephasing_factor(f, te1_s, mask) / dephasing_factor(f, te2_s, mask)
    return ratio, a1, floor


def r2star_from_echoes(
    x1: np.ndarray,
    x2: np.ndarray,
    te1_s: float,
    te2_s: float,
    t2star_min_s: float = 2e-3,
    smooth_vox: float = 1.0,
    fieldmap_hz: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """R2* (1/s) from two echo images: -ln(|x2|/|x1|)/(TE2-TE1), clipped to [0, 1/t2star_min], smoothed.

    With ``fieldmap_hz`` (Hz) the intravoxel dephasing of each echo (:func:`recon.b0.dephasing_factor`,
    differences inside ``mask``) is divided out of the ratio first: a field gradient is not decay."""
    ratio, a1, floor = _echo_ratio(x1, x2, te1_s, te2_s, smooth_vox, fieldmap_hz, mask)
    ratio = np.clip(ratio, 1e-3, 1.0)
    r2 = -np.log(ratio) / (te2_s - te1_s)
    r2[a1 < floor] = 0.0
    return np.clip(r2, 0.0, 1.0 / t2star_min_s)


def tissue_fraction_from_echoes(
    x1: np.ndarray,
    x2: np.ndarray,
    te1_s: float,
    te2_s: float,
    smooth_vox: float = 1.0,
    fieldmap_hz: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Tissue fraction a (0..1) of the two-pool decay per voxel from two echo images (times in s).

    The echo ratio of the smoothed magnitudes (as :func:`r2star_from_echoes`, with the intravoxel
    B0 dephasing divided out when ``fieldmap_hz`` is given) inverted exactly by
    :func:`recon.physics.tissue_fraction_from_ratio`; voxels under 5 % of the echo-1 maximum
    (background) get a = 0, the fluid's slow decay.
    """
    from recon.physics import tissue_fraction_from_ratio

    ratio, a1, floor = _echo_ratio(x1, x2, te1_s, te2_s, smooth_vox, fieldmap_hz, mask)
    a = tissue_fraction_from_ratio(ratio, te1_s, te2_s)
    a[a1 < floor] = 0.0
    return a


def _sample_decay(model: str, t_abs: np.ndarray) -> np.ndarray | None:
    if model != "tissue":
        return None
    return sum(f * np.exp(-t_abs / t2) for f, t2 in TISSUE_BIEXP)


def _release_free_heap() -> None:
    """Hand the C heap's free pages back to the OS (glibc ``malloc_trim(0)``; nothing elsewhere).

    numpy arrays smaller than glibc's dynamic mmap threshold (which rises to 32 MiB once a larger
    array was freed) live on the heap, and freed they stay resident: ~375 MB after the solver at the
    64^3 protocol, reused by nothing the run does next. Called when the solver starts and ends."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        pass


def _rhs(tsos, decays, data, w, xp):
    """sum_e A_e^H (W d_e y_e), A_e the time-segmented echo operators: for each segment l one adjoint
    NUFFT of the echoes as a batch (conj(b_el) W d_e y_e), summed with the voxel factors conj(e_el).

    Same value as ``sum_e _Scaled(A_e).adjoint(sqrt(W / dV) y_e)``, but the work array is one
    (n_echo, samples) batch per segment instead of (L, samples) per echo plus copies of the data."""
    nufft = tsos[0].nufft
    n_e = len(tsos)
    wd = xp.asarray(w)
    batch = xp.empty((n_e,) + tuple(nufft.kshape), dtype=nufft.dtype)
    out = xp.zeros(tuple(nufft.shape), dtype=nufft.dtype)
    for seg in range(max(a.n_segments for a in tsos)):
        echoes = [e for e, a in enumerate(tsos) if seg < a.n_segments]
        for i, e in enumerate(echoes):
            b, _ = tsos[e]._arrays(xp)
            fac = xp.conj(b[seg])  # per readout time
            if decays[e] is not None:
                fac = fac * xp.asarray(decays[e], dtype=fac.dtype)
            xp.multiply(data[e], wd, out=batch[i])
            batch[i] *= fac
        img = nufft.adjoint(batch[: len(echoes)] if len(echoes) < n_e else batch)
        for i, e in enumerate(echoes):
            _, ee = tsos[e]._arrays(xp)
            out += img[i] * xp.conj(ee[seg])
        del img
    return out


def decay_map(decay: str, echoes, te_s, fieldmap_hz=None, mask=None) -> dict:
    """The per-voxel map of an echo-ratio decay model from two echo images (echo, N0, N1, N2), as keyword arguments
    of :func:`reconstruct_iterative`: ``tissue_fraction`` (0..1, ``two-pool``) or ``r2star_hz`` (1/s, ``r2star-map``);
    {} for the other models. The field map's (Hz) intravoxel dephasing is divided out of the ratio inside ``mask``."""
    from recon.device import to_host

    if decay not in ("two-pool", "r2star-map"):
        return {}
    g = to_host(echoes)
    kw = {
        "fieldmap_hz": None if fieldmap_hz is None else np.asarray(to_host(fieldmap_hz), dtype=np.float64),
        "mask": None if mask is None else np.asarray(to_host(mask), bool),
    }
    te = [float(t) for t in te_s]
    if decay == "two-pool":
        return {"tissue_fraction": tissue_fraction_from_echoes(g[0], g[1], te[0], te[1], **kw)}
    return {"r2star_hz": r2star_from_echoes(g[0], g[1], te[0], te[1], **kw)}


def _kernel_key(nufft, *inputs) -> tuple:
    """What the Toeplitz kernels depend on, as a hashable key: the operator's identity and a digest of the arrays."""
    import hashlib

    from recon.device import to_host

    h = hashlib.blake2b(digest_size=16)
    for v in inputs:
        if v is None or isinstance(v, (str, int, float)):
            h.update(repr(v).encode())
        elif isinstance(v, (list, tuple)):
            h.update(repr(tuple(float(t) for t in v)).encode())
        else:
            a = np.ascontiguousarray(to_host(v))
            h.update(repr((a.shape, a.dtype.str)).encode())
            h.update(a.view(np.uint8).reshape(-1))
    return (id(nufft), tuple(nufft.shape), h.hexdigest())


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
    tissue_fraction: np.ndarray | None = None,
    regulariser: str = "gradient",
    lamda: float | None = None,
    max_iter: int = 30,
    tol: float = 1e-4,
    x0: np.ndarray | None = None,
    n_segments: int | None = None,
    mask: np.ndarray | None = None,
    callback=None,
    objective: bool = False,
    normal: str = "toeplitz",
    plans=None,
    progress: bool = True,
    gridded: np.ndarray | None = None,
    release_nufft: bool = False,
    window: str = "none",
    shared: dict | None = None,
) -> IterativeResult:
    """Joint least-squares reconstruction of all echoes sharing one image.

    Parameters
    ----------
    nufft : the plain :class:`recon.nufft.NUFFT` of the trajectory (plan reused).
    data : (n_echo, *nufft.kshape) k-space data in value * m^3 (coil-combined or single coil);
        numpy, or CuPy with a GPU NUFFT backend (the result is then on the device too).
    dcf : density weights (nufft.kshape) in 1/m^3 (the data weighting W).
    te_s : echo times in s; t_s : sample times from the first ADC sample in s.
    fieldmap_hz : off-resonance map in Hz (None: no B0 in the model).
    decay : one of :data:`DECAY_MODELS`; ``r2star-map`` uses ``r2star_hz`` or estimates it from a
        first (gridding) reconstruction of two echoes; ``two-pool`` estimates the tissue fraction
        from those (:func:`tissue_fraction_from_echoes`) unless ``tissue_fraction`` (0..1 per voxel)
        is given.
    regulariser, lamda : one of :data:`REGULARISERS` and its weight (dimensionless; None: the
        regulariser's default, :func:`recon.options.default_lamda`). ``tikhonov``/``gradient``:
        relative to the unit-curvature data term. ``tv``: the L1 term is lamda * s * ||D x||_1 with s
        the image scale :func:`tv_scale` of the warm start, so that lamda does not depend on the
        data's units (the solution is homogeneous of degree 1 in the data).
    max_iter, tol : iteration limit and relative-change tolerance (CG stops on its residual).
    x0 : warm start (default: the gridding image of echo 1, decay-compensated at TE1; a caller
        that has the gridding images passes them, saving one adjoint).
    callback : called as ``callback(iteration, x, objective)`` after each iteration (objective is
        None unless ``objective=True``).
    objective : compute the objective after every iteration (costs one forward per echo).
    normal : ``toeplitz`` (default) or ``nufft``: how A'^H A' is applied in CG (module docstring).
    plans : plan factory (:mod:`recon.plans`) for the Toeplitz kernel NUFFT.
    progress : report progress (INFO log lines, or a tqdm bar on a terminal).
    gridded : the plain gridding images of the echoes (n_echo, N0, N1, N2) when the caller has
        them (the pipeline does): used for the R2* estimate and the warm start instead of
        gridding again (saves three adjoint NUFFTs).
    release_nufft : free ``nufft``'s plans and points (:meth:`recon.nufft.NUFFT.release`; the next
        transform rebuilds them) once the right-hand side is computed, before the Toeplitz kernels
        are built, where nothing else transforms through it (Toeplitz CG without the objective):
        ~130 MB less at the solver's peak at the 64^3 protocol. For a caller that owns the operator
        (no plan cache keeps it for another scan).
    window : target point response of the result, one of :data:`recon.window.WINDOWS`: the solution
        (and so the echoes) seen through that radial k-space window up to the trajectory's largest
        radius (:func:`recon.window.apodize`); ``none`` keeps the sharp k-ball of the deconvolved
        solution, whose ringing at a sphere's centre does not fade (:mod:`recon.window`); ``tube-decay``
        the weighting exp(-t(|k|) / T2*_tube) of this trajectory's readout, the response tubes have
        under gridding.
    shared : a dict the caller keeps across the calls of one scan (its coils): the Toeplitz kernels built
        by the first call are kept in it and reused by a later call whose kernel inputs (trajectory
        operator, weights, sample times, echo times, field map, decay model and its map, segments,
        mask) are the same, which a digest of those inputs checks; otherwise they are rebuilt.
    """
    from recon.b0.operator import TimeSegmentedOperator, sample_times
    from recon.device import get_array_module, is_device_array, to_host
    from recon.nufft import gridding

    if decay not in DECAY_MODELS:
        raise InputError(f"decay model must be one of {DECAY_MODELS}, got {decay!r}")
    if regulariser not in REGULARISERS:
        raise InputError(f"regulariser must be one of {REGULARISERS}, got {regulariser!r}")
    if normal not in ("toeplitz", "nufft"):
        raise InputError(f"normal operator must be 'toeplitz' or 'nufft', got {normal!r}")
    lamda = default_lamda(regulariser) if lamda is None else float(lamda)
    if not (np.isfinite(lamda) and lamda >= 0):
        raise InputError(f"regularisation weight lamda must be a finite number >= 0, got {lamda!r}")
    # the trajectory's radius before any work (and before the operator may be released)
    kmax = check_kmax(max_radius(nufft.k)) if check_window(window) != "none" else None
    readout = readout_profile(nufft.k, t_s, kmax) if window in TRAJECTORY_WINDOWS else None
    xp = get_array_module(data)
    if not is_device_array(data):
        data = np.asarray(data)
    te = [float(t) for t in np.atleast_1d(te_s)]
    if tuple(data.shape) != (len(te),) + tuple(nufft.kshape):
        raise InputError(f"data must be (n_echo={len(te)}, {', '.join(map(str, nufft.kshape))}), got {tuple(data.shape)}")
    if not bool(xp.all(xp.isfinite(data))):
        raise InputError("k-space data contain NaN or infinite values")
    _release_free_heap()
    shape = nufft.shape
    dv = float(np.prod(np.asarray(nufft.fov) / np.asarray(shape)))
    real = np.float32 if nufft.dtype == np.complex64 else np.float64
    w = np.asarray(to_host(dcf))  # no copy of the caller's weights (float64 or float32)
    if w.dtype not in (np.float32, np.float64):
        w = w.astype(real)
    sample_times(nufft, t_s)  # checks the shape of t_s
    f = np.zeros(shape) if fieldmap_hz is None else np.asarray(to_host(fieldmap_hz), dtype=np.float64)

    frac = None if decay != "two-pool" or tissue_fraction is None else np.asarray(to_host(tissue_fraction), dtype=np.float64)
    if decay == "r2star-map" and r2star_hz is None or decay == "two-pool" and frac is None:
        if len(te) < 2:
            raise InputError(f"the {decay} decay model needs two echoes (or give r2star_hz)")
        g = to_host(gridded) if gridded is not None else to_host(gridding(nufft, data[:2], xp.asarray(w)))
        m = decay_map(decay, g, te, None if fieldmap_hz is None else f, mask)
        frac, r2star_hz = m.get("tissue_fraction", frac), m.get("r2star_hz", r2star_hz)
        del g
    r2 = None if decay != "r2star-map" else np.asarray(to_host(r2star_hz), dtype=np.float64)

    segments, terms, tsos, decays = [], [], [], []
    for te_e in te:
        a = TimeSegmentedOperator(nufft, t_s, f, te_s=te_e, r2star_hz=r2, n_segments=n_segments, mask=mask, tissue_fraction=frac)
        segments.append(a.n_segments)
        d = _sample_decay(decay, te_e + a.t_compact_s)  # None or the decay in b's (readout-time) layout
        tsos.append(a)
        decays.append(d)
        # kernel weights W x (dV |d|^2): W per sample shared by the echoes, the rest per readout time
        terms.append(a.toeplitz_term(np.asarray(dv) if d is None else dv * d**2))
    need_ops = objective or normal == "nufft"
    ops = []
    if need_ops:
        sqrt_base = np.sqrt(w * dv).astype(real)
        ops = [_Scaled(a, sqrt_base if d is None else sqrt_base * d.astype(real)) for a, d in zip(tsos, decays)]
        sqrt_wdv = xp.asarray(np.sqrt(w / dv).astype(real))
        # y'_e = sqrt(W / dV) y_e is only kept when the objective is asked for
        y = [sqrt_wdv * data[e] for e in range(len(te))] if objective else None
    else:
        y = None

    if x0 is None:
        x0 = to_host(gridded[0]) if gridded is not None else to_host(gridding(nufft, data[0], xp.asarray(w)))
        comp = np.exp(2j * np.pi * f * te[0])  # undo the TE1 phase so the start matches x(t=0)
        if r2 is not None:
            comp = comp * np.exp(r2 * te[0])
        if frac is not None:
            comp = comp / two_pool_decay(te[0], frac)
        x0 = x0 * comp
    x = xp.array(xp.asarray(x0), dtype=nufft.dtype, copy=True)

    residuals: list = []
    history: list = []

    def data_objective(xv):
        val = 0.0
        for op, ye in zip(ops, y):  # only called with objective=True (y kept)
            r = op.forward(xv) - ye
            val += float(xp.vdot(r, r).real)
        if regulariser == "tikhonov":
            val += lamda * float(xp.vdot(xv, xv).real)
        elif regulariser == "gradient":
            val += lamda * _gradient_sq(xv, xp)
        elif regulariser == "tv":
            val += tv_weight * float(xp.abs(_diff(xv, xp)).sum())
        return val

    tv_s = tv_weight = None
    if regulariser == "tv":
        tv_s = tv_scale(x)
        tv_weight = lamda * tv_s
    # A'^H y' = sum_e A_e^H (W d_e y_e) first (before the kernels exist), one segment at a time
    rhs = _rhs(tsos, decays, data, w, xp)
    if release_nufft and normal == "toeplitz" and not objective:
        getattr(nufft, "release", lambda: None)()  # its sorted points and fine grids go before the 2N-grid kernel plan is made
    if normal == "toeplitz":
        from recon.b0.toeplitz import ToeplitzNormal

        key = _kernel_key(nufft, w, t_s, te, f, decay, frac, r2, n_segments, mask)
        tn = shared.get("toeplitz") if shared is not None and shared.get("toeplitz_key") == key else None
        if tn is None:
            tn = ToeplitzNormal(nufft, terms, plans=plans, base_weights=w)
            if shared is not None:
                shared.update(toeplitz=tn, toeplitz_key=key)
        else:
            log.debug("iterative: Toeplitz kernels reused")
        log.debug("iterative: %r", tn)
        data_normal = tn.normal
    else:

        def data_normal(v):
            return sum(op.adjoint(op.forward(v)) for op in ops)

    del terms
    lam = lamda if regulariser in ("tikhonov", "gradient") else 0.0

    def normal_op(v):
        out = data_normal(v)
        if lam > 0:
            out += lam * (v if regulariser == "tikhonov" else _gradient_normal(v, xp))
        return out

    if regulariser == "tv":
        alg = _ADMMTV(data_normal, rhs, x, tv_weight, TV_RHO, max_iter, TV_INNER)
    else:
        alg = _CG(normal_op, rhs, x, max_iter)
    r0 = getattr(alg, "resid", None) or 1.0
    # drive the solver one iteration at a time for progress, callbacks and our stopping rule
    bar = _Progress(max_iter) if progress else None
    it = 0
    x_prev = alg.x.copy()
    try:
        while not alg.done():
            alg.update()
            it += 1
            xv = alg.x
            obj = data_objective(xv) if objective else None
            if obj is not None:
                history.append(obj)
            res_rel = float(alg.resid) / r0 if hasattr(alg, "resid") else alg.primal
            residuals.append(res_rel)
            change = float(xp.linalg.norm(xv - x_prev) / max(float(xp.linalg.norm(xv)), 1e-30))
            log.debug("iteration %d: residual %.3g, relative change %.3g", it, res_rel, change)
            if bar is not None:
                bar.update(it, res_rel)
            if callback is not None:
                callback(it, xv, obj)
            x_prev = xv.copy()
            if change < tol:
                break
    finally:
        if bar is not None:
            bar.close()
    x = alg.x
    if window != "none":
        x = apodize(x, window, nufft.fov, kmax, readout)
        if readout is not None:
            log.info(
                "target point response %s (k_max %.1f cycles/m, readout %.1f ms to k_max): every compartment has the "
                "response the tubes have under gridding (recon.window)",
                window,
                kmax,
                1e3 * float(readout[-1]),
            )
        else:
            log.info(
                "target point response %s (k_max %.1f cycles/m): the centre of objects of radius >= 2 voxels (%.1f mm) is "
                "recovered; smaller ones are blurred (recon.window)",
                window,
                kmax,
                1e3 / kmax,  # 2 voxels of 1 / (2 k_max)
            )
    alg = tn = data_normal = None  # the kernels and solver work arrays go before the heap is trimmed
    _release_free_heap()
    z = xp.asarray(2j * np.pi * f + (0 if r2 is None else r2))
    echoes = xp.stack([x * xp.exp(-z * te_e) for te_e in te])
    if frac is not None:
        echoes = echoes * xp.asarray(np.stack([two_pool_decay(te_e, frac) for te_e in te]).astype(real))
    if decay == "tissue":
        echoes = echoes * xp.asarray([_sample_decay("tissue", np.array([te_e]))[0] for te_e in te])[:, None, None, None]
    log.info(
        "iterative reconstruction: %d iterations (%s normal operator), %s %s",
        it,
        normal,
        "ADMM primal residual" if regulariser == "tv" else "relative residual",
        f"{residuals[-1]:.3g}" if residuals else "n/a",
    )
    return IterativeResult(
        x=x,
        echoes=echoes,
        r2star_hz=r2,
        objective=history,
        iterations=it,
        settings={
            "decay": decay,
            "regulariser": regulariser,
            "lamda": lamda,
            "max_iter": max_iter,
            "tol": tol,
            "segments": segments,
            "normal": normal,
            "tv_scale": tv_s,
            "tv_weight": tv_weight,
            "window": window,
        },
        residual=residuals,
        tissue_fraction=frac,
    )
