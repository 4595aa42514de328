"""Robustness: empty, foreign, missing files; truncations and random corruptions of a real
file always end in the project's error or a valid shorter Acquisition, within a time bound
(pytest-timeout; a hang fails the test)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError, NareconError, RawDataError
from recon.io import read_raw, read_twix

FUZZ_FILE = "pulseq_xa61_2024-02-06-164120.dat"  # XA61, 2 channels, 128 readouts, raid len 0


def test_missing_file_names_it(tmp_path):
    p = tmp_path / "nope.dat"
    with pytest.raises(InputError, match="nope.dat.*not found"):
        read_raw(p)


def test_empty_file_names_it(tmp_path):
    p = tmp_path / "empty.dat"
    p.write_bytes(b"")
    with pytest.raises(RawDataError, match="empty.dat.*empty"):
        read_raw(p)


@pytest.mark.parametrize(
    "content",
    [
        b"hello world, this is text and not twix data\n" * 50,
        b"\x89PNG\r\n\x1a\n" + bytes(5000),
        bytes(20000),
        b"\xff" * 30000,
    ],
    ids=["text", "png", "zeros", "ff"],
)
def test_foreign_file_names_it(tmp_path, content):
    p = tmp_path / "foreign.dat"
    p.write_bytes(content)
    with pytest.raises(RawDataError, match="foreign.dat"):
        read_raw(p)


def test_hdf5_without_ismrmrd_dataset(tmp_path):
    import h5py

    p = tmp_path / "other.h5"
    with h5py.File(p, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(RawDataError, match="other.h5.*ISMRMRD"):
        read_raw(p)


@pytest.fixture(scope="module")
def fuzz_source(shared_twix):
    path = shared_twix / FUZZ_FILE
    return path, path.read_bytes(), read_twix(path)


def _check_valid_prefix(acq, full):
    assert acq.data.ndim == 4 and acq.data.dtype == np.complex64
    n = acq.n_projections
    assert 1 <= n <= full.n_projections
    np.testing.assert_array_equal(acq.data, full.data[:, :, :n])


def _truncations(fuzz_source, tmp_path, n_random):
    path, blob, full = fuzz_source
    size = len(blob)
    rng = np.random.default_rng(7)
    hdr_end = 10240 + int.from_bytes(blob[10240:10244], "little")
    offsets = sorted(
        set([1, 8, 100, 9000, 10240, 10300, 20000, size - 1, size - 100, size - 192])
        | set(rng.integers(hdr_end, size, n_random).tolist())
    )
    outcomes = {"error": 0, "shorter": 0}
    for off in offsets:
        p = tmp_path / "cut.dat"
        p.write_bytes(blob[:off])
        try:
            acq = read_twix(p)
        except RawDataError as e:
            assert "cut.dat" in str(e)
            outcomes["error"] += 1
            continue
        _check_valid_prefix(acq, full)
        if acq.n_projections < full.n_projections:
            assert acq.header["truncated"]
        outcomes["shorter"] += 1
    assert outcomes["shorter"] >= 5 and outcomes["error"] >= 3, outcomes


@pytest.mark.timeout(120)
def test_truncations(fuzz_source, tmp_path):
    _truncations(fuzz_source, tmp_path, 8)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_truncations_many(fuzz_source, tmp_path):
    _truncations(fuzz_source, tmp_path, 150)


def _corruptions(fuzz_source, tmp_path, n_trials, seed):
    path, blob, full = fuzz_source
    rng = np.random.default_rng(seed)
    hdr_len = 10240 + int.from_bytes(blob[10240:10244], "little")
    n_err = n_ok = 0
    for trial in range(n_trials):
        b = bytearray(blob)
        # half of the trials hit the data blocks' headers region, half anywhere
        lo = hdr_len if trial % 2 else 0
        pos = rng.integers(lo, len(b), 25)
        b_vals = rng.integers(0, 256, 25)
        for q, v in zip(pos, b_vals):
            b[q] = v
        p = tmp_path / "bad.dat"
        p.write_bytes(bytes(b))
        try:
            acq = read_twix(p)
        except NareconError as e:
            assert "bad.dat" in str(e) or isinstance(e, InputError)
            n_err += 1
            continue
        assert acq.data.ndim == 4 and acq.data.dtype == np.complex64
        assert acq.data.shape[1] >= 1 and acq.data.shape[3] >= 1
        n_ok += 1
    assert n_ok + n_err == n_trials


@pytest.mark.timeout(120)
def test_random_corruptions(fuzz_source, tmp_path):
    _corruptions(fuzz_source, tmp_path, 10, 11)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_random_corruptions_many(fuzz_source, tmp_path):
    _corruptions(fuzz_source, tmp_path, 200, 12)


@pytest.mark.timeout(60)
def test_zero_channel_vb_block_does_not_hang(tmp_path, rng):
    """A VB block with 0 channels makes twixtools' loop spin forever; our reader stops there."""
    from recon.io import write_twix
    from tests.test_io_twix_synth import make_acq

    acq = make_acq(rng, geometry=False)
    p = tmp_path / "vb.dat"
    write_twix(acq, p, layout="VB")
    b = bytearray(p.read_bytes())
    hdr_len = int.from_bytes(b[0:4], "little")
    # third noise/image block header: UsedChannels (uint16 at offset 50 in the VB17 mdh) -> 0
    block = 2 * (128 + 8 * 4096) + 2 * (128 + 8 * (5000 - 4096))  # the two noise ADCs
    off = hdr_len + block + 4 * (128 + 8 * 40) * 2  # 4 image ADCs later
    from twixtools import mdh_def

    uc = mdh_def.VB17_header.UsedChannels.offset
    b[off + uc : off + uc + 2] = b"\0\0"
    p.write_bytes(bytes(b))
    back = read_twix(p)
    assert back.header["corrupt_at"] == off
    np.testing.assert_array_equal(back.data, acq.data[:, :, :2])
