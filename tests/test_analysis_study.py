"""Study analysis end to end on synthetic sessions with known constant regions.

Truths: ROI means equal the constant written into each region (a 2 mm sphere centred in a
3x3x3-voxel cube only touches that cube), so every table value, ratio, t-test and flag can
be computed by hand from the numbers below.
"""

from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from recon.cli import main

N, DX = 20, 3.5
AFF = np.diag([DX, DX, DX, 1.0])
AFF[:3, 3] = [-35.0, -33.0, -36.5]
CENTRES = {
    "tumour": (5, 10, 10),
    "contralateral": (15, 10, 10),
    "oedema": (5, 5, 10),
    "CSF": (10, 15, 10),
    "WM": (10, 10, 15),
    "GM": (10, 10, 5),
}
TPS = ["pre", "48h", "1w", "1m"]
LESIONS = [("s1", "l1"), ("s1", "l2"), ("s2", "l1"), ("s3", "l1")]
# tumour TSC per lesion over pre, 48h, 1w, 1m (s3/l1 misses 1w); the baseline values
TUMOUR = {
    ("s1", "l1"): [22.85, 27.0, 20.0, 24.0],
    ("s1", "l2"): [24.19, 28.5, 23.0, 21.0],
    ("s2", "l1"): [22.28, 25.0, 21.0, 20.5],
    ("s3", "l1"): [36.08, 40.0, None, 38.0],
}
CSF = {("s1", "l1"): 23.23, ("s1", "l2"): 24.43, ("s2", "l1"): 27.53, ("s3", "l1"): 25.92}
CONTRA = {("s1", "l1"): 20.0, ("s1", "l2"): 21.0, ("s2", "l1"): 19.5, ("s3", "l1"): 22.5}
OEDEMA = {("s1", "l1"): 30.0, ("s1", "l2"): 31.5, ("s2", "l1"): 28.0, ("s3", "l1"): 33.0}
WM = {"s1": 18.0, "s2": 19.0, "s3": 17.5}
GM = {"s1": 21.0, "s2": 20.0, "s3": 22.5}
DIMS = (12.0, 9.0, 1.0, 10.0)  # a, b, m (mm), c


def _mm(v):
    return (AFF @ np.r_[v, 1.0])[:3]


def make_study(root, drop_rois_col=False):
    rows = []
    for subj, les in LESIONS:
        for ti, tp in enumerate(TPS):
            tum = TUMOUR[(subj, les)][ti]
            a, b, m, c = DIMS
            scale = 1.0 + 0.1 * ti
            if tum is None:
                rows.append([subj, les, tp, "", "", a * scale, b, m, c])
                continue
            vol = np.full((N, N, N), 5.0, np.float64)
            vals = {
                "tumour": tum,
                "contralateral": CONTRA[(subj, les)],
                "oedema": OEDEMA[(subj, les)],
                "CSF": CSF[(subj, les)] + ti,
                "WM": WM[subj] + 0.1 * ti,
                "GM": GM[subj],
            }
            if tp == "pre":
                vals["CSF"] = CSF[(subj, les)]
            for t, (i, j, k) in CENTRES.items():
                vol[i - 1 : i + 2, j - 1 : j + 2, k - 1 : k + 2] = vals[t]
            d = root / f"{subj}_{les}_{tp}"
            d.mkdir()
            nib.save(nib.Nifti1Image(vol, AFF), d / "tsc_mM.nii.gz")
            with open(d / "rois.csv", "w") as f:
                f.write("name,x,y,z,radius_mm\n")
                for t, v in CENTRES.items():
                    x, y, z = _mm(v)
                    f.write(f"{t},{x},{y},{z},2\n")
            rows.append([subj, les, tp, d.name, f"{d.name}/rois.csv", a * scale, b, m, c])
    sess = root / "sessions.csv"
    with open(sess, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "lesion", "timepoint", "path"] + ([] if drop_rois_col else ["rois"]) + ["a_mm", "b_mm", "m_mm", "c"])
        for r in rows:
            w.writerow(r[:4] + ([] if drop_rois_col else [r[4]]) + r[5:])
    return sess


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    sess = make_study(root)
    out = root / "out"
    assert main(["-q", "study", str(sess), "--out", str(out)]) == 0
    return out


def test_ratio_row_of_the_study_table(study_out):
    base = [r for r in read(study_out / "lesion_table.csv") if r["timepoint"] == "pre"]
    got = {(r["subject"], r["lesion"]): float(r["tumour_ratio"]) for r in base}
    for key, v in TUMOUR.items():
        assert got[key] == pytest.approx(v[0] / CSF[key], rel=1e-9)
    assert [f"{got[k]:.2f}" for k in LESIONS] == ["0.98", "0.99", "0.81", "1.39"]
    md = (study_out / "report.md").read_text()
    row = [ln for ln in md.splitlines() if ln.startswith("| s2 | l1 | pre |")][0]
    assert "| 0.81 |" in row and "0.80" not in row and "| 22.28 |" in row and "| 27.53 |" in row


