"""bench-traj on recon.reconstruct, with the issue-17 fixes: slew-limit flags, an explained
'no SNR in budget', variant labels in the plots, a progress bar."""

from __future__ import annotations

import csv
import math

import pytest

import recon
from recon.bench import run_bench, write_plots
from recon.bench.run import design_row
from recon.bench.variants import Variant, build_trajectory

VARIANTS = """
[settings]
snr = 50
replicas = 4
psf_directions = 6
psf_points = 61
slew_limit_t_m_s = 150
[defaults]
res_mm = 14.0
[[variant]]
name = "ideal"
trajectory = "tpi"
gmax_mt_m = 8.0
scan_budget_min = 0.5
recon = ["gridding", "tb-cpr"]
[[variant]]
name = "flexible"
trajectory = "tpi"
gmax_mt_m = 8.0
smax_t_m_s = 150.0
scan_budget_min = 5.0
recon = ["gridding"]
"""


def _variant(**kw):
    from recon.bench.variants import _DEFAULTS

    p = dict(_DEFAULTS, res_mm=14.0, gmax_mt_m=8.0, **kw)
    return Variant("v", p)


def test_designs_beyond_the_slew_limit_are_flagged():
    settings = {"slew_limit_t_m_s": 150.0}
    ideal = _variant()
    tr = build_trajectory(ideal)
    row = design_row(ideal, tr, settings)
    assert row["peak_slew_T_m_s"] == pytest.approx(tr.checks()["max_slew_t_per_m_per_s"])
    assert row["peak_slew_T_m_s"] > 150 and row["exceeds_slew_limit"] is True
    flex = _variant(smax_t_m_s=150.0)
    row = design_row(flex, build_trajectory(flex), settings)
    assert row["peak_slew_T_m_s"] <= 150 * (1 + 1e-6) and row["exceeds_slew_limit"] is False


def test_bench_runs_on_reconstruct_and_explains_its_numbers(tmp_path, monkeypatch, capsys):
    calls = []
    real = recon.reconstruct

    def spy(source, options=None, **kw):
        calls.append(dict(options))
        return real(source, options, **kw)

    monkeypatch.setattr(recon, "reconstruct", spy)
    f = tmp_path / "v.toml"
    f.write_text(VARIANTS)
    out = tmp_path / "res"
    rows = run_bench(f, out, progress=True)
    # every reconstruction went through recon.reconstruct with the method's options
    assert [c["b0"] for c in calls] == ["none", "tb-cpr", "none"]
    assert all(c["calibration"] == "none" for c in calls)
    assert "bench-traj" in capsys.readouterr().err  # the tqdm bar
    by = {r["name"]: r for r in rows}
    assert by["ideal"]["exceeds_slew_limit"] and not by["flexible"]["exceeds_slew_limit"]
    # the ideal design's scan (2 echoes x TR x projections) exceeds its 0.5 min budget: no SNR in budget
    assert by["ideal"]["scan_time_min"] > 0.5 and by["ideal"]["averages_in_budget"] == 0
    assert math.isnan(by["ideal"]["snr_in_budget"])
    n = by["flexible"]["averages_in_budget"]
    assert n == int(5.0 // by["flexible"]["scan_time_min"]) and by["flexible"]["snr_in_budget"] == pytest.approx(
        by["flexible"]["snr_tissue"] * math.sqrt(n)
    )
    md = (out / "results.md").read_text()
    assert "– (over budget)" in md and "Over budget: ideal" in md and "⚠ ideal" in md
    with open(out / "results.csv", newline="") as fh:
        csv_rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert csv_rows["ideal"]["snr_in_budget"] in ("", "nan") and csv_rows["ideal"]["exceeds_slew_limit"] == "True"


def test_plot_points_are_labelled_by_variant(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    texts = {}
    orig = Figure.savefig

    def capture(self, fname, *a, **k):
        texts[str(fname).rsplit("/", 1)[-1]] = [t.get_text() for ax in self.axes for t in ax.texts]
        return orig(self, fname, *a, **k)

    monkeypatch.setattr(Figure, "savefig", capture)
    r = [0.0, 1.0]
    base = {f"psf_{d}": (r, [1.0, 0.5]) for d in ("none", "tissue", "csf")}
    bias = {"gridding": {"tubes": 1.0, "GM": -2.0, "WM": 0.5, "CSF": -1.0, "tumour": 3.0}}
    curves = [
        dict(base, name="A", readout_ms=5.0, exceeds_slew_limit=True, bias=bias, scan_time_min=10.0, snr_tissue=20.0),
        dict(base, name="B", readout_ms=20.0, exceeds_slew_limit=False, bias=bias, scan_time_min=12.0, snr_tissue=25.0),
    ]
    write_plots(curves, tmp_path)
    assert {"A ⚠", "B"} <= set(texts["bias_vs_readout.png"])
    assert {"A ⚠", "B"} <= set(texts["snr_vs_scan_time.png"])
