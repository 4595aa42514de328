"""Trajectory import (BART, MRI-NUFFT .bin, arrays in declared units), gradient delay, skip/drop,
the unit plausibility check in both directions, and ``narecon traj import``.

Truths: BART's own ``bart traj`` output against its documented formulas; MRI-NUFFT's own
writer for the .bin format; the analytic trapezoid readout with a delay against the
interpolated delay; unit factors by definition.
"""

from __future__ import annotations

import math
import shutil
import subprocess

import numpy as np
import pytest

from recon.errors import InputError, NareconError, TrajectoryError
from recon.trajectory.importers import (
    apply_gradient_delay,
    drop_readouts,
    import_trajectory,
    k_to_per_m,
    parse_index_list,
    read_cfl,
    select_projections,
)
from recon.trajectory.units import check_trajectory_units
from recon.trajectory.xenon import (
    halton,
    halton_spiral_directions,
    halton_spiral_order,
    ideal_spiral_directions,
    trapezoid_radius,
    xenon_radial,
)


def _write_cfl(base, arr):
    arr = np.asarray(arr, dtype=np.complex64)
    with open(f"{base}.hdr", "w") as f:
        f.write("# Dimensions\n" + " ".join(str(d) for d in arr.shape + (1,) * (16 - arr.ndim)) + "\n")
    arr.reshape(-1, order="F").tofile(f"{base}.cfl")


# ------------------------------------------------------------------------------ BART
@pytest.mark.skipif(shutil.which("bart") is None, reason="BART (bart) is not installed")
def test_bart_cartesian_and_radial_from_bart_itself(tmp_path):
    fov = 0.2
    subprocess.run(["bart", "traj", "-x", "6", "-y", "4", str(tmp_path / "cart")], check=True, capture_output=True)
    tr = import_trajectory(tmp_path / "cart.cfl", fov_m=fov, dwell_s=10e-6, matrix=(6, 4, 1))
    i, j = np.meshgrid(np.arange(6), np.arange(4))  # (proj=j, sample=i)
    np.testing.assert_allclose(tr.k[:, :, 0], (i - 3) / fov, atol=1e-5)
    np.testing.assert_allclose(tr.k[:, :, 1], (j - 2) / fov, atol=1e-5)
    subprocess.run(["bart", "traj", "-x", "8", "-y", "3", "-r", str(tmp_path / "rad")], check=True, capture_output=True)
    tr = import_trajectory(tmp_path / "rad.hdr", fov_m=fov, dwell_s=10e-6, matrix=8)
    th = np.pi * np.arange(3) / 3
    r = np.arange(8) - 3.5
    np.testing.assert_allclose(tr.k[:, :, 0], np.sin(th)[:, None] * r / fov, atol=1e-4)
    np.testing.assert_allclose(tr.k[:, :, 1], np.cos(th)[:, None] * r / fov, atol=1e-4)


def test_bart_layout_and_errors(tmp_path, rng):
    k = rng.uniform(-10, 10, size=(7, 5, 3))  # (proj, samp, 3) in cycles/FOV
    _write_cfl(tmp_path / "t", np.transpose(k, (2, 1, 0)))
    np.testing.assert_allclose(read_cfl(tmp_path / "t").real, np.transpose(k, (2, 1, 0)), rtol=1e-6)
    tr = import_trajectory(tmp_path / "t.cfl", fov_m=0.25, dwell_s=5e-6, matrix=20)
    np.testing.assert_allclose(tr.k, k / 0.25, rtol=1e-6)
    assert tr.dwell_s == 5e-6 and tr.t[1] == pytest.approx(5e-6)
    with pytest.raises(TrajectoryError, match="FOV"):
        import_trajectory(tmp_path / "t.cfl", dwell_s=5e-6)
    with pytest.raises(TrajectoryError, match="dwell"):
        import_trajectory(tmp_path / "t.cfl", fov_m=0.25)
    _write_cfl(tmp_path / "bad", np.zeros((2, 5, 7)))
    with pytest.raises(TrajectoryError, match="3 coordinates"):
        import_trajectory(tmp_path / "bad.cfl", fov_m=0.25, dwell_s=5e-6)
    (tmp_path / "lone.cfl").write_bytes(b"\0" * 8)
    with pytest.raises(TrajectoryError, match=r"\.hdr and \.cfl"):
        import_trajectory(tmp_path / "lone.cfl", fov_m=0.25, dwell_s=5e-6)


