"""Synthetic 23Na dual-echo files written in VE and VB layouts read back bit-exactly (data and
header values), by our reader and by independent peers (twixtools' own loop, BART)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from recon.io import Acquisition, read_raw, read_twix, write_twix
from recon.io.geometry import prs_from_normal


def make_acq(rng, n_coils=2, n_proj=12, n_samp=40, geometry=True) -> Acquisition:
    shape = (2, n_coils, n_proj, n_samp)
    data = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    noise = (rng.standard_normal((n_coils, 5000)) + 1j * rng.standard_normal((n_coils, 5000))).astype(np.complex64)
    geo = None
    if geometry:
        geo = {
            "position_m": np.array([0.0125, -0.02, 0.031]),
            "rotation": prs_from_normal([0.1, 0.25, 0.96], 0.3),
            "patient_position": "HFS",
        }
    pidx = np.tile(rng.permutation(n_proj), (2, 1))
    return Acquisition(
        data=data,
        te_s=(0.3e-3, 2.32e-3),
        tr_s=0.174,
        flip_deg=90.0,
        dwell_s=10e-6,
        nucleus="23Na",
        frequency_hz=78_597_824.0,
        field_t=6.98,
        projection_index=pidx,
        noise=noise,
        fov_m=(0.224, 0.224, 0.224),
        matrix=(64, 64, 64),
        geometry=geo,
        header={
            "wip_long": {0: 1, 1: 3920, 2: 10},
            "wip_double": {0: 0.3, 1: 4.0, 4: 1.0, 5: 224.0, 6: 3.5},
            "protocol": "na_tpi_dual",
            "sequence": "%CustomerSeq%\\na_tpi",
        },
    )


@pytest.mark.parametrize("layout", ["VE", "VB"])
def test_round_trip_bit_exact(rng, tmp_path, layout):
    acq = make_acq(rng)
    path = tmp_path / f"na_{layout}.dat"
    write_twix(acq, path, layout=layout)
    back = read_raw(path)
    assert back.header["format"] == ("VB" if layout == "VB" else "VD/VE")
    np.testing.assert_array_equal(back.data, acq.data)
    np.testing.assert_array_equal(back.noise, acq.noise)
    np.testing.assert_array_equal(back.projection_index, acq.projection_index)
    assert back.te_s == acq.te_s and back.tr_s == acq.tr_s and back.flip_deg == acq.flip_deg
    assert back.dwell_s == acq.dwell_s and back.nucleus == "23Na"
    assert back.frequency_hz == acq.frequency_hz and back.field_t == acq.field_t
    assert back.fov_m == acq.fov_m and back.matrix == acq.matrix
    assert back.header["wip_long"] == acq.header["wip_long"]
    assert back.header["wip_double"] == acq.header["wip_double"]
    assert back.header["protocol"] == "na_tpi_dual"
    assert back.header["n_noise_scans"] == 2  # 5000 samples in chunks of 4096
    np.testing.assert_array_equal(back.geometry["position_m"], acq.geometry["position_m"])
    np.testing.assert_allclose(back.geometry["rotation"], acq.geometry["rotation"], atol=1e-14)
    assert back.geometry["patient_position"] == "HFS"


@pytest.mark.parametrize("layout", ["VE", "VB"])
def test_round_trip_against_twixtools(rng, tmp_path, layout):
    """twixtools' own loop and header parser as an independent peer reader."""
    import twixtools

    acq = make_acq(rng, n_coils=3)
    path = tmp_path / "na.dat"
    write_twix(acq, path, layout=layout)
    tw = twixtools.read_twix(str(path), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    img = [m for m in tw["mdb"] if m.is_image_scan()]
    assert len(img) == 2 * acq.n_projections
    for m in img:
        e, lin = m.mdh.Counter.Eco, m.mdh.Counter.Lin
        p = int(np.flatnonzero(acq.projection_index[e] == lin)[0])
        np.testing.assert_array_equal(m.data, acq.data[e, :, p])
    y = tw["hdr"]["MeasYaps"]
    assert y["alTE"][:2] == [300, 2320] and y["alTR"] == [174000]
    assert y["sRXSPEC"]["alDwellTime"][0] == 10000
    assert y["sTXSPEC"]["asNucleusInfo"][0]["tNucleus"] == "23Na"
    wip = y["sWiPMemBlock" if layout == "VB" else "sWipMemBlock"]
    assert wip["alFree"][1] == 3920 and wip["adFree"][0] == 0.3


@pytest.mark.skipif(shutil.which("bart") is None, reason="bart (Debian package) not installed")
@pytest.mark.parametrize("layout", ["VE", "VB"])
def test_round_trip_against_bart(rng, tmp_path, layout):
    acq = make_acq(rng, n_coils=2)
    acq.projection_index = np.tile(np.arange(acq.n_projections), (2, 1))  # unique counters for BART
    path = tmp_path / "na.dat"
    write_twix(acq, path, layout=layout)
    out = tmp_path / "b"
    r = subprocess.run(["bart", "twixread", "-A", str(path), str(out)], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    dims = [int(x) for x in open(str(out) + ".hdr").readlines()[1].split()]
    k = np.fromfile(str(out) + ".cfl", np.complex64).reshape(dims, order="F")
    for e in range(2):
        for c in range(2):
            np.testing.assert_array_equal(k[:, :, 0, c, 0, e].reshape(dims[0], dims[1]).T, acq.data[e, c])


def test_write_refuses_existing_without_overwrite(rng, tmp_path):
    from recon.errors import OutputError

    acq = make_acq(rng, geometry=False)
    p = tmp_path / "a.dat"
    write_twix(acq, p)
    with pytest.raises(OutputError):
        write_twix(acq, p, overwrite=False)


def test_echo_from_order_on_synthetic(rng, tmp_path):
    acq = make_acq(rng, geometry=False)
    p = tmp_path / "a.dat"
    write_twix(acq, p, layout="VE", extra_yaps={"lContrasts": 1})  # header says 1 contrast
    from recon.errors import RawDataError

    with pytest.raises(RawDataError, match="lContrasts"):
        read_twix(p)
    back = read_twix(p, echo_from="order", n_echoes=2)
    np.testing.assert_array_equal(back.data, acq.data[:, :, :, :])


def test_slice_quaternion_matches_real_files(shared_twix):
    """Our quaternion convention reproduces the mdh quaternions of real Siemens files."""
    import warnings

    import twixtools

    from recon.io import read_raw
    from recon.io.twix_write import slice_quaternion

    for name in ("twixtools_gre.dat", "xe129_radial_dixon_meas_MID00075_FID28630.dat", "pulseq_xa61_2024-02-06-164120.dat"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tw = twixtools.read_twix(str(shared_twix / name), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
            acq = read_raw(shared_twix / name)
        mdb = next(m for m in tw["mdb"] if m.is_image_scan())
        q_file = np.array(mdb.mdh.SliceData.Quaternion, dtype=float)
        q_ours = slice_quaternion(acq.geometry["rotation"])
        assert min(np.abs(q_file - q_ours).max(), np.abs(q_file + q_ours).max()) < 1e-3, name


def test_written_files_carry_a_normalised_quaternion(tmp_path):
    import warnings

    import twixtools
    from twixtools.geometry import quat_to_rotmat

    from recon.io import write_twix
    from recon.io.acquisition import Acquisition
    from recon.io.geometry import prs_from_normal

    rot = prs_from_normal([0.1, 0.2, 0.97], 0.3)
    acq = Acquisition(
        data=np.ones((1, 1, 2, 8), np.complex64),
        te_s=(3e-4,),
        tr_s=0.1,
        flip_deg=90.0,
        dwell_s=1e-5,
        nucleus="23Na",
        frequency_hz=78.8e6,
        field_t=7.0,
        fov_m=(0.2,) * 3,
        matrix=(32,) * 3,
        geometry={"position_m": np.array([0.01, -0.02, 0.03]), "rotation": rot, "patient_position": "HFS"},
    )
    write_twix(acq, tmp_path / "q.dat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # twixtools warns on an unnormalised quaternion
        tw = twixtools.read_twix(str(tmp_path / "q.dat"), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
        mdb = next(m for m in tw["mdb"] if m.is_image_scan())
        mat = quat_to_rotmat(*mdb.mdh.SliceData.Quaternion)
    np.testing.assert_allclose(mat, np.stack([rot[:, 1], -rot[:, 0], rot[:, 2]], axis=1), atol=1e-5)
    pos = mdb.mdh.SliceData.SlicePos
    np.testing.assert_allclose([pos.Sag, pos.Cor, pos.Tra], [10.0, -20.0, 30.0], atol=1e-4)
