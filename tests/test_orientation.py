"""Image orientation end to end: the phantom's right-anterior-superior marker lands at RAS (+, +, +).

A coarse simulation (24^3, 9.3 mm voxels, marker enlarged to 15 mm radius so it is resolved)
written as a twix file, reconstructed by ``narecon run``; the echo-1 NIfTI is sampled through its
affine at the marker's true RAS position and at its mirror images in x, y and z.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from recon.pipeline import RunOptions, run


@pytest.fixture(scope="module")
def marker_run(tmp_path_factory):
    from recon.sim import HeadPhantom, simulate, write_simulation
    from recon.trajectory import tpi

    base = tmp_path_factory.mktemp("orient")
    ph = HeadPhantom(marker=True, tubes=())
    ph.marker_radius = 0.015
    traj = tpi(fov_m=0.224, res_m=0.224 / 24, p=0.3, gmax_t_per_m=4e-3)
    write_simulation(simulate(ph, traj, snr=None, seed=0), traj, base / "sim")
    out = base / "out"
    opts = RunOptions(calibration="internal", reference_spheres=((0.0, 0.0, 0.0, 20.0),), qa=False)
    run([str(base / "sim" / "raw.dat")], out, opts)
    return base / "sim", out, ph


def _value_at_ras(img, ras_mm):
    ijk = np.linalg.solve(img.affine, np.append(ras_mm, 1.0))[:3]
    idx = tuple(int(round(v)) for v in ijk)
    data = np.asarray(img.dataobj)
    if any(i < 0 or i >= n for i, n in zip(idx, data.shape)):
        return 0.0
    return float(data[idx])


def test_marker_is_right_anterior_superior(marker_run):
    sim, out, ph = marker_run
    # the phantom's marker centre is given in patient LPS metres; RAS = (-x, -y, z)
    lps = np.asarray(ph.marker_centre) * 1e3
    ras = np.array([-lps[0], -lps[1], lps[2]])
    assert np.all(ras > 0)  # right, anterior, superior
    info = json.loads((sim / "truth.json").read_text())
    assert info  # the simulation wrote its truth
    echo = nib.load(out / "echo1.nii.gz")
    truth = nib.load(sim / "truth_tsc_mM.nii.gz")
    np.testing.assert_allclose(echo.affine, truth.affine, atol=1e-6)
    at = _value_at_ras(echo, ras)
    bright = float(np.percentile(np.asarray(echo.dataobj), 99))
    assert at > 0.5 * bright
    for flip in (np.array([-1, 1, 1]), np.array([1, -1, 1]), np.array([1, 1, -1])):
        assert _value_at_ras(echo, ras * flip) < 0.3 * at, flip
    # the truth map agrees (independent of the reconstruction)
    assert _value_at_ras(truth, ras) > 100
