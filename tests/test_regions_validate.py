"""The validation report with both measures (eroded voxel means, regional values): summary, table, CSV."""

from __future__ import annotations

from recon.validate import draw_case
from recon.validate.report import markdown, write_csv
from recon.validate.run import summarise


def _record():
    case = draw_case(1, 0)
    row = lambda q, cls, meas, v, b: {  # noqa: E731
        "quantity": q, "class": cls, "measure": meas, "n_voxels": 10, "bound": b, "value": v,
        "passed": None if v is None else abs(v) <= b,
    }  # fmt: skip
    rows = [
        row("grey_matter", "tissue", "eroded", -0.20, 0.05),
        row("csf_ventricles", "fluid", "eroded", None, 0.03),
        row("grey_matter", "tissue", "regional", 0.02, 0.05),
        row("csf_ventricles", "fluid", "regional", 0.01, 0.03),
        row("grey_matter", "tissue", "regional-fine", 0.01, 0.05),
        row("tube 30.0 mM", "tube_mM", "line", 0.3, 1.5),
        row("2 mm sphere at lesion centre", "sphere", "voxels", -0.04, 0.10),
    ]
    return {"case": case, "simulation_s": 1.0, "modes": {"default": {"rows": rows, "seconds": 1.0}}}


def test_summary_scores_each_measure_with_the_tubes_and_the_sphere(tmp_path):
    rec = _record()
    s = summarise(rec, "default")
    assert s["passed"] is False and s["n_failed"] == 1  # eroded grey matter -20 %
    assert s["passed_regional"] is True and s["worst_fluid_regional"] == 0.01
    assert s["passed_regional_fine"] is True
    assert s["passed_regional_fine_echo"] is None  # not measured: neither pass nor fail
    md = markdown([rec], 1)
    assert "-20.0 % / +2.0 % / +1.0 % / -" in md
    assert "no (1) / yes / yes / -" in md
    assert "default regional: 1 of 1" in md
    write_csv([rec], tmp_path / "v.csv")
    head, first = (tmp_path / "v.csv").read_text().splitlines()[:2]
    assert "measure" in head.split(",") and ",eroded," in first


def test_records_without_a_measure_are_read_as_eroded():
    rec = _record()
    for r in rec["modes"]["default"]["rows"]:
        if r["measure"] in ("eroded", "line", "voxels"):
            del r["measure"]
    rec["modes"]["default"]["rows"] = [r for r in rec["modes"]["default"]["rows"] if "measure" not in r]
    s = summarise(rec, "default")
    assert s["passed"] is False and s["passed_regional"] is None
