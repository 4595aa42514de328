"""The run's memory estimate (recon.pipeline.memory_estimate / check_memory) for the time-bin gridding.

The default run grids into time bins through one shared plan: the estimate must count the bins'
images with the run's own bin count, and must not count a plan per bin (which refused the 128^3
protocol with 24 bins at 22 GiB while it peaks at 3.6 GiB, benchmarks/README.md).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recon import limits
from recon.options import RunOptions
from recon.pipeline import check_memory, memory_estimate

ACQ = SimpleNamespace(n_echoes=2, n_coils=1, te_s=(0.30e-3, 2.32e-3), sources=("scan.dat",))


def _bin_part(est) -> tuple[int, float]:
    (name,) = [k for k in est.parts if k.startswith("time-bin images")]
    return int(name.split("(")[1].split()[0]), est.parts[name]


def test_bin_images_follow_the_runs_first_pass_rule():
    from recon.b0 import first_time_bins
    from recon.nufft import NUFFT
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.224 / 16, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6)
    op = NUFFT(traj.k.reshape(-1, 3), traj.matrix, traj.fov_m)
    n_run = first_time_bins(op, np.asarray(traj.sample_times()).reshape(-1))  # what grid_bins uses
    n, size = _bin_part(memory_estimate(ACQ, traj, traj.matrix, RunOptions()))
    assert n == n_run
    assert size == n_run * 2 * 1 * float(np.prod(traj.matrix)) * 8


def test_explicit_bins_at_128_are_not_refused_for_a_plan_per_bin():
    traj = SimpleNamespace(n_projections=15520, n_samples=2476, dwell_s=10e-6)
    opts = RunOptions.from_mapping({"b0_segments": 24})
    est = memory_estimate(ACQ, traj, (128, 128, 128), opts)
    assert _bin_part(est) == (24, 24 * 2 * 128**3 * 8.0)
    # an upper estimate of the measured 3.6 GiB peak, far from the 22 GiB of a plan per bin
    assert 3.6 * 2**30 < est.total < 10 * 2**30
    with limits.override(memory="8GiB"):
        check_memory(ACQ, traj, (128, 128, 128), opts)
        with pytest.raises(limits.LimitError, match="time-bin images"):  # 256 bins: 8.6 GB of bin images
            check_memory(ACQ, traj, (128, 128, 128), RunOptions.from_mapping({"b0_segments": 256}))
