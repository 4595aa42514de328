"""NUFFT operator front end, backend registry (with the abstract backend base) and gridding reconstruction."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from recon.errors import BackendUnavailableError, InputError, TrajectoryError
from recon.linop import LinearOperator
from recon.options import DEFAULT_EPS  # defined with the run options (importing them needs no numpy)

log = logging.getLogger(__name__)

BACKENDS: dict[str, type] = {}
"""Registered backend classes by name."""

# modules that register further backends when imported (lazily: importing recon never needs them)
_LAZY_BACKENDS = {
    "finufft": "recon.nufft.finufft_backend",
    "cupy": "recon.nufft.cupy_backend",
    "cufinufft": "recon.nufft.cufinufft_backend",
    "cuda-host": "recon.nufft.cupy_backend",  # the CUDA kernels compiled for the CPU (testing)
}
_DEVICE_DEFAULT = {"cpu": "finufft", "gpu": "cupy"}
DEVICES = tuple(_DEVICE_DEFAULT)
"""Devices a NUFFT can run on (each with its default backend)."""


class NufftBackend(ABC):
    """Abstract NUFFT backend: planned once for ``n_trans`` simultaneous transforms of one trajectory.

    Constructed by :class:`NUFFT` (never by callers) as ``cls(points, shape, n_trans, eps, dtype,
    **options)``. ``points`` depends on the class attribute ``point_input``:

    * ``"radians"``: a tuple of three contiguous arrays x_d = 2 pi k_d fov_d / N_d (M,) in the real
      dtype of ``dtype`` (float32 for complex64), in [-3 pi, 3 pi]: what finufft takes (no copy);
    * ``"k_grid"`` (default): one (M, 3) float64 array k * fov in cycles per FOV.

    Inputs are already shape-checked by :class:`NUFFT` (the operator contract): ``forward(x)``
    gets (n_trans, *shape) and returns (n_trans, M); ``adjoint(y)`` the reverse. Arrays may be
    numpy or, for GPU backends, CuPy (device in, device out). ``available()`` returns None when
    the backend can run here, else the reason it cannot.
    """

    backend_name: str = ""
    point_input: str = "k_grid"

    @classmethod
    @abstractmethod
    def available(cls) -> str | None: ...

    @abstractmethod
    def forward(self, x): ...

    @abstractmethod
    def adjoint(self, y): ...


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: register a :class:`NufftBackend` subclass under ``name``."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, NufftBackend)):
            raise TypeError(f"NUFFT backend {name!r} must subclass recon.nufft.operator.NufftBackend")
        BACKENDS[name] = cls
        cls.backend_name = name
        return cls

    return deco


def _load_backend(name: str) -> type:
    if name not in BACKENDS:
        mod = _LAZY_BACKENDS.get(name)
        if mod is None:
            raise InputError(f"unknown NUFFT backend {name!r}; known: {sorted(_LAZY_BACKENDS)}")
        try:
            importlib.import_module(mod)
        except ImportError as e:
            raise BackendUnavailableError(f"NUFFT backend {name!r} cannot be loaded: {e}") from e
    cls = BACKENDS[name]
    reason = cls.available()
    if reason is not None:
        raise BackendUnavailableError(f"NUFFT backend {name!r} is not available: {reason}")
    return cls


def available_backends() -> dict[str, str | None]:
    """Map every known backend name to None (usable here) or the reason it is not."""
    out: dict[str, str | None] = {}
    for name in _LAZY_BACKENDS:
        try:
            _load_backend(name)
            out[name] = None
        except BackendUnavailableError as e:
            out[name] = e.message
    return out


def default_threads() -> int:
    """CPU threads this process may use (affinity-aware)."""
    from recon.util import available_cpus

    return available_cpus()


def _check_eps(eps: float) -> float:
    """The requested relative accuracy, validated (1e-15 < eps < 0.1)."""
    if not (1e-15 < eps < 1e-1):
        raise InputError(f"eps must be in (1e-15, 0.1), got {eps}")
    return float(eps)


POINTS_FORMAT = 1
"""Version of :func:`make_points`' output (bump when its arithmetic changes: stored points are then remade)."""


