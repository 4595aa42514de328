"""ROI weights and statistics against independent truths (sphere volume, constant regions, symmetry)."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from recon.analysis import roi as R
from recon.errors import InputError

DX = 3.5


def iso_affine(n: int = 16, dx: float = DX, origin=None) -> np.ndarray:
    A = np.diag([dx, dx, dx, 1.0])
    A[:3, 3] = -(n // 2) * dx if origin is None else origin
    return A


def sphere_volume_est(affine, center, r, s=R.SUPERSAMPLE, shape=(16, 16, 16)):
    idx, w = R.sphere_weights(shape, affine, np.asarray(center, float), r, supersample=s)
    return w.sum() * abs(np.linalg.det(affine[:3, :3])), idx, w


def test_sphere_weights_sum_to_sphere_volume_at_subvoxel_offsets(rng):
    A = iso_affine()
    v_true = 4.0 / 3.0 * math.pi * 2.0**3  # 33.51 mm^3, r = 2 mm on 3.5 mm voxels
    offsets = [(0, 0, 0), (1.75, 1.75, 1.75), (1.75, 0, 0), (0.9, -0.4, 1.3)] + [tuple(rng.uniform(0, DX, 3)) for _ in range(8)]
    for off in offsets:
        v, _, w = sphere_volume_est(A, off, 2.0)
        assert abs(v / v_true - 1) < 0.01, off
        assert np.all((w > 0) & (w <= 1))


def test_sphere_weights_converge_with_supersampling(rng):
    A = iso_affine()
    v_true = 4.0 / 3.0 * math.pi * 8.0
    offs = [rng.uniform(0, DX, 3) for _ in range(10)]
    mean_err = {}
    for s in (4, 8, 32):
        mean_err[s] = np.mean([abs(sphere_volume_est(A, o, 2.0, s)[0] / v_true - 1) for o in offs])
    assert mean_err[32] < mean_err[8] < mean_err[4]
    assert mean_err[32] < 2e-3


def test_sphere_inside_one_voxel_gets_volume_fraction():
    A = iso_affine()
    r = 1.0  # fits inside the central voxel: the only weight is V_sphere / V_voxel
    _, idx, w = sphere_volume_est(A, (0.2, -0.3, 0.1), r)
    assert idx.tolist() == [[8, 8, 8]]
    assert w[0] == pytest.approx(4 / 3 * math.pi / DX**3, rel=5e-3)


def test_sphere_weights_on_oblique_anisotropic_grid():
    th = np.deg2rad(25)
    Rz = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    A = np.eye(4)
    A[:3, :3] = Rz @ np.diag([3.5, 2.5, 4.0])
    A[:3, 3] = [-20, -15, -30]
    r = 5.0
    v, _, _ = sphere_volume_est(A, (1.3, 2.1, -0.7), r, shape=(20, 20, 20))
    assert v == pytest.approx(4 / 3 * math.pi * r**3, rel=5e-3)


def test_fully_inside_voxels_have_weight_one():
    A = iso_affine(32)
    idx, w = R.sphere_weights((32, 32, 32), A, np.zeros(3), 10.0)
    centre = np.all(np.abs(idx - 16) <= 1, axis=1)  # 3x3x3 core: corners at <= 1.5*sqrt(3)*3.5 = 9.1 mm
    assert np.all(w[centre] == 1.0)


def test_weighted_stats_against_formulas(rng):
    x = rng.normal(40, 5, 50)
    st = R.weighted_stats(x, np.ones(50))
    assert st["mean"] == pytest.approx(x.mean())
    assert st["sd"] == pytest.approx(x.std(ddof=1))
    w = rng.uniform(0.1, 1, 50)
    st = R.weighted_stats(x, w)
    m = (w * x).sum() / w.sum()
    var = (w * (x - m) ** 2).sum() / (w.sum() - (w**2).sum() / w.sum())
    assert st["mean"] == pytest.approx(m)
    assert st["sd"] == pytest.approx(math.sqrt(var))
    assert st["min"] == x.min() and st["max"] == x.max() and st["n_voxels"] == 50


def _constant_volume(n=16):
    vol = np.zeros((n, n, n))
    vol[: n // 2] = 30.0
    vol[n // 2 :] = 120.0
    return vol


def test_roi_stats_on_constant_regions():
    A = iso_affine()
    img = R.Image(_constant_volume(), A, "synthetic.nii.gz", "synthetic")
    # sphere well inside the 120 mM half (voxel index 12 along x) -> exact
    inside = R.SphereROI("in", 2.0, center_vox=(12, 8, 8))
    # sphere centred on the plane between voxel slabs 7 and 8 (x = -1.75 mm): symmetric -> (30 + 120) / 2
    straddle = R.SphereROI("half", 2.0, center_mm=(-1.75, 0.6, -0.3))
    csf = R.SphereROI("CSF", 2.0, center_mm=(-4 * DX, 0, 0))
    res = {r.roi: r for r in R.measure([img], [inside, straddle, csf], ref="CSF")}
    assert res["in"].mean == pytest.approx(120.0, abs=1e-12)
    assert res["in"].sd == pytest.approx(0.0, abs=1e-12)
    assert res["in"].min == res["in"].max == 120.0
    assert res["in"].volume_mm3 == pytest.approx(4 / 3 * math.pi * 8, rel=0.01)
    assert res["half"].mean == pytest.approx(75.0, rel=1e-6)
    assert (res["half"].min, res["half"].max) == (30.0, 120.0)
    assert res["in"].ratio_ref == pytest.approx(120.0 / 30.0)
    assert res["CSF"].ratio_ref == pytest.approx(1.0)


def test_voxel_and_mm_centres_agree():
    A = iso_affine()
    A[:3, 3] = [-27.1, 30.2, -12.0]
    A[1, 1] = -DX  # a flipped axis
    v = np.array([5.3, 7.0, 4.6])
    mm = (A @ np.r_[v, 1])[:3]
    i1, w1 = R.sphere_weights((16, 16, 16), A, R.SphereROI("a", 2, center_vox=tuple(v)).center_in_mm(A), 2.0)
    i2, w2 = R.sphere_weights((16, 16, 16), A, mm, 2.0)
    assert np.array_equal(i1, i2) and np.allclose(w1, w2)


def test_mask_resampled_between_grids_matches_box_in_mm(tmp_path):
    # label file: 1 mm grid, axes permuted (z, y, x order) and x flipped, box |x|,|y|,|z| < 10 mm labelled 3
    n = 48
    Al = np.zeros((4, 4))
    Al[0, 2] = -1.0  # array axis 2 -> -x
    Al[1, 1] = 1.0
    Al[2, 0] = 1.0
    Al[3, 3] = 1.0
    Al[:3, 3] = [23.5, -23.5, -23.5]
    g = np.indices((n, n, n)).reshape(3, -1)
    mm = (Al @ np.vstack([g, np.ones(g.shape[1])]))[:3]
    lab = np.where(np.all(np.abs(mm) < 10.0, axis=0), 3, 0).reshape(n, n, n).astype(np.int16)
    lab[0, 0, 0] = 7  # another label far away
    nib.save(nib.Nifti1Image(lab, Al), tmp_path / "labels.nii.gz")
    # image grid: 3.5 mm, origin chosen so no centre lies within 0.5 mm of the box faces
    A = iso_affine(12, origin=[-19.5, -20.0, -18.9])
    res = R.resample_labels_nearest(lab, Al, (12, 12, 12), A)
    gi = np.indices((12, 12, 12)).reshape(3, -1)
    cent = (A @ np.vstack([gi, np.ones(gi.shape[1])]))[:3]
    expect = np.all(np.abs(cent) < 10.0, axis=0).reshape(12, 12, 12)
    assert np.array_equal(res == 3, expect)
    # through measure(): the mask on a constant-value image with a known value inside the box
    vol = np.full((12, 12, 12), 5.0)
    vol[expect] = 42.0
    r = R.measure([R.Image(vol, A, "img")], [R.MaskROI("box", str(tmp_path / "labels.nii.gz"), 3)], ref=None)[0]
    assert r.mean == 42.0 and r.sd == 0.0 and r.n_voxels == expect.sum()
    assert r.volume_mm3 == pytest.approx(expect.sum() * DX**3)


def test_read_roi_table_forms_and_errors(tmp_path):
    p = tmp_path / "rois.csv"
    p.write_text(
        "name,x,y,z,i,j,k,radius_mm,mask,label\n# comment\nCSF,1,2,3,,,,2,,\ntumour,,,,4,5,6,2,,\nbox,,,,,,,,lab.nii.gz,3\n"
    )
    rois = R.read_roi_table(p)
    assert rois[0].center_mm == (1, 2, 3) and rois[1].center_vox == (4, 5, 6)
    assert isinstance(rois[2], R.MaskROI) and rois[2].label == 3 and rois[2].path == str(tmp_path / "lab.nii.gz")
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x,y,radius\nCSF,1,2,3\n")
    with pytest.raises(InputError, match="bad.csv.*x,y,z"):
        R.read_roi_table(bad)
    bad.write_text("name,x,y,z,radius_mm\nCSF,1,2,three,2\n")
    with pytest.raises(InputError, match="line 2.*not a number"):
        R.read_roi_table(bad)
    bad.write_text("name,x,y,z,radius_mm\nCSF,1,2,3,-2\n")
    with pytest.raises(InputError, match="radius"):
        R.read_roi_table(bad)
    with pytest.raises(InputError, match="not found"):
        R.read_roi_table(tmp_path / "nope.csv")


def test_roi_outside_image_is_an_error():
    img = R.Image(np.ones((8, 8, 8)), iso_affine(8), "img.nii.gz")
    with pytest.raises(InputError, match="no voxel inside"):
        R.measure([img], [R.SphereROI("far", 2.0, center_mm=(500, 0, 0))], source="rois.csv")


def test_mricron_voi_and_bad_files(tmp_path):
    import gzip

    lab = np.zeros((6, 6, 6), np.uint8)
    lab[2:4, 2:4, 2:4] = 1
    A = iso_affine(6)
    (tmp_path / "lesion.voi").write_bytes(gzip.compress(nib.Nifti1Image(lab, A).to_bytes()))
    vol = np.arange(216, dtype=float).reshape(6, 6, 6)
    r = R.measure([R.Image(vol, A, "img")], [R.MaskROI("les", str(tmp_path / "lesion.voi"))], ref=None)[0]
    assert r.n_voxels == 8 and r.mean == pytest.approx(vol[2:4, 2:4, 2:4].mean())
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="junk.nii.gz: cannot read as NIfTI"):
        R.load_image(tmp_path / "junk.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), A), tmp_path / "four_d.nii.gz")
    with pytest.raises(InputError, match="3-D volume"):
        R.load_image(tmp_path / "four_d.nii.gz")


def test_reference_tissue_from_several_rois():
    vol = np.full((16, 16, 16), 40.0)
    vol[12:, :, :] = 100.0
    vol[:4, :, :] = 140.0
    img = R.Image(vol, iso_affine(), "img")
    rois = [
        R.SphereROI("CSF1", 2.0, center_vox=(14, 8, 8)),
        R.SphereROI("csf-2", 2.0, center_vox=(1, 8, 8)),
        R.SphereROI("White matter", 2.0, center_vox=(8, 8, 8)),
    ]
    res = {r.roi: r for r in R.measure([img], rois, ref="CSF")}
    assert res["White matter"].ratio_ref == pytest.approx(40.0 / 120.0)
    assert R.tissue_of("White matter") == "WM" and R.tissue_of("csf-2") == "CSF" and R.tissue_of("x") == "x"
