"""Plans handed down to the stages: the factory (and optional cache) of protocol products.

A reconstruction builds three things that depend only on the protocol, not on the scan: the
trajectory, its density weights and the NUFFT plans (finufft's sort and spreading set-up; the
time-binned B0 gridder's per-bin plans; the Pipe-Menon gridding). The caller of
:func:`recon.reconstruct` owns a :class:`Plans` object and hands it down; every stage that
needs a NUFFT asks ``plans.nufft(...)`` for it, never a layer above (the pipeline does not
import :mod:`recon.batch`). ``Plans()`` without a cache builds everything fresh (one
``narecon run``); a batch worker keeps one ``Plans(PlanCache())`` for its whole life, so scans
of one protocol reuse every plan and the density weights.

Keys:

* trajectory: given by the caller (a trajectory file by real path, mtime and size; a generated
  trajectory by the profile and the design parameters read from the header);
* density weights: a BLAKE2b digest of k with the method;
* NUFFT: a digest of k with matrix, FOV, device, backend, accuracy, dtype and backend options,
  so a cached operator is only ever reused for bit-identical sample positions.

Written here because neither Dask nor finufft caches application objects across tasks.
"""

from __future__ import annotations

import collections
import json
import os
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

_DEFAULT_ENTRIES = 2


class PlanCache:
    """Small per-kind LRU cache with hit/miss counters (thread-safe).

    ``max_entries`` per kind (default ``NARECON_PLAN_CACHE`` or 2), so a worker that sees many
    protocols does not keep them all in memory.
    """

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


def array_digest(a: np.ndarray) -> str:
    """Content digest of an array's dtype, shape and bytes: XXH3-128 (xxhash), 32 hex characters.

    Cache keys only (plans, density weights, point-response kernels), not integrity against an
    adversary: XXH3 runs at memory speed (0.015 s for the 116 MB of k of the 64^3 protocol, BLAKE2b
    0.22 s) with a 128-bit digest, so an accidental collision is out of reach."""
    import xxhash

    a = np.ascontiguousarray(a)
    h = xxhash.xxh3_128(f"{a.dtype.str}{a.shape}".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def nufft_key(k, shape, fov, backend=None, device="cpu", eps=None, dtype=np.complex64, **options) -> tuple:
    """Cache key of ``NUFFT(k, shape, fov, ...)``."""
    fov_t = tuple(np.broadcast_to(np.asarray(fov, dtype=np.float64), (3,)).tolist())
    return (
        array_digest(np.asarray(k)),
        tuple(int(s) for s in shape),
        fov_t,
        backend,
        device,
        None if eps is None else float(eps),
        np.dtype(dtype).str,
        json.dumps(options, sort_keys=True, default=str),
    )


class Plans:
    """Factory of trajectories, density weights and NUFFT operators, optionally cached.

    ``Plans()`` builds every product fresh; ``Plans(PlanCache())`` reuses them under the keys of
    the module docstring. Keys are computed only when a cache is present (no digest of k for
    a single run).
    """

    def __init__(self, cache: PlanCache | None = None) -> None:
        self.cache = cache

    def get(self, kind: str, key: Callable[[], Hashable] | None, builder: Callable[[], Any]) -> Any:
        """``builder()``, reused from the cache under ``key()`` when there is a cache."""
        if self.cache is None or key is None:
            return builder()
        return self.cache.get_or_build(kind, key(), builder)

    def trajectory(self, key: Callable[[], Hashable] | None, builder: Callable[[], Any]) -> Any:
        """The trajectory under ``key()`` (the caller knows what identifies it)."""
        return self.get("trajectory", key, builder)

    def dcf(self, traj: Any, method: str, **options: Any) -> np.ndarray:
        """Density weights (n_proj, n_samp) in 1/m^3 of ``traj`` by ``method`` (through this factory)."""
        from recon.trajectory import compute_dcf

        def build():
            return compute_dcf(traj, method, plans=self, **options)

        return self.get("dcf", lambda: self.dcf_key(traj, method, **options), build)

    @staticmethod
    def dcf_key(traj: Any, method: str, **options: Any) -> tuple:
        """Cache key of :meth:`dcf`: a digest of k with the method and its options."""
        return (array_digest(traj.k), method, json.dumps(options, sort_keys=True, default=str))

    def spreader(self, key: Callable[[], Hashable] | None, builder: Callable[[], Any]) -> Any:
        """A spread/interpolate-only gridder (e.g. the Pipe-Menon convolution's finufft plans) under ``key()``."""
        return self.get("spreader", key, builder)

    def nufft(self, k: np.ndarray, shape: Sequence[int], fov: float | Sequence[float], points: Any = None, **kw: Any):
        """``recon.nufft.NUFFT(k, shape, fov, points=points, **kw)``, reused for bit-identical k and settings.

        ``points`` (:class:`recon.nufft.NufftPoints` made from this k) are not part of the key: they
        follow from k."""
        from recon.nufft import NUFFT

        return self.get("nufft", lambda: nufft_key(k, shape, fov, **kw), lambda: NUFFT(k, shape, fov, points=points, **kw))

    def stats(self) -> dict[str, dict[str, int]]:
        """Hits and misses per kind (empty without a cache)."""
        return self.cache.stats() if self.cache is not None else {}


DEFAULT_PLANS = Plans()
"""The uncached factory: what a stage uses when its caller passes no plans."""


def plans_or_default(plans: Plans | None) -> Plans:
    """``plans`` or the uncached default factory."""
    return plans if plans is not None else DEFAULT_PLANS