# -------------------------------------------------------------------------- MRI-NUFFT
def test_nsp_bin_written_by_mrinufft(tmp_path):
    mio = pytest.importorskip("mrinufft.io", reason="mri-nufft is not installed")
    fov, n = 0.224, 64
    # a 3D centre-out radial in mri-nufft's normalized units (+-0.5 at Nyquist), slow enough for its gradient limits
    dirs = ideal_spiral_directions(50)
    kn = dirs[:, None, :] * np.linspace(0, 0.45, 128)[None, :, None]
    base = str(tmp_path / "radial")
    mio.write_trajectory(
        kn.astype(np.float32), FOV=(fov,) * 3, img_size=(n,) * 3, grad_filename=base, check_constraints=False, TE_pos=0
    )
    assert import_trajectory(base + ".bin", dwell_s=10e-6).n_samples == 127  # 127 gradient steps on the 10 us raster
    tr = import_trajectory(base + ".bin", dwell_s=10e-6, n_samples=128)
    assert tr.fov_m == pytest.approx((fov,) * 3) and tr.matrix == (n, n, n)
    expected = kn * n / fov  # normalized -> 1/m
    assert tr.k.shape == expected.shape
    assert np.abs(tr.k - expected).max() < 2e-3 * np.abs(expected).max()


# ----------------------------------------------------------------------------- arrays
@pytest.mark.parametrize(
    "units,factor",
    [("1/m", 1.0), ("1/cm", 1e-2), ("1/mm", 1e-3), ("rad/m", 2 * math.pi), ("cycles/fov", 0.224), ("normalized", 0.224 / 64)],
)
def test_array_units(tmp_path, units, factor):
    k = xenon_radial(20, 16, 10e-6, 0.224, 64).k
    np.save(tmp_path / "k.npy", k * factor)
    tr = import_trajectory(tmp_path / "k.npy", units=units, fov_m=0.224, matrix=64, dwell_s=10e-6)
    np.testing.assert_allclose(tr.k, k, rtol=1e-12, atol=1e-12)


def test_text_points_and_errors(tmp_path):
    k = xenon_radial(5, 8, 10e-6, 0.224, 64).k
    np.savetxt(tmp_path / "k.txt", k.reshape(-1, 3) * 1e-2)
    tr = import_trajectory(tmp_path / "k.txt", units="1/cm", fov_m=0.224, matrix=64, dwell_s=10e-6, n_samples=8)
    np.testing.assert_allclose(tr.k, k, rtol=1e-6, atol=1e-8)
    with pytest.raises(TrajectoryError, match="samples per projection"):
        import_trajectory(tmp_path / "k.txt", units="1/cm", fov_m=0.224, dwell_s=10e-6)
    with pytest.raises(TrajectoryError, match="no units"):
        import_trajectory(tmp_path / "k.txt", fov_m=0.224, dwell_s=10e-6, n_samples=8)
    with pytest.raises(TrajectoryError, match="unknown k units"):
        k_to_per_m(k, "furlong")
    (tmp_path / "k.xyz").write_text("1 2 3\n")
    with pytest.raises(TrajectoryError, match="unknown trajectory format"):
        import_trajectory(tmp_path / "k.xyz")
    with pytest.raises(TrajectoryError, match="not found"):
        import_trajectory(tmp_path / "absent.npy", units="1/m")


# ------------------------------------------------------------------------ xenon design
def test_halton_and_spiral_definitions():
    np.testing.assert_allclose(halton(np.arange(1, 6), 2), [0.5, 0.25, 0.75, 0.125, 0.625])
    np.testing.assert_allclose(halton(np.arange(1, 5), 3), [1 / 3, 2 / 3, 1 / 9, 4 / 9])
    n = 300
    d = ideal_spiral_directions(n)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    np.testing.assert_allclose(d[:, 2], -1 + 2 * np.arange(n) / n)
    order = halton_spiral_order(n)
    assert sorted(order) == list(range(n))  # a permutation
    hs = halton_spiral_directions(n)
    # every run of 50 consecutive views covers the sphere: mean direction near 0 (the plain spiral's is a pole)
    assert np.linalg.norm(hs[:50].mean(0)) < 0.2 < np.linalg.norm(d[:50].mean(0))


