"""The vectorised twix reader against the previous one (twixtools' ``Mdb`` per block, in
tests/twix_reference.py) bit for bit on every real file, synthetic 23Na files and damaged copies;
its mdh offsets against twixtools' ctypes structs; the new warnings and refusals; the read
path's imports; the bulk ISMRMRD reader against ``ismrmrd.Dataset.read_acquisition``."""

from __future__ import annotations

import contextlib
import logging
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_io_twix_synth import make_acq
from twix_reference import read_one_reference

from recon.errors import NareconError, RawDataError
from recon.io import read_raw, read_twix, write_ismrmrd, write_twix
from recon.io.twix import _VB_MDH, _VE_MDH, _read_one


@contextlib.contextmanager
def _warnings(name: str = "recon.io.twix"):
    """Messages logged at WARNING or above on ``name`` (own handler: the CLI's logging set-up in
    other tests may stop propagation to the root logger that caplog listens on)."""
    records: list[logging.LogRecord] = []
    h = logging.Handler(logging.WARNING)
    h.emit = records.append
    lg = logging.getLogger(name)
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.WARNING)
    try:
        yield records
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)


def _same(a: dict, b: dict) -> None:
    for k in ("data", "eco", "lin"):
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit-identical, NaN payloads included
    assert (a["noise"] is None) == (b["noise"] is None)
    if a["noise"] is not None:
        assert a["noise"].tobytes() == b["noise"].tobytes() and a["noise"].shape == b["noise"].shape
    for k in ("n_noise_scans", "n_other", "dropped", "n_dropped", "n_cha", "n_col", "ve"):
        assert a[k] == b[k], k
    assert repr(a["hv"]) == repr(b["hv"])
    sb = dict(b["stats"])
    sb.pop("n_beyond_declared_end")
    assert a["stats"] == sb


def test_mdh_offsets_match_twixtools_structs():
    from twixtools import mdh_def

    for dt, struct_cls in ((_VE_MDH, mdh_def.Scan_header), (_VB_MDH, mdh_def.VB17_header)):
        assert dt.itemsize == __import__("ctypes").sizeof(struct_cls)
        counter = struct_cls.Counter.offset
        want = {
            "FlagsAndDMALength": struct_cls.FlagsAndDMALength.offset,
            "EvalInfoMask": struct_cls.EvalInfoMask.offset,
            "SamplesInScan": struct_cls.SamplesInScan.offset,
            "UsedChannels": struct_cls.UsedChannels.offset,
            "Lin": counter + mdh_def.LineCounter.Lin.offset,
            "Eco": counter + mdh_def.LineCounter.Eco.offset,
        }
        assert {n: dt.fields[n][1] for n in dt.names} == want


def test_bit_identical_on_every_real_file(shared_twix):
    files = sorted(shared_twix.glob("*.dat"))
    assert len(files) >= 8
    for p in files:
        _same(read_one_reference(p), _read_one(p))


@pytest.mark.parametrize("layout", ["VE", "VB"])
def test_bit_identical_on_synthetic_23na(rng, tmp_path, layout):
    acq = make_acq(rng, n_coils=3, n_proj=20, n_samp=50)  # noise in readouts of 4096 and 904 samples
    p = tmp_path / f"na_{layout}.dat"
    write_twix(acq, p, layout=layout)
    ref, new = read_one_reference(p), _read_one(p)
    _same(ref, new)
    assert new["noise"].shape == (3, 5000)


