"""TPI / radial trajectory invariants against the closed-form design equations (Boada 1997)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon.errors import TrajectoryError
from recon.trajectory import (
    Trajectory,
    density_adapted_radial,
    read_trajectory,
    tpi,
    tpi_cones,
    tpi_readout_s,
    write_trajectory,
)

GAMMA = 11.262e6


@pytest.fixture(scope="module")
def tpi64():
    return tpi(fov_m=0.224, res_m=0.0035, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6)


def test_protocol_counts(tpi64):
    assert tpi64.params["n_cones"] == 102
    assert tpi64.n_projections == 3920
    assert tpi64.n_samples == 1238
    assert tpi64.k.shape == (3920, 1238, 3)
    # about pi p N^2 projections in all
    assert abs(tpi64.n_projections - math.pi * 0.3 * 64**2) / tpi64.n_projections < 0.02


def test_readout_duration(tpi64):
    assert tpi_readout_s(1 / 0.007, 0.3, 4e-3, GAMMA) == pytest.approx(12.38e-3, abs=0.005e-3)
    assert tpi64.params["readout_reached_s"] == pytest.approx(12.3795e-3, rel=1e-4)


def test_kmax(tpi64):
    kmax = 1 / (2 * 0.0035)
    assert kmax == pytest.approx(142.857, abs=1e-3)
    kr = np.linalg.norm(tpi64.k, axis=-1)
    # the last sample lies within one dwell of the end of the readout
    assert kr.max() <= kmax * (1 + 1e-9)
    assert kr.max() == pytest.approx(kmax, rel=5e-4)


def test_radial_then_twist_follows_closed_form(tpi64):
    """|k(t)| = gbar G t up to k0, then (3 gbar G k0^2 (t - t0) + k0^3)^(1/3)."""
    kmax, p, G = 1 / 0.007, 0.3, 4e-3
    k0 = p * kmax
    t0 = k0 / (GAMMA * G)
    t = tpi64.t
    expect = np.where(t <= t0, GAMMA * G * t, np.cbrt(3 * GAMMA * G * k0**2 * (t - t0) + k0**3))
    kr = np.linalg.norm(tpi64.k, axis=-1)
    np.testing.assert_allclose(kr[::97], np.broadcast_to(expect, kr.shape)[::97], rtol=2e-4, atol=2e-3)
    # straight line in phase 1: direction constant
    ph1 = t < 0.9 * t0
    d = tpi64.k[:, ph1][:, 1:] / kr[:, ph1][:, 1:, None]
    assert np.abs(d - d[:, -1:]).max() < 1e-6


def test_gradient_constant_in_twist(tpi64):
    # |G| from k differences at a 1 us dwell (at 10 us the chord of the tight polar turns is
    # 0.5% shorter than the arc); all cones present, fewer projections per cone
    fine = tpi(fov_m=0.224, res_m=0.0035, p=0.3, gmax_t_per_m=4e-3, dwell_s=1e-6, undersampling=30)
    assert fine.params["n_cones"] == 102
    gm = np.linalg.norm(fine.gradient_t_per_m(), axis=-1)
    t0 = 0.3 * (1 / 0.007) / (GAMMA * 4e-3)
    tw = fine.t[1:] > t0 + 2 * fine.dwell_s
    rel = np.abs(gm[:, tw] - 4e-3) / 4e-3
    assert rel.max() < 1e-3
    # and it twists: the azimuth changes after k0 only
    phi = np.unwrap(np.arctan2(tpi64.k[50, :, 1], tpi64.k[50, :, 0]))
    assert abs(phi[-1] - phi[300]) > 1.0


def test_cone_distribution():
    kmax = 1 / 0.007
    theta, n_phi = tpi_cones(kmax, 0.224, 0.3)
    assert len(theta) == 2 * math.ceil(math.pi * kmax * 0.224 / 2)
    np.testing.assert_allclose(theta, (np.arange(102) + 0.5) * math.pi / 102)
    np.testing.assert_array_equal(n_phi, np.rint(0.3 * 2 * math.pi * kmax * 0.224 * np.sin(theta)))
    th2, n2 = tpi_cones(kmax, 0.224, 0.3, undersampling=2)
    assert n2.sum() == pytest.approx(n_phi.sum() / 2, rel=0.02)


def test_slew_limited_design_respects_limits():
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3, smax_t_per_m_per_s=60.0)
    c = tr.checks()
    assert c["max_slew_t_per_m_per_s"] <= 60.0
    assert c["max_gradient_t_per_m"] <= 4e-3 * (1 + 1e-9)
    assert c["kmax_reached_per_m"] == pytest.approx(1 / 0.014, rel=1e-3)
    # slower than the ideal design, never faster
    assert tr.params["readout_reached_s"] >= tr.params["readout_design_s"] * (1 - 1e-6)
    # an independent slew measure from k itself: second differences at the dwell raster
    g = tr.gradient_t_per_m()
    g0 = np.concatenate([np.zeros_like(g[:, :1]), g], axis=1)
    slew = np.linalg.norm(np.diff(g0, axis=1), axis=-1) / tr.dwell_s
    assert slew.max() <= 60.0 * 1.05
    ideal = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    assert ideal.checks()["max_slew_t_per_m_per_s"] > 60.0  # the instant switch-on violates it


def test_readout_given_instead_of_gradient():
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=None, readout_s=10e-3)
    assert tr.params["readout_reached_s"] == pytest.approx(10e-3, rel=1e-4)


def test_radial_variant():
    r = density_adapted_radial(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3, n_projections=500)
    assert r.k.shape[0] == 500
    kr = np.linalg.norm(r.k, axis=-1)
    # straight lines: k / |k| constant along each projection
    d = r.k[:, 5:] / kr[:, 5:, None]
    assert np.abs(d - d[:, -1:]).max() < 1e-9
    # same readout equation as TPI
    assert r.params["readout_reached_s"] == pytest.approx(tpi_readout_s(1 / 0.014, 0.3, 4e-3, GAMMA), rel=1e-3)
    # directions uniform on the sphere: mean direction ~ 0
    assert np.linalg.norm(d[:, -1].mean(0)) < 0.01


@pytest.mark.parametrize(
    "bad",
    [
        dict(p=0),
        dict(p=1.5),
        dict(res_m=0.3),
        dict(gmax_t_per_m=-1e-3),
        dict(gmax_t_per_m=None, readout_s=None),
        dict(undersampling=0.5),
    ],
)
def test_bad_design_parameters(bad):
    kw = dict(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    kw.update(bad)
    with pytest.raises(TrajectoryError):
        tpi(**kw)


def test_file_roundtrip(tmp_path):
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    tr = tr.with_dcf(np.ones(tr.k.shape[:2]))
    f = tmp_path / "traj.h5"
    write_trajectory(tr, f)
    back = read_trajectory(f)
    np.testing.assert_array_equal(back.k, tr.k)
    np.testing.assert_array_equal(back.t, tr.t)
    np.testing.assert_array_equal(back.dcf, tr.dcf)
    assert back.fov_m == tr.fov_m and back.matrix == tr.matrix
    assert back.dwell_s == tr.dwell_s and back.gamma_hz_per_t == tr.gamma_hz_per_t
    assert back.params["p"] == 0.3 and back.params["generator"] == "tpi"
    assert back.params["projections_per_cone"] == tr.params["projections_per_cone"]
    import h5py

    with h5py.File(f) as h:  # the DESIGN.md layout
        assert h["k"].shape == tr.k.shape and h["t"].shape == (tr.n_samples,)
        for a in ("fov_m", "matrix", "gamma_hz_per_t", "dwell_s"):
            assert a in h.attrs


def test_foreign_trajectory_file_minimal(tmp_path):
    """A file written by another tool with only the required fields reads."""
    import h5py

    f = tmp_path / "other.h5"
    k = np.random.default_rng(0).uniform(-50, 50, (10, 20, 3))
    with h5py.File(f, "w") as h:
        h["k"] = k
        h["t"] = np.arange(20) * 1e-5
        h.attrs.update(fov_m=0.2, matrix=32, gamma_hz_per_t=GAMMA, dwell_s=1e-5)
    tr = read_trajectory(f)
    assert tr.k.shape == (10, 20, 3) and tr.fov_m == (0.2, 0.2, 0.2)


@pytest.mark.parametrize("layout", ["contiguous", "big-endian", "chunked-gzip"])
def test_file_datasets_read_as_h5py_reads_them(tmp_path, layout):
    """k, t and dcf come back equal to h5py's own read whatever the storage (contiguous ones are
    mapped copy-on-write from the file: writing to them leaves the file as it was)."""
    import h5py

    rng = np.random.default_rng(4)
    k = rng.uniform(-50, 50, (12, 20, 3))
    f = tmp_path / "t.h5"
    kw = {"chunks": (4, 20, 3), "compression": "gzip"} if layout == "chunked-gzip" else {}
    dt = ">f8" if layout == "big-endian" else "<f8"
    with h5py.File(f, "w") as h:
        h.create_dataset("k", data=k.astype(dt), **kw)
        h.create_dataset("t", data=(np.arange(20) * 1e-5).astype(dt))
        h.create_dataset("dcf", data=rng.random((12, 20)).astype(dt), **({"compression": "gzip"} if kw else {}))
        h.attrs.update(fov_m=0.2, matrix=32, gamma_hz_per_t=GAMMA, dwell_s=1e-5)
    before = f.read_bytes()
    tr = read_trajectory(f)
    with h5py.File(f) as h:
        for name in ("k", "t", "dcf"):
            np.testing.assert_array_equal(getattr(tr, name), h[name][()])
    tr.dcf[0, 0] = -5.0
    assert f.read_bytes() == before


@pytest.mark.parametrize("case", ["missing", "not_hdf5", "no_k", "bad_shape", "units_cm"])
def test_bad_trajectory_files(tmp_path, case):
    import h5py

    f = tmp_path / "t.h5"
    if case == "not_hdf5":
        f.write_bytes(b"hello, not hdf5")
    elif case != "missing":
        with h5py.File(f, "w") as h:
            if case != "no_k":
                h["k"] = np.zeros((5, 10, 2)) if case == "bad_shape" else np.full((5, 10, 3), 5000.0)
            h["t"] = np.arange(10) * 1e-5
            h.attrs.update(fov_m=0.2, matrix=32, gamma_hz_per_t=GAMMA, dwell_s=1e-5)
    with pytest.raises(TrajectoryError) as e:
        read_trajectory(f)
    assert str(f) in str(e.value)


def test_trajectory_validation():
    with pytest.raises(TrajectoryError):
        Trajectory(k=np.full((2, 3, 3), np.nan), t=np.zeros(3), fov_m=0.2, matrix=32, dwell_s=1e-5)
    with pytest.raises(TrajectoryError):
        Trajectory(k=np.zeros((2, 3, 3)), t=np.zeros(4), fov_m=0.2, matrix=32, dwell_s=1e-5)
