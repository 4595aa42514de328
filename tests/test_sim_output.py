"""Written simulation: raw.dat reads back identically (twixtools and our reader), the trajectory is
rebuilt from the header alone, ISMRMRD, truth files, byte determinism and the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from recon.sim import HeadPhantom, simulate, write_simulation
from recon.trajectory import tpi


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, undersampling=2.0)  # 16^3
    res = simulate(HeadPhantom(marker=True), traj, snr=150.0, seed=5, n_coils=2, n_threads=1)
    out = tmp_path_factory.mktemp("sim") / "out"
    write_simulation(res, traj, out)
    return traj, res, out


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_twixtools_reads_identical_data_and_header(written):
    import twixtools

    traj, res, out = written
    acq = res.acquisition
    tw = twixtools.read_twix(str(out / "raw.dat"), verbose=False, parse_pmu=False)[-1]
    img = [m for m in tw["mdb"] if m.is_image_scan()]
    noise = [m for m in tw["mdb"] if m.is_flag_set("NOISEADJSCAN")]
    assert len(img) == acq.n_echoes * acq.n_projections
    for m in img[:: max(1, len(img) // 50)]:
        e, p = m.mdh.Counter.Eco, m.mdh.Counter.Lin
        assert np.array_equal(m.data, acq.data[e, :, p, :])
    assert np.array_equal(np.concatenate([m.data for m in noise], axis=1), acq.noise)
    y = tw["hdr"]["MeasYaps"]
    assert y["sTXSPEC"]["asNucleusInfo"][0]["tNucleus"].strip('"') == "23Na"
    assert y["sTXSPEC"]["asNucleusInfo"][0]["lFrequency"] == 78834000  # 11.262 MHz/T x 7 T
    assert y["alTE"][:2] == [300, 2320] and y["alTR"][0] == 174000
    assert y["adFlipAngleDegree"][0] == 90.0 and y["sRXSPEC"]["alDwellTime"][0] == 10000
    assert y["sSliceArray"]["asSlice"][0]["dReadoutFOV"] == 224.0
    assert y["sWipMemBlock"]["adFree"][0] == 0.3  # p


def test_our_reader_reads_identical_acquisition_and_rebuilds_the_trajectory(written):
    from recon.io import build_trajectory, read_raw

    traj, res, out = written
    a, b = res.acquisition, read_raw(out / "raw.dat")
    assert np.array_equal(a.data, b.data) and np.array_equal(a.noise, b.noise)
    assert np.array_equal(a.projection_index, b.projection_index)
    assert b.te_s == pytest.approx(a.te_s, abs=1e-12) and b.tr_s == pytest.approx(a.tr_s, abs=1e-12)
    assert (b.flip_deg, b.nucleus, b.field_t) == (a.flip_deg, a.nucleus, a.field_t)
    assert b.dwell_s == pytest.approx(a.dwell_s, rel=1e-12) and b.frequency_hz == pytest.approx(a.frequency_hz)
    assert np.allclose(b.fov_m, a.fov_m) and np.allclose(b.geometry["rotation"], np.eye(3))
    rebuilt = build_trajectory(b)  # default profile, header only: no flags
    assert rebuilt.k.shape == traj.k.shape and np.allclose(rebuilt.k, traj.k, atol=1e-9)


def test_ismrmrd_reads_identical_data(tmp_path):
    from recon.io import read_raw

    traj = tpi(fov_m=0.224, res_m=0.028, p=0.3)  # 8^3: ISMRMRD writes one acquisition object per readout
    res = simulate(HeadPhantom(), traj, snr=100.0, seed=1, n_threads=1)
    write_simulation(res, traj, tmp_path / "o", ismrmrd=True)
    b = read_raw(tmp_path / "o" / "raw.h5")
    assert np.array_equal(res.acquisition.data, b.data)
    assert b.te_s == pytest.approx(res.acquisition.te_s) and b.nucleus == "23Na"
    assert np.allclose(b.header["trajectory"].k, traj.k, rtol=1e-6, atol=1e-3)


def test_truth_files(written):
    import nibabel as nib

    from recon.io import nifti_affine

    traj, res, out = written
    info = json.loads((out / "truth.json").read_text())
    tsc = nib.load(out / "truth_tsc_mM.nii.gz")
    lab = nib.load(out / "truth_labels.nii.gz")
    b0 = nib.load(out / "truth_b0_hz.nii.gz")
    aff = nifti_affine(res.acquisition.geometry, traj.fov_m, traj.matrix)
    for img in (tsc, lab, b0):
        assert img.shape == (16, 16, 16) and np.allclose(img.affine, aff)
    assert np.array_equal(np.asarray(tsc.dataobj), res.truth.tsc_mM)
    assert np.array_equal(np.asarray(lab.dataobj), res.truth.labels)
    names = {c["name"]: c for c in info["compartments"]}
    assert names["tube_90mM"]["tsc_mM"] == 90 and "marker" in names
    assert info["protocol"]["te_s"] == [0.0003, 0.00232] and info["simulation"]["seed"] == 5
    # tubes: the label centroid through the affine lands on the tabulated RAS centre
    labels = np.asarray(lab.dataobj)
    ijk = np.argwhere(labels == names["tube_30mM"]["label"]).mean(axis=0)
    ras = aff[:3, :3] @ ijk + aff[:3, 3]
    tube = next(t for t in info["tubes"] if t["name"] == "tube_30mM")
    assert np.allclose(ras, tube["centre_mm_ras"], atol=7.0) and ras[0] > 0  # tube_30mM is on the right
    # the orientation marker appears right-anterior-superior in RAS, and not at its mirror images
    lps = np.asarray(info["phantom"]["marker_centre_mm_lps"])
    ras = np.array([-lps[0], -lps[1], lps[2]])
    assert np.all(ras > 40)
    tmap = np.asarray(tsc.dataobj)
    inv = np.linalg.inv(aff)

    def at(r):
        return tmap[tuple(np.rint(inv[:3, :3] @ r + inv[:3, 3]).astype(int))]

    assert at(ras) > 10
    for mirror in ((-1, 1, 1), (1, -1, 1), (1, 1, -1)):
        assert at(ras * np.array(mirror)) < 1


def test_written_files_are_byte_deterministic(written, tmp_path):
    traj, res, out = written
    res2 = simulate(HeadPhantom(marker=True), traj, snr=150.0, seed=5, n_coils=2, n_threads=1)
    write_simulation(res2, traj, tmp_path / "again", ismrmrd=False)
    for name in ("raw.dat", "truth_tsc_mM.nii.gz", "truth_b0_hz.nii.gz", "truth_labels.nii.gz"):
        assert _sha(out / name) == _sha(tmp_path / "again" / name), name


def test_cli_simulate_and_refusal(tmp_path, capsys):
    from recon.cli import main

    out = tmp_path / "cli"
    args = [
        "simulate",
        "--out",
        str(out),
        "--matrix",
        "12",
        "--snr",
        "0",
        "--b0-scale",
        "0",
        "--threads",
        "1",
        "--tumour",
        "solid",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "raw.dat",
        "truth.json",
        "truth_b0_hz.nii.gz",
        "truth_labels.nii.gz",
        "truth_labels_fine.nii.gz",
        "truth_tsc_mM.nii.gz",
    ]
    info = json.loads((out / "truth.json").read_text())
    assert info["simulation"]["snr"] is None and info["phantom"]["tumour"] == "solid"
    before = _sha(out / "raw.dat")
    assert main(args) == 2  # exists: refused, untouched
    assert "exists" in capsys.readouterr().err and _sha(out / "raw.dat") == before
    assert main(["simulate", "--out", str(tmp_path / "bad"), "--matrix", "12", "--oversampling", "1"]) == 2
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("kind", ["radial-file", "tpi-file"])
def test_design_from_trajectory_files_and_radial_is_rebuilt_from_the_header(tmp_path, kind):
    from recon.io import build_trajectory, read_raw
    from recon.trajectory import density_adapted_radial, read_trajectory, write_trajectory

    if kind == "radial-file":
        made = density_adapted_radial(fov_m=0.2, res_m=0.025, p=0.35, n_projections=120)
    else:
        made = tpi(fov_m=0.2, res_m=0.025, p=0.4, gmax_t_per_m=3e-3)  # not the profile's defaults
    write_trajectory(made, tmp_path / "t.h5")
    traj = read_trajectory(tmp_path / "t.h5")
    res = simulate(HeadPhantom(), traj, snr=100.0, n_threads=1)
    write_simulation(res, traj, tmp_path / "o")
    rebuilt = build_trajectory(read_raw(tmp_path / "o" / "raw.dat"))
    assert rebuilt.k.shape == made.k.shape and np.allclose(rebuilt.k, made.k, atol=1e-9)


def test_fine_truth_labels_agree_with_the_phantom_and_the_coarse_labels(tmp_path):
    """``truth_labels_fine.nii.gz`` (written when the phantom is given): the phantom's own labels at
    sub-voxel points, through its affine; each recon voxel's most frequent fine label is its coarse
    (dominant-compartment) label almost everywhere, and fine voxel centres map to the right places."""
    import json

    import nibabel as nib

    from recon.sim.output import FINE_LABEL_FACTOR
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    ph = HeadPhantom(b0_scale=0.0)
    res = simulate(ph, traj, snr=None, seed=0, te_s=(0.3e-3,))
    out = write_simulation(res, traj, tmp_path / "o", phantom=ph)
    fine = nib.load(out / "truth_labels_fine.nii.gz")
    coarse = nib.load(out / "truth_labels.nii.gz")
    f = FINE_LABEL_FACTOR
    assert fine.shape == tuple(f * n for n in coarse.shape)
    lab = np.asarray(fine.dataobj)
    n = coarse.shape
    blocks = lab.reshape(n[0], f, n[1], f, n[2], f).transpose(0, 2, 4, 1, 3, 5).reshape(*n, -1)
    mode = np.apply_along_axis(lambda v: np.bincount(v, minlength=64).argmax(), -1, blocks.astype(np.int64))
    agree = (mode == np.asarray(coarse.dataobj)).mean()
    assert agree >= 0.95, agree
    # a fine voxel centre, taken through its affine to RAS mm, lies in the compartment the phantom says
    info = json.loads((out / "truth.json").read_text())
    by_label = {c["label"]: c["name"] for c in info["compartments"]}
    idx = np.argwhere(lab > 0)[:: max(1, int((lab > 0).sum()) // 50)]
    ras = nib.affines.apply_affine(fine.affine, idx)
    lps = np.column_stack([-ras[:, 0], -ras[:, 1], ras[:, 2]]) * 1e-3
    got = ph.labels(lps, info["phantom"]["edge_mm"] * 1e-3)
    assert (got == lab[tuple(idx.T)]).mean() >= 0.98
    assert set(np.unique(lab)) - {0} <= set(by_label)
