"""The batch worker's persistent plans: one :class:`recon.plans.Plans` per worker process.

A batch worker reconstructs many scans of the same protocol; the trajectory design, its density
weights and the NUFFT plans (finufft's sort and spreading set-up, tb-cpr's per-bin plans) depend
only on the protocol, so each worker keeps one cached :class:`~recon.plans.Plans` for its whole
life and hands it to :func:`recon.pipeline.run` for every scan (plans go down: the pipeline
never imports this module). The cache is a small LRU per kind (``NARECON_PLAN_CACHE`` entries,
default 2), see :mod:`recon.plans` for the keys.

Digests. Every cache key hashes the protocol's arrays (k, the density weights, the readout
times) with :func:`recon.plans.array_digest`: five passes per scan at the 64^3 protocol (116 MB of
k three times and more), 0.77 s of a 4.1 s warm scan with BLAKE2b, ~0.05 s with XXH3 (session 6).
The cached products *are* those
arrays (the cached trajectory's k is the ``k`` of the next scan), so :data:`DIGESTS` remembers the
digest per array object for the worker's life: :func:`remembered_digests` puts it in place of
``array_digest`` while a scan runs. A remembered array is made read-only, so an in-place write
(which would make the remembered digest stale, and would corrupt the cached plans that keep a
reference to it anyway) fails loudly instead.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import numpy as np

import recon.plans as _plans
from recon.plans import PlanCache, Plans, array_digest, nufft_key

CACHE = PlanCache()
"""The process-wide cache of a batch worker."""

WORKER_PLANS = Plans(CACHE)
"""The plans a batch worker passes to every scan it reconstructs."""


class DigestMemo:
    """``array_digest`` remembered per live array object (keyed by ``id``, checked by a weak reference).

    An entry holds a weak reference, the array's shape, dtype, strides and data address; it is used
    only while the same object is alive with the same layout, so a new array that reuses a freed
    array's ``id`` is hashed afresh. Arrays are made read-only when remembered (module docstring).
    Anything that is not a NumPy array is hashed every time.
    """

    def __init__(self, digest=array_digest, max_entries: int = 64) -> None:
        self._digest = digest
        self._max = int(max_entries)
        self._memo: dict[int, tuple] = {}
        self._lock = threading.Lock()
        self.computed = 0

    def __call__(self, a) -> str:
        if type(a) is not np.ndarray:
            self.computed += 1
            return self._digest(a)
        layout = (a.shape, a.dtype.str, a.strides, a.__array_interface__["data"][0])
        with self._lock:
            hit = self._memo.get(id(a))
        if hit is not None and hit[0]() is a and hit[1] == layout and not a.flags.writeable:
            return hit[2]
        a.flags.writeable = False  # before hashing: what is hashed is what stays
        d = self._digest(a)
        self.computed += 1
        with self._lock:
            self._memo = {i: e for i, e in self._memo.items() if e[0]() is not None}  # drop dead arrays
            if len(self._memo) >= self._max:
                self._memo.pop(next(iter(self._memo)))
            self._memo[id(a)] = (weakref.ref(a), layout, d)
        return d


DIGESTS = DigestMemo()
"""The batch worker's remembered digests (kept across its scans with :data:`WORKER_PLANS`)."""


@contextlib.contextmanager
def remembered_digests(memo: DigestMemo = DIGESTS) -> Iterator[DigestMemo]:
    """Within the block, :func:`recon.plans.array_digest` (what every cache key calls) is ``memo``."""
    before = _plans.array_digest
    _plans.array_digest = memo
    try:
        yield memo
    finally:
        _plans.array_digest = before


__all__ = [
    "CACHE",
    "DIGESTS",
    "WORKER_PLANS",
    "DigestMemo",
    "PlanCache",
    "Plans",
    "array_digest",
    "nufft_key",
    "remembered_digests",
]
