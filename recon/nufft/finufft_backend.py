"""CPU backend: FINUFFT (Flatiron Institute) plans, kept and reused per trajectory.

Upsampling choice (``upsampfac="auto"``, the default; :func:`choose_upsampfac`), measured with
benchmarks/finufft_upsampfac.py on the study protocol's 4.85 M samples (benchmarks/README.md):
2.0 (narrow kernel, 8x the FFT size) wins only while the fine grid is small and the problem
dense: at 64^3 (18.5 samples per voxel, fine grid 128^3) and eps 1e-4 it is 1.4-2x faster than
1.25 and than finufft's default. On a 128^3 grid (2.3 samples per voxel, fine grid 256^3) the
FFT dominates and 1.25 is 1.6-2.8x faster than 2.0 and 1.45-2.5x faster than finufft's default;
at eps 1e-6 the 2.0 kernel is wide too and 1.25 wins even at 64^3. Very sparse problems keep
finufft's own choice; below eps 1e-8 only 2.0 reaches the accuracy.
"""

from __future__ import annotations

import numpy as np

from recon.nufft.operator import NufftBackend, default_threads, register_backend

DENSE_SAMPLES_PER_VOXEL = 4.0
"""Samples per image voxel above which the 2.0 kernel can pay for its 8x FFT."""
SMALL_FINE_GRID = 2**22
"""Largest fine grid (points) of upsampling 2.0 where its FFT stays cheap (128^3 at 2x 64^3 -> 2^21)."""
SPARSE_SAMPLES_PER_VOXEL = 0.5
FFTW_ESTIMATE, FFTW_MEASURE = 64, 0
"""FFTW planner flags as finufft's ``fftw`` option takes them (finufft's default is ESTIMATE)."""
MEASURE_FINE_POINTS = 3_000_000
"""Fine grids (points) from which a plan executed many times is planned with FFTW_MEASURE (160^3 is
4.1 M; 128^3, measured not to pay, is 2.1 M)."""
MEASURE_MIN_EXECUTES = 12
"""Executes of one plan from which FFTW_MEASURE pays for its planning (see :func:`choose_fftw`)."""


def choose_upsampfac(n_points: int, shape, eps: float | None = None) -> float | None:
    """Upsampling factor for a problem (None: let FINUFFT choose); the rule of the module docstring.

    ``eps`` is the requested accuracy (None: treated as 1e-4, the pipeline's default).
    """
    n_vox = int(np.prod(shape))
    density = n_points / max(n_vox, 1)
    tol = 1e-4 if eps is None else float(eps)
    if tol < 1e-8:  # 1.25 cannot reach it (finufft warns); only 2.0 can
        return 2.0
    if density < SPARSE_SAMPLES_PER_VOXEL:
        return None
    if density >= DENSE_SAMPLES_PER_VOXEL and 8 * n_vox <= SMALL_FINE_GRID and tol >= 1e-5:
        return 2.0
    return 1.25


def fine_grid_points(shape, upsampfac: float | None) -> int:
    """Approximate points of finufft's fine grid for ``shape`` at ``upsampfac`` (None: finufft's choice, taken as 2.0)."""
    s = 2.0 if upsampfac is None else float(upsampfac)
    return int(np.prod([max(int(np.ceil(s * n)), 2) for n in shape]))


def choose_fftw(shape, upsampfac: float | None, n_executes: int) -> int | None:
    """The FFTW planner flag for a plan executed ``n_executes`` times (None: finufft's default, ESTIMATE).

    FFTW_MEASURE times candidate FFTs while planning, once per size and process (FFTW keeps its
    wisdom in the process; finufft's bundled FFTW exports no wisdom functions, so it cannot be kept
    across runs). Measured on the time bins of tb-cpr (2 threads, both echoes per execute,
    benchmarks/README.md): on the 160^3 fine grid of a 128^3 recon a bin's execute takes 0.22-0.30 s
    instead of 0.34-0.44 s, for 1.3 s of planning, so the 24 bins of the 128^3 protocol gain ~1.6 s;
    on the 80^3 grid of 64^3 at upsampling 1.25 a bin gains ~0.015 s for 0.47 s of planning, and on
    the 128^3 grid of 64^3 at 2.0 ~0.02 s for 1.5 s (losses for 12 bins). Hence MEASURE only for fine
    grids of at least :data:`MEASURE_FINE_POINTS` points executed at least
    :data:`MEASURE_MIN_EXECUTES` times; other sizes keep ESTIMATE until measured. The plans differ
    only in float rounding (FFTW's choice of algorithm), not in accuracy.
    """
    if n_executes >= MEASURE_MIN_EXECUTES and fine_grid_points(shape, upsampfac) >= MEASURE_FINE_POINTS:
        return FFTW_MEASURE
    return None


