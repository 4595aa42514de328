"""CLI basics: traj command output, one-line errors with exit code 2, atomic outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recon.atomic import atomic_dir, atomic_file
from recon.cli import main
from recon.errors import NareconError, OutputError
from recon.trajectory import read_trajectory


def test_traj_tpi_summary(tmp_path, capsys):
    out = tmp_path / "traj.h5"
    rc = main(
        [
            "traj",
            "tpi",
            "--fov-mm",
            "224",
            "--res-mm",
            "7",
            "--p",
            "0.3",
            "--gmax-mt-m",
            "4",
            "--smax-t-m-s",
            "150",
            "--dwell-us",
            "10",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    s = json.loads(capsys.readouterr().out)
    tr = read_trajectory(out)
    assert s["projections"] == tr.n_projections and s["samples"] == tr.n_samples
    assert s["cones"] == 52
    assert s["max_slew_reached_t_m_s"] <= 150
    assert s["scan_time_s"] == pytest.approx(tr.n_projections * 0.174 * 2, abs=0.1)
    assert tr.dcf is not None and tr.dcf.sum() == pytest.approx(4 / 3 * np.pi * (1 / 0.014) ** 3, rel=5e-3)


def test_traj_text_output(tmp_path, capsys):
    rc = main(["traj", "radial", "--res-mm", "14", "--projections", "100", "--out", str(tmp_path / "r.h5")])
    assert rc == 0
    out = capsys.readouterr().out
    for word in ("projections", "readout", "max slew", "scan time"):
        assert word in out


def test_refuses_overwrite_and_user_error_format(tmp_path):
    out = tmp_path / "t.h5"
    out.write_text("x")
    p = subprocess.run(
        [sys.executable, "-m", "recon", "traj", "tpi", "--res-mm", "14", "--out", str(out)], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("narecon: error:")
    assert str(out) in p.stderr
    assert out.read_text() == "x"


def test_bad_parameter_is_one_line_error(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "recon", "traj", "tpi", "--p", "2", "--out", str(tmp_path / "x.h5")], capture_output=True, text=True
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "twist fraction" in p.stderr


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "a.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(dest) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_file(dest) as tmp:
        tmp.write_bytes(b"done")
    assert dest.read_bytes() == b"done" and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(dest) as d:
            (d / "x").write_text("1")
            raise RuntimeError
    assert not dest.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(dest) as d:
        (d / "x").write_text("1")
    assert (dest / "x").read_text() == "1"
    with pytest.raises(OutputError):
        with atomic_dir(dest):
            pass
    with atomic_dir(dest, overwrite=True) as d:
        (d / "y").write_text("2")
    assert sorted(p.name for p in dest.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_error_names_path():
    e = NareconError("broken", "/x/y.dat")
    assert str(e) == "/x/y.dat: broken" and e.path == "/x/y.dat"


def test_import_does_not_pull_optional_extras():
    code = (
        "import sys, recon, recon.nufft, recon.trajectory, recon.cli; "
        "bad=[m for m in ('cupy','cufinufft','dask','distributed','sigpy','torch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f") as t:
            t.write_text("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "y").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_validate_names_the_measure_of_each_verdict():
    """`narecon validate`'s per-case line says which measure missed (the voxel map's eroded means fail on thin
    compartments by the point response; the regional model is the one the issue's bounds are met with)."""
    from recon.cli.validate import _verdicts

    line = _verdicts({"passed": False, "n_failed": 2, "passed_regional_fine_echo": True, "n_failed_regional_fine_echo": 0})
    assert line == "eroded voxel means: 2 bound(s) missed, regional model: pass"
    assert _verdicts({"passed": True, "n_failed": 0, "passed_regional_fine_echo": None}) == "eroded voxel means: pass"
    assert _verdicts({}) == "not scored"
