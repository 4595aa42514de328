"""Small helpers every stage shares, each defined once: file hashes, JSON conversion, CPU count.

Leaf module (imports only numpy and the standard library), so any stage may use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON values: numpy scalars and arrays to Python, dataclasses to dicts, paths to
    strings, non-finite floats to None (strict JSON has no NaN), anything else unknown to ``str``."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        x = dataclasses.asdict(x)
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, (np.complexfloating, complex)):
        return [jsonable(x.real), jsonable(x.imag)]
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, Path):
        return str(x)
    return str(x)


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)``: what :func:`jsonable` makes of an object json cannot write."""
    return jsonable(o)


def available_cpus() -> int:
    """CPU cores this process may use (affinity-aware; at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