@dataclasses.dataclass(frozen=True, eq=False)
class NufftPoints:
    """The backend points of one trajectory on one grid, made once and checked.

    ``x``: three (M,) contiguous arrays x_d = 2 pi k_d fov_d / N_d in radians, in the real dtype
    (float32 for complex64); ``shape``: the grid (N0, N1, N2); ``fov_m``: the FOV in m per axis;
    ``lo`` / ``hi``: the per-axis minimum and maximum of ``x`` (radians), from which the extent check
    is repeated without a pass over the points. Made by :func:`make_points`; a trajectory design in the
    disk cache stores them (:mod:`recon.trajectory.design_cache`), so that a run's NUFFT set-up is
    finufft's own plan + setpts on them (``NUFFT(..., points=)``).
    """

    x: tuple[np.ndarray, np.ndarray, np.ndarray]
    shape: tuple[int, int, int]
    fov_m: tuple[float, float, float]
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @property
    def dtype(self) -> np.dtype:
        return self.x[0].dtype

    @property
    def n_samples(self) -> int:
        return int(self.x[0].shape[0])

    def fits(self, shape: Sequence[int], fov_m: Sequence[float], real_dtype, n_samples: int) -> bool:
        """Whether these are the points of a NUFFT with this grid, FOV (m), real dtype and sample count."""
        return (
            tuple(int(s) for s in shape) == tuple(self.shape)
            and tuple(float(f) for f in fov_m) == tuple(self.fov_m)
            and np.dtype(real_dtype) == self.dtype
            and int(n_samples) == self.n_samples
            and all(a.ndim == 1 and a.flags.c_contiguous and a.dtype == self.dtype for a in self.x)
        )


def _real_dtype(dtype) -> type:
    return np.float32 if np.dtype(dtype) == np.complex64 else np.float64


