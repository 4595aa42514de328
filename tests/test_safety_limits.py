"""Bounded resources (recon.limits): sizes read from inputs are refused before anything is allocated.

Every oversized input here is small on disk (declared, not written); the refusals are shown under an
address-space limit in a subprocess (after a control run proves that the command works under that limit)."""

from __future__ import annotations

import gzip
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from recon import limits
from recon.errors import ConfigError, InputError, TrajectoryError
from recon.limits import LimitError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "raw.dat"
AS_LIMIT = 3 << 30  # the commands below run in well under 3 GiB of address space; the refused inputs would need 9-130 GiB


def _run_limited(args: list[str], cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    e = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "recon", "-q", *args], cwd=cwd, capture_output=True, text=True, preexec_fn=limit, env=e, timeout=300
    )


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and len(lines) == 1 and lines[0].startswith("narecon: error:"), p.stderr
    return lines[0]


# ----------------------------------------------------------------------------- the limits themselves


def test_parse_size_and_overrides(monkeypatch):
    assert limits.parse_size("8GB") == 8e9
    assert limits.parse_size("1.5GiB") == 1.5 * 2**30
    assert limits.parse_size("1e6") == 1e6
    for bad in ("abc", "-1GB", "0", "1XB", ""):
        with pytest.raises(ConfigError):
            limits.parse_size(bad, "--memory-limit")
    monkeypatch.setenv(limits.ENV, "memory=4GiB, matrix=700")
    assert limits.get("memory") == 4 * 2**30 and limits.get("matrix") == 700
    with limits.override(matrix=100):
        assert limits.get("matrix") == 100
    assert limits.get("matrix") == 700
    monkeypatch.setenv(limits.ENV, "memroy=4GiB")
    with pytest.raises(ConfigError, match="memroy"):
        limits.get("memory")
    monkeypatch.delenv(limits.ENV)
    assert limits.current() == limits.DEFAULTS


@pytest.mark.parametrize(
    "kw",
    [
        dict(generator="tpi", res_m=0.007),
        dict(generator="tpi", res_m=0.0056, undersampling=2.0),
        dict(generator="tpi", res_m=0.007, p=0.5, gmax_t_per_m=6e-3),
        dict(generator="tpi", res_m=0.007, readout_s=12e-3, gmax_t_per_m=None),
        dict(generator="radial", res_m=0.007),
        dict(generator="radial", res_m=0.0056, n_projections=2000),
    ],
)
def test_design_size_estimate_matches_the_builders(kw):
    """The estimate (no allocation) against the size of the trajectory actually built."""
    from recon.trajectory import density_adapted_radial, tpi

    prm = dict(fov_m=0.224, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6, gamma_hz_per_t=11.262e6, undersampling=1.0)
    prm.update(kw)
    n_proj, n_samp = limits.estimate_design_size(prm)
    build = {k: v for k, v in prm.items() if k not in ("generator", "n_projections")}
    traj = density_adapted_radial(n_projections=prm.get("n_projections"), **build) if prm["generator"] == "radial" else tpi(**build)
    assert abs(n_proj / traj.n_projections - 1) < 0.15, (n_proj, traj.n_projections)
    assert abs(n_samp / traj.n_samples - 1) < 0.15, (n_samp, traj.n_samples)


def test_check_design_refuses_before_building():
    prm = dict(
        generator="tpi",
        fov_m=0.224,
        res_m=0.00056,
        p=0.3,
        gmax_t_per_m=4e-3,
        dwell_s=10e-6,
        gamma_hz_per_t=11.262e6,
        undersampling=2.0,
    )
    with pytest.raises(LimitError, match=r"GiB, above the limit trajectory_points"):
        limits.check_design(prm, "scan.dat")
    for name in ("fov_m", "res_m", "gamma_hz_per_t"):
        with pytest.raises(InputError, match=name):
            limits.check_design({**prm, name: float("nan")})


# ----------------------------------------------------------------------------- one edited header digit


def _edit(tmp_path: Path, old: bytes, new: bytes) -> Path:
    data = SAMPLE.read_bytes()
    assert data.count(old) >= 1 and len(old) == len(new)
    out = tmp_path / "edited.dat"
    out.write_bytes(data.replace(old, new))
    return out


@pytest.mark.parametrize(
    "old,new",
    [(b"adFree[6]\t = \t5.6", b"adFree[6]\t = \t0.6"), (b"adFree[5]\t = \t224.0", b"adFree[5]\t = \t22400")],
    ids=["resolution-5.6-to-0.6mm", "fov-224-to-22400mm"],
)
def test_edited_design_digit_is_refused_in_info_and_run(tmp_path, old, new):
    edited = _edit(tmp_path, old, new)
    control = _run_limited(["info", str(SAMPLE), "--json"])
    assert control.returncode == 0, control.stderr  # info works under the address-space limit
    p = _run_limited(["info", str(edited), "--json"])
    assert p.returncode == 0, p.stderr
    import json

    t = json.loads(p.stdout)["trajectory"]
    # info either refuses the design by its size or sees, without generating it, that it cannot match the data
    refused = "trajectory_points" in t.get("error", "") and "GiB" in t["error"]
    not_built = t.get("matches") is False and t.get("n_samples") is None
    assert refused or not_built, t
    r = _run_limited(["run", str(edited), "--out", str(tmp_path / "out"), "--no-qa"])
    line = _one_line_error(r)
    assert "trajectory_points" in line and str(edited) in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".narecon-tmp*"))