def test_trapezoid_radius_integrates_the_gradient():
    t = np.arange(0, 400e-6, 1e-6)
    v = 1e6  # 1/m per s on the plateau
    kr = trapezoid_radius(t, v, ramp_s=100e-6, plateau_s=200e-6, decay_s=60e-6, delay_s=20e-6)
    g = np.clip((t - 20e-6) / 100e-6, 0, 1) * (t >= 20e-6)
    g = np.where(t > 320e-6, np.clip(1 - (t - 320e-6) / 60e-6, 0, 1), g)
    k_num = np.concatenate([[0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(t))]) * v
    np.testing.assert_allclose(kr, k_num, atol=1e-3 * kr.max())


def test_gradient_delay_matches_the_analytic_delayed_readout():
    base = xenon_radial(40, 64, 10e-6, 0.4, 64, delay_s=0.0)
    for delay in (-5e-6, (3e-6, -2e-6, 7e-6)):
        want = xenon_radial(40, 64, 10e-6, 0.4, 64, delay_s=delay)
        got = apply_gradient_delay(base, delay)
        assert np.abs(got.k - want.k).max() < 2e-3 * want.kmax_reached
        assert np.abs(base.k - want.k).max() > 5e-3 * want.kmax_reached  # the delay matters
    assert apply_gradient_delay(base, 0.0) is base


def test_skip_and_drop():
    tr = xenon_radial(10, 8, 10e-6, 0.4, 64)
    s = select_projections(tr, skip=2, drop=[5, 7])
    np.testing.assert_array_equal(s.k, tr.k[[2, 3, 4, 6, 8, 9]])
    assert parse_index_list("1, 3-5,9") == [1, 3, 4, 5, 9]
    with pytest.raises(InputError):
        select_projections(tr, drop=[10])
    from recon.io import Acquisition

    data = np.arange(2 * 1 * 10 * 8, dtype=np.complex64).reshape(2, 1, 10, 8)
    acq = Acquisition(data, (1e-3, 2e-3), 0.1, 90, 10e-6, "23Na", 32.6e6, 2.89)
    out = drop_readouts(acq, skip=3, drop=[6])
    np.testing.assert_array_equal(out.projection_index[0], [3, 4, 5, 7, 8, 9])
    np.testing.assert_array_equal(out.data[1, 0, 0], data[1, 0, 3])


# ---------------------------------------------------------------------- units check
def _acq_for(traj, fov_m, matrix, reverse=False):
    """An acquisition whose data peak at the trajectory's centre (a smooth blob's transform)."""
    from recon.io import Acquisition

    kr = np.linalg.norm(traj.k, axis=-1)
    y = np.exp(-((kr * 0.02) ** 2)).astype(np.complex64)
    if reverse:
        y = y[:, ::-1]
    return Acquisition(
        y[None, None], (1e-3,), 0.1, 90, traj.dwell_s, "23Na", 32.6e6, 2.89, fov_m=(fov_m,) * 3, matrix=(matrix,) * 3
    )


def test_units_check_both_directions(tmp_path):
    good = xenon_radial(200, 64, 10e-6, 0.224, 64, delay_s=0.0)
    acq = _acq_for(good, 0.224, 64)
    assert 0.85 < check_trajectory_units(good, acq)["kmax_ratio"] < 1.0
    cases = {"1/cm": 1e-2, "1/mm": 1e-3, "cycles/FOV": 0.224, "normalized": 0.224 / 64 / 0.5 * 0.5}
    for unit, factor in cases.items():
        # the trajectory as a user would have imported it: numbers of another unit taken as 1/m
        wrong = xenon_radial(200, 64, 10e-6, 0.224 / factor, 64, delay_s=0.0)
        with pytest.raises(TrajectoryError, match=f"too small.*likely {unit}".replace("/", ".")):
            check_trajectory_units(wrong, acq)
    # too large: k in rad/m (2 pi) or 1/m declared as 1/cm (x100), against the header
    for unit, factor in {"rad/m": 2 * math.pi, "1/m declared as 1/cm": 100.0}.items():
        big = xenon_radial(200, 64, 10e-6, 0.224 / factor, 64, delay_s=0.0)
        with pytest.raises(TrajectoryError, match=f"too large.*likely {unit}"):
            check_trajectory_units(big, acq)
    # the data's own k-space centre: a reversed readout is refused
    with pytest.raises(TrajectoryError, match="k-space centre is at readout sample 63"):
        check_trajectory_units(good, _acq_for(good, 0.224, 64, reverse=True))