def test_paired_tests_and_missing_pairs(study_out):
    tt = {(r["test"], r["measure"], r["timepoint"]): r for r in read(study_out / "paired_ttests.csv")}
    # tumour 1w vs pre: s3/l1 lacks 1w -> 3 pairs, 1 missing
    r = tt[("tumour: 1w vs pre", "tsc_mM", "1w")]
    keys = [k for k in LESIONS if TUMOUR[k][2] is not None]
    ref = stats.ttest_rel([TUMOUR[k][2] for k in keys], [TUMOUR[k][0] for k in keys])
    assert (int(r["n_pairs"]), int(r["n_missing"]), int(r["df"])) == (3, 1, 2)
    assert float(r["t"]) == pytest.approx(ref.statistic) and float(r["p"]) == pytest.approx(ref.pvalue)
    d = np.array([TUMOUR[k][2] - TUMOUR[k][0] for k in keys])
    assert float(r["cohen_dz"]) == pytest.approx(d.mean() / d.std(ddof=1))
    r = tt[("tumour vs contralateral", "tsc_mM", "1w")]
    assert (int(r["n_pairs"]), int(r["n_missing"])) == (3, 1)  # the missing session counts as missing
    # tumour vs contralateral at baseline, per lesion (n = 4)
    r = tt[("tumour vs contralateral", "tsc_mM", "pre")]
    ref = stats.ttest_rel([TUMOUR[k][0] for k in LESIONS], [CONTRA[k] for k in LESIONS])
    assert int(r["n_pairs"]) == 4 and float(r["t"]) == pytest.approx(ref.statistic)
    # WM vs GM is per subject (s1 has two lesion rows but counts once)
    r = tt[("WM vs GM", "tsc_mM", "pre")]
    ref = stats.ttest_rel([WM[s] for s in ("s1", "s2", "s3")], [GM[s] for s in ("s1", "s2", "s3")])
    assert int(r["n_pairs"]) == 3 and float(r["p"]) == pytest.approx(ref.pvalue)
    # tumour vs oedema on ratios at baseline
    r = tt[("tumour vs oedema", "ratio_CSF", "pre")]
    ref = stats.ttest_rel([TUMOUR[k][0] / CSF[k] for k in LESIONS], [OEDEMA[k] / CSF[k] for k in LESIONS])
    assert float(r["t"]) == pytest.approx(ref.statistic)


def test_baseline_summary(study_out):
    summ = {(r["tissue"], r["measure"]): r for r in read(study_out / "baseline_summary.csv")}
    r = summ[("tumour", "tsc_mM")]
    v = np.array([TUMOUR[k][0] for k in LESIONS])
    assert int(r["n"]) == 4 and float(r["mean"]) == pytest.approx(v.mean()) and float(r["sd"]) == pytest.approx(v.std(ddof=1))
    assert float(r["min"]) == pytest.approx(22.28) and float(r["max"]) == pytest.approx(36.08)
    r = summ[("CSF", "tsc_mM")]  # per subject: s1 = mean of its two lesion rows
    per_subj = [(23.23 + 24.43) / 2, 27.53, 25.92]
    assert int(r["n"]) == 3 and float(r["mean"]) == pytest.approx(np.mean(per_subj))


def test_timecourse_rebound_and_volumes(study_out):
    tc = read(study_out / "tumour_timecourse.csv")
    r = [x for x in tc if (x["subject"], x["lesion"], x["timepoint"]) == ("s1", "l1", "48h")][0]
    assert float(r["change_mM"]) == pytest.approx(27.0 - 22.85)
    assert float(r["change_pct"]) == pytest.approx(100 * (27.0 - 22.85) / 22.85)
    assert not any(x["subject"] == "s3" and x["timepoint"] == "1w" for x in tc)
    rb = {(x["subject"], x["lesion"]): x for x in read(study_out / "tumour_rebound.csv")}
    assert rb[("s1", "l1")]["rises_at_last"] == "yes" and rb[("s1", "l1")]["fell_before"] == "yes"
    assert float(rb[("s1", "l1")]["rise_mM"]) == pytest.approx(4.0)
    assert rb[("s1", "l2")]["rises_at_last"] == "no" and rb[("s2", "l1")]["rises_at_last"] == "no"
    # s3/l1 misses 1w: its last rise is measured against 48h (38 < 40 -> no)
    assert rb[("s3", "l1")]["previous_timepoint"] == "48h" and rb[("s3", "l1")]["rises_at_last"] == "no"
    assert rb[("s3", "l1")]["missing"] == "1w"
    vols = {(x["subject"], x["lesion"], x["timepoint"]): x for x in read(study_out / "tumour_volumes.csv")}
    a, b, m, c = DIMS
    v0 = math.pi / 6 * a * b * m * c
    v3 = math.pi / 6 * (a * 1.3) * b * m * c
    r = vols[("s2", "l1", "1m")]
    assert float(r["volume_mm3"]) == pytest.approx(v3) and float(r["volume_mL"]) == pytest.approx(v3 / 1000)
    assert float(r["change_mL"]) == pytest.approx((v3 - v0) / 1000) and float(r["change_pct"]) == pytest.approx(30.0)
    assert ("s3", "l1", "1w") in vols  # a volume without an image is still reported
    counts = {x["timepoint"]: x for x in read(study_out / "sessions_per_timepoint.csv")}
    assert counts["1w"]["sessions_measured"] == "3" and counts["1w"]["missing"] == "s3/l1"


