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

Hook for the pipeline: :func:`get_or_build` is the general entry point. Until
:mod:`recon.pipeline` calls it itself (and says so with a module attribute
``USES_PLAN_CACHE = True``, which makes :func:`activate` a no-op), :func:`activate` installs the cache around
``recon.pipeline.load_trajectory``, ``recon.pipeline.density_weights`` and ``recon.nufft.NUFFT``
(looked up by ``reconstruct`` at call time) for the duration of one scan, in a worker process.
Written here because neither Dask nor finufft caches application objects across tasks.
"""

from __future__ import annotations

import collections
import contextlib
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


@contextlib.contextmanager
def activate(cache: PlanCache | None = None) -> Iterator[PlanCache]:
    """Route the pipeline's trajectory, density weights and NUFFT construction through ``cache``.

    Interim hook (see the module docstring): patches ``recon.pipeline.load_trajectory``,
    ``recon.pipeline.density_weights`` and ``recon.nufft.NUFFT`` for the block and restores them
    after. Meant for batch worker processes (one task thread each).
    """
    import recon.nufft as nufft_mod
    import recon.pipeline as pl

    cache = cache or CACHE
    if getattr(pl, "USES_PLAN_CACHE", False):  # the pipeline calls get_or_build itself
        yield cache
        return
    orig_load, orig_dcf, orig_nufft = pl.load_trajectory, pl.density_weights, nufft_mod.NUFFT
    traj_keys: dict[int, tuple] = {}

    def load_trajectory(acq, opts, timer):
        from recon.errors import TrajectoryError
        from recon.io import check_match

        key = trajectory_key(acq, opts)
        built = []

        def build():
            built.append(True)
            return orig_load(acq, opts, timer)

        traj, source = cache.get_or_build("trajectory", key, build)
        if not built:  # from the cache: still check it against this scan's data
            with timer.stage("trajectory (cached)"):
                try:
                    check_match(acq, traj)
                except TrajectoryError as e:
                    raise TrajectoryError(f"trajectory ({source}) does not match the data: {e.message}",
                                          acq.sources[0] if acq.sources else None) from e
        traj_keys[id(traj)] = key
        return traj, source

    def density_weights(traj, opts, timer):
        key = traj_keys.get(id(traj))
        if key is None or (cache.peek("trajectory", key) or (None,))[0] is not traj:
            return orig_dcf(traj, opts, timer)
        return cache.get_or_build("dcf", (key, opts.dcf), lambda: orig_dcf(traj, opts, timer))

    def NUFFT(k, shape, fov, *args, **kwargs):  # noqa: N802 - stands in for the class
        if args:  # positional backend/device/...: do not guess, build uncached
            return orig_nufft(k, shape, fov, *args, **kwargs)
        key = nufft_key(k, shape, fov, **kwargs)
        return cache.get_or_build("nufft", key, lambda: orig_nufft(k, shape, fov, **kwargs))

    pl.load_trajectory, pl.density_weights, nufft_mod.NUFFT = load_trajectory, density_weights, NUFFT
    try:
        yield cache
    finally:
        pl.load_trajectory, pl.density_weights, nufft_mod.NUFFT = orig_load, orig_dcf, orig_nufft