def _check_extent(lo, hi, shape) -> None:
    """Raise TrajectoryError unless the points are finite and within 1.5 x the grid (cycles per FOV)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):  # min/max propagate NaN
        raise TrajectoryError("k contains NaN or infinite values")
    kext = np.maximum(np.abs(lo), np.abs(hi)) * np.asarray(shape) / (2 * np.pi)  # cycles per FOV
    if np.any(kext > np.asarray(shape) * 1.5 * (1 + 1e-6)):
        raise TrajectoryError(
            f"k extends to {kext.round(1).tolist()} cycles/FOV, beyond "
            f"1.5 x the grid {list(shape)}: check the units of k (cycles/m) and the FOV (m)"
        )


def make_points(k: np.ndarray, shape: Sequence[int], fov_m: float | Sequence[float], dtype=np.complex64) -> NufftPoints:
    """The backend points of sample positions ``k`` (..., 3) in cycles/m on a grid ``shape`` with FOV ``fov_m`` (m).

    x_d = 2 pi k_d fov_d / N_d into the real dtype of ``dtype``, checked on the result (finite, within
    1.5 x the grid: :class:`~recon.errors.TrajectoryError` otherwise). k is read once per block of
    32768 samples for all three axes (the block in cache), the blocks in two contiguous spans on two
    threads; bit-identical to one multiply per axis.
    """
    shape = tuple(int(s) for s in shape)
    fov_a = np.broadcast_to(np.asarray(fov_m, dtype=np.float64), (3,))
    real = _real_dtype(dtype)
    k = np.asarray(k)
    n = int(np.prod(k.shape[:-1]))
    kf = k.reshape(n, 3)
    pts = [np.empty(n, dtype=real) for _ in range(3)]
    scale = [2 * np.pi * fov_a[d] / shape[d] for d in range(3)]
    step = 1 << 15  # 32768 samples: 0.8 MB of k per block, read once (from cache) for all three axes

    def blocks(span: tuple[int, int]) -> list[tuple[list[float], list[float]]]:
        out = []
        for i in range(span[0], span[1], step):
            kb = kf[i : min(i + step, span[1])]
            lo, hi = [], []
            for d in range(3):
                o = pts[d][i : i + len(kb)]
                np.multiply(kb[:, d], scale[d], out=o, casting="unsafe")
                lo.append(float(o.min()))
                hi.append(float(o.max()))
            out.append((lo, hi))
        return out

    workers = min(2, default_threads()) if n >= 4 * step else 1
    # one contiguous span of blocks per worker (two tasks, not one per block: the pool's
    # per-task cost was ~15 ms over the 150 blocks of the 64^3 protocol)
    cuts = [round(n * w / workers / step) * step for w in range(workers)] + [n]
    spans = [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    if len(spans) > 1:  # numpy's ufuncs release the GIL: the spans convert in parallel
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(spans), thread_name_prefix="narecon-points") as pool:
            res = [r for part in pool.map(blocks, spans) for r in part]
    else:
        res = [r for sp in spans for r in blocks(sp)]
    if res:
        lo = np.min(np.array([r[0] for r in res], dtype=np.float64), axis=0)  # NaN propagates
        hi = np.max(np.array([r[1] for r in res], dtype=np.float64), axis=0)
    else:
        lo = hi = np.zeros(3)
    _check_extent(lo, hi, shape)
    return NufftPoints(x=tuple(pts), shape=shape, fov_m=tuple(fov_a.tolist()), lo=tuple(lo.tolist()), hi=tuple(hi.tolist()))


class SharedPlan:
    """One backend plan per setting, re-pointed between operators that are used one after another.

    Operators over subsets of one trajectory (the readout-time bins of tb-cpr: same grid, accuracy,
    dtype and options) need not hold a plan each: a plan's set-up (finufft: the fine grid, its FFT
    plan; 25-30 ms at the 64^3 protocol) is paid once, and each operator's points are set on it
    (``setpts``: the sort) when its turn comes. Only for backends with ``setpts`` taking radians
    (finufft); others keep a plan per operator. Not thread-safe (one user at a time).
    """

    def __init__(self) -> None:
        self._plans: dict[tuple, list] = {}

    def plan(self, op: NUFFT, n_trans: int):
        """The backend plan for ``op`` with ``n_trans`` transforms, its points set to ``op``'s."""
        key = (n_trans, op.shape, op.eps, op.dtype.str, op.backend_name, tuple(sorted((k, repr(v)) for k, v in op.options.items())))
        hit = self._plans.get(key)
        if hit is None:
            p = op._cls(op.points(), op.shape, n_trans, op.eps, op.dtype, **op.options)
            self._plans[key] = [p, op]
            return p
        p, owner = hit
        if owner is not op:
            p.setpts(op.points())
            hit[1] = op
        return p


