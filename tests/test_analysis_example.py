"""The docs example (image mode) end to end: planted rebounds are flagged, nothing else (slow, ~1 min)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from recon.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "study_example" / "make_example.py"


@pytest.mark.slow
def test_study_example_image_mode(tmp_path):
    spec = importlib.util.spec_from_file_location("make_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--work", str(tmp_path / "work"), "--mode", "image"]) == 0
    out = tmp_path / "out"
    assert main(["-q", "study", str(tmp_path / "work" / "sessions.csv"), "--out", str(out)]) == 0
    with open(out / "tumour_rebound.csv", newline="") as f:
        flags = {r["subject"]: r["rises_at_last"] for r in csv.DictReader(f)}
    planted = {p for p, s in mod.TUMOUR_MM.items() if s[-1] > s[-2]}
    assert {p for p, v in flags.items() if v == "yes"} == planted == {"P1", "P3"}
    with open(out / "lesion_table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:  # tumour ROI within 4 mM (about 2 noise SDs) of the phantom's value
        truth = mod.TUMOUR_MM[r["subject"]][mod.TIMEPOINTS.index(r["timepoint"])]
        assert abs(float(r["tumour_mM"]) - truth) < 4.0