def test_figures_and_report_links(study_out):
    md = (study_out / "report.md").read_text()
    for fn in ("timecourse_tumour.png", "timecourse_volume.png", "boxplot_tissues.png"):
        assert (study_out / fn).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({fn})" in md
    for fn in ("paired_ttests.csv", "lesion_table.csv", "baseline_summary.csv", "tumour_volumes.csv"):
        assert f"]({fn})" in md and (study_out / fn).exists()
    assert not [p for p in study_out.parent.iterdir() if p.name.startswith(".narecon-tmp")]


def test_study_cli_errors_leave_no_output(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["study", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "missing.csv: sessions table not found" in capsys.readouterr().err
    sess = make_study(tmp_path, drop_rois_col=True)
    assert main(["study", str(sess), "--out", str(out)]) == 2
    assert "lacks column(s) rois" in capsys.readouterr().err
    assert not out.exists()


def test_study_cli_bad_roi_file_leaves_no_output(tmp_path, capsys):
    sess = make_study(tmp_path)
    (tmp_path / "s2_l1_48h" / "rois.csv").write_text("name,x,y\nCSF,1,2\n")
    out = tmp_path / "out"
    assert main(["study", str(sess), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "s2_l1_48h/rois.csv" in err and "radius_mm" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".narecon-tmp")]


def test_roi_cli_table_and_errors(tmp_path, capsys):
    make_study(tmp_path)
    d = tmp_path / "s1_l1_pre"
    out = tmp_path / "table.csv"
    wts = tmp_path / "weights.csv"
    assert (
        main(
            [
                "-q",
                "roi",
                str(d / "tsc_mM.nii.gz"),
                str(d / "tsc_mM.nii.gz"),
                "--rois",
                str(d / "rois.csv"),
                "--out",
                str(out),
                "--weights",
                str(wts),
            ]
        )
        == 0
    )
    rows = read(out)
    assert len(rows) == 12
    t = [r for r in rows if r["roi"] == "tumour"][0]
    assert float(t["mean"]) == pytest.approx(22.85) and float(t["ratio_ref"]) == pytest.approx(22.85 / 23.23)
    assert float(t["volume_mm3"]) == pytest.approx(4 / 3 * math.pi * 8, rel=0.01)
    w = [r for r in read(wts) if r["roi"] == "tumour"]
    assert sum(float(r["weight"]) for r in w) == pytest.approx(float(t["weight_sum"]) * 2, rel=1e-5)
    capsys.readouterr()
    out2 = tmp_path / "t2.csv"
    assert main(["roi", str(tmp_path / "nope.nii.gz"), "--rois", str(d / "rois.csv"), "--out", str(out2)]) == 2
    assert "nope.nii.gz: image file not found" in capsys.readouterr().err
    assert not out2.exists()
    assert main(["roi", str(d / "tsc_mM.nii.gz"), "--rois", str(d / "rois.csv"), "--ref", "Vitreous"]) == 2
    assert "Vitreous" in capsys.readouterr().err


def test_study_refuses_existing_output_and_custom_baseline(tmp_path, capsys):
    sess = make_study(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["study", str(sess), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(["-q", "study", str(sess), "--out", str(out), "--force", "--baseline", "48h"]) == 0
    assert not (out / "keep.txt").exists()
    tc = read(out / "tumour_timecourse.csv")
    r = [x for x in tc if (x["subject"], x["lesion"], x["timepoint"]) == ("s1", "l1", "1m")][0]
    assert float(r["change_mM"]) == pytest.approx(24.0 - 27.0)  # change from the 48h value
    assert main(["study", str(sess), "--out", str(tmp_path / "o2"), "--baseline", "2y"]) == 2
    assert "baseline '2y' is not a time point" in capsys.readouterr().err