@pytest.mark.parametrize("name", ["xe129_radial_dixon_meas_MID00075_FID28630.dat", "pulseq_06_EPI_singleTraj.dat"])
def test_damaged_files_behave_as_before(shared_twix, tmp_path, name):
    """Truncations and random byte changes: the same Acquisition as the previous reader, or an error
    from both (the new reader may also refuse absurd sample magnitudes the old one passed on)."""
    blob = (shared_twix / name).read_bytes()
    rng = np.random.default_rng(5)
    outcome = {"same": 0, "both refused": 0}
    p = tmp_path / "bad.dat"
    for trial in range(24):
        b = bytearray(blob)
        if trial % 3 == 0:
            b = b[: int(rng.integers(0, len(b)))]
        else:
            lo = 0 if trial % 3 == 1 else len(b) // 3
            for q, v in zip(rng.integers(lo, len(b), 25), rng.integers(0, 256, 25)):
                b[q] = v
        p.write_bytes(bytes(b))
        try:
            ref = read_one_reference(p)
        except NareconError:
            ref = None
        try:
            new = _read_one(p)
        except RawDataError as e:
            assert "bad.dat" in str(e)
            assert ref is None or "magnitude" in str(e) or "NaN" in str(e), str(e)
            outcome["both refused"] += 1
            continue
        assert ref is not None, "the new reader accepted a file the previous one refused"
        _same(ref, new)
        outcome["same"] += 1
    assert outcome["same"] >= 5 and outcome["both refused"] >= 2, outcome


def test_data_past_the_declared_length_is_reported(shared_twix, tmp_path):
    """A raid entry whose length ends 10 readouts early: those readouts are not read, and said so."""
    src = shared_twix / "twixtools_gre.dat"
    full = read_twix(src)
    blob = bytearray(src.read_bytes())
    n_meas = struct.unpack_from("<I", blob, 4)[0]
    entry = 8 + 152 * (n_meas - 1)
    off, length = struct.unpack_from("<QQ", blob, entry + 8)
    import twixtools

    tw = twixtools.read_twix(str(src), verbose=False, parse_pmu=False, parse_geometry=False)[-1]
    img = [m for m in tw["mdb"] if m.is_image_scan()]
    new_len = int(img[-10].mem_pos) - off + 100  # ends inside the header of the 10th readout from the end
    struct.pack_into("<Q", blob, entry + 16, new_len)
    p = tmp_path / "short.dat"
    p.write_bytes(bytes(blob))
    with _warnings() as records:
        acq = read_twix(p)
    assert acq.n_projections == full.n_projections - 10
    np.testing.assert_array_equal(acq.data, full.data[:, :, : acq.n_projections])
    msg = " ".join(r.getMessage() for r in records)
    assert "10 readout(s) lie past the measurement length" in msg and "short.dat" in msg


def test_duplicated_projection_counters_warn(rng, tmp_path):
    acq = make_acq(rng, n_proj=8)
    acq.projection_index = np.array([[0, 1, 2, 3, 3, 5, 6, 7]] * 2)
    p = tmp_path / "dup.dat"
    write_twix(acq, p)
    with _warnings() as records:
        back = read_twix(p)
    np.testing.assert_array_equal(back.projection_index, acq.projection_index)
    assert any("repeats an earlier one" in r.getMessage() for r in records)
    assert any("duplicated projection" in n for n in back.header["notes"])


@pytest.mark.parametrize("value", [1e36, np.inf, np.nan])
def test_absurd_samples_are_refused_naming_the_file(rng, tmp_path, value):
    acq = make_acq(rng)
    acq.data[1, 0, 3, 7] = value
    p = tmp_path / "huge.dat"
    write_twix(acq, p)
    with pytest.raises(RawDataError, match="huge.dat.*(magnitude 1e\\+36|NaN or infinite)"):
        read_twix(p)


def test_ordinary_magnitudes_pass(rng, tmp_path):
    acq = make_acq(rng)
    acq.data *= 1e6  # large but physical (raw ADC units)
    p = tmp_path / "big.dat"
    write_twix(acq, p)
    np.testing.assert_array_equal(read_twix(p).data, acq.data)


HEAVY = {"matplotlib", "numba", "dask", "distributed", "sigpy", "cupy", "twixtools", "tqdm"}


