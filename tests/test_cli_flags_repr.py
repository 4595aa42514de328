"""-v/-q work before and after the command name (also of nested commands); short reprs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recon.cli import main
from recon.io import Acquisition


@pytest.mark.parametrize(
    "argv,level",
    [
        (["-v", "info", "{f}", "--no-trajectory"], logging.DEBUG),
        (["info", "{f}", "--no-trajectory", "-v"], logging.DEBUG),
        (["info", "{f}", "-q", "--no-trajectory"], logging.WARNING),
        (["-q", "info", "{f}", "--no-trajectory"], logging.WARNING),
        (["info", "{f}", "--no-trajectory"], logging.INFO),
    ],
)
def test_log_flags_anywhere(sample_raw, capsys, argv, level):
    assert main([a.replace("{f}", str(sample_raw)) for a in argv]) == 0
    assert logging.getLogger("recon").level == level


def test_verbose_after_a_nested_command_shows_the_traceback(tmp_path, capsys):
    out = tmp_path / "t.h5"
    out.write_text("x")
    assert main(["traj", "tpi", "--res-mm", "14", "--out", str(out), "-v"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("narecon: error:")


@pytest.fixture
def sample_raw():
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "data_samples" / "raw.dat"
    assert p.is_file()
    return p


def test_short_reprs():
    from recon.trajectory import tpi

    data = np.ones((2, 4, 300, 500), np.complex64)
    acq = Acquisition(data, (0.3e-3, 2.32e-3), 0.174, 90.0, 10e-6, "23Na", 78.6e6, 7.0, noise=np.ones((4, 100), np.complex64))
    r = repr(acq)
    assert len(r) < 250 and "array" not in r and "300 readouts x 500 samples" in r and "4 coil(s)" in r
    assert "TE [0.3, 2.32] ms" in r
    t = repr(tpi(res_m=0.014))
    assert len(t) < 250 and "array" not in t and "projections" in t
