"""`narecon run` end to end: outputs, provenance, orientation, calibration accuracy, bad input."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from recon.errors import CalibrationError, ConfigError, InputError, OutputError, TrajectoryError
from recon.pipeline import RunOptions, run

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "raw.dat"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = run([str(SAMPLE)], out, RunOptions())
    return out, summary


def test_outputs_written(sample_run):
    out, summary = sample_run
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "b0_hz.json",
        "b0_hz.nii.gz",
        "calibration.json",
        "echo1.json",
        "echo1.nii.gz",
        "echo2.json",
        "echo2.nii.gz",
        "mask.nii.gz",
        "qa.png",
        "recon.h5",
        "tsc_mM.json",
        "tsc_mM.nii.gz",
    ]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".narecon-tmp")]
    assert summary["b0_method"] == "tb-cpr"
    # the object mask and the TSC outside it (sample: about 9 +- 5 mM of noise floor, not tens of mM)
    mask = np.asarray(nib.load(out / "mask.nii.gz").dataobj) > 0.5
    assert 0.05 < mask.mean() < 0.5
    bg = summary["calibration"]["background_outside_mask_mM"]
    assert bg["n_voxels"] > 1000 and abs(bg["mean"]) < 20
    # the PNG is a real image
    assert (out / "qa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_geometry_matches_truth(sample_run):
    out, _ = sample_run
    truth = nib.load(REPO / "data_samples" / "truth_tsc_mM.nii.gz")
    for name in ("tsc_mM", "echo1", "echo2", "b0_hz"):
        img = nib.load(out / f"{name}.nii.gz")
        assert img.shape == truth.shape == (40, 40, 40)
        np.testing.assert_allclose(img.affine, truth.affine, atol=1e-6)


def test_provenance(sample_run):
    out, _ = sample_run
    with h5py.File(out / "recon.h5") as f:
        prov = json.loads(f.attrs["provenance"])
        assert f["echoes"].shape == (2, 40, 40, 40) and f["echoes"].dtype == np.complex64
        assert f["dcf"].shape == (1280, 619)
        assert f["b0_hz"].shape == (40, 40, 40)
        params = json.loads(f["trajectory"].attrs["params"])
    assert prov["inputs"][0]["sha256"] == hashlib.sha256(SAMPLE.read_bytes()).hexdigest()
    assert prov["inputs"][0]["bytes"] == SAMPLE.stat().st_size  # the hash was made while reconstructing
    assert prov["device"] == "cpu" and prov["nufft_backend"] == "finufft"
    assert prov["acquisition"]["nucleus"] == "23Na" and prov["acquisition"]["te_s"] == pytest.approx([3e-4, 2.32e-3])
    assert {"read raw data", "trajectory", "calibration"} <= set(prov["timings_s"])
    assert params["generator"] == "tpi" and params["p"] == 0.3
    assert prov["versions"]["narecon"]


def test_inputs_hashed_while_reconstructing(tmp_path):
    """The raw file's SHA-256 is computed on a helper thread during the reconstruction (the writer
    uses it); a source that is not a file leaves it to the writer."""
    from recon.pipeline import hash_inputs

    assert hash_inputs([str(SAMPLE)])() == (hashlib.sha256(SAMPLE.read_bytes()).hexdigest(),)
    assert hash_inputs(["simulated"])() is None and hash_inputs([])() is None
    two = tmp_path / "b.dat"
    two.write_bytes(b"abc")
    assert hash_inputs([SAMPLE, two])()[1] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")


def test_known_digests_are_not_recomputed(tmp_path):
    """A digest the caller already has (a batch fingerprint) is used while size and mtime match; a file
    changed since is hashed again (the fingerprint's rule), and the batch worker passes its fingerprint."""
    import os

    from recon.batch.engine import known_digests
    from recon.pipeline import hash_inputs

    f = tmp_path / "a.dat"
    f.write_bytes(b"abc")
    st = os.stat(f)
    real = hashlib.sha256(b"abc").hexdigest()
    fake = "f" * 64  # not the file's digest: only a reuse can return it
    assert hash_inputs([f], {str(f): (st.st_size, st.st_mtime_ns, fake)})() == (fake,)
    assert hash_inputs([f], {str(f): (st.st_size, st.st_mtime_ns + 1, fake)})() == (real,)
    assert hash_inputs([f], {str(f): (st.st_size + 1, st.st_mtime_ns, fake)})() == (real,)
    assert hash_inputs([f], {str(tmp_path / "other"): (st.st_size, st.st_mtime_ns, fake)})() == (real,)
    fp = {"inputs": [{"role": "raw", "path": str(f), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": fake}]}
    assert hash_inputs([f], known_digests(fp))() == (fake,)
    assert known_digests(None) == {} and known_digests({"inputs": [{"path": "x", "sha256": ""}]}) == {}


def test_calibration_and_field_map(sample_run):
    out, _ = sample_run
    cal = json.loads((out / "calibration.json").read_text())
    assert cal["method"] == "tubes-auto-model"
    assert [t["concentration_mM"] for t in sorted(cal["tubes"], key=lambda t: t["concentration_mM"])] == [
        30,
        60,
        90,
        120,
    ]
    assert cal["fit"]["r2"] > 0.98
    # tubes fitted through the point response lie on the line within the issue-15 target of 1.5 mM
    assert np.abs(cal["fit"]["deviations_mM"]).max() < 1.5
    # the estimated field map agrees with the phantom's inside the brain (sample SNR 150)
    b0 = nib.load(out / "b0_hz.nii.gz").get_fdata()
    truth = nib.load(REPO / "data_samples" / "truth_b0_hz.nii.gz").get_fdata()
    labels = nib.load(REPO / "data_samples" / "truth_labels.nii.gz").get_fdata()
    from scipy import ndimage

    brain = ndimage.binary_erosion(np.isin(labels, [1, 2]), iterations=1)
    assert np.sqrt(np.mean((b0[brain] - truth[brain]) ** 2)) < 5.0


def test_tsc_accuracy_in_white_matter(sample_run):
    """White matter (large enough at 5.6 mm to survive one PSF width of erosion) within 15 %."""
    from scipy import ndimage

    out, _ = sample_run
    tsc = nib.load(out / "tsc_mM.nii.gz").get_fdata()
    info = json.loads((REPO / "data_samples" / "truth.json").read_text())
    labels = nib.load(REPO / "data_samples" / "truth_labels.nii.gz").get_fdata()
    wm = next(c for c in info["compartments"] if c["name"] == "white_matter")
    roi = ndimage.binary_erosion(labels == wm["label"], iterations=2)
    assert roi.sum() > 100
    assert tsc[roi].mean() == pytest.approx(wm["tsc_mM"], rel=0.15)


def test_cli_run_and_refusal(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    p = subprocess.run(
        [sys.executable, "-m", "recon", "run", str(SAMPLE), "--out", str(out), "--no-qa"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--force" in p.stderr
    assert sorted(x.name for x in out.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("case", ["five_tubes", "mismatched_traj", "unwritable", "bad_option"])
def test_bad_input_leaves_nothing(tmp_path, case):
    out = tmp_path / "o"
    opts = RunOptions(qa=False)
    exc = {
        "five_tubes": CalibrationError,
        "mismatched_traj": TrajectoryError,
        "unwritable": OutputError,
        "bad_option": ConfigError,
    }[case]
    if case == "five_tubes":  # one more concentration than tubes in the image: like a tube out of the FOV
        opts.tube_mM = (30.0, 60.0, 90.0, 120.0, 150.0)
    elif case == "mismatched_traj":
        from recon.trajectory import tpi, write_trajectory

        write_trajectory(tpi(fov_m=0.224, res_m=0.0056, p=0.3, gmax_t_per_m=5e-3), tmp_path / "t.h5")
        opts.traj = str(tmp_path / "t.h5")
    elif case == "unwritable":
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "o"
        if __import__("os").access(ro, __import__("os").W_OK):  # running as root: permissions do not bind
            out = Path("/proc/narecon-cannot-write/o")
    elif case == "bad_option":
        opts.b0 = "magic"
    with pytest.raises(exc) as e:
        run([str(SAMPLE)], out, opts)
    if case == "mismatched_traj":
        assert "samples" in str(e.value) or "projections" in str(e.value)
    assert not out.exists()
    leftovers = [p for p in tmp_path.rglob(".narecon-tmp*")]
    assert leftovers == []


def test_wrong_nucleus(shared_twix, tmp_path):
    f = shared_twix / "xe129_radial_dixon_meas_MID00075_FID28630.dat"
    with pytest.raises(InputError, match="129Xe"):
        run([str(f)], tmp_path / "o", RunOptions())
    assert not (tmp_path / "o").exists()


def test_config_file(tmp_path):
    from recon.pipeline import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('[run]\nb0 = "none"\ntube_mM = [30, 60, 90, 120]\neps = 1e-3\n')
    assert load_config(cfg) == {"b0": "none", "tube_mM": (30.0, 60.0, 90.0, 120.0), "eps": 1e-3}
    cfg.write_text("[run]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_config(cfg)
    cfg.write_text("[run\n")
    with pytest.raises(ConfigError, match="TOML"):
        load_config(cfg)


def test_relaxation_map_tissue_vs_fluid():
    """Voxels whose echo ratio matches the tissue model get the tissue factor, fluid ones the fluid factor."""
    from types import SimpleNamespace

    from recon.calibrate import CSF, TISSUE, ReadoutWeighting, relaxation_factors
    from recon.pipeline import relaxation_map
    from recon.trajectory import compute_dcf, tpi

    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    dcf = compute_dcf(traj)
    acq = SimpleNamespace(te_s=(0.3e-3, 2.32e-3), tr_s=0.174, flip_deg=90.0)
    rw = ReadoutWeighting.from_trajectory(traj, dcf)

    def fac(model, te):
        return relaxation_factors(0.174, 90.0, te, target=model, readout=rw)

    q_t = fac(TISSUE, 2.32e-3).t2star_target / fac(TISSUE, 0.3e-3).t2star_target
    q_f = fac(CSF, 2.32e-3).t2star_target / fac(CSF, 0.3e-3).t2star_target
    assert q_t < 0.8 < q_f  # tissue decays much faster between the echoes
    e1 = np.full((16, 16, 16), 10.0)
    e2 = e1.copy()
    e2[:8] *= q_t
    e2[8:] *= q_f
    rmap, info = relaxation_map(acq, traj, dcf, np.stack([e1, e2]), smooth_vox=0.5)
    assert rmap[2, 8, 8] == pytest.approx(fac(TISSUE, 0.3e-3).relative, rel=1e-3)
    assert rmap[13, 8, 8] == pytest.approx(fac(CSF, 0.3e-3).relative, rel=1e-3)
    assert info["relative_tissue"] < info["relative_fluid"]


def test_regional_record_in_calibration_json_names_thin_regions_of_coarse_labels(tmp_path):
    """The sample's truth labels are on its 40^3 recon grid: the regional record in calibration.json
    carries the label voxel size (1 recon voxel) and a warning for each compartment under ~6 voxels
    across; its values are those of regions.tsv."""
    import csv

    out = tmp_path / "o"
    run([str(SAMPLE)], out, RunOptions(qa=False, regions=str(SAMPLE.parent / "truth_labels.nii.gz")))
    cal = json.loads((out / "calibration.json").read_text())
    reg = cal["regional"]
    assert reg["settings"]["label_voxel_ratio"] == pytest.approx(1.0)
    (thin,) = [w for w in reg["warnings"] if "voxels across" in w]
    assert "csf_ventricles (" in thin and "4x finer" in thin
    tsv = {r["name"]: float(r["model_mM"]) for r in csv.DictReader(open(out / "regions.tsv"), delimiter="\t")}
    assert {r["name"]: r["model_mM"] for r in reg["regions"]} == pytest.approx(tsv, rel=1e-3)


def test_measured_tube_t1_scales_the_voxel_map_by_the_saturation_ratio():
    """--tube-t1-ms replaces the saline prior's T1 (55 ms) in the tubes' T1 factor: with the tissue
    correction every voxel's TSC changes by S(T1 given) / S(55 ms) exactly (S the spoiled steady state),
    and the regional record names the measured value."""
    import recon
    from recon.physics import SALINE_TUBE, t1_saturation

    a = recon.reconstruct(SAMPLE, {"relaxation": "tissue", "qa": False})
    b = recon.reconstruct(
        SAMPLE, {"relaxation": "tissue", "qa": False, "tube_t1_ms": 50.0, "regions": str(SAMPLE.parent / "truth_labels.nii.gz")}
    )
    acq = a.acquisition
    want = t1_saturation(tr_s=acq.tr_s, flip_deg=acq.flip_deg, t1_s=0.050) / t1_saturation(
        tr_s=acq.tr_s, flip_deg=acq.flip_deg, t1_s=SALINE_TUBE.t1_s
    )
    assert abs(want - 1) > 0.005  # the test can tell the two apart
    m = np.abs(a.tsc_mM) > 10
    np.testing.assert_allclose(b.tsc_mM[m] / a.tsc_mM[m], want, rtol=1e-4)
    assert b.regions.settings["t1_measured_s"] == {"tubes": pytest.approx(0.050)}
    with pytest.raises(ConfigError, match="tube_t1_ms"):
        RunOptions(tube_t1_ms=0.05).validate()  # seconds where ms are asked


def test_a_bad_region_sidecar_is_refused_before_the_raw_data_are_read(tmp_path):
    import shutil

    lab = tmp_path / "seg.nii.gz"
    shutil.copy(SAMPLE.parent / "truth_labels.nii.gz", lab)
    (tmp_path / "seg.tsv").write_text("label\tname\tt1_ms\n1\tgrey_matter\t0.04\n")  # seconds given as ms
    with pytest.raises(InputError, match="t1_ms 0.04 outside") as e:
        run([str(tmp_path / "no_such_scan.dat")], tmp_path / "o", RunOptions(qa=False, regions=str(lab)))
    assert "seg.tsv" in str(e.value) and not (tmp_path / "o").exists()
    (tmp_path / "seg.tsv").write_text("label\tname\tclass\n1\tgrey_matter\tbone\n")
    with pytest.raises(InputError, match="class 'bone'") as e:
        run([str(tmp_path / "no_such_scan.dat")], tmp_path / "o", RunOptions(qa=False, regions=str(lab)))
    assert "seg.tsv" in str(e.value)
