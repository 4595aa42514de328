"""Relaxation factors against closed forms (T1 steady state, T2* decay, readout weighting)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recon.calibrate import CSF, SALINE_TUBE, TISSUE, ReadoutWeighting, RelaxationModel, relaxation_factors
from recon.calibrate.relax import gaussian_spectrum, t1_saturation, t2star_factor
from recon.errors import CalibrationError, InputError


@pytest.mark.parametrize("t1, expected", [(0.035, 0.993), (0.040, 0.987), (0.050, 0.969), (0.060, 0.945), (0.065, 0.931)])
def test_t1_factor_at_90_degrees_matches_table(t1, expected):
    # notes/sodium_domain.md table (TR 174 ms, 90 deg); at 90 deg the factor is 1 - exp(-TR/T1)
    assert t1_saturation(tr_s=0.174, flip_deg=90.0, t1_s=t1) == pytest.approx(expected, abs=6e-4)
    assert t1_saturation(tr_s=0.174, flip_deg=90.0, t1_s=t1) == pytest.approx(1 - math.exp(-0.174 / t1), rel=1e-12)


def test_t1_factor_at_ernst_angle_and_full_relaxation():
    tr, t1 = 0.02, 0.05
    e1 = math.exp(-tr / t1)
    ernst = math.degrees(math.acos(e1))
    assert t1_saturation(tr_s=tr, flip_deg=ernst, t1_s=t1) == pytest.approx(math.sqrt((1 - e1) / (1 + e1)), rel=1e-12)
    assert t1_saturation(tr_s=100.0, flip_deg=30.0, t1_s=t1) == pytest.approx(0.5, rel=1e-9)  # TR >> T1: sin(a)
    with pytest.raises(InputError):
        t1_saturation(tr_s=-1, flip_deg=90, t1_s=t1)


def test_t2star_at_te_matches_table():
    # notes table: WM 0.6 x 3.5 ms / 0.4 x 23 ms -> 0.946 at TE 0.30 ms, 0.671 at 2.32 ms
    assert t2star_factor(TISSUE, 0.30e-3) == pytest.approx(0.946, abs=6e-4)
    assert t2star_factor(TISSUE, 2.32e-3) == pytest.approx(0.671, abs=6e-4)
    assert t2star_factor(SALINE_TUBE, 0.30e-3) == pytest.approx(0.994, abs=6e-4)
    assert t2star_factor(CSF, 2.32e-3) == pytest.approx(0.958, abs=6e-4)


def test_readout_factor_point_object_radial_closed_form():
    # constant-speed 3D radial readout k = v t, density weights ~ k^2 (w for R -> 0 is all samples):
    # f = int_0^T t^2 exp(-(TE + t)/tau) dt / int_0^T t^2 dt
    #   = exp(-TE/tau) * 6 tau^3 (1 - e^-x (1 + x + x^2/2)) / T^3
    te, T, tau, n = 0.3e-3, 10e-3, 0.02, 20000
    t = (np.arange(n) + 0.5) * T / n
    k = 150.0 * t / T
    rw = ReadoutWeighting(k, t, k**2)
    x = T / tau
    closed = math.exp(-te / tau) * 6 * tau**3 * (1 - math.exp(-x) * (1 + x + x**2 / 2)) / T**3
    mono = RelaxationModel("mono", 0.05, (tau,))
    assert t2star_factor(mono, te, rw, object_fwhm_m=1e-9) == pytest.approx(closed, rel=1e-6)
    # a large object weights the k-space centre: -> decay at the centre time TE
    assert t2star_factor(mono, te, rw, object_fwhm_m=5.0) == pytest.approx(math.exp(-te / tau), rel=2e-3)
    # linear in the pools: bi-exponential = weighted sum of monos
    bi = RelaxationModel("bi", 0.04, (0.003, 0.025), (0.6, 0.4))
    m1, m2 = RelaxationModel("a", 0.04, (0.003,)), RelaxationModel("b", 0.04, (0.025,))
    r = 0.01
    assert t2star_factor(bi, te, rw, r) == pytest.approx(
        0.6 * t2star_factor(m1, te, rw, r) + 0.4 * t2star_factor(m2, te, rw, r), rel=1e-12
    )


def test_gaussian_spectrum_is_the_fourier_transform_of_the_blob():
    fwhm = 0.02
    sd = fwhm / (2 * math.sqrt(2 * math.log(2)))
    x = np.linspace(-0.1, 0.1, 4001)
    blob = np.exp(-(x**2) / (2 * sd**2))
    for k in (0.0, 10.0, 25.0):  # 1D transform, normalised at k = 0 (separable in 3D)
        ft = np.trapezoid(blob * np.cos(2 * np.pi * k * x), x) / np.trapezoid(blob, x)
        assert gaussian_spectrum(k, fwhm) == pytest.approx(ft, abs=1e-9)


def test_relaxation_factors_relative_and_serialised():
    rf = relaxation_factors(0.174, 90.0, 0.30e-3, "tissue", "saline")
    f_tis = (1 - math.exp(-0.174 / 0.035)) * (0.6 * math.exp(-0.3 / 3.5) + 0.4 * math.exp(-0.3 / 23))
    f_tube = (1 - math.exp(-0.174 / 0.055)) * math.exp(-0.3 / 50)
    assert rf.relative == pytest.approx(f_tis / f_tube, rel=1e-12)
    d = rf.to_dict()
    assert d["readout_model"] == "at TE" and d["relative"] == pytest.approx(rf.relative)
    assert d["target_model"]["fractions"] == [0.6, 0.4]
    with pytest.raises(CalibrationError, match="unknown relaxation model"):
        relaxation_factors(0.174, 90.0, 0.3e-3, "bone")


def test_readout_weighting_from_trajectory():
    from recon.trajectory import density_adapted_radial

    traj = density_adapted_radial(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    rw = ReadoutWeighting.from_trajectory(traj)
    assert rw.kmag_per_m.size == traj.k.shape[0] * traj.k.shape[1]
    rf = relaxation_factors(0.174, 90.0, 0.3e-3, readout=rw)
    at_te = relaxation_factors(0.174, 90.0, 0.3e-3)
    # decay over the readout lowers tissue more than saline
    assert rf.t2star_target < at_te.t2star_target
    assert rf.t2star_reference < at_te.t2star_reference
    assert rf.relative < at_te.relative
    assert rf.to_dict()["target_fwhm_m"] == 0.1 and rf.to_dict()["reference_fwhm_m"] == 0.03
