"""Accuracy and cost of a reconstruction on the phantom: ideal image, ROI bias, NRMSE, time and memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from recon.bench.variants import ROIS


# ---------------------------------------------------------------------------------- phantom
def ideal_image(phantom, traj, te_s: float | None, tr_s: float, flip_deg: float, supersample: int = 2) -> np.ndarray:
    """The ideal image on the trajectory's grid: voxel-averaged sum over compartments of
    fraction x TSC x T1 saturation x decay(te_s) (decay 1 when ``te_s`` is None), in mM."""
    from recon.sim.phantom import grid_points

    sub = grid_points(traj.matrix, traj.fov_m, (0.0, 0.0, 0.0), supersample=supersample)
    comps, frac = phantom.fractions(sub)
    amp = np.array(
        [c.tsc_mM * c.t1_factor(tr_s, flip_deg) * (1.0 if te_s is None else float(c.decay(te_s))) for c in comps], dtype=np.float64
    )
    img = np.tensordot(amp, frac, axes=1)
    return img.mean(axis=0) if supersample > 1 else img


def roi_bias(image: np.ndarray, ideal: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Bias in % per ROI of :data:`ROIS`: mean |image| / mean ideal - 1 (NaN for an empty ROI)."""
    out = {}
    mag = np.abs(image)
    for name, labs in ROIS.items():
        m = np.isin(labels, labs)
        out[name] = float(100 * (mag[m].mean() / ideal[m].mean() - 1)) if m.any() else float("nan")
    return out


def nrmse(image: np.ndarray, ideal: np.ndarray) -> float:
    """|| |image| - ideal || / || ideal || over the whole grid."""
    return float(np.linalg.norm(np.abs(image) - ideal) / np.linalg.norm(ideal))


def measure_cost(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return its result, the wall time in s and the peak traced memory in MiB."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was:
        tracemalloc.stop()
    return out, dt, peak / 2**20
