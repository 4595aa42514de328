"""Real scanner data: the 129Xe 3D radial Dixon scan of the Duke xenon consortium (XA30, 2.89 T).

Reconstructed as a user would (``narecon traj xenon`` for the consortium's design: halton-spiral
ordering, 100 us ramp, -5 us gradient delay, 40 cm FOV, views, samples, dwell and matrix from
the header; then ``narecon run --calibration none --nucleus-check off``). Truth: the anatomy
of a human chest, tested through the NIfTI affine without a stored image: two lungs left and
right of the midline with a gap (mediastinum) between them in both contrasts, and the
trachea in the gas image on the midline above the lungs' centre. A negative control (the
same data with the plain, un-haltonized spiral ordering) must fail these checks.
"""

from __future__ import annotations

import numpy as np
import pytest

XE = "xe129_radial_dixon_meas_MID00075_FID28630.dat"


@pytest.fixture(scope="module")
def xe(shared_twix):
    from recon.io import read_raw

    return read_raw(shared_twix / XE)


def _recon(acq, **design):
    from recon.io.geometry import nifti_affine
    from recon.nufft import NUFFT, gridding
    from recon.trajectory import compute_dcf
    from recon.trajectory.xenon import xenon_radial_for

    traj = xenon_radial_for(acq, **design)
    op = NUFFT(traj.k, traj.matrix, traj.fov_m)
    img = gridding(op, acq.data[:, 0], compute_dcf(traj, "analytic"))
    return img, nifti_affine(acq.geometry, traj.fov_m, traj.matrix)