def test_cli_import_is_light():
    """``python -X importtime -c "import recon.cli"``: none of the heavy packages are imported."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import recon.cli; recon.cli.build_parser()"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        check=True,
    )
    names = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line}
    assert "recon" in names  # the parse worked
    assert not names & HEAVY, names & HEAVY


def test_read_path_imports_no_plotting_or_jit(shared_twix):
    """Reading a twix file and building the TPI trajectory imports no heavy package (sys.modules)."""
    code = (
        "import sys; import recon.cli; recon.cli.build_parser()\n"
        "from recon.io import read_raw, build_trajectory, load_profile\n"
        f"acq = read_raw({str(shared_twix / 'twixtools_gre.dat')!r})\n"
        "from recon.trajectory import tpi; tpi(fov_m=0.224, res_m=0.014)\n"
        "import recon.pipeline, recon.trajectory, recon.io\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True
    )
    mods = set(eval(out.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own subprocess's output
    assert "numpy" in mods and "recon" in mods
    assert not mods & HEAVY, mods & HEAVY


def _reference_ismrmrd(path):
    """Acquisitions through ismrmrd.Dataset.read_acquisition (the library's own reader)."""
    import ismrmrd

    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        acqs = [ds.read_acquisition(i) for i in range(ds.number_of_acquisitions())]
    finally:
        ds.close()
    img = [a for a in acqs if not a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    noise = [a.data for a in acqs if a.is_flag_set(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)]
    return img, noise


def test_bulk_ismrmrd_reader_matches_the_library(rng, tmp_path):
    from recon.trajectory import tpi

    tr = tpi(fov_m=0.224, res_m=0.028, p=0.3, gmax_t_per_m=4e-3)
    acq = make_acq(rng, n_coils=2, n_proj=tr.n_projections, n_samp=tr.n_samples)
    acq.projection_index = np.tile(rng.permutation(tr.n_projections), (2, 1))
    p = tmp_path / "a.h5"
    write_ismrmrd(acq, p, traj=tr)
    back = read_raw(p)
    img, noise = _reference_ismrmrd(p)
    for e in range(2):
        mine = [a for a in img if a.idx.contrast == e]
        np.testing.assert_array_equal(back.data[e], np.stack([a.data for a in mine], axis=1))
        np.testing.assert_array_equal(back.projection_index[e], [a.idx.kspace_encode_step_1 for a in mine])
    np.testing.assert_array_equal(back.noise, np.concatenate(noise, axis=1))
    np.testing.assert_array_equal(back.data, acq.data)
    k = back.header["trajectory"].k
    order = np.argsort(back.projection_index[0], kind="stable")
    ref_k = np.stack([np.asarray(a.traj[:, :3], np.float64) for a in img if a.idx.contrast == 0]) / 0.224
    np.testing.assert_array_equal(k, ref_k[order])
    np.testing.assert_allclose(k, tr.k, rtol=1e-6, atol=1e-4)


def _both_paths(p, echo_from="eco", n_echoes=None):
    from recon.io.twix import _assign_echoes

    eager = _assign_echoes(_read_one(p), echo_from, n_echoes)
    deferred = _assign_echoes(_read_one(p, defer=True), echo_from, n_echoes)
    for a, b in zip(eager[:2], deferred[:2]):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert b.flags.c_contiguous
    assert eager[2] == deferred[2]


def test_deferred_gather_equals_gather_then_echo_sort(shared_twix, rng, tmp_path):
    """read_twix gathers the samples once in (echo, projection) order: the same arrays, bit for bit,
    as the file-order gather followed by the echo sort, on every real file and a multi-coil 23Na file."""
    for p in sorted(shared_twix.glob("*.dat")):
        try:
            _both_paths(p)
        except RawDataError:  # files whose Eco counter disagrees with the header: order-based echoes
            _both_paths(p, "order")
    for n_coils in (1, 3):
        q = tmp_path / f"na{n_coils}.dat"
        write_twix(make_acq(rng, n_coils=n_coils, n_proj=20, n_samp=50), q)
        _both_paths(q)
        _both_paths(q, "order", 2)
