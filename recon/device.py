"""Array boundary between the host (numpy) and a CUDA device (CuPy).

CuPy is optional (extras ``gpu-cu12`` / ``gpu-cu13``) and is imported only inside these
functions, never when :mod:`recon` is imported. Asking for the GPU where it cannot work gives
one :class:`~recon.errors.BackendUnavailableError` that says what is missing.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from recon.errors import BackendUnavailableError

_INSTALL_HINT = "install CuPy with `pip install narecon[gpu-cu12]` (CUDA 12) or `narecon[gpu-cu13]` (CUDA 13)"


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """None when CuPy is importable and sees a CUDA device, else what is missing (in words)."""
    try:
        import cupy
    except ImportError as e:
        return f"CuPy is not installed ({e}); {_INSTALL_HINT}"
    except Exception as e:  # a broken CuPy install (wrong CUDA wheel) raises other errors
        return f"CuPy cannot be imported ({type(e).__name__}: {e}); {_INSTALL_HINT}"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        return f"no usable CUDA driver or device ({type(e).__name__}: {e})"
    if n < 1:
        vis = os.environ.get("CUDA_VISIBLE_DEVICES")
        extra = f" (CUDA_VISIBLE_DEVICES={vis!r})" if vis is not None else ""
        return f"no CUDA device visible{extra}"
    return None


def require_cupy():
    """Return the cupy module, or raise BackendUnavailableError saying what is missing."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(f"GPU requested but unavailable: {reason}")
    import cupy

    return cupy


def is_device_array(x: Any) -> bool:
    """True for a CuPy array (checked without importing CuPy)."""
    return type(x).__module__.split(".")[0] == "cupy"


def get_array_module(x: Any):
    """numpy for host arrays, cupy for CuPy arrays."""
    if is_device_array(x):
        import cupy

        return cupy
    return np


def to_device(x: Any, dtype=None):
    """Copy a host array to the current CUDA device (no copy if already there and of ``dtype``)."""
    cp = require_cupy()
    return cp.ascontiguousarray(cp.asarray(x, dtype=dtype))


def to_host(x: Any) -> np.ndarray:
    """A numpy array with the values of ``x`` (device arrays are copied back)."""
    if is_device_array(x):
        return x.get()
    return np.asarray(x)


def device_memory() -> tuple[int, int]:
    """(free, total) bytes on the current device, counting CuPy's pooled free blocks as free."""
    cp = require_cupy()
    free, total = cp.cuda.runtime.memGetInfo()
    return int(free + cp.get_default_memory_pool().free_bytes()), int(total)


__all__ = [
    "cuda_unavailable_reason",
    "require_cupy",
    "is_device_array",
    "get_array_module",
    "to_device",
    "to_host",
    "device_memory",
]
