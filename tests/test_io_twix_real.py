"""Real Siemens files from ../shared/data/twix: expected values from that folder's README table,
and bit-exact agreement with twixtools' own mdb list and with `bart twixread -A`."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from recon.io import read_twix

# file: (format, n_echoes, readouts/echo, channels, samples, nucleus, f0 Hz, TE list [s], dwell [s], dropped)
EXPECTED = {
    "xe129_radial_dixon_meas_MID00075_FID28630.dat": (
        "XA",
        2,
        1200,
        1,
        64,
        "129Xe",
        34088613,
        [500e-6, 500e-6],
        10e-6,
        87,
    ),
    "xe129_calibration_meas_MID00073_FID28628.dat": (
        "XA",
        1,
        520,
        1,
        512,
        "129Xe",
        34088619,
        [450e-6],
        19.5e-6,
        0,
    ),
    "pulseq_02_GRE_3echoes.dat": ("VD/VE", 1, 768, 1, 256, "1H", 123252770, [20e-3], 10e-6, 0),
    "pulseq_06_EPI_singleTraj.dat": ("VB", 1, 71, 4, 300, "1H", 123252980, [20e-3], 10e-6, 0),
    "pulseq_01_FID.dat": ("VB", 1, 1, 1, 8192, "1H", 123252320, [20e-3], 10e-6, 0),
    "pulseq_xa61_2024-02-06-164120.dat": ("XA", 1, 128, 2, 128, "1H", 123206010, [10e-3], 20e-6, 0),
    "twixtools_gre.dat": ("VD/VE", 1, 160, 2, 320, "1H", 123263034, [3e-3], 11.6e-6, 0),
    "pymapvbvd_meas_MID311_STEAM_wref1_FID115674.dat": (
        "VB",
        1,
        2,
        32,
        4096,
        "1H",
        297219948,
        [11e-3],
        83.3e-6,
        0,
    ),
}
TR = {
    "xe129_radial_dixon_meas_MID00075_FID28630.dat": 4.2e-3,
    "twixtools_gre.dat": 10e-3,
    "pymapvbvd_meas_MID311_STEAM_wref1_FID115674.dat": 5.0,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_file_matches_readme(shared_twix, name):
    fmt, ne, nro, nch, ns, nuc, f0, te, dwell, dropped = EXPECTED[name]
    acq = read_twix(shared_twix / name)
    assert acq.header["format"] == fmt
    assert acq.data.shape == (ne, nch, nro, ns)
    assert acq.data.dtype == np.complex64
    assert acq.nucleus == nuc
    assert acq.frequency_hz == f0
    np.testing.assert_allclose(acq.te_s, te, rtol=1e-12)
    assert acq.dwell_s == pytest.approx(dwell, rel=1e-12)
    assert acq.header["dropped_adcs"] == dropped
    assert acq.header["truncated"] is False
    if name in TR:
        assert acq.tr_s == pytest.approx(TR[name], rel=1e-12)
    assert np.all(np.isfinite(acq.data))


def _twixtools_image_adcs(path, ns):
    """Independent list from twixtools' own loop: image scans with the imaging sample count."""
    import twixtools

    tw = twixtools.read_twix(str(path), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    adcs = [m for m in tw["mdb"] if m.is_image_scan() and m.mdh.SamplesInScan == ns]
    return adcs


def test_xe_dixon_two_echoes_from_eco_counter(shared_twix):
    path = shared_twix / "xe129_radial_dixon_meas_MID00075_FID28630.dat"
    acq = read_twix(path)
    assert acq.data.shape == (2, 1, 1200, 64)
    assert acq.header["n_syncdata"] > 0
    adcs = _twixtools_image_adcs(path, 64)
    assert len(adcs) == 2400
    for e in range(2):
        mine = [m for m in adcs if m.mdh.Counter.Eco == e]
        ref = np.stack([m.data[0] for m in mine])
        np.testing.assert_array_equal(acq.data[e, 0], ref)
        np.testing.assert_array_equal(acq.projection_index[e], [m.mdh.Counter.Lin for m in mine])
    assert sorted(acq.projection_index[0].tolist()) == list(range(1200))
    # free parameters of the custom sequence (sWipMemBlock) and geometry
    assert acq.header["wip_long"][2] == 418 and acq.header["wip_double"][0] == 710.0
    assert acq.geometry["patient_position"] == "FFS"
    np.testing.assert_allclose(acq.geometry["rotation"][:, 2], [0, 1, 0])  # coronal slab normal


def test_pulseq_three_echoes_by_order(shared_twix):
    path = shared_twix / "pulseq_02_GRE_3echoes.dat"
    acq = read_twix(path, echo_from="order", n_echoes=3, te_s=[3e-3, 6e-3, 9e-3])
    assert acq.data.shape == (3, 1, 256, 256)
    adcs = _twixtools_image_adcs(path, 256)
    for e in range(3):
        np.testing.assert_array_equal(acq.data[e, 0], np.stack([m.data[0] for m in adcs[e::3]]))
    np.testing.assert_array_equal(acq.projection_index[1], np.arange(256))
    assert acq.te_s == (3e-3, 6e-3, 9e-3)


def test_eco_counter_disagreeing_with_header_is_an_error(shared_twix, tmp_path):
    from recon.errors import RawDataError

    # 3-echo pulseq file read with n_echoes=3 from the Eco counter: the counter is always 0
    acq = read_twix(shared_twix / "pulseq_02_GRE_3echoes.dat")
    assert acq.n_echoes == 1
    with pytest.raises(RawDataError, match="echo"):
        read_twix(shared_twix / "pulseq_02_GRE_3echoes.dat", echo_from="eco", n_echoes=3)


def test_two_files_make_two_echoes(shared_twix):
    p = shared_twix / "twixtools_gre.dat"
    one = read_twix(p)
    two = read_twix([p, p])
    assert two.data.shape == (2,) + one.data.shape[1:]
    np.testing.assert_array_equal(two.data[1], one.data[0])
    assert two.sources == (str(p), str(p))


def test_vb_multichannel_matches_twixtools(shared_twix):
    path = shared_twix / "pulseq_06_EPI_singleTraj.dat"
    acq = read_twix(path)
    adcs = _twixtools_image_adcs(path, 300)
    ref = np.stack([m.data for m in adcs], axis=1)  # (coil, adc, sample)
    np.testing.assert_array_equal(acq.data[0], ref)


def _bart_read(dat, tmp_path):
    out = tmp_path / "bart_out"
    r = subprocess.run(["bart", "twixread", "-A", str(dat), str(out)], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    dims = [int(x) for x in open(str(out) + ".hdr").readlines()[1].split()]
    return np.fromfile(str(out) + ".cfl", np.complex64).reshape(dims, order="F")


@pytest.mark.skipif(shutil.which("bart") is None, reason="bart (Debian package) not installed")
@pytest.mark.parametrize(
    "name",
    ["xe129_radial_dixon_meas_MID00075_FID28630.dat", "twixtools_gre.dat", "pulseq_06_EPI_singleTraj.dat"],
)
def test_bit_exact_with_bart(shared_twix, tmp_path, name):
    acq = read_twix(shared_twix / name)
    k = _bart_read(shared_twix / name, tmp_path)
    # BART dims: [col, Lin, Par, cha, ., Eco, ..., Rep(10), Set(11)]
    if name.startswith("pulseq_06"):
        ref = k.reshape(k.shape[0], k.shape[3], -1)  # (col, cha, Set): one ADC per Set value
        np.testing.assert_array_equal(acq.data[0], ref.transpose(1, 2, 0))
        return
    for e in range(acq.n_echoes):
        for c in range(acq.n_coils):
            ref = k[:, :, 0, c, 0, e].reshape(k.shape[0], k.shape[1]).T  # (Lin, col)
            np.testing.assert_array_equal(acq.data[e, c], ref[acq.projection_index[e]])
