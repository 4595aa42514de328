"""Multi-coil data keep the unit chain: the combined image is in the data's signal units
(||S|| rho), not in the noise units that prewhitening leaves (issue 17: 4 coils gave ~7e5
instead of ~100)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.io.coils import combine_coils, noise_covariance, prewhiten


def _coils(rng, n_coils=4, shape=(12, 12, 12)):
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    sens = np.stack(
        [
            np.exp(-((g[0] - np.cos(a)) ** 2 + (g[1] - np.sin(a)) ** 2) / 1.5) * np.exp(1j * (a + 0.4 * g[2]))
            for a in 2 * np.pi * np.arange(n_coils) / n_coils
        ]
    )
    rho = (1.0 + 0.5 * g[0] ** 2) * np.exp(0.3j * g[1])
    a = rng.standard_normal((n_coils, n_coils)) + 1j * rng.standard_normal((n_coils, n_coils))
    cov = (a @ a.conj().T / n_coils + np.eye(n_coils)) * 3e-4  # correlated, unequal noise levels
    return sens, rho, cov


@pytest.mark.parametrize("prewhitened", [True, False])
def test_adaptive_combination_returns_rss_sensitivity_times_object(rng, prewhitened):
    sens, rho, cov = _coils(rng)
    x = sens * rho  # noise-free coil images in signal units (kernel 1: the Walsh estimate is exact)
    if prewhitened:
        x = prewhiten(x, coil_axis=0, cov=cov)
    comb = combine_coils(x, "adaptive", kernel=1, noise_cov=cov, prewhitened=prewhitened)
    truth = np.sqrt((np.abs(sens) ** 2).sum(0)) * np.abs(rho)
    np.testing.assert_allclose(np.abs(comb), truth, rtol=2e-3)
    sos = combine_coils(x, "sos", noise_cov=cov, prewhitened=prewhitened)
    np.testing.assert_allclose(sos, truth, rtol=2e-3)


def test_one_coil_is_unchanged_by_the_covariance(rng):
    x = (rng.standard_normal((1, 5, 5)) + 1j * rng.standard_normal((1, 5, 5))).astype(np.complex64)
    cov = np.array([[4e-6]])
    xw = prewhiten(x, coil_axis=0, cov=cov)
    np.testing.assert_allclose(combine_coils(xw, noise_cov=cov, prewhitened=True), x[0], rtol=1e-5)


def test_four_coils_match_one_coil_of_the_same_phantom():
    """Simulator --coils 4 vs --coils 1 (uniform receive) of one phantom, gridded with the same
    plan: the combined 4-coil echo image equals the true RSS sensitivity times the 1-coil image
    within a few % inside the object (calibration-free image values)."""
    from scipy import ndimage

    from recon.nufft import NUFFT, gridding
    from recon.sim import HeadPhantom, grid_points, simulate
    from recon.trajectory import compute_dcf, tpi

    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, undersampling=2.0)
    ph = HeadPhantom()
    dcf = compute_dcf(traj, "analytic")
    op = NUFFT(traj.k, traj.matrix, traj.fov_m, eps=1e-4)
    one = np.abs(gridding(op, simulate(ph, traj, snr=2000, n_coils=1, te_s=(0.3e-3,), n_threads=1).acquisition.data[0], dcf)[0])
    acq4 = simulate(ph, traj, snr=2000, n_coils=4, te_s=(0.3e-3,), n_threads=1).acquisition
    cov = noise_covariance(acq4.noise)
    imgs = gridding(op, prewhiten(acq4.data[0], coil_axis=0, cov=cov), dcf)
    four = np.abs(combine_coils(imgs, "adaptive", noise_cov=cov, prewhitened=True))
    rss = np.sqrt((np.abs(ph.receive_sensitivity(grid_points(traj.matrix, traj.fov_m), 4)) ** 2).sum(0))
    inside = ndimage.binary_erosion(one > 0.5 * np.percentile(one, 99))
    assert inside.sum() > 20
    ratio = four[inside] / (rss[inside] * one[inside])
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    assert (four[inside] / rss[inside]).mean() / one[inside].mean() == pytest.approx(1.0, abs=0.03)
    # without the covariance the image stays in noise units (what the pipeline wrote before)
    assert np.median(np.abs(combine_coils(imgs, "adaptive"))[inside] / four[inside]) > 100


def test_reconstruct_four_coils_in_the_units_of_one_coil():
    """recon.reconstruct (prewhitening, gridding, B0 correction, combination) on the simulator's
    4-coil and 1-coil scans of one phantom: echo images agree once the true RSS sensitivity is
    divided out (without the covariance they came out ~1000x larger, in noise units)."""
    from scipy import ndimage

    import recon
    from recon.sim import HeadPhantom, grid_points, simulate
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, undersampling=2.0)
    ph = HeadPhantom()
    opts = {"calibration": "none", "qa": False}
    res = {
        nc: recon.reconstruct(simulate(ph, traj, snr=2000, n_coils=nc, n_threads=1).acquisition, opts, trajectory=traj)
        for nc in (1, 4)
    }
    rss = np.sqrt((np.abs(ph.receive_sensitivity(grid_points(traj.matrix, traj.fov_m), 4)) ** 2).sum(0))
    one = np.abs(res[1].echoes[0])
    inside = ndimage.binary_erosion(one > 0.5 * np.percentile(one, 99))
    for e in range(2):
        ratio = np.abs(res[4].echoes[e])[inside] / (rss[inside] * np.abs(res[1].echoes[e])[inside])
        assert np.median(ratio) == pytest.approx(1.0, abs=0.04)


def test_iterative_coils_share_one_model_and_its_kernels(caplog):
    """reconstruct_iterative with a ``shared`` dict (the pipeline's per-scan dict): the second coil reuses the first
    coil's Toeplitz kernels and gives the solution of a call that builds its own (to 1e-6); another field map is
    another key, so its kernels are rebuilt."""
    import logging

    from recon.iterative import reconstruct_iterative
    from recon.nufft import NUFFT
    from recon.trajectory import compute_dcf, tpi

    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, undersampling=2.0)
    w = compute_dcf(traj, "analytic")
    op = NUFFT(traj.k, traj.matrix, traj.fov_m, eps=1e-6, dtype=np.complex128)
    rng = np.random.default_rng(1)
    t = np.asarray(traj.sample_times())
    y = rng.standard_normal((2, *op.kshape)) + 1j * rng.standard_normal((2, *op.kshape))
    f = np.full(traj.matrix, 20.0)
    kw = dict(decay="two-pool", tissue_fraction=np.full(traj.matrix, 0.5), max_iter=5, progress=False)
    shared: dict = {}
    reconstruct_iterative(op, 0.5 * y, w, [3e-4, 2.3e-3], t, f, shared=shared, **kw)
    with caplog.at_level(logging.DEBUG, logger="recon.iterative"):
        again = reconstruct_iterative(op, y, w, [3e-4, 2.3e-3], t, f, shared=shared, **kw)
    assert "Toeplitz kernels reused" in caplog.text
    alone = reconstruct_iterative(op, y, w, [3e-4, 2.3e-3], t, f, **kw)
    assert np.max(np.abs(again.x - alone.x)) <= 1e-6 * np.max(np.abs(alone.x))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="recon.iterative"):
        reconstruct_iterative(op, y, w, [3e-4, 2.3e-3], t, f + 5.0, shared=shared, **kw)
    assert "Toeplitz kernels reused" not in caplog.text
