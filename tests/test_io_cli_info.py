"""`narecon info`: text and --json output with the documented keys; exit code 2 without a
traceback on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from recon.cli import main

KEYS = {
    "format",
    "nucleus",
    "frequency_hz",
    "field_t",
    "te_s",
    "tr_s",
    "flip_deg",
    "dwell_s",
    "n_echoes",
    "readouts_per_echo",
    "n_samples",
    "n_channels",
    "n_noise_scans",
    "software",
    "wip_long",
    "wip_double",
    "trajectory",
}


@pytest.fixture
def na_file(tmp_path, rng):
    from recon.io import write_twix
    from tests.test_io_twix_synth import make_acq

    acq = make_acq(rng)
    p = tmp_path / "na.dat"
    write_twix(acq, p, layout="VB")
    return p, acq


def test_info_json_keys_and_values(na_file, capsys):
    p, acq = na_file
    assert main(["info", str(p), "--json", "--no-trajectory"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert KEYS - {"trajectory"} <= set(d)
    assert d["format"] == "VB" and d["nucleus"] == "23Na"
    assert d["te_s"] == [0.3e-3, 2.32e-3] and d["tr_s"] == 0.174 and d["dwell_s"] == 10e-6
    assert d["n_echoes"] == 2 and d["readouts_per_echo"] == acq.n_projections
    assert d["n_samples"] == acq.n_samples and d["n_channels"] == acq.n_coils and d["n_noise_scans"] == 2
    assert d["frequency_hz"] == acq.frequency_hz and d["field_t"] == acq.field_t and d["flip_deg"] == 90.0
    assert d["wip_long"] == {"0": 1, "1": 3920, "2": 10}


def test_info_reports_trajectory_mismatch(na_file, capsys):
    p, acq = na_file
    assert main(["info", str(p), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["trajectory"]
    assert t["generator"] == "tpi" and t["matches"] is False
    # the readout count already differs from the design's, so the trajectory is not generated
    assert f"projections: data {acq.n_projections} readouts per echo" in t["mismatch"]


def test_info_text_real_file(shared_twix, capsys):
    p = shared_twix / "xe129_radial_dixon_meas_MID00075_FID28630.dat"
    assert main(["info", str(p), "--no-trajectory"]) == 0
    out = capsys.readouterr().out
    assert "XA" in out and "129Xe" in out and "readouts per echo   1200" in out and "echoes              2" in out


def test_info_two_files(na_file, capsys):
    import shutil

    p, _ = na_file
    p2 = p.with_name("na_copy.dat")
    shutil.copy(p, p2)
    assert main(["info", str(p), str(p2), "--json", "--no-trajectory"]) == 0
    assert json.loads(capsys.readouterr().out)["n_echoes"] == 4


def test_same_file_twice_is_an_error(na_file, capsys):
    p, _ = na_file
    assert main(["info", str(p), str(p.parent / "." / p.name), "--no-trajectory"]) == 2
    err = capsys.readouterr().err
    assert "given twice" in err and p.name in err


def test_info_does_not_generate_a_trajectory_that_cannot_match(shared_twix, capsys, monkeypatch):
    import recon.io.profile as prof

    def boom(*a, **k):
        raise AssertionError("generate_trajectory called for a file whose readout count cannot match")

    monkeypatch.setattr(prof, "generate_trajectory", boom)
    assert main(["info", str(shared_twix / "twixtools_gre.dat"), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["trajectory"]
    assert t["matches"] is False and "not generated" in t["mismatch"] and t["n_projections"] == 3920


def test_info_predicted_projections_agree_with_generated():
    from recon.cli.info import predicted_projections
    from recon.trajectory import density_adapted_radial, tpi

    prm = {"generator": "tpi", "fov_m": 0.224, "res_m": 0.014, "p": 0.3, "undersampling": 2.0}
    assert predicted_projections(prm) == tpi(fov_m=0.224, res_m=0.014, p=0.3, undersampling=2.0).n_projections
    prm = {"generator": "radial", "fov_m": 0.224, "res_m": 0.014}
    assert predicted_projections(prm) == density_adapted_radial(fov_m=0.224, res_m=0.014).n_projections


def test_info_bad_input_exit_2_no_traceback(tmp_path):
    p = tmp_path / "bad.dat"
    p.write_bytes(b"not twix" * 100)
    r = subprocess.run([sys.executable, "-m", "recon", "info", str(p)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "bad.dat" in r.stderr


@pytest.mark.parametrize("name,content", [("missing.dat", None), ("empty.dat", b"")])
def test_info_missing_or_empty_file(capsys, tmp_path, name, content):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    assert main(["info", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err


def test_info_json_is_finite_for_ismrmrd(tmp_path, rng, capsys):
    from recon.io import Acquisition, write_ismrmrd

    d = np.ones((1, 1, 3, 8), np.complex64)
    acq = Acquisition(d, (1e-3,), 0.1, 45.0, 10e-6, "23Na", 78.6e6, float("nan"))
    write_ismrmrd(acq, tmp_path / "a.h5")
    assert main(["info", str(tmp_path / "a.h5"), "--json", "--no-trajectory"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "ISMRMRD" and out["field_t"] is None