class NUFFT(LinearOperator):
    """3D type-1/type-2 NUFFT between an image grid and non-uniform k-space samples.

    Parameters
    ----------
    k : (..., 3) float array of sample positions in cycles/m.
    shape : image matrix (N0, N1, N2).
    fov : field of view in m, a scalar or one value per axis.
    backend : registered backend name (``finufft`` on the CPU; ``cupy``, ``cufinufft`` on a GPU);
        ``None`` picks the default for ``device``.
    device : ``cpu`` or ``gpu`` (used when ``backend`` is None).
    eps : requested relative accuracy (default :data:`DEFAULT_EPS`, 1e-4).
    dtype : complex64 (default) or complex128.
    points : optional :class:`NufftPoints` made beforehand from this ``k`` (:func:`make_points`, e.g.
        stored with a cached trajectory design): used without converting k when they fit the grid,
        FOV, dtype and sample count, else ignored. The caller vouches that they are ``k``'s.
    options : passed to the backend (e.g. ``n_threads``, ``upsampfac``).

    The operator is planned once per number of simultaneous transforms and reused; a batch
    ``(n, *shape)`` (echoes, coils, frequency segments) is transformed in one call. It follows
    :class:`recon.linop.LinearOperator` (ishape = shape, oshape = k.shape[:-1]); GPU backends
    take and return CuPy arrays without host copies.

    Set-up cost: the sample positions are converted once, block by block, to the points
    the backend takes (float32 radians for finufft with complex64), and checked (finite, within
    1.5 x the grid) on those points; with ``points`` given, no conversion (finufft's own plan +
    setpts); measured in benchmarks/README.md ("NUFFT set-up").
    """

    def __init__(
        self,
        k: np.ndarray,
        shape: Sequence[int],
        fov: float | Sequence[float],
        backend: str | None = None,
        device: str = "cpu",
        eps: float | None = None,
        dtype=np.complex64,
        points: NufftPoints | None = None,
        **options,
    ):
        k = np.asarray(k)
        if k.ndim < 1 or k.shape[-1] != 3:
            raise TrajectoryError(f"k must have shape (..., 3), got {k.shape}")
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise InputError(f"image shape must be 3 positive integers, got {shape}")
        fov_a = np.broadcast_to(np.asarray(fov, dtype=np.float64), (3,)).copy()
        if np.any(fov_a <= 0):
            raise InputError(f"fov must be positive (m), got {fov}")
        self.fov = tuple(fov_a.tolist())
        self.eps = _check_eps(DEFAULT_EPS if eps is None else eps)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.complex64, np.complex128):
            raise InputError(f"dtype must be complex64 or complex128, got {self.dtype}")
        if device not in _DEVICE_DEFAULT:
            raise InputError(f"device must be 'cpu' or 'gpu', got {device!r}")
        self.device = device
        self.backend_name = backend or _DEVICE_DEFAULT[device]
        self._cls = _load_backend(self.backend_name)
        self.kshape = tuple(k.shape[:-1])
        self.ishape, self.oshape = self.shape, self.kshape
        # keep a reference to the caller's k (no copy); the backend points are made once here, or
        # taken as given when they were made for this grid, FOV and dtype (their extent re-checked)
        self._k = k
        self._fov_a = fov_a
        if points is not None and points.fits(self.shape, self.fov, _real_dtype(self.dtype), int(np.prod(self.kshape))):
            _check_extent(points.lo, points.hi, self.shape)
            self._pts: tuple[np.ndarray, ...] | None = tuple(points.x)
            self.points_source = "given"
        else:
            if points is not None:
                log.debug(
                    "NUFFT points given for %s / %s m / %s do not fit: converting k", points.shape, points.fov_m, points.dtype
                )
            self._pts = make_points(k, self.shape, self.fov, self.dtype).x
            self.points_source = "converted"
        self.options = options
        self._plans: dict[int, object] = {}
        self._shared: SharedPlan | None = None  # set by subset(): transforms through a shared plan

    def release(self) -> None:
        """Free the backend plans and the converted points (finufft's sort arrays and fine grids, the
        float32 points: about 130 MB for the 64^3 protocol); the next transform rebuilds them.

        The pipeline calls this once a run's last transform through this operator is done (only
        for operators no plan cache keeps for the next scan)."""
        self._plans.clear()
        self._pts = None

    def subset(self, index: tuple, eps: float | None = None, shared: SharedPlan | None = None, **options) -> NUFFT:
        """The NUFFT over the samples ``k[index]`` (``index`` into ``kshape``, e.g. ``(slice(None), cols)``).

        Shares this operator's grid, FOV, backend and dtype, and takes its points from this
        operator's converted (and checked) points: no second conversion of k or check. ``eps``
        (default: this operator's) and ``options`` (default: this operator's) set the subset's plan.
        ``shared``: a :class:`SharedPlan` the subset's transforms go through (one backend plan for
        many subsets used one after another). Bit-identical to ``NUFFT(k[index], ...)`` with the same
        settings.
        """
        import copy

        sub = copy.copy(self)
        sub._k = self._k[index]
        sub.kshape = tuple(sub._k.shape[:-1])
        sub.oshape = sub.kshape
        full = self.points()
        sub._pts = tuple(np.ascontiguousarray(p.reshape(self.kshape)[index]).reshape(-1) for p in full)
        if eps is not None:
            sub.eps = _check_eps(eps)
        sub.options = dict(self.options) if not options else options
        sub._plans = {}
        sub._shared = shared
        return sub

    def points(self) -> tuple[np.ndarray, ...]:
        """The backend's points x_d = 2 pi k_d fov_d / N_d (three (M,) arrays, float32 for complex64)."""
        if self._pts is None:
            self._pts = make_points(self._k, self.shape, self.fov, self.dtype).x
        return self._pts

    @property
    def k(self) -> np.ndarray:
        """Sample positions (..., 3) in cycles/m, as given."""
        return self._k

    def _k_grid(self) -> np.ndarray:
        """Sample positions (M, 3) in cycles per FOV: mode index j - floor(N/2) pairs with k * fov."""
        return self._k.reshape(-1, 3).astype(np.float64) * self._fov_a[None, :]

    @property
    def n_samples(self) -> int:
        return int(np.prod(self.kshape))

    def subset_options(self, eps: float | None = None, n_points: int | None = None, n_executes: int = 1) -> dict:
        """Backend options for a NUFFT over a subset of these samples.

        ``eps``: the accuracy the subset plans will request (default: this operator's);
        ``n_points``: the subset's sample count, for which the backend chooses its settings (e.g.
        finufft's upsampling factor); default: all samples, i.e. the same spreading kernel as this
        operator. ``n_executes``: how often one plan with these options will be executed (e.g. the
        bins sharing a :class:`SharedPlan`; finufft then may plan its FFT with FFTW_MEASURE). Options
        the caller gave the operator are kept as given.
        """
        hook = getattr(self._cls, "subset_options", None)
        tol = self.eps if eps is None else float(eps)
        n = self.n_samples if n_points is None else int(n_points)
        if not hook:
            return dict(self.options)
        return hook(n, self.shape, dict(self.options), tol, n_executes=int(n_executes))

    def _plan(self, n_trans: int):
        if self._shared is not None and hasattr(self._cls, "setpts") and self._cls.point_input == "radians":
            return self._shared.plan(self, n_trans)
        p = self._plans.get(n_trans)
        if p is None:
            pts = self.points() if self._cls.point_input == "radians" else self._k_grid()
            p = self._cls(pts, self.shape, n_trans, self.eps, self.dtype, **self.options)
            self._plans[n_trans] = p
        return p

    def _forward(self, image, lead):
        """Image (..., N0, N1, N2) -> k-space data (..., *k.shape[:-1])."""
        n = int(np.prod(lead)) if lead else 1
        out = self._plan(n).forward(image.reshape((n,) + self.shape))
        return out.reshape(lead + self.kshape)

    def _adjoint(self, data, lead):
        """k-space data (..., *k.shape[:-1]) -> image (..., N0, N1, N2)."""
        n = int(np.prod(lead)) if lead else 1
        out = self._plan(n).adjoint(data.reshape((n, self.n_samples)))
        return out.reshape(lead + self.shape)

    def __repr__(self) -> str:
        return (
            f"NUFFT(backend={self.backend_name!r}, shape={self.shape}, fov_m={self.fov}, "
            f"samples={self.kshape}, eps={self.eps:g}, dtype={self.dtype.name})"
        )


def gridding(op: NUFFT, data, dcf) -> np.ndarray:
    """Density-compensated adjoint: x_j = sum_m w_m y_m exp(+i 2 pi k_m . r_j).

    With ``dcf`` in 1/m^3 (the k-space volume per sample) and data in value * m^3 (a physical
    Fourier transform of the object), a uniform object of value c reconstructs to c.
    ``data`` may have leading batch axes; ``dcf`` has the shape of one batch item.
    """
    from recon.device import get_array_module

    xp = get_array_module(data)
    w = xp.asarray(dcf)
    if tuple(w.shape) != tuple(op.kshape):
        raise InputError(f"density weights have shape {tuple(w.shape)}, data samples {op.kshape}")
    return op.adjoint(data * w.astype(np.float32 if op.dtype == np.complex64 else np.float64))
