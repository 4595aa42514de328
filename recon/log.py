"""Logging set-up and stage timing.

``stage(name)`` logs the start of a pipeline stage at DEBUG and its end with the elapsed wall
time in seconds at INFO, so every CLI run shows what took how long.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

logger = logging.getLogger("recon")


def setup_logging(verbosity: int = 0, stream=None) -> None:
    """Configure the ``recon`` logger: 0 = INFO, >=1 = DEBUG, -1 = WARNING only."""
    level = logging.DEBUG if verbosity >= 1 else logging.WARNING if verbosity < 0 else logging.INFO
    root = logging.getLogger("recon")
    root.setLevel(level)
    for h in list(root.handlers):
        if getattr(h, "_narecon", False):
            root.removeHandler(h)
    h = logging.StreamHandler(stream or sys.stderr)
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    h._narecon = True  # type: ignore[attr-defined]
    root.addHandler(h)
    root.propagate = False


class StageTimer:
    """Collects ``{stage name: seconds}`` for provenance records."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with stage(name) as rec:
            yield
        self.timings[name] = self.timings.get(name, 0.0) + rec["seconds"]


@contextlib.contextmanager
def stage(name: str, log: logging.Logger | None = None) -> Iterator[dict]:
    """Time a block; logs ``<name>: <seconds> s`` at INFO when it ends."""
    log = log or logger
    rec: dict = {"seconds": 0.0}
    log.debug("%s ...", name)
    t0 = time.perf_counter()
    try:
        yield rec
    finally:
        rec["seconds"] = time.perf_counter() - t0
        log.info("%s: %.2f s", name, rec["seconds"])
