"""Trajectory validation: the early errors of issue 16 (t, FOV, gamma, k all zero), named by file
when read; the lean passes (blocked checks, kmax, TPI rotation) against the plain numpy formulas."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recon.errors import TrajectoryError
from recon.trajectory import Trajectory, density_adapted_radial, read_trajectory, tpi, write_trajectory
from recon.trajectory.tpi import _rotate_cones


@pytest.fixture(scope="module")
def small():
    return tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)


def _plain(tr: Trajectory, **changes) -> dict:
    d = dict(k=tr.k, t=tr.t, fov_m=tr.fov_m, matrix=tr.matrix, dwell_s=tr.dwell_s, gamma_hz_per_t=tr.gamma_hz_per_t)
    d.update(changes)
    return d


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda tr: {"t": tr.t - 1e-3}, "t must count from the first ADC sample"),
        (lambda tr: {"t": tr.t[::-1].copy()}, "t must increase"),
        (lambda tr: {"t": np.where(np.arange(tr.n_samples) == 5, tr.t[4], tr.t)}, "t must increase"),
        (lambda tr: {"fov_m": (0.224, float("nan"), 0.224)}, "positive and finite"),
        (lambda tr: {"gamma_hz_per_t": float("nan")}, "gyromagnetic ratio"),
        (lambda tr: {"k": np.zeros_like(tr.k)}, "k is all zero"),
        (lambda tr: {"k": tr.k * 100}, "more than 3x the grid's Nyquist limit"),
        (lambda tr: {"k": np.where(np.arange(tr.n_samples)[None, :, None] == 3, np.nan, tr.k)}, "NaN or infinite"),
    ],
)
def test_implausible_trajectories_are_refused(small, change, match):
    with pytest.raises(TrajectoryError, match=match):
        Trajectory(**_plain(small, **change(small)))


def test_plausible_extremes_pass(small):
    Trajectory(**_plain(small))
    Trajectory(**_plain(small, k=small.k * 0.03))  # a short readout on a fine grid is still a trajectory
    sub = small.subset(slice(0, 1))  # one projection: small extent on two axes
    assert sub.n_projections == 1
    per_proj_t = np.broadcast_to(small.t, small.k.shape[:2]).copy()
    Trajectory(**_plain(small, t=per_proj_t))


def test_file_with_bad_times_is_named(small, tmp_path):
    p = tmp_path / "bad_t.h5"
    write_trajectory(dataclasses.replace(small), p)
    import h5py

    with h5py.File(p, "r+") as f:
        f["t"][...] = f["t"][()] - 1.0
    with pytest.raises(TrajectoryError, match="bad_t.h5.*first ADC sample"):
        read_trajectory(p)


def test_kmax_and_checks_match_plain_formulas(small):
    kr = np.linalg.norm(small.k, axis=-1)
    assert small.kmax_reached == pytest.approx(kr.max(), rel=1e-14)
    nowave = dataclasses.replace(small, waveforms=None)
    chk = nowave.checks()
    g = np.diff(small.k, axis=1) / (small.gamma_hz_per_t * small.dwell_s)
    g0 = np.concatenate([np.zeros_like(g[:, :1]), g], axis=1)
    assert chk["max_gradient_t_per_m"] == pytest.approx(np.sqrt((g**2).sum(-1)).max(), rel=1e-12)
    slew = np.sqrt((np.diff(g0, axis=1) ** 2).sum(-1)) / small.dwell_s
    assert chk["max_slew_t_per_m_per_s"] == pytest.approx(slew.max(), rel=1e-12)
    rad = density_adapted_radial(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    assert rad.checks()["max_gradient_t_per_m"] <= 4e-3 * (1 + 1e-9)


def test_cone_rotation_is_the_gathered_rotation_bit_for_bit(rng):
    cone_k = rng.standard_normal((4, 30, 3))
    n_phi = np.array([3, 5, 5, 2])
    rot = np.concatenate([2 * np.pi * np.arange(m) / m for m in n_phi])
    idx = np.repeat(np.arange(4), n_phi)
    base = cone_k[idx]
    c, s = np.cos(rot)[:, None], np.sin(rot)[:, None]
    want = np.stack([c * base[..., 0] - s * base[..., 1], s * base[..., 0] + c * base[..., 1], base[..., 2]], axis=-1)
    np.testing.assert_array_equal(_rotate_cones(cone_k, n_phi, rot), want)
