"""GPU backend ``cupy``: our own CUDA kernels (kernels/*.cu) driven through CuPy, FFTs by cuFFT.

The transform is the classic three-step NUFFT on a grid upsampled by 2.0:

* forward (type 2): deapodize and zero-pad (``pad_deapod``), FFT, interpolate (``interp``);
* adjoint (type 1): spread (``spread_gm``: sorted points, global atomics; or ``spread_sm``:
  subproblems of <= 1024 points of one cubic bin accumulated in shared memory, then added to
  the grid; ``method="auto"`` picks by a count of global atomics), inverse FFT (unnormalised),
  crop and deapodize (``crop_deapod``).

Kernel: exponential of semicircle (ES), phi(z) = exp(beta (sqrt(1 - (2z/w)^2) - 1)), width w
and beta by FINUFFT/cuFINUFFT's rule at upsampling 2.0 (:func:`es_params`):
w = ceil(-log10(eps/10)), at least 2, at most 16; beta = b(w) w with b = 2.20, 2.26, 2.38 for
w = 2, 3, 4 and 2.30 else. eps 1e-4 gives w = 5, eps 1e-6 gives w = 7. Widths 4..7 run kernels
compiled for that width (weights in registers, inner loops unrolled), others a generic kernel.
Fine grid nf = the next 2,3,5-smooth even number >= max(2N, 2w) per axis. Deapodization
factors: the kernel's Fourier transform at each mode, by Gauss-Legendre quadrature (host, once
per plan).

Plan (built once per trajectory and batch size, reused for every call): points scaled to
fine-grid cells and sorted into bins (stable numpy sort on the host; GM bins 2x16x16 cells, SM
cubic bins whose padded subgrid fits 48 KiB of dynamic shared memory), SM subproblems,
deapodization factors, the fine grid buffer and the cuFFT plan. A batch of n_trans transforms
runs in one launch per step (each thread reuses its kernel weights for all transforms). Device
memory is estimated before anything is allocated (:meth:`CudaNufftPlan.memory_estimate`); if
the batch does not fit, it is processed in groups; if the samples do not fit, they stay on the
host and are streamed in chunks. Ordinary (never managed) device memory from CuPy's pool is used.

The launch code is shared with the host emulation (backend ``cuda-host``,
:mod:`recon.nufft._hostcuda`): the same kernel sources compiled by g++, launched with the same
arguments, with numpy's FFT in place of cuFFT. That is how CI proves the kernels without a GPU.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np

from recon.device import cuda_unavailable_reason, is_device_array
from recon.errors import BackendUnavailableError, InputError
from recon.nufft.operator import NufftBackend, default_threads, register_backend

log = logging.getLogger(__name__)

KERNEL_FILES = ("spread.cu", "interp.cu", "deapod.cu", "selftest.cu")
"""CUDA sources of the NUFFT, in :func:`kernel_dir`."""
SYNC_KERNELS = frozenset({"spread_sm", "selftest_block_sum"})
"""Kernels that use __syncthreads / __shared__ (host emulation runs their blocks' threads concurrently)."""
MAX_NS = 16
SM_BYTES = 49152
GM_BIN = (2, 16, 16)
SPECIALIZED_WIDTHS = frozenset({4, 5, 6, 7})
"""Widths compiled as constants (kernel suffix _w<ns>); others run the generic _w0 kernels.
Keep in sync with NARECON_FOR_WIDTHS in kernels/narecon_nufft.cuh."""
WIDTH_KERNELS = frozenset({"spread_gm", "spread_sm", "interp"})


def kernel_dir() -> Path:
    """Folder of the .cu sources: package ``recon._kernels`` (wheel), else the repository's kernels/."""
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "_kernels", here.parent / "kernels"):
        if all((cand / f).is_file() for f in KERNEL_FILES):
            return cand
    raise BackendUnavailableError(
        f"CUDA kernel sources {KERNEL_FILES} not found in {here / '_kernels'} or {here.parent / 'kernels'} (broken installation?)"
    )