# -------------------------------------------------------------------------------- CLI
def test_cli_traj_import_roundtrip(tmp_path, capsys):
    from recon.cli import main
    from recon.trajectory import read_trajectory

    k = xenon_radial(30, 16, 10e-6, 0.224, 64).k
    np.save(tmp_path / "k.npy", k * 1e-2)
    out = tmp_path / "t.h5"
    args = ["traj", "import", str(tmp_path / "k.npy"), "--units", "1/cm", "--fov-mm", "224", "--matrix", "64"]
    args += ["--dwell-us", "10", "--skip", "2", "--drop", "5,6", "--gradient-delay-us", "0", "--dcf", "analytic", "--out", str(out)]
    assert main(args) == 0
    tr = read_trajectory(out)
    np.testing.assert_allclose(tr.k, k[[i for i in range(30) if i not in (0, 1, 5, 6)]], rtol=1e-12)
    assert tr.dcf is not None and tr.params["generator"] == "array"
    assert "wrote" in capsys.readouterr().out
    assert main(args) != 0  # exists without --force
    assert "exists" in capsys.readouterr().err


def test_cli_refuses_unconvertible(tmp_path, capsys):
    from recon.cli import main

    np.save(tmp_path / "k.npy", np.zeros((3, 4, 3)))
    rc = main(
        ["traj", "import", str(tmp_path / "k.npy"), "--units", "cycles/fov", "--dwell-us", "10", "--out", str(tmp_path / "o.h5")]
    )
    assert rc != 0
    err = capsys.readouterr().err
    assert "FOV" in err and "Traceback" not in err
    assert not (tmp_path / "o.h5").exists()
    assert issubclass(TrajectoryError, NareconError)


def test_run_traj_reader_takes_missing_values_from_the_data(tmp_path):
    from recon.io import Acquisition
    from recon.trajectory.importers import trajectory_for_acquisition

    k = xenon_radial(12, 16, 10e-6, 0.224, 64).k
    _write_cfl(tmp_path / "t", np.transpose(k * 0.224, (2, 1, 0)))
    acq = Acquisition(
        np.zeros((1, 1, 12, 16), np.complex64), (1e-3,), 0.1, 90, 10e-6, "23Na", 32.6e6, 2.89, fov_m=(0.224,) * 3, matrix=(64,) * 3
    )
    tr = trajectory_for_acquisition(tmp_path / "t.cfl", acq)
    np.testing.assert_allclose(tr.k, k, rtol=1e-5, atol=1e-4)
    assert tr.dwell_s == 10e-6 and tr.matrix == (64, 64, 64)
    assert tr.gamma_hz_per_t == pytest.approx(11.262e6)


@pytest.mark.parametrize("unit", ["1/cm", "cycles/FOV"])
def test_run_refuses_a_trajectory_file_in_other_units(tmp_path, capsys, unit):
    """The issue's case: a trajectory in 1/cm or grid units used to give exit 0 and a useless image."""
    import dataclasses
    from pathlib import Path

    from recon.cli import main
    from recon.io import build_trajectory, read_raw
    from recon.trajectory import write_trajectory

    sample = Path(__file__).resolve().parents[1] / "data_samples" / "raw.dat"
    traj = build_trajectory(read_raw(sample))
    fov = np.asarray(traj.fov_m)
    # the numbers of another unit, written as if they were 1/m (grid units: k * FOV)
    bad = dataclasses.replace(traj, k=traj.k * (fov if unit == "cycles/FOV" else 1e-2), dcf=None, waveforms=None)
    write_trajectory(bad, tmp_path / "bad.h5")
    rc = main(["run", str(sample), "--traj", str(tmp_path / "bad.h5"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and f"likely {unit}" in err and "too small" in err
    assert not (tmp_path / "out").exists()


def test_foreign_seq_file_is_one_clear_error(tmp_path):
    pytest.importorskip("pypulseq")
    (tmp_path / "x.seq").write_text("# not a sequence\n[VERSION]\nmajor 9\n")
    with pytest.raises(TrajectoryError, match="not a readable Pulseq sequence") as e:
        import_trajectory(tmp_path / "x.seq")
    assert str(tmp_path / "x.seq") in str(e.value)
