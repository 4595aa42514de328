"""Host emulation of CUDA kernels: compile ``kernels/*.cu`` with g++ and launch them via ctypes.

This is how the GPU backend's kernels are proven correct on machines without a GPU (CI,
laptops): the unchanged CUDA sources are compiled as C++ with :file:`_hostcuda.h`
force-included (it supplies threadIdx/blockIdx/blockDim/gridDim, atomicAdd, __syncthreads via
a barrier and __shared__ per block), into one shared library cached under
``$NARECON_CACHE_DIR`` (default ``~/.cache/narecon``) by a hash of sources, flags and compiler.
:class:`HostLauncher` has the same ``launch(name, grid, block, args, sync)`` interface as the
CuPy launcher in :mod:`recon.nufft.cupy_backend`, so both paths run the same Python launch code.

Written by hand because no maintained library runs CUDA C kernels unchanged on a CPU with
block-level barriers (HIP-CPU and similar need their own runtime and are not on PyPI).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.errors import BackendUnavailableError

HEADER = Path(__file__).with_name("_hostcuda.h")
CXX_FLAGS = ("-O2", "-std=c++20", "-shared", "-fPIC", "-pthread", "-fno-fast-math", "-Wno-unknown-pragmas")


def compiler() -> str | None:
    """Path of the host C++ compiler ($CXX or g++), or None."""
    return shutil.which(os.environ.get("CXX", "g++"))


def cache_dir() -> Path:
    """Folder for compiled host libraries."""
    base = os.environ.get("NARECON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "narecon")
    return Path(base) / "hostcuda"


def build_library(sources: Sequence[Path], include_dir: Path) -> Path:
    """Compile the .cu ``sources`` for the host into one shared library (cached); return its path."""
    cxx = compiler()
    if cxx is None:
        raise BackendUnavailableError("host emulation of the CUDA kernels needs a C++20 compiler: g++ not found (set $CXX)")
    h = hashlib.sha256()
    for p in [HEADER, *sources, *sorted(Path(include_dir).glob("*.cuh"))]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(" ".join(CXX_FLAGS).encode())
    h.update(cxx.encode())
    out = cache_dir() / f"narecon_kernels_{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [
        cxx,
        *CXX_FLAGS,
        "-I",
        str(include_dir),
        "-include",
        str(HEADER),
        "-x",
        "c++",
        *map(str, sources),
        "-o",
        tmp,
    ]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BackendUnavailableError(f"host build of the CUDA kernels failed:\n{' '.join(cmd)}\n{r.stderr[-4000:]}")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


class HostLauncher:
    """Launch kernels of a compiled host library: ``launch(name, grid, block, args, sync, shared_mem)``.

    ``args`` are numpy arrays (passed as their data pointer; must be C-contiguous) and numpy
    scalars of the exact C type of the kernel parameter (np.int32 for int, np.int64 for long
    long, np.float32/np.float64 for float/double). ``sync`` must be True for kernels that call
    __syncthreads (their block's threads then run concurrently); ``shared_mem`` is the dynamic
    shared memory per block in bytes. Launches are serialised by a
    lock: the emulated shared memory and launch dimensions are process-wide.
    """

    platform = "host"

    def __init__(self, sources: Sequence[Path], include_dir: Path):
        self.path = build_library(sources, include_dir)
        self._lib = ctypes.CDLL(str(self.path))
        self._fns: dict[str, object] = {}
        self._lock = threading.Lock()

    def _fn(self, name: str):
        f = self._fns.get(name)
        if f is None:
            try:
                f = getattr(self._lib, f"narecon_host_launch_{name}")
            except AttributeError as e:
                raise BackendUnavailableError(f"{self.path}: kernel {name!r} not found") from e
            f.argtypes = [
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_uint),
                ctypes.POINTER(ctypes.c_void_p),
                ctypes.c_int,
                ctypes.c_uint,
            ]
            f.restype = ctypes.c_int
            self._fns[name] = f
        return f

    def launch(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: Sequence,
        sync: bool = False,
        shared_mem: int = 0,
    ) -> None:
        holders = []
        for a in args:
            if isinstance(a, np.ndarray):
                if not a.flags.c_contiguous:
                    raise ValueError(f"kernel {name}: array argument is not C-contiguous")
                holders.append(np.array([a.ctypes.data], dtype=np.uintp))
            elif isinstance(a, np.generic):
                holders.append(np.array([a]))
            else:
                raise TypeError(f"kernel {name}: argument of type {type(a).__name__} (numpy array or scalar expected)")
        ptrs = (ctypes.c_void_p * max(1, len(holders)))(*[h.ctypes.data for h in holders])
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        with self._lock:
            rc = self._fn(name)(g, b, ptrs, int(bool(sync)), int(shared_mem))
        if rc != 0:  # pragma: no cover - the launcher returns 0
            raise RuntimeError(f"host kernel {name} failed ({rc})")
