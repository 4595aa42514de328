"""narecon study: multiple-comparison adjusted p-values (checked against statsmodels), units in
the tables, the concentration threshold option and the real time axis."""

from __future__ import annotations

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from recon.analysis.report import time_axis
from recon.analysis.stats import adjust_pvalues
from recon.cli import main
from tests.test_analysis_study import make_study, read


def test_adjusted_pvalues_match_statsmodels():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(0, 0.05, 8), rng.uniform(0, 1, 40), [np.nan, np.nan, 0.04, 0.04]])
    rng.shuffle(p)
    holm, bh = adjust_pvalues(p)
    ok = np.isfinite(p)
    assert np.all(np.isnan(holm[~ok])) and np.all(np.isnan(bh[~ok]))
    np.testing.assert_allclose(holm[ok], multipletests(p[ok], method="holm")[1], rtol=1e-12)
    np.testing.assert_allclose(bh[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12)
    assert np.all(holm[ok] >= p[ok]) and np.all(bh[ok] >= p[ok])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_corr")
    return root, make_study(root)


def test_study_ttests_are_adjusted_and_carry_units(study):
    root, sess = study
    out = root / "out"
    assert main(["-q", "study", str(sess), "--out", str(out)]) == 0
    rows = read(out / "paired_ttests.csv")
    assert len(rows) > 30
    p = np.array([float(r["p"]) if r["p"] else np.nan for r in rows])
    ok = np.isfinite(p)
    holm = np.array([float(r["p_holm"]) for r, k in zip(rows, ok) if k])
    bh = np.array([float(r["p_bh"]) for r, k in zip(rows, ok) if k])
    np.testing.assert_allclose(holm, multipletests(p[ok], method="holm")[1], rtol=1e-9)
    np.testing.assert_allclose(bh, multipletests(p[ok], method="fdr_bh")[1], rtol=1e-9)
    assert {r["unit"] for r in rows if r["measure"] == "tsc_mM"} == {"mM"}
    assert {r["unit"] for r in rows if r["measure"].startswith("ratio")} == {"1"}
    assert {r["unit"] for r in read(out / "baseline_summary.csv")} == {"mM", "1"}
    md = (out / "report.md").read_text()
    assert "p_holm" in md and "p_bh" in md and "Benjamini-Hochberg" in md


def test_rise_threshold_is_a_concentration_with_a_deprecated_alias(study, capsys):
    root, sess = study
    # s1/l1 rises by 4.0 mM at the last time point: flagged at 3 mM, not at 5 mM
    for flag, thr, expect in (("--rise-threshold-mM", "3", "yes"), ("--rise-threshold-mM", "5", "no")):
        out = root / f"out_{thr}"
        assert main(["-q", "study", str(sess), "--out", str(out), flag, thr]) == 0
        rb = {(r["subject"], r["lesion"]): r for r in read(out / "tumour_rebound.csv")}
        assert rb[("s1", "l1")]["rises_at_last"] == expect
    out = root / "out_old"
    capsys.readouterr()
    assert main(["study", str(sess), "--out", str(out), "--rise-threshold-mm", "5"]) == 0
    assert "--rise-threshold-mm is deprecated" in capsys.readouterr().err
    rb = {(r["subject"], r["lesion"]): r for r in read(out / "tumour_rebound.csv")}
    assert rb[("s1", "l1")]["rises_at_last"] == "no"


def test_time_courses_on_a_time_axis():
    pos, label, real = time_axis(["pre", "48h", "1w", "1m", "3m"])
    assert real and "days" in label
    assert [pos[t] for t in ("pre", "48h", "1w")] == [0.0, 2.0, 7.0]
    assert pos["1m"] == pytest.approx(30.44, abs=0.01) and pos["3m"] == pytest.approx(91.31, abs=0.01)
    pos, label, real = time_axis(["pre", "visit2"])
    assert not real and pos == {"pre": 0.0, "visit2": 1.0}
