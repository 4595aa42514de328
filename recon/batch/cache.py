"""The batch worker's persistent plans: one :class:`recon.plans.Plans` per worker process.

A batch worker reconstructs many scans of the same protocol; the trajectory design, its density
weights and the NUFFT plans (finufft's sort and spreading set-up, tb-cpr's per-bin plans) depend
only on the protocol, so each worker keeps one cached :class:`~recon.plans.Plans` for its whole
life and hands it to :func:`recon.pipeline.run` for every scan (plans go down: the pipeline
never imports this module). The cache is a small LRU per kind (``NARECON_PLAN_CACHE`` entries,
default 2), see :mod:`recon.plans` for the keys.
"""

from __future__ import annotations

from recon.plans import PlanCache, Plans, array_digest, nufft_key

CACHE = PlanCache()
"""The process-wide cache of a batch worker."""

WORKER_PLANS = Plans(CACHE)
"""The plans a batch worker passes to every scan it reconstructs."""

__all__ = ["CACHE", "WORKER_PLANS", "PlanCache", "Plans", "array_digest", "nufft_key"]
