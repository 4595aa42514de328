"""Every command refuses an unusable --out before any work (recon.atomic.check_output), in one line, exit 2."""

from __future__ import annotations

import pytest

from recon.cli import main


@pytest.fixture
def place(tmp_path):
    (tmp_path / "afile").write_text("x")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "sessions.csv").write_text("subject,lesion,timepoint,path,rois\n")
    (proj / "variants.toml").write_text("")
    (proj / "img.nii.gz").write_bytes(b"not read")
    (proj / "rois.csv").write_text("name,x,y,z,radius_mm\n")
    return tmp_path


CASES = {
    "traj-missing-parent": (["traj", "tpi", "--out", "{d}/missing/dir/t.h5"], "parent folder does not exist"),
    "traj-parent-is-file": (["traj", "radial", "--out", "{d}/afile/t.h5"], "parent is not a folder"),
    "traj-exists": (["traj", "tpi", "--out", "{d}/afile"], "exists"),
    "simulate-missing-parent": (["simulate", "--out", "{d}/missing/sim"], "parent folder does not exist"),
    "simulate-exists": (["simulate", "--out", "{d}/proj"], "not empty"),
    "roi-out-is-image": (
        ["roi", "{d}/proj/img.nii.gz", "--rois", "{d}/proj/rois.csv", "--out", "{d}/proj/img.nii.gz", "--force"],
        "is the input",
    ),
    "study-out-contains-sessions": (["study", "{d}/proj/sessions.csv", "--out", "{d}/proj", "--force"], "contains the input"),
    "bench-traj-out-contains-variants": (["bench-traj", "{d}/proj/variants.toml", "--out", "{d}/proj", "--force"], "contains"),
    "bench-traj-missing-parent": (["bench-traj", "{d}/proj/variants.toml", "--out", "{d}/no/out"], "does not exist"),
    "traj-design-too-large": (["traj", "tpi", "--res-mm", "0.05", "--out", "{d}/t.h5"], "trajectory_points"),
    "traj-radial-projections": (["traj", "radial", "--projections", "1000000000", "--out", "{d}/t.h5"], "trajectory_points"),
    "simulate-matrix-huge": (["simulate", "--matrix", "100000", "--out", "{d}/sim"], "above the limit matrix"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_refused_before_work(place, capsys, case):
    argv, msg = CASES[case]
    before = sorted(p.relative_to(place) for p in place.rglob("*"))
    rc = main(["-q", *[a.format(d=place) for a in argv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("narecon: error:") and msg in err[0], err
    assert sorted(p.relative_to(place) for p in place.rglob("*")) == before  # nothing created, nothing removed
    assert (place / "proj" / "sessions.csv").exists()
