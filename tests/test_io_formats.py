"""ISMRMRD round trip, sequence profiles, NIfTI affine geometry, coil prewhitening/combination."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import ConfigError, RawDataError, TrajectoryError
from recon.io import (
    Acquisition,
    build_trajectory,
    check_match,
    encode_params,
    load_profile,
    nifti_affine,
    read_raw,
    trajectory_params,
    write_ismrmrd,
    write_twix,
)
from recon.io.geometry import inplane_rotation, prs_from_normal


def _acq(rng, n_echo=2, n_coils=2, n_proj=6, n_samp=20, header=None, dwell=10e-6):
    shape = (n_echo, n_coils, n_proj, n_samp)
    d = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    return Acquisition(
        d,
        (0.3e-3, 2.32e-3)[:n_echo],
        0.174,
        90.0,
        dwell,
        "23Na",
        78.6e6,
        7.0,
        noise=d[0, :, 0].copy(),
        fov_m=(0.224,) * 3,
        matrix=(16,) * 3,
        header=header or {},
        geometry={
            "position_m": np.array([0.01, -0.02, 0.03]),
            "rotation": prs_from_normal([0.2, 0.1, 0.97], -0.4),
            "patient_position": "HFS",
        },
    )


# ---------------------------------------------------------------- ISMRMRD
def _random_traj(rng, n_proj=7, n_samp=30):
    from recon.trajectory import Trajectory

    k = rng.uniform(-140, 140, (n_proj, n_samp, 3))
    return Trajectory(k=k, t=np.arange(n_samp) * 10e-6, fov_m=0.224, matrix=64, dwell_s=10e-6)


def test_ismrmrd_round_trip_with_trajectory(rng, tmp_path):
    traj = _random_traj(rng)
    acq = _acq(rng, n_proj=traj.n_projections, n_samp=traj.n_samples, header={"wip_long": {0: 1}})
    p = tmp_path / "a.h5"
    write_ismrmrd(acq, p, traj=traj)
    back = read_raw(p)
    assert back.header["format"] == "ISMRMRD"
    np.testing.assert_array_equal(back.data, acq.data)
    np.testing.assert_array_equal(back.noise, acq.noise)
    np.testing.assert_array_equal(back.projection_index, acq.projection_index)
    assert back.nucleus == "23Na" and back.dwell_s == acq.dwell_s
    np.testing.assert_allclose(back.te_s, acq.te_s, rtol=1e-12)
    assert back.tr_s == pytest.approx(acq.tr_s) and back.flip_deg == acq.flip_deg
    assert back.frequency_hz == acq.frequency_hz and back.field_t == acq.field_t
    assert back.header["wip_long"] == {0: 1}
    np.testing.assert_allclose(back.header["trajectory"].k, traj.k, atol=1e-4)  # float32 in the file
    np.testing.assert_allclose(back.geometry["rotation"], acq.geometry["rotation"], atol=1e-6)
    np.testing.assert_allclose(back.geometry["position_m"], acq.geometry["position_m"], atol=1e-9)


def test_ismrmrd_nucleus_from_argument(rng, tmp_path):
    import ismrmrd
    import ismrmrd.xsd as X

    acq = _acq(rng, n_echo=1)
    p = tmp_path / "a.h5"
    write_ismrmrd(acq, p)
    # strip the nucleus user parameter: then the nucleus must come from the caller
    with ismrmrd.Dataset(str(p), "dataset", create_if_needed=False) as d:
        h = X.CreateFromDocument(d.read_xml_header())
        h.userParameters.userParameterString = []
        d.write_xml_header(X.ToXML(h))
    with pytest.raises(RawDataError, match="nucleus"):
        read_raw(p)
    assert read_raw(p, nucleus="23Na").nucleus == "23Na"


# ---------------------------------------------------------------- profiles
PARAMS = dict(
    generator="tpi",
    p=0.3,
    gmax_t_per_m=4e-3,
    smax_t_per_m_per_s=None,
    readout_s=None,
    undersampling=2.0,
    fov_m=0.224,
    res_m=0.014,
    grad_raster_s=10e-6,
    n_projections=None,
)


def test_profile_encode_decode_and_build(rng, tmp_path):
    from recon.trajectory import tpi

    wl, wd = encode_params(PARAMS)
    ref = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3, undersampling=2.0, dwell_s=10e-6)
    acq = _acq(
        rng,
        n_echo=2,
        n_proj=ref.n_projections,
        n_samp=ref.n_samples,
        header={"wip_long": wl, "wip_double": wd},
    )
    # through a twix file, as a real scan would arrive
    write_twix(acq, tmp_path / "a.dat")
    back = read_raw(tmp_path / "a.dat")
    prm = trajectory_params(back)
    for k, v in PARAMS.items():
        assert prm[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    assert prm["gamma_hz_per_t"] == 11.262e6
    traj = build_trajectory(back)
    np.testing.assert_array_equal(traj.k, ref.k)


def test_check_match_says_what_differs(rng):
    ref = _random_traj(rng)
    acq = _acq(rng, n_echo=1, n_proj=ref.n_projections + 3, n_samp=ref.n_samples - 1, dwell=12e-6)
    with pytest.raises(TrajectoryError) as ei:
        check_match(acq, ref)
    msg = str(ei.value)
    assert f"data {ref.n_samples - 1}, trajectory {ref.n_samples}" in msg
    assert f"data {ref.n_projections + 3} readouts per echo, trajectory {ref.n_projections}" in msg
    assert "dwell time: data 12 us, trajectory 10 us" in msg


def test_profile_errors(tmp_path, rng):
    bad = tmp_path / "bad.toml"
    bad.write_text("[params]\nwobble = 3\n")
    with pytest.raises(ConfigError, match="bad.toml.*wobble"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_profile(tmp_path / "none.toml")
    strict = tmp_path / "strict.toml"
    strict.write_text('[params]\np = { from = "wip_double[9]" }\n')
    with pytest.raises(ConfigError, match=r"wip_double\[9\] is absent"):
        trajectory_params(_acq(rng), load_profile(strict))


# ---------------------------------------------------------------- geometry
def test_affine_default_centre_and_axes():
    a = nifti_affine(None, 0.224, 64)
    # voxel (32, 32, 32) = floor(N/2) is the centre; +i goes to patient left = -R in RAS
    np.testing.assert_allclose(a @ [32, 32, 32, 1], [0, 0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(a[:3, :3], np.diag([-3.5, -3.5, 3.5]))


def test_affine_oblique_matches_explicit_formula():
    rot = prs_from_normal([0.3, -0.2, 0.93], 0.7)
    g = {"position_m": np.array([0.01, 0.02, -0.03]), "rotation": rot}
    a = nifti_affine(g, (0.224, 0.2, 0.18), (64, 50, 45))
    idx = np.array([5, 17, 40])
    r_lps = g["position_m"] * 1e3 + rot @ ((idx - np.array([32, 25, 22])) * np.array([224 / 64, 200 / 50, 180 / 45]))
    np.testing.assert_allclose((a @ np.r_[idx, 1])[:3], r_lps * [-1, -1, 1], atol=1e-9)


def test_siemens_prs_convention():
    # transverse slab: readout along +Sag (L), phase along +Cor (P), slice along +Tra
    np.testing.assert_allclose(prs_from_normal([0, 0, 1]), np.eye(3), atol=1e-15)
    for n, ang in (([0.1, 0.2, 0.97], 0.3), ([0.9, 0.1, 0.2], -1.0), ([0.1, 0.95, 0.3], 2.0)):
        r = prs_from_normal(n, ang)
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
        n2, a2 = inplane_rotation(r)
        np.testing.assert_allclose(prs_from_normal(n2, a2), r, atol=1e-12)


# ---------------------------------------------------------------- coils
def test_prewhitening_gives_identity_covariance(rng):
    from recon.io.coils import noise_covariance, prewhiten

    mix = np.array([[1.0, 0.0, 0.0], [0.5, 1.2, 0.0], [0.2 + 0.3j, -0.4, 0.8]])
    white = (rng.standard_normal((3, 200000)) + 1j * rng.standard_normal((3, 200000))) / np.sqrt(2)
    noise = (mix @ white).astype(np.complex64)
    out = prewhiten(noise[None, :, None, :], noise)[0, :, 0, :]
    np.testing.assert_allclose(noise_covariance(out), np.eye(3), atol=2e-6)


def test_adaptive_combine_recovers_object(rng):
    from recon.io.coils import adaptive_combine, sos_combine

    n = 24
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n),) * 3, indexing="ij")
    rho = ((x**2 + y**2 + z**2) < 0.6).astype(float) * np.exp(1j * 0.5 * x)
    sens = np.stack(
        [np.exp(-((x - cx) ** 2 + y**2) / 2) * np.exp(1j * (cx * y + 0.3 * c)) for c, cx in enumerate((-1.0, 0.0, 1.0, 0.5))]
    )
    imgs = sens * rho
    comb = adaptive_combine(imgs, kernel=5)
    mask = np.abs(rho) > 0
    norm = np.sqrt((np.abs(sens) ** 2).sum(0))
    # |combined| = ||S|| |rho| exactly for noiseless data; phase = phase(rho) up to a smooth coil phase
    # the low-resolution (smoothed) sensitivity is slightly off the true one: |s^H S| <= ||S||
    np.testing.assert_allclose(np.abs(comb)[mask], (norm * np.abs(rho))[mask], rtol=1e-2)
    assert np.all(np.abs(comb)[mask] <= (norm * np.abs(rho))[mask] * (1 + 1e-5))
    np.testing.assert_allclose(sos_combine(imgs)[mask], (norm * np.abs(rho))[mask], rtol=1e-5)
    single = adaptive_combine(imgs[:1])
    np.testing.assert_array_equal(single, imgs[0].astype(np.complex64))