def kernel_sources() -> list[Path]:
    """Paths of the .cu files."""
    d = kernel_dir()
    return [d / f for f in KERNEL_FILES]


# ---------------------------------------------------------------------------------------------
# kernel parameters


def es_params(eps: float, upsampfac: float = 2.0) -> tuple[int, float, float]:
    """ES kernel (width ns in cells, beta, c = 4/ns^2) for tolerance ``eps`` at upsampling 2.0.

    FINUFFT's / cuFINUFFT's rule: ns = ceil(-log10(eps/10)) clipped to [2, 16],
    beta = betaoverns * ns with betaoverns 2.20 (ns=2), 2.26 (3), 2.38 (4), 2.30 otherwise.
    """
    if upsampfac != 2.0:
        raise InputError(f"the cupy backend supports upsampling 2.0 only, got {upsampfac}")
    ns = int(math.ceil(-math.log10(eps / 10.0)))
    ns = min(MAX_NS, max(2, ns))
    bon = {2: 2.20, 3: 2.26, 4: 2.38}.get(ns, 2.30)
    return ns, bon * ns, 4.0 / (ns * ns)


def next235even(n: int) -> int:
    """Smallest even integer >= n whose only prime factors are 2, 3 and 5."""
    n = max(2, n + (n % 2))
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 2


def fine_size(n: int, ns: int) -> int:
    """Fine (upsampled) grid size for an image axis of n points."""
    return next235even(max(2 * n, 2 * ns))


def es_fourier(ns: int, beta: float, nf: int, n: int) -> np.ndarray:
    """phihat(j') = int phi(z) exp(i 2 pi j' z / nf) dz for modes j' = -floor(n/2) .. , length n."""
    xq, wq = np.polynomial.legendre.leggauss(max(64, 8 * ns))
    z = 0.5 * ns * (xq + 1) / 2  # nodes on (0, ns/2); phi is even
    wz = 0.5 * ns / 2 * wq
    c = 4.0 / ns**2
    phi = np.exp(beta * (np.sqrt(np.maximum(1 - c * z * z, 0.0)) - 1))
    modes = np.arange(n) - n // 2
    return 2 * np.cos(2 * np.pi * np.outer(modes, z) / nf) @ (wz * phi)