# ----------------------------------------------------------------------------- HDF5 trajectory files


def _attrs(f, matrix=(40, 40, 40)):
    f.attrs["fov_m"] = np.array([0.224] * 3)
    f.attrs["matrix"] = np.asarray(matrix)
    f.attrs["gamma_hz_per_t"] = 11.262e6
    f.attrs["dwell_s"] = 1e-5


def _small_traj(path: Path, **extra):
    with h5py.File(path, "w") as f:
        f.create_dataset("k", data=np.random.default_rng(0).uniform(-80, 80, (10, 20, 3)))
        f.create_dataset("t", data=np.arange(20) * 1e-5)
        for name, val in extra.items():
            f.create_dataset(name, data=val)
        _attrs(f)
    return path


def test_declared_but_unwritten_k_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("k", shape=(200000, 2000, 3), dtype="f8")  # 9 GiB declared, nothing written
        f.create_dataset("t", shape=(200000, 2000), dtype="f8")
        f.create_dataset("dcf", shape=(200000, 2000), dtype="f8")
        _attrs(f)
    assert path.stat().st_size < 100_000
    code = textwrap.dedent(f"""
        from recon.trajectory import read_trajectory
        from recon.errors import NareconError
        try:
            read_trajectory({str(path)!r})
        except NareconError as e:
            print(type(e).__name__, e)
    """)
    p = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT)),
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("LimitError") and "trajectory_points" in p.stdout and str(path) in p.stdout


def test_compressed_trajectory_refused_by_declared_size(tmp_path):
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("k", shape=(60000, 2000, 3), dtype="f8", chunks=(1000, 2000, 3), compression="gzip")
        d[:1000] = 0.0  # one chunk written (compresses to almost nothing); the other 59 read as the fill value
        f.create_dataset("t", data=np.arange(2000) * 1e-5)
        _attrs(f)
    assert path.stat().st_size < 5_000_000
    with limits.override(trajectory_points=1e7):
        with pytest.raises(LimitError, match="declared k"):
            from recon.trajectory import read_trajectory

            read_trajectory(path)


def test_external_storage_and_links_are_refused(tmp_path):
    from recon.trajectory import read_trajectory

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    ext = tmp_path / "external.h5"
    with h5py.File(ext, "w") as f:
        f.create_dataset("k", data=np.zeros((10, 20, 3)))
        f.create_dataset("t", data=np.arange(20) * 1e-5)
        f.create_dataset("solid_angle", shape=(16,), dtype="u1", external=[(str(secret), 0, 16)])
        _attrs(f)
    with pytest.raises(TrajectoryError, match="external storage"):
        read_trajectory(ext)
    soft = tmp_path / "soft.h5"
    _small_traj(soft)
    with h5py.File(soft, "a") as f:
        f["solid_angle"] = h5py.SoftLink("/k")
    with pytest.raises(TrajectoryError, match="soft link"):
        read_trajectory(soft)
    extlink = tmp_path / "extlink.h5"
    _small_traj(extlink)
    with h5py.File(extlink, "a") as f:
        f["dcf"] = h5py.ExternalLink(str(ext), "/k")
    with pytest.raises(TrajectoryError, match="external link"):
        read_trajectory(extlink)


@pytest.mark.parametrize(
    "extra,msg",
    [
        (dict(solid_angle=np.zeros(7)), "solid_angle must have shape"),
        (dict(dcf=np.zeros((10, 19))), "dcf must have shape"),
        (dict(solid_angle=np.array([b"abc"] * 10)), "numeric"),
    ],
)
def test_dataset_shapes_checked_against_each_other(tmp_path, extra, msg):
    from recon.trajectory import read_trajectory

    with pytest.raises(TrajectoryError, match=msg):
        read_trajectory(_small_traj(tmp_path / "t.h5", **extra))


@pytest.mark.parametrize(
    "matrix,err,msg",
    [
        (600, LimitError, "limit matrix"),
        (100000, LimitError, "limit matrix"),
        ((0, 0, 0), InputError, "at least 4"),
        ((40, 40), InputError, "1 or 3"),
        ((40.5, 40, 40), InputError, "whole numbers"),
    ],
)
def test_matrix_attribute_bounds(tmp_path, matrix, err, msg):
    from recon.trajectory import read_trajectory

    path = _small_traj(tmp_path / "t.h5")
    with h5py.File(path, "a") as f:
        f.attrs["matrix"] = np.asarray(matrix)
    with pytest.raises(err, match=msg) as ei:
        read_trajectory(path)
    assert str(path) in str(ei.value)


