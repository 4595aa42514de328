"""Per-process cache of protocol products: trajectory, density weights, NUFFT operator (plans).

A batch worker reconstructs many scans of the same protocol; the trajectory design, its density
weights and the NUFFT plans (finufft's sort and spreading set-up) depend only on the protocol,
so each worker process builds them once and reuses them for every later scan with that
protocol. The cache is a small LRU per kind (``NARECON_PLAN_CACHE`` entries each, default 2)
so a worker that sees many protocols does not keep them all in memory.

Keys:

* trajectory: a trajectory file by (real path, mtime in ns, size); a generated trajectory by
  the sequence profile (real path and mtime, or "default") and the design parameters that the
  profile reads from the header (:func:`recon.io.profile.trajectory_params`).
* density weights: the trajectory key and the method.
* NUFFT operator: a BLAKE2b digest of the sample positions k (cycles/m) with matrix, FOV,
  device, backend, accuracy, dtype and backend options, so a cached operator is only ever
  reused for bit-identical k.

The trajectory is checked against every scan's data (:func:`recon.io.check_match`) whether
it came from the cache or not.

Use: a batch worker runs each scan inside :func:`activate`; the pipeline asks :func:`cached`
for its trajectory, density weights and NUFFT operator, which builds them (and computes no key)
when no cache is active.
Written here because neither Dask nor finufft caches application objects across tasks.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger("recon.batch.cache")

_DEFAULT_ENTRIES = 2


class PlanCache:
    """Small per-kind LRU cache with hit/miss counters (thread-safe)."""

    def __init__(self, max_entries: int | None = None) -> None:
        n = max_entries if max_entries is not None else int(os.environ.get("NARECON_PLAN_CACHE", _DEFAULT_ENTRIES))
        self.max_entries = max(0, n)
        self._data: dict[str, collections.OrderedDict] = {}
        self._lock = threading.RLock()
        self.hits: collections.Counter = collections.Counter()
        self.misses: collections.Counter = collections.Counter()

    def get_or_build(self, kind: str, key: Hashable, builder: Callable[[], Any]) -> Any:
        """The cached value of (kind, key), else ``builder()`` stored under it (exceptions are not cached)."""
        with self._lock:
            store = self._data.setdefault(kind, collections.OrderedDict())
            if key in store:
                store.move_to_end(key)
                self.hits[kind] += 1
                return store[key]
        value = builder()
        with self._lock:
            self.misses[kind] += 1
            if self.max_entries > 0:
                store[key] = value
                store.move_to_end(key)
                while len(store) > self.max_entries:
                    store.popitem(last=False)
        return value

    def peek(self, kind: str, key: Hashable) -> Any:
        with self._lock:
            return self._data.get(kind, {}).get(key)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.hits.clear()
            self.misses.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        kinds = set(self.hits) | set(self.misses)
        return {k: {"hits": self.hits[k], "misses": self.misses[k]} for k in sorted(kinds)}


CACHE = PlanCache()
"""The process-wide cache used by the batch workers."""


def get_or_build(kind: str, key: Hashable, builder: Callable[[], Any]) -> Any:
    """``CACHE.get_or_build``: the hook for the pipeline (see the module docstring)."""
    return CACHE.get_or_build(kind, key, builder)


def _file_key(path: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size)


def trajectory_key(acq, opts) -> tuple:
    """Cache key of the trajectory that ``opts`` gives for ``acq`` (file, or profile + header design)."""
    if opts.traj:
        return ("file",) + _file_key(opts.traj)
    from recon.io import load_profile
    from recon.io.profile import trajectory_params

    prm = trajectory_params(acq, load_profile(opts.profile))
    prof = ("profile",) + (_file_key(opts.profile) if opts.profile else ("default",))
    return prof + (json.dumps(prm, sort_keys=True, default=str),)


def array_digest(a: np.ndarray) -> str:
    """BLAKE2b digest of an array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def nufft_key(k, shape, fov, backend=None, device="cpu", eps=1e-6, dtype=np.complex64, **options) -> tuple:
    """Cache key of ``NUFFT(k, shape, fov, ...)``."""
    fov_t = tuple(np.broadcast_to(np.asarray(fov, dtype=np.float64), (3,)).tolist())
    return (array_digest(np.asarray(k)), tuple(int(s) for s in shape), fov_t, backend, device, float(eps),
            np.dtype(dtype).str, json.dumps(options, sort_keys=True, default=str))


_ACTIVE: contextvars.ContextVar[PlanCache | None] = contextvars.ContextVar("narecon_plan_cache", default=None)


def active() -> PlanCache | None:
    """The cache activated for this context (a batch worker's scan), or None."""
    return _ACTIVE.get()


def cached(kind: str, key: Callable[[], Hashable] | None, builder: Callable[[], Any]) -> Any:
    """``builder()``, reused from the active cache under ``key()`` when a cache is active.

    ``key`` is a callable so that no key (e.g. a digest of k) is computed outside a batch worker;
    with no active cache (a single ``narecon run``) nothing is kept.
    """
    cache = _ACTIVE.get()
    if cache is None or key is None:
        return builder()
    return cache.get_or_build(kind, key(), builder)


@contextlib.contextmanager
def activate(cache: PlanCache | None = None) -> Iterator[PlanCache]:
    """Make ``cache`` (default: the process-wide :data:`CACHE`) the active one for the block.

    The pipeline (:mod:`recon.pipeline`) asks :func:`cached` for its trajectory, density weights
    and NUFFT operator; inside this block they are reused across scans with the same protocol.
    """
    token = _ACTIVE.set(cache or CACHE)
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)
