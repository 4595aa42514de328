"""Calibration on synthetic images with known answers.

The phantom is built on the 64^3 image grid (3.5 mm voxels, oblique affine) with partial-volume
edges (3x supersampling): a head ellipsoid of 40 mM tissue with a 145 mM CSF sphere, and four
cylindrical tubes of known concentration outside the head in shuffled positions. The image is
kappa * C, blurred by a Gaussian PSF of FWHM 1.6 voxels, given a smooth phase and complex noise.
The truth (concentrations, tube positions in RAS mm) is known independently of the code tested.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from recon.calibrate import (
    calibrate,
    detect_tubes,
    fit_line,
    noise_floor_correct,
    phase_correct,
    qa_figure,
    read_tubes_file,
    relaxation_factors,
)
from recon.calibrate.tubes import mm_to_vox, vox_to_mm
from recon.errors import CalibrationError

N = 64
VOX = 3.5
KAPPA = 2.0  # signal per mM
FWHM_VOX = 1.6
TUBE_R = 10.0
# in-plane positions (mm from the grid centre along array axes 0, 1) -> concentration, shuffled
TUBES = [((80.0, 40.0), 90.0), ((80.0, -40.0), 30.0), ((-80.0, 40.0), 120.0), ((-80.0, -40.0), 60.0)]
CSF_C, CSF_POS, CSF_R = 145.0, (0.0, 10.0, 0.0), 18.0
TISSUE_C = 40.0
HEAD_AXES = (55.0, 70.0, 60.0)


def make_affine() -> np.ndarray:
    th = math.radians(10.0)
    rot = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-VOX, -VOX, VOX])
    a[:3, 3] = [110.0, 120.0, -100.0]
    return a


AFFINE = make_affine()


def grid_mm(ss: int = 3) -> np.ndarray:
    """Supersampled positions (mm from the grid centre) along the array axes, shape (N*ss,)."""
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    return ((np.arange(N)[:, None] + sub[None, :]).ravel() - N // 2) * VOX


def volume_fraction(inside) -> np.ndarray:
    ss = 3
    g = grid_mm(ss)
    x, y, z = np.meshgrid(g, g, g, indexing="ij", sparse=True)
    f = inside(x, y, z).astype(np.float32)
    return f.reshape(N, ss, N, ss, N, ss).mean(axis=(1, 3, 5))


def truth_conc(tubes=TUBES, head=True) -> np.ndarray:
    c = np.zeros((N, N, N), dtype=np.float64)
    if head:
        a0, a1, a2 = HEAD_AXES
        head_f = volume_fraction(lambda x, y, z: (x / a0) ** 2 + (y / a1) ** 2 + (z / a2) ** 2 <= 1)
        csf_f = volume_fraction(lambda x, y, z: (x - CSF_POS[0]) ** 2 + (y - CSF_POS[1]) ** 2 + (z - CSF_POS[2]) ** 2 <= CSF_R**2)
        c += TISSUE_C * head_f + (CSF_C - TISSUE_C) * csf_f
    for (px, py), conc in tubes:
        f = volume_fraction(lambda x, y, z, px=px, py=py: ((x - px) ** 2 + (y - py) ** 2 <= TUBE_R**2) & (np.abs(z) <= 35.0))
        c += conc * f
    return c


def centre_ras(px: float, py: float, pz: float = 0.0) -> np.ndarray:
    return vox_to_mm(AFFINE, np.array([px, py, pz]) / VOX + N // 2)


def image_from(conc: np.ndarray, rng=None, sigma: float = 0.0, phase: bool = True, sens=None) -> np.ndarray:
    x = ndimage.gaussian_filter(KAPPA * conc, FWHM_VOX / (2 * math.sqrt(2 * math.log(2))))
    if sens is not None:
        x = x * sens
    img = x.astype(np.complex128)
    if phase:
        i, j, k = np.meshgrid(*(np.arange(N) - N / 2,) * 3, indexing="ij", sparse=True)
        img = img * np.exp(1j * (0.6 + 0.04 * i - 0.03 * j + 0.0008 * (i**2 + k**2)))
    if sigma > 0:
        img = img + sigma * (rng.standard_normal(img.shape) + 1j * rng.standard_normal(img.shape))
    return img


@pytest.fixture(scope="module")
def conc() -> np.ndarray:
    return truth_conc()


@pytest.fixture(scope="module")
def noisy(conc) -> np.ndarray:
    return image_from(conc, np.random.default_rng(7), sigma=0.02 * KAPPA * CSF_C)


def eroded(mask: np.ndarray, mm: float) -> np.ndarray:
    return ndimage.distance_transform_edt(mask) * VOX >= mm


def region(conc, value) -> np.ndarray:
    return eroded(np.isclose(conc, value), 7.0)


# ------------------------------------------------------------------------------------- tubes
def test_tubes_recovered_and_matched_by_rank(noisy):
    tubes, warnings = detect_tubes(np.abs(noisy), AFFINE, [120, 30, 60, 90])
    assert warnings == []
    assert [t.concentration_mM for t in tubes] == [30, 60, 90, 120]
    for t in tubes:
        (px, py), _ = next(tt for tt in TUBES if tt[1] == t.concentration_mM)
        assert np.linalg.norm(np.asarray(t.centre_mm) - centre_ras(px, py)) < 2.0
        assert t.n_voxels >= 10 and t.sd > 0
        assert abs(t.mean / KAPPA - t.concentration_mM) < 0.05 * t.concentration_mM + 3
        # eroded: every ROI voxel at least one PSF FWHM inside the tube wall
        ijk = np.argwhere(t.mask)
        d = np.hypot((ijk[:, 0] - N // 2) * VOX - px, (ijk[:, 1] - N // 2) * VOX - py)
        assert d.max() <= TUBE_R - FWHM_VOX * VOX + 1e-6


def test_fit_exact_on_noise_free_data(conc):
    cal = calibrate(image_from(conc), AFFINE)
    f = cal.result.fit
    # ROI voxels one FWHM inside the wall keep up to ~1 % Gaussian partial-volume loss, equal for all tubes
    assert f.slope == pytest.approx(KAPPA, rel=0.015)
    assert abs(f.intercept) < 1e-3 * KAPPA * 120
    assert f.r2 > 0.99999
    assert np.max(np.abs(f.deviations_mM)) < 0.1
    assert cal.result.warnings == []


def test_fit_line_closed_form():
    c = [30, 60, 90, 120]
    f = fit_line(c, [3 * x + 5 for x in c], [1, 2, 3, 4], [10, 10, 10, 10])
    assert f.slope == pytest.approx(3) and f.intercept == pytest.approx(5)
    assert f.r2 == pytest.approx(1) and f.weighting == "inverse-variance"
    # weighted: a point with huge SD barely pulls the line
    f2 = fit_line(c + [75], [3 * x + 5 for x in c] + [1000], [1, 1, 1, 1, 1e6], [10] * 5)
    assert f2.slope == pytest.approx(3, rel=1e-6) and f2.intercept == pytest.approx(5, abs=1e-4)
    # unweighted ordinary least squares matches numpy
    s = np.array([61.0, 118.0, 185.0, 239.0])
    f3 = fit_line(c, s)
    a, b = np.polyfit(c, s, 1)
    assert f3.slope == pytest.approx(a) and f3.intercept == pytest.approx(b)
    assert f3.r2 == pytest.approx(np.corrcoef(c, s)[0, 1] ** 2)


def test_tsc_within_tolerance_from_phase_corrected_real(conc, noisy):
    cal = calibrate(noisy, AFFINE)
    assert cal.result.signal["mode"] == "real"
    assert cal.result.signal["noise_sigma"] == pytest.approx(0.02 * KAPPA * CSF_C, rel=0.1)
    assert cal.result.fit.r2 > 0.995
    for t in cal.tubes:
        assert abs(cal.tsc[t.mask].mean() - t.concentration_mM) < 3.0
    for value, tol in ((CSF_C, 0.03), (TISSUE_C, 0.05)):
        m = cal.tsc[region(conc, value)].mean()
        assert abs(m / value - 1) < tol, (value, m)


def test_noise_floor_correction_reduces_low_concentration_bias(conc):
    rng = np.random.default_rng(3)
    low = 15.0 * (conc > 0)  # every compartment at 15 mM
    sigma = 9.0 * KAPPA  # per-channel noise, in signal units: SNR ~ 1.7 at 15 mM
    img = image_from(low, rng, sigma=sigma)
    roi = region(conc, TISSUE_C)
    truth = KAPPA * 15.0
    bias_mag = abs(np.abs(img)[roi].mean() - truth)
    bias_nf = abs(noise_floor_correct(np.abs(img), sigma)[roi].mean() - truth)
    bias_real = abs(phase_correct(img)[0][roi].mean() - truth)
    assert bias_mag > 0.2 * truth
    assert bias_nf < 0.5 * bias_mag
    assert bias_real < 0.05 * truth


def test_magnitude_nf_mode_calibrates_low_concentration(conc):
    rng = np.random.default_rng(5)
    img = np.abs(image_from(conc, rng, sigma=0.05 * KAPPA * CSF_C))
    cal_nf = calibrate(img, AFFINE)  # magnitude input -> noise-floor correction
    cal_mag = calibrate(img, AFFINE, signal="magnitude")
    assert cal_nf.result.signal["mode"] == "magnitude-nf"
    assert cal_nf.result.signal["noise_sigma"] == pytest.approx(0.05 * KAPPA * CSF_C, rel=0.1)
    # the noise floor raises the magnitude intercept; the corrected one is closer to zero
    assert abs(cal_nf.result.fit.intercept) < abs(cal_mag.result.fit.intercept)
    m = cal_nf.tsc[region(conc, TISSUE_C)].mean()
    assert abs(m / TISSUE_C - 1) < 0.06


def test_tubes_file(tmp_path, conc, noisy):
    p = tmp_path / "tubes.csv"
    lines = ["# tubes of the test phantom", "concentration_mM,radius_mm,x_mm,y_mm,z_mm"]
    for (px, py), c in TUBES:
        x, y, z = centre_ras(px, py)
        lines.append(f"{c},{TUBE_R},{x:.3f},{y:.3f},{z:.3f}")
    p.write_text("\n".join(lines) + "\n")
    specs = read_tubes_file(p)
    assert sorted(s.concentration_mM for s in specs) == [30, 60, 90, 120]
    cal = calibrate(noisy, AFFINE, tubes_file=p)
    assert cal.result.method == "tubes-file"
    f_auto = calibrate(noisy, AFFINE).result.fit
    assert cal.result.fit.slope == pytest.approx(KAPPA, rel=0.03)
    assert cal.result.fit.slope == pytest.approx(f_auto.slope, rel=0.03)
    for t in cal.tubes:
        (px, py), _ = next(tt for tt in TUBES if tt[1] == t.concentration_mM)
        ijk = np.argwhere(t.mask)
        d = np.hypot((ijk[:, 0] - N // 2) * VOX - px, (ijk[:, 1] - N // 2) * VOX - py)
        assert d.max() <= TUBE_R - FWHM_VOX * VOX + 1e-6
        assert abs(cal.tsc[t.mask].mean() - t.concentration_mM) < 3.0
    # headerless rows in the documented order
    q = tmp_path / "plain.csv"
    x, y, z = centre_ras(*TUBES[0][0])
    q.write_text(f"{x},{y},{z},{TUBE_R},{TUBES[0][1]}\n")
    assert read_tubes_file(q)[0].concentration_mM == TUBES[0][1]


@pytest.mark.parametrize(
    "text, msg",
    [
        ("x_mm,y_mm,z_mm,concentration_mM\n1,2,3,30\n", "lacks a column for radius"),
        ("1,2,3,10,30\n1,2,three,10,60\n", "line 2"),
        ("1,2,3,-10,30\n", "radius must be positive"),
        ("# only comments\n", "no rows"),
    ],
)
def test_tubes_file_errors_name_the_file(tmp_path, text, msg):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(CalibrationError, match=msg) as e:
        read_tubes_file(p)
    assert str(p) in str(e.value)


def test_tube_outside_image_is_an_error(tmp_path, noisy):
    p = tmp_path / "far.csv"
    p.write_text("5000,0,0,10,30\n0,5000,0,10,60\n")
    with pytest.raises(CalibrationError, match="outside the image") as e:
        calibrate(noisy, AFFINE, tubes_file=p)
    assert str(p) in str(e.value)
    with pytest.raises(CalibrationError, match="cannot read"):
        calibrate(noisy, AFFINE, tubes_file=p.with_name("missing.csv"))


def test_error_when_three_tubes_visible():
    img = image_from(truth_conc(TUBES[:3]), np.random.default_rng(1), sigma=2.0)
    with pytest.raises(CalibrationError, match="found 3 tubes but 4 concentrations"):
        calibrate(img, AFFINE)
    # with three concentrations the same image calibrates
    cal = calibrate(img, AFFINE, concentrations_mM=[30, 90, 120])
    assert [t.concentration_mM for t in cal.tubes] == [30, 90, 120]


def test_error_when_no_tubes():
    img = image_from(truth_conc([]), np.random.default_rng(2), sigma=2.0)
    with pytest.raises(CalibrationError, match="no tubes found"):
        calibrate(img, AFFINE)
    with pytest.raises(CalibrationError, match="no tubes found"):
        detect_tubes(np.zeros((N, N, N)), AFFINE, [30, 60])
    with pytest.raises(CalibrationError, match="all zero"):
        calibrate(np.zeros((N, N, N)), AFFINE)


def test_deviating_tube_warns_and_is_recorded(noisy):
    # the tube labelled 60 mM actually holds 60; declare 45 -> it deviates by > 10%
    cal = calibrate(noisy, AFFINE, concentrations_mM=[30, 45, 90, 120])
    w = " | ".join(cal.result.warnings)
    assert "45 mM deviates" in w
    assert "R^2" in w
    d = json.loads(cal.result.to_json())
    assert d["warnings"] == cal.result.warnings


def test_internal_reference_and_ratio_map(conc, noisy):
    csf = [(centre_ras(*CSF_POS), 10.0)]
    cal = calibrate(noisy, AFFINE, method="internal", reference_region=csf, ratio_region=csf)
    assert cal.result.method == "internal-reference"
    assert cal.result.fit.slope == pytest.approx(KAPPA, rel=0.02)
    assert cal.result.reference["concentration_mM"] == 145.0
    m = cal.tsc[region(conc, TISSUE_C)].mean()
    assert abs(m / TISSUE_C - 1) < 0.05
    assert cal.ratio[region(conc, TISSUE_C)].mean() == pytest.approx(TISSUE_C / CSF_C, rel=0.05)
    assert cal.result.ratio_reference["mean_tsc_mM"] == pytest.approx(145.0, rel=1e-6)
    with pytest.raises(CalibrationError, match="no internal reference"):
        calibrate(noisy, AFFINE, method="internal")


def test_receive_sensitivity_division(conc):
    i, j, k = np.meshgrid(*(np.arange(N) - N / 2,) * 3, indexing="ij", sparse=True)
    sens = 1.0 + 0.25 * (i / 32.0) - 0.15 * (k / 32.0) ** 2 + 0.1 * (j / 32.0)
    img = image_from(conc, sens=sens)
    cal_raw = calibrate(img, AFFINE)
    cal = calibrate(img, AFFINE, sensitivity=sens)
    assert cal.result.sensitivity_corrected
    assert cal.result.fit.r2 > 0.9999 and cal.result.fit.slope == pytest.approx(KAPPA, rel=0.015)
    err = abs(cal.tsc[region(conc, CSF_C)].mean() - CSF_C)
    err_raw = abs(cal_raw.tsc[region(conc, CSF_C)].mean() - CSF_C)
    assert err < 0.015 * CSF_C and err_raw > 3 * err


def test_relaxation_correction_recovers_tissue(conc):
    tr, flip, te = 0.174, 90.0, 0.0015  # TE where tissue and tube weightings differ clearly
    # independent closed forms: 90 deg -> T1 factor 1 - exp(-TR/T1); decay at TE
    f_tis = (1 - math.exp(-tr / 0.035)) * (0.6 * math.exp(-te / 0.0035) + 0.4 * math.exp(-te / 0.023))
    f_tube = (1 - math.exp(-tr / 0.055)) * math.exp(-te / 0.050)
    in_head = truth_conc([]) > 0
    img = image_from(conc * np.where(in_head, f_tis, f_tube) / f_tube, phase=False)
    rf = relaxation_factors(tr, flip, te, "tissue", "saline")
    cal0 = calibrate(img, AFFINE)
    cal = calibrate(img, AFFINE, relaxation=rf)
    roi = region(conc, TISSUE_C)
    assert rf.relative == pytest.approx(f_tis / f_tube, rel=1e-12)
    assert cal.tsc[roi].mean() == pytest.approx(TISSUE_C, rel=0.015)
    assert abs(cal0.tsc[roi].mean() / TISSUE_C - 1) > 0.03
    assert cal.result.to_dict()["relaxation"]["relative"] == pytest.approx(f_tis / f_tube)


def test_result_json_and_qa_figure(tmp_path, noisy):
    cal = calibrate(noisy, AFFINE)
    out = tmp_path / "calibration.json"
    cal.result.write_json(out)
    d = json.loads(out.read_text())
    assert d["method"] == "tubes-auto" and d["units"]["tsc"] == "mM"
    assert {"slope", "intercept", "r2", "residuals", "deviations_mM"} <= set(d["fit"])
    assert len(d["tubes"]) == 4
    for t in d["tubes"]:
        assert {"mean", "sd", "n_voxels", "centre_mm", "concentration_mM"} <= set(t)
        assert "mask" not in t
    png = qa_figure(
        tmp_path / "qa.png",
        [noisy, 0.7 * noisy],
        tsc=cal.tsc,
        b0_hz=np.zeros(noisy.shape),
        tubes=cal.tubes,
        fit=cal.result.fit,
        title="test",
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibration.json", "qa.png"]


def test_affine_round_trip():
    ijk = np.array([[0, 0, 0], [10.5, 3, 60]])
    assert np.allclose(mm_to_vox(AFFINE, vox_to_mm(AFFINE, ijk)), ijk)


def test_cylinder_box_holds_every_voxel_of_the_cylinder():
    """_cylinder_box (the tube zones of the fit): the mask inside the box equals the mask over the
    whole grid, for tilted cylinders and an oblique, anisotropic affine (independent truth: the full grid)."""
    from recon.calibrate.tubes import _cylinder_box, _cylinder_mask

    rng = np.random.default_rng(4)
    shape = (40, 36, 30)
    rot = np.linalg.qr(rng.standard_normal((3, 3)))[0]
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([3.5, 4.0, 5.0])
    aff[:3, 3] = -aff[:3, :3] @ (np.asarray(shape) / 2)
    full = tuple(slice(0, n) for n in shape)
    for _ in range(6):
        centre = rng.uniform(-40, 40, 3)
        axis = rng.standard_normal(3)
        axis /= np.linalg.norm(axis)
        r, h = rng.uniform(3, 12), rng.uniform(5, 40)
        ref = _cylinder_mask(shape, aff, full, centre, axis, r, h)
        got = _cylinder_mask(shape, aff, _cylinder_box(shape, aff, centre, r, h), centre, axis, r, h)
        assert ref.any() and np.array_equal(got, ref)