def test_valid_small_trajectory_still_reads(tmp_path):
    from recon.trajectory import read_trajectory

    traj = read_trajectory(_small_traj(tmp_path / "t.h5", solid_angle=np.full(10, 0.1)))
    assert traj.k.shape == (10, 20, 3) and traj.matrix == (40, 40, 40)


# ----------------------------------------------------------------------------- external field maps


def _fmap(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("value", [20000.0, -20000.0, 1e30])
def test_implausible_field_map_values_refused(tmp_path, value):
    from recon.b0 import load_fieldmap_nifti

    data = np.full((8, 8, 8), 10.0)
    data[3, 3, 3] = value
    path = _fmap(tmp_path / "fm.nii.gz", data)
    with pytest.raises(InputError, match="plausible") as ei:
        load_fieldmap_nifti(path, np.diag([4.0, 4.0, 4.0, 1.0]), (8, 8, 8), nucleus="23Na")
    assert str(path) in str(ei.value)


def test_plausible_field_map_resampled_and_scaled(tmp_path):
    from recon.b0 import load_fieldmap_nifti

    path = _fmap(tmp_path / "fm.nii.gz", np.full((8, 8, 8), 100.0))
    hz = load_fieldmap_nifti(path, np.diag([4.0, 4.0, 4.0, 1.0]), (8, 8, 8), nucleus="1H")
    assert np.allclose(hz[2:6, 2:6, 2:6], 100.0 * 11.262 / 42.577478, rtol=1e-3)


def test_oversized_field_map_grid_refused_before_reading(tmp_path):
    """A 640^3 header with (almost) no voxel data: refused from the header, not by reading 2 GiB."""
    from recon.b0 import load_fieldmap_nifti

    hdr = nib.Nifti1Header()
    hdr.set_data_shape((640, 640, 640))
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(np.diag([0.5, 0.5, 0.5, 1.0]))
    path = tmp_path / "big.nii.gz"
    with gzip.open(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)
    with pytest.raises(LimitError, match="fieldmap_voxels") as ei:
        load_fieldmap_nifti(path, np.diag([4.0, 4.0, 4.0, 1.0]), (8, 8, 8))
    assert "GiB" in str(ei.value)


def test_truncated_field_map_has_a_message(tmp_path):
    from recon.b0 import load_fieldmap_nifti

    good = _fmap(tmp_path / "fm.nii.gz", np.random.default_rng(0).normal(size=(16, 16, 16)) * 10)
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as ei:
        load_fieldmap_nifti(bad, np.diag([4.0, 4.0, 4.0, 1.0]), (8, 8, 8))
    msg = str(ei.value)
    assert msg.split("NIfTI:", 1)[1].strip(), msg


# ----------------------------------------------------------------------------- whole-reconstruction estimate


def test_recon_memory_estimate_refuses_matrix_512():
    est = limits.estimate_recon_memory(512, 768, 774, n_echoes=2, b0_method="tb-cpr", n_segments=8)
    assert est.total > 6.3e9  # the issue's --matrix 512 run died at 6.3 GB
    with limits.override(memory="4GiB"):
        with pytest.raises(LimitError, match="NUFFT grids"):
            limits.check_recon_memory(est, "--matrix 512", "raw.dat")
    seg = limits.estimate_recon_memory(40, 768, 774, b0_method="fs-cpr", n_segments=100000)
    assert seg.parts["images"] > 24 * 2**30  # --b0-segments 100000: the 24 GiB of the issue


def test_recon_memory_estimate_bounds_a_measured_nufft():
    """The estimate is an upper bound of the peak memory actually used by a NUFFT adjoint (measured, RSS)."""
    code = textwrap.dedent("""
        import numpy as np
        from recon.nufft import NUFFT

        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

        rng = np.random.default_rng(0)
        n, m = 96, 200_000
        k = rng.uniform(-0.5, 0.5, (m, 3)) * n / 0.224
        y = (rng.normal(size=m) + 1j * rng.normal(size=m)).astype(np.complex64)
        NUFFT(k[:100] / 8, (8, 8, 8), 0.224, device="cpu", eps=1e-4).adjoint(y[:100])  # warm-up (any JIT, pools)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current resident size
        base = status("VmRSS")
        op = NUFFT(k, (n, n, n), 0.224, device="cpu", eps=1e-4)
        x = op.adjoint(y)
        print(status("VmHWM") - base)
    """)
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert p.returncode == 0, p.stderr
    used = float(p.stdout.split()[0])
    est = limits.estimate_recon_memory(96, 1000, 200, n_echoes=1, upsampling=2.0)
    assert used > 1e6, p.stdout  # the measurement saw the grid
    assert est.total >= used, (est.parts, used)
    assert est.total < 20 * used, (est.parts, used)
