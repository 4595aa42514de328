"""Memory-lean paths give the same numbers: a released NUFFT rebuilds its plan; tb-cpr's per-bin factors
equal one full-size factor; the pipeline releases only operators that no plan cache keeps."""

from __future__ import annotations

import numpy as np

from recon.nufft import NUFFT
from recon.nufft.nudft import nudft_adjoint_at


def _samples(m=400, n=12, fov=0.2, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.uniform(-0.5, 0.5, (m, 3)) * n / fov  # cycles/m inside the grid's band
    y = (rng.standard_normal((2, m)) + 1j * rng.standard_normal((2, m))).astype(np.complex64)
    return k, y, (n,) * 3, fov


def test_released_nufft_rebuilds_the_same_transform():
    k, y, shape, fov = _samples()
    op = NUFFT(k, shape, fov, eps=1e-6, n_threads=1)
    before = op.adjoint(y)
    op.release()
    assert op._pts is None and not op._plans  # points and plans are gone
    after = op.adjoint(y)
    assert np.array_equal(before, after)
    vox = np.array([[0, 0, 0], [3, 7, 11], [11, 2, 5]])
    exact = nudft_adjoint_at(y[0], k, shape, fov, vox)  # independent truth
    got = after[0][tuple(vox.T)]
    assert np.abs(got - exact).max() < 1e-4 * np.abs(exact).max()


def test_tb_cpr_bin_factors_equal_one_full_factor():
    from recon.b0.correction import TimeBinnedGridder

    rng = np.random.default_rng(1)
    p, c, n, fov = 30, 40, 10, 0.2
    k = rng.uniform(-0.5, 0.5, (p, c, 3)) * n / fov
    t = np.arange(c) * 1e-5
    w = rng.uniform(0.5, 1.5, (p, c))
    y = (rng.standard_normal((2, p, c)) + 1j * rng.standard_normal((2, p, c))).astype(np.complex64)
    op = NUFFT(k, (n,) * 3, fov, n_threads=1)
    gr = TimeBinnedGridder(op, t, 4, w)
    demod = np.exp(2j * np.pi * 37.0 * t).astype(np.complex64)
    full = w.astype(np.float32) * demod[None, :]  # the previous implementation's one factor array
    assert np.array_equal(gr.grid(y, w, demod), gr.grid(y, full))
    assert np.array_equal(gr.grid(y, None, demod), gr.grid(y, np.broadcast_to(demod, (p, c))))


def test_pipeline_releases_only_uncached_operators(monkeypatch, tmp_path):
    """One run (no cache) releases its NUFFT after the B0 correction; a batch worker's cached one is kept."""
    import recon
    from recon.cli import main
    from recon.plans import PlanCache, Plans

    d = tmp_path / "sim"
    argv = ["-q", "simulate", "--out", str(d), "--matrix", "16", "--traj-undersampling", "4", "--snr", "50"]
    assert main([*argv, "--seed", "2", "--threads", "1"]) == 0
    released = []
    real = NUFFT.release
    monkeypatch.setattr(NUFFT, "release", lambda self: (released.append(self), real(self)))
    opts = {"calibration": "none"}
    a = recon.reconstruct(str(d / "raw.dat"), opts)
    assert released  # the run's own operator was released
    released.clear()
    cache = Plans(PlanCache())
    b = recon.reconstruct(str(d / "raw.dat"), opts, plans=cache)
    assert not released  # the cached operator stays planned for the next scan
    np.testing.assert_allclose(a.echoes, b.echoes, rtol=0, atol=1e-5 * np.abs(a.echoes).max())