def chest_measures(img: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Lung and trachea measures of one 3D magnitude image in RAS+ mm through ``affine``.

    Mask: smoothed magnitude above the noise (mean + 6 sd of the voxels outside the FOV
    sphere). ``dip``: signal in the central 25 mm of the left-right profile over the mean of
    its two lateral peaks; ``peak_left_mm``/``peak_right_mm``: where those peaks are, from the
    mask centroid; ``midline_superior``: fraction of the midline (|x| < 12 mm) mask voxels above
    the centroid; ``n_midline``: their number; ``mask_fraction``: mask voxels over all voxels.
    """
    from scipy import ndimage as ndi

    m = ndi.gaussian_filter(np.abs(img), 1.0)
    ijk = np.indices(m.shape).reshape(3, -1).T
    ras = ijk @ affine[:3, :3].T + affine[:3, 3]
    v = m.reshape(-1)
    centre = affine[:3, :3] @ (np.asarray(m.shape) // 2) + affine[:3, 3]
    fov_mm = np.abs(affine[:3, :3]).sum(0).max() * m.shape[0]
    outside = np.linalg.norm(ras - centre, axis=1) > 0.5 * fov_mm
    mask = v > v[outside].mean() + 6 * v[outside].std()
    c = ras[mask].mean(0)
    x = ras[mask, 0] - c[0]
    edges = np.arange(-150.0, 150.01, 12.5)
    prof, _ = np.histogram(x, bins=edges, weights=v[mask])
    mids = 0.5 * (edges[1:] + edges[:-1])
    left, right = mids < -20, mids > 20
    pl, pr = prof[left].max(), prof[right].max()
    dip = prof[np.abs(mids) < 13].max() / (0.5 * (pl + pr))
    mid = np.abs(x) < 12
    z = ras[mask, 2] - c[2]
    return {
        "dip": float(dip),
        "peak_balance": float(min(pl, pr) / max(pl, pr)),
        "peak_left_mm": float(mids[left][np.argmax(prof[left])]),
        "peak_right_mm": float(mids[right][np.argmax(prof[right])]),
        "n_midline": int(mid.sum()),
        "midline_superior": float((z[mid] > 0).mean()) if mid.any() else 0.0,
        "mask_fraction": float(mask.mean()),
    }


def _lungs(meas: dict) -> bool:
    return (
        meas["dip"] < 0.3
        and meas["peak_balance"] > 0.4
        and -130 < meas["peak_left_mm"] < -30
        and 30 < meas["peak_right_mm"] < 130
        and 0.005 < meas["mask_fraction"] < 0.2
    )


def _trachea(meas: dict) -> bool:
    return meas["n_midline"] >= 30 and meas["midline_superior"] > 0.9


@pytest.fixture(scope="module")
def consortium(shared_twix, tmp_path_factory):
    """``narecon traj xenon`` then ``narecon run --calibration none --nucleus-check off``; images read from the NIfTI files."""
    import nibabel as nib

    from recon.cli import main

    tmp = tmp_path_factory.mktemp("xe")
    assert main(["traj", "xenon", "--raw", str(shared_twix / XE), "--out", str(tmp / "traj.h5")]) == 0
    args = ["run", str(shared_twix / XE), "--traj", str(tmp / "traj.h5"), "--calibration", "none"]
    assert main(args + ["--nucleus-check", "off", "--no-qa", "--out", str(tmp / "out")]) == 0
    imgs = [nib.load(tmp / "out" / f"echo{e}.nii.gz") for e in (1, 2)]
    for im in imgs:
        assert int(im.header["sform_code"]) == 1 and int(im.header["qform_code"]) == 1  # scanner, as dcm2niix
    return np.stack([np.asarray(im.dataobj) for im in imgs]), imgs[0].affine, tmp / "out"


def test_run_outputs_without_tubes(consortium):
    """Images only: no TSC, a sidecar per image with the BIDS keys of this scan."""
    import json

    _, _, out = consortium
    assert not (out / "tsc_mM.nii.gz").exists()
    side = json.loads((out / "echo2.json").read_text())
    assert side["ImagedNucleus"] == "129Xe" and side["EchoTime"] == pytest.approx(0.5e-3)
    assert side["MagneticFieldStrength"] == pytest.approx(2.89, abs=0.01) and side["FlipAngle"] == 0.5
    assert side["ReconstructionOptions"]["calibration"] == "none"


def test_pipeline_equals_direct_gridding(xe, consortium):
    img, _, _ = consortium
    direct, _ = _recon(xe)
    for e in range(2):
        d = np.abs(direct[e])
        assert np.linalg.norm(img[e] - d) / np.linalg.norm(d) < 1e-3


def test_header_and_design(xe):
    from recon.trajectory.xenon import xenon_radial_for

    assert xe.nucleus == "129Xe" and xe.n_echoes == 2 and xe.te_s[0] == xe.te_s[1]
    traj = xenon_radial_for(xe)
    assert traj.fov_m == (0.4, 0.4, 0.4) and traj.matrix == (64, 64, 64)
    assert traj.n_projections == 1200 and traj.n_samples == 64
    # plateau step 1 / (os FOV) per dwell; ramp 100 us = 10 samples loses 5 of them; -5 us delay gains half a sample
    step = 1 / (2 * 0.4)
    kr = np.linalg.norm(traj.k[0], axis=-1)
    assert kr[-1] == pytest.approx(step * (63 + 0.5 - 5), rel=1e-9)


@pytest.mark.parametrize("echo", [0, 1], ids=["gas", "dissolved"])
def test_two_lungs_left_and_right_through_the_affine(consortium, echo):
    img, aff, _ = consortium
    meas = chest_measures(img[echo], aff)
    assert _lungs(meas), meas


def test_trachea_on_the_midline_above_the_lungs(consortium):
    img, aff, _ = consortium
    meas = chest_measures(img[0], aff)
    assert _trachea(meas), meas


def test_wrong_ordering_fails_the_same_checks(xe):
    """Negative control: the plain spiral order is not how the views were acquired."""
    img, aff = _recon(xe, ordering="spiral")
    meas = [chest_measures(img[e], aff) for e in range(2)]
    assert not _lungs(meas[0]) and not _lungs(meas[1])


def test_units_plausible_for_the_consortium_design(xe):
    from recon.trajectory.units import check_trajectory_units
    from recon.trajectory.xenon import xenon_radial_for

    m = check_trajectory_units(xenon_radial_for(xe), xe)
    assert m["reference"] == "header" and 0.85 < m["kmax_ratio"] < 0.95
    assert m["centre_sample"] <= 2