def sm_bin_size(ns: int, real_bytes: int) -> int:
    """Side B of the cubic SM bins: (B + 2 ceil(ns/2))^3 complex cells fit 48 KiB, at most 8 (<2: no SM)."""
    side = int((SM_BYTES / (2 * real_bytes)) ** (1 / 3) + 1e-9)
    return min(8, side - 2 * ((ns + 1) // 2))


def _bin_index(pts: np.ndarray, bins, nb) -> np.ndarray:
    b = [np.minimum((pts[d] // bins[d]).astype(np.int64), nb[d] - 1) for d in range(3)]
    return (b[0] * nb[1] + b[1]) * nb[2] + b[2]


def stable_bin_argsort(flat: np.ndarray, n_bins: int) -> np.ndarray:
    """np.argsort(flat, kind="stable") for bin indices in [0, n_bins), by 16-bit radix passes.

    numpy's stable sort is a radix sort only for 16-bit keys (about 6x faster than its merge
    sort on int64 here), so wider bin indices are sorted low half first, then high half.
    """
    if n_bins <= 1 << 16:
        return np.argsort(flat.astype(np.uint16), kind="stable")
    if n_bins > 1 << 32:  # pragma: no cover - grids of that many bins do not fit a GPU
        return np.argsort(flat, kind="stable")
    perm = np.argsort((flat & 0xFFFF).astype(np.uint16), kind="stable")
    return perm[np.argsort((flat[perm] >> 16).astype(np.uint16), kind="stable")]


def _subproblems(sorted_bins: np.ndarray, n_bins: int, max_points: int):
    """(bin, first sorted index, count) int32 arrays: each non-empty bin cut into runs of <= max_points."""
    counts = np.bincount(sorted_bins, minlength=n_bins)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    nz = np.flatnonzero(counts)
    n_sub = -(-counts[nz] // max_points)
    sub_bin = np.repeat(nz, n_sub)
    first = np.repeat(starts[nz], n_sub)
    offset = (np.arange(n_sub.sum()) - np.repeat(np.cumsum(n_sub) - n_sub, n_sub)) * max_points
    sub_start = first + offset
    sub_count = np.minimum(max_points, np.repeat(starts[nz] + counts[nz], n_sub) - sub_start)
    return sub_bin.astype(np.int32), sub_start.astype(np.int32), sub_count.astype(np.int32)


def choose_method(pts: np.ndarray, nf, ns: int, sm_bin: int, max_points: int = 1024) -> str:
    """Spreading method by a global-atomics count (not a measurement; see benchmarks/README.md, GPU NUFFT).

    GM issues 2 ns^3 global atomics per sample; SM issues at most 2 (B + 2h)^3 per subproblem
    plus 2 ns^3 shared-memory atomics per sample. SM is chosen when its global atomics are
    under a quarter of GM's, which holds for dense MRI trajectories (several samples per cell).
    """
    if sm_bin < 2:
        return "gm"
    nb = tuple(-(-nf[d] // sm_bin) for d in range(3))
    flat = _bin_index(pts, (sm_bin,) * 3, nb)
    counts = np.bincount(flat, minlength=int(np.prod(nb)))
    n_sub = int((-(-counts // max_points)).sum())
    p3 = (sm_bin + 2 * ((ns + 1) // 2)) ** 3
    return "sm" if n_sub * p3 < 0.25 * pts.shape[1] * ns**3 else "gm"


# ---------------------------------------------------------------------------------------------
# platforms: where the arrays live, how kernels are launched and FFTs done


class _HostPlatform:
    """numpy arrays, kernels compiled for the CPU (:mod:`recon.nufft._hostcuda`), scipy FFT."""

    name = "host"
    xp = np
    sm_threads = 16  # emulated blocks run their threads as OS threads: keep blocks small
    threads = 256
    max_blocks = 64

    def __init__(self, n_threads: int | None = None):
        from recon.nufft._hostcuda import HostLauncher

        self.launcher = HostLauncher(kernel_sources(), kernel_dir())
        self.workers = n_threads or default_threads()

    def asarray(self, a, dtype=None):
        return np.ascontiguousarray(np.asarray(a, dtype=dtype))

    def to_host(self, a):
        return a

    def free_bytes(self) -> int:
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):  # pragma: no cover
            return 1 << 34

    def fft_plan(self, a):
        return None

    def fftn(self, a, plan, forward: bool):
        import scipy.fft

        f = scipy.fft.fftn if forward else scipy.fft.ifftn
        return f(
            a,
            axes=(1, 2, 3),
            norm="backward" if forward else "forward",
            overwrite_x=True,
            workers=self.workers,
        )

    def synchronize(self) -> None:
        pass


class _CupyPlatform:
    """CuPy arrays on the current device, kernels through cupy.RawModule (NVRTC), cuFFT."""

    name = "cuda"
    sm_threads = 128
    threads = 256
    max_blocks = 65535 * 16

    def __init__(self, n_threads: int | None = None):
        from recon.device import require_cupy

        cp = require_cupy()
        self.xp = cp
        self.launcher = CupyLauncher(kernel_sources(), kernel_dir())

    def asarray(self, a, dtype=None):
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a):
        return a.get()

    def free_bytes(self) -> int:
        from recon.device import device_memory

        return device_memory()[0]

    def fft_plan(self, a):
        import cupyx.scipy.fft

        return cupyx.scipy.fft.get_fft_plan(a, axes=(1, 2, 3), value_type="C2C")

    def fftn(self, a, plan, forward: bool):
        import cupyx.scipy.fft

        f = cupyx.scipy.fft.fftn if forward else cupyx.scipy.fft.ifftn
        return f(a, axes=(1, 2, 3), norm="backward" if forward else "forward", overwrite_x=True, plan=plan)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()


_PLATFORMS: dict[tuple, object] = {}


def _platform(cls: type, n_threads: int | None):
    """One platform (compiled kernels, loaded module) per kind and thread count, shared by all plans."""
    key = (cls, n_threads)
    if key not in _PLATFORMS:
        _PLATFORMS[key] = cls(n_threads)
    return _PLATFORMS[key]


def rawmodule_code(sources) -> str:
    """The single translation unit CuPy's RawModule (NVRTC) compiles: one #include per .cu source.

    It starts with a hash of every source and header: CuPy caches compiled modules by the code
    string, and the hash makes an edited kernel file recompile instead of reusing a stale binary.
    """
    paths = [Path(s) for s in sources]
    h = hashlib.sha256()
    for p in [*paths, *sorted({c for s in paths for c in s.parent.glob("*.cuh")})]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    lines = [f"// narecon kernels, sources sha256 {h.hexdigest()}"]
    lines += [f'#include "{p.name}"' for p in paths]
    return "\n".join(lines) + "\n"


NVRTC_OPTIONS = ("-std=c++17",)
"""NVRTC options besides the include path (also used by the nvcc compile test)."""


class CupyLauncher:
    """Launch kernels of kernels/*.cu compiled by NVRTC: same interface as HostLauncher."""

    platform = "cuda"

    def __init__(self, sources, include_dir: Path):
        import cupy

        self.module = cupy.RawModule(code=rawmodule_code(sources), options=(*NVRTC_OPTIONS, f"-I{include_dir}"))
        self._fns: dict[str, object] = {}

    def launch(self, name: str, grid, block, args, sync: bool = False, shared_mem: int = 0) -> None:
        f = self._fns.get(name)
        if f is None:
            f = self._fns[name] = self.module.get_function(name)
        f(tuple(grid), tuple(block), tuple(args), shared_mem=int(shared_mem))


# ---------------------------------------------------------------------------------------------
# the plan


class CudaNufftPlan(NufftBackend):
    """One trajectory's NUFFT plan on a platform (CUDA device or host emulation).

    Parameters (as for every backend, see :func:`recon.nufft.operator.register_backend`):
    k_grid (M, 3) in cycles per FOV; shape (N0, N1, N2); n_trans transforms per call; eps;
    dtype complex64 or complex128. Options: ``method`` for spreading: ``"gm"`` (sorted points,
    global-memory atomics), ``"sm"`` (shared-memory subproblems of at most ``sm_max_points``
    points of one bin) or ``"auto"`` (default: :func:`choose_method`); ``max_device_bytes``
    caps the memory this plan may use (default: what the device reports free, times 0.9);
    ``upsampfac`` (2.0 only); ``specialize`` (default True) runs the kernels compiled for the
    width (4..7) when there is one, False always the generic runtime-width kernels.
    """

    _platform_cls: type = _CupyPlatform

    @classmethod
    def available(cls) -> str | None:
        return cuda_unavailable_reason()

    def __init__(
        self,
        k_grid,
        shape,
        n_trans,
        eps,
        dtype,
        method: str = "auto",
        sm_max_points: int = 1024,
        max_device_bytes: int | None = None,
        upsampfac: float = 2.0,
        n_threads: int | None = None,
        specialize: bool = True,
        **unused,
    ):
        if unused:
            log.debug("cupy backend ignores options %s", sorted(unused))
        self.platform = _platform(self._platform_cls, n_threads)
        xp = self.platform.xp
        self.shape = tuple(int(s) for s in shape)
        self.n_trans = int(n_trans)
        self.dtype = np.dtype(dtype)
        self.real = np.dtype(np.float32 if self.dtype == np.complex64 else np.float64)
        self.suffix = "f32" if self.real == np.float32 else "f64"
        self.eps = float(eps)
        self.widths = SPECIALIZED_WIDTHS if specialize else frozenset()
        self.ns, beta, c = es_params(max(eps, 1e-7 if self.real == np.float32 else 1e-15), upsampfac)
        self.beta, self.c = self.real.type(beta), self.real.type(c)
        self.nf = tuple(fine_size(n, self.ns) for n in self.shape)
        k_grid = np.asarray(k_grid, dtype=np.float64).reshape(-1, 3)
        self.M = len(k_grid)
        if self.M >= 2**31 - 1:
            raise InputError(f"{self.M} samples: the cupy backend handles at most 2^31 - 2 per plan")

        # points in fine-grid cells, wrapped to [0, nf)
        pts = np.empty((3, self.M), dtype=self.real)
        for d in range(3):
            x = np.mod(k_grid[:, d] * (self.nf[d] / self.shape[d]), self.nf[d]).astype(self.real)
            x[x >= self.nf[d]] = 0
            pts[d] = x
        if method not in ("gm", "sm", "auto"):
            raise InputError(f"cupy backend method must be 'gm', 'sm' or 'auto', got {method!r}")
        self.sm_bin = sm_bin_size(self.ns, self.real.itemsize)
        if method == "auto":
            method = choose_method(pts, self.nf, self.ns, self.sm_bin, sm_max_points)
        elif method == "sm" and self.sm_bin < 2:
            log.info("kernel width %d too wide for shared-memory subproblems in %s: using gm", self.ns, self.real)
            method = "gm"
        self.method = method
        bins = (self.sm_bin,) * 3 if method == "sm" else GM_BIN
        nb = tuple(-(-self.nf[d] // bins[d]) for d in range(3))
        flat = _bin_index(pts, bins, nb)
        perm = stable_bin_argsort(flat, int(np.prod(nb)))
        self._pts_host = [np.ascontiguousarray(pts[d][perm]) for d in range(3)]
        self._perm_host = perm.astype(np.int64)
        self.nb = nb
        if method == "sm":
            self._subs_host = _subproblems(flat[perm], int(np.prod(nb)), sm_max_points)

        # deapodization factors 1/phihat per axis
        self._fk_host = [(1.0 / es_fourier(self.ns, beta, self.nf[d], self.shape[d])).astype(self.real) for d in range(3)]

        # memory: decide transforms per group and whether samples stay resident
        self._decide_memory(max_device_bytes)
        p = self.platform
        self._fk = [p.asarray(f) for f in self._fk_host]
        if self.resident:
            self._pts = [p.asarray(x) for x in self._pts_host]
            self._perm = p.asarray(self._perm_host)
        if self.method == "sm":
            self._subs = [p.asarray(a) for a in self._subs_host]
        self._fine = xp.zeros((self.group,) + self.nf, dtype=self.dtype)
        self._fft_plans: dict[int, object] = {}
        log.debug("cupy NUFFT plan: %s", self)

    # -- memory -------------------------------------------------------------------------------
    def memory_estimate(self, group: int, chunk: int, resident: bool) -> int:
        """Device bytes needed for ``group`` transforms at once and sample chunks of ``chunk``."""
        c, r = self.dtype.itemsize, self.real.itemsize
        nfine = int(np.prod(self.nf))
        nimg = int(np.prod(self.shape))
        fixed = 2 * group * nfine * c  # fine grid + cuFFT work area (at most the grid size)
        fixed += 2 * group * nimg * c  # image in/out
        per_sample_res = 3 * r + 8  # sorted coordinates + permutation
        per_sample_data = group * c  # data of the group (in for adjoint, out for forward)
        if resident:
            return fixed + self.M * (per_sample_res + per_sample_data) + chunk * group * c
        return fixed + chunk * (per_sample_res + 2 * group * c)

    def _decide_memory(self, max_device_bytes: int | None) -> None:
        budget = int(0.9 * self.platform.free_bytes())
        if max_device_bytes is not None:
            budget = min(budget, int(max_device_bytes))
        self.budget = budget
        for g in range(self.n_trans, 0, -1):
            if self.memory_estimate(g, self.M, True) <= budget:
                self.group, self.chunk, self.resident = g, self.M, True
                return
        g = self.n_trans
        while g > 1 and self.memory_estimate(g, 1, False) > budget // 2:
            g -= 1
        room = budget - self.memory_estimate(g, 0, False)
        per = self.memory_estimate(g, 1, False) - self.memory_estimate(g, 0, False)
        if room < per * 1024:
            need = self.memory_estimate(1, 1024, False)
            raise BackendUnavailableError(
                f"NUFFT grid {self.nf} needs about {need / 2**30:.2f} GiB of device memory, only {budget / 2**30:.2f} GiB available"
            )
        self.group, self.chunk, self.resident = g, int(min(self.M, room // per)), False
        log.info(
            "cupy NUFFT: %d transform(s) per group, samples streamed in chunks of %d (%.2f GiB budget)",
            self.group,
            self.chunk,
            budget / 2**30,
        )

    # -- launch helpers -----------------------------------------------------------------------
    def _launch(
        self,
        kernel: str,
        n_items: int,
        args,
        threads: int | None = None,
        blocks: int | None = None,
        shared_mem: int = 0,
    ) -> None:
        """Launch ``kernel`` (dtype suffix added): grid-stride kernels get enough blocks for
        ``n_items`` (capped); kernels indexed by block (spread_sm) pass ``blocks`` exactly."""
        p = self.platform
        threads = threads or p.threads
        if blocks is None:
            blocks = max(1, min(-(-n_items // threads), p.max_blocks))
        name = f"{kernel}_{self.suffix}"
        if kernel in WIDTH_KERNELS:
            name += f"_w{self.ns if self.ns in self.widths else 0}"
        sync = kernel in SYNC_KERNELS
        p.launcher.launch(name, (blocks, 1, 1), (threads, 1, 1), args, sync=sync, shared_mem=shared_mem)

    def _fft_plan(self, g: int):
        if g not in self._fft_plans:
            self._fft_plans[g] = self.platform.fft_plan(self._fine[:g])
        return self._fft_plans[g]

    def _chunk_points(self, s: int, e: int):
        if self.resident:
            return [x[s:e] for x in self._pts], self._perm[s:e]
        p = self.platform
        return [p.asarray(x[s:e]) for x in self._pts_host], p.asarray(self._perm_host[s:e])

    def _grid_args(self):
        i32 = np.int32
        return [i32(self.nf[0]), i32(self.nf[1]), i32(self.nf[2]), i32(self.ns), self.beta, self.c]

    def _img_args(self, g: int):
        i32 = np.int32
        return [
            *self._fk,
            i32(self.shape[0]),
            i32(self.shape[1]),
            i32(self.shape[2]),
            i32(self.nf[0]),
            i32(self.nf[1]),
            i32(self.nf[2]),
            i32(g),
        ]

    # -- transforms ---------------------------------------------------------------------------
    def _wrap_in(self, a, shape):
        on_dev = is_device_array(a)
        if self.platform.name == "host" and on_dev:
            raise InputError("the cuda-host backend takes numpy arrays, got a CuPy array")
        if tuple(a.shape) != shape:  # kept: the raw kernels index memory by these shapes
            raise InputError(f"expected an array of shape {shape}, got {tuple(a.shape)}")
        return on_dev

    def forward(self, x):
        """Image batch (n_trans, N0, N1, N2) -> samples (n_trans, M): y = sum_j x_j exp(-i 2 pi k.r_j)."""
        on_dev = self._wrap_in(x, (self.n_trans,) + self.shape)
        p, xp = self.platform, self.platform.xp
        out = xp.empty((self.n_trans, self.M), dtype=self.dtype)
        for t0 in range(0, self.n_trans, self.group):
            g = min(self.group, self.n_trans - t0)
            img = p.asarray(x[t0 : t0 + g], dtype=self.dtype)
            fine = self._fine[:g]
            fine.fill(0)
            self._launch("pad_deapod", g * int(np.prod(self.shape)), [img, fine, *self._img_args(g)])
            fine = p.fftn(fine, self._fft_plan(g), forward=True)
            for s in range(0, self.M, self.chunk):
                e = min(self.M, s + self.chunk)
                pts, perm = self._chunk_points(s, e)
                tmp = xp.empty((g, e - s), dtype=self.dtype)
                self._launch(
                    "interp",
                    e - s,
                    [*pts, fine, tmp, np.int64(e - s), np.int32(e - s), *self._grid_args(), np.int32(g)],
                )
                out[t0 : t0 + g, perm] = tmp
        if p.name != "host" and not on_dev:
            return p.to_host(out)
        return out

    def adjoint(self, y):
        """Samples (n_trans, M) -> image batch (n_trans, N0, N1, N2): x_j = sum_m y_m exp(+i 2 pi k_m.r_j)."""
        on_dev = self._wrap_in(y, (self.n_trans, self.M))
        p, xp = self.platform, self.platform.xp
        out = xp.empty((self.n_trans,) + self.shape, dtype=self.dtype)
        for t0 in range(0, self.n_trans, self.group):
            g = min(self.group, self.n_trans - t0)
            ydev = p.asarray(y[t0 : t0 + g], dtype=self.dtype) if self.resident else None
            fine = self._fine[:g]
            fine.fill(0)
            for s in range(0, self.M, self.chunk):
                e = min(self.M, s + self.chunk)
                pts, perm = self._chunk_points(s, e)
                if ydev is not None:
                    cs = xp.ascontiguousarray(ydev[:, perm])
                elif on_dev:
                    cs = xp.ascontiguousarray(y[t0 : t0 + g][:, perm], dtype=self.dtype)
                else:
                    cs = p.asarray(np.asarray(y[t0 : t0 + g])[:, self._perm_host[s:e]], dtype=self.dtype)
                if self.method == "sm":
                    bs, bc, bl = self._subs
                    self._launch(
                        "spread_sm",
                        0,
                        blocks=len(self._subs_host[0]),
                        shared_mem=2 * self.real.itemsize * (self.sm_bin + 2 * ((self.ns + 1) // 2)) ** 3,
                        threads=p.sm_threads,
                        args=[
                            *pts,
                            cs,
                            np.int64(e - s),
                            bs,
                            bc,
                            bl,
                            np.int32(self.nb[1]),
                            np.int32(self.nb[2]),
                            np.int32(self.sm_bin),
                            np.int32(s),
                            np.int32(e),
                            fine,
                            *self._grid_args(),
                            np.int32(g),
                        ],
                    )
                else:
                    self._launch(
                        "spread_gm",
                        e - s,
                        [*pts, cs, np.int64(e - s), np.int32(e - s), fine, *self._grid_args(), np.int32(g)],
                    )
            fine = p.fftn(fine, self._fft_plan(g), forward=False)
            self._launch("crop_deapod", g * int(np.prod(self.shape)), [fine, out[t0 : t0 + g], *self._img_args(g)])
        if p.name != "host" and not on_dev:
            return p.to_host(out)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(platform={self.platform.name}, shape={self.shape}, fine={self.nf}, "
            f"M={self.M}, n_trans={self.n_trans}, ns={self.ns}, beta={float(self.beta):.3f}, "
            f"method={self.method}, group={self.group}, chunk={self.chunk}, resident={self.resident})"
        )


@register_backend("cupy")
class CupyBackend(CudaNufftPlan):
    """Our CUDA kernels on the current CUDA device (inputs numpy or CuPy; numpy in -> numpy out)."""

    _platform_cls = _CupyPlatform


@register_backend("cuda-host")
class HostCudaBackend(CudaNufftPlan):
    """The same kernels compiled for the CPU (host emulation): for tests without a GPU."""

    _platform_cls = _HostPlatform

    @classmethod
    def available(cls) -> str | None:
        from recon.nufft._hostcuda import compiler

        return None if compiler() else "no C++ compiler (g++ or $CXX) to build the host emulation"