def choose_threads(n_points: int, n_trans: int) -> int:
    """CPU threads for a problem: 1 for small ones (OpenMP start-up and, on a busy machine,
    oversubscription cost more than the work: measured 7x slower with 2 threads for 1500
    points x 16 transforms on a shared 2-core machine), else all the process may use."""
    if n_points * max(n_trans, 1) < 200_000:
        return 1
    return default_threads()


@register_backend("finufft")
class FinufftBackend(NufftBackend):
    """FINUFFT type 2 (forward, isign -1) and type 1 (adjoint, isign +1) with modeord 0.

    Takes the operator's points (float32 radians for complex64) as they are: finufft keeps
    references to them, no copy.
    """

    point_input = "radians"

    @classmethod
    def subset_options(cls, n_points: int, shape, options: dict, eps: float | None = None, n_executes: int = 1) -> dict:
        """Options for a plan over a subset of ``n_points`` samples that keeps their upsampling factor;
        ``n_executes``: how often the plan will be executed (:func:`choose_fftw` picks the FFTW planner)."""
        if "upsampfac" not in options:
            options = {**options, "upsampfac": choose_upsampfac(n_points, shape, eps) or "auto"}
        if "fftw" not in options:
            uf = options["upsampfac"]
            flag = choose_fftw(shape, None if uf == "auto" else uf, n_executes)
            if flag is not None:
                options = {**options, "fftw": flag}
        return options

    @classmethod
    def available(cls) -> str | None:
        try:
            import finufft  # noqa: F401
        except ImportError as e:  # pragma: no cover - core dependency
            return f"finufft is not installed ({e})"
        return None

    def __init__(self, points, shape, n_trans, eps, dtype, n_threads=None, upsampfac="auto", **opts):
        import finufft

        self.shape = tuple(shape)
        self.n_trans = n_trans
        self.dtype = np.dtype(dtype)
        # x = 2 pi k fov / N maps the mode index (j - floor(N/2)) to exp(-+ i 2 pi k r_j)
        pts = list(points)
        m = len(pts[0])
        kw = dict(nthreads=n_threads or choose_threads(m, n_trans), modeord=0)
        if upsampfac == "auto":
            upsampfac = choose_upsampfac(m, shape, eps)
        if upsampfac is not None:
            kw["upsampfac"] = float(upsampfac)
        kw.update(opts)
        self.upsampfac = upsampfac
        eps_eff = max(eps, 1e-6 if self.dtype == np.complex64 else 1e-14)
        # one plan serves both directions where finufft has execute_adjoint (>= 2.5): the sorted
        # points and spreading set-up are held once (peak memory ~1.2x a bare finufft plan)
        self._fwd = finufft.Plan(2, self.shape, n_trans, eps_eff, -1, dtype=self.dtype.name, **kw)
        self._fwd.setpts(*pts)
        if hasattr(self._fwd, "execute_adjoint"):
            self._adj = None
        else:  # pragma: no cover - finufft < 2.5
            self._adj = finufft.Plan(1, self.shape, n_trans, eps_eff, +1, dtype=self.dtype.name, **kw)
            self._adj.setpts(*pts)

    def setpts(self, points) -> None:
        """Set new points (three (M,) arrays, as at construction) on this plan: its fine grid and FFT
        plan are kept (:class:`recon.nufft.operator.SharedPlan`)."""
        pts = list(points)
        self._fwd.setpts(*pts)
        if self._adj is not None:  # pragma: no cover - finufft < 2.5
            self._adj.setpts(*pts)

    def forward(self, x):
        x = np.ascontiguousarray(x, dtype=self.dtype)
        return self._fwd.execute(x if self.n_trans > 1 else x[0]).reshape(self.n_trans, -1)

    def adjoint(self, y):
        y = np.ascontiguousarray(y, dtype=self.dtype)
        src = y if self.n_trans > 1 else y[0]
        out = self._fwd.execute_adjoint(src) if self._adj is None else self._adj.execute(src)
        return out.reshape((self.n_trans,) + self.shape)
