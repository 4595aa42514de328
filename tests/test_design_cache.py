"""Disk cache of built-in trajectory designs (recon.trajectory.design_cache).

Independent truth: a fresh build of the same design. The cached trajectory must be identical in
every field the pipeline uses; a damaged entry is rebuilt; a change of the generator code changes
the key; the run stage reads the cache on the second run and gives the same images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from recon.trajectory import design_cache as tc
from recon.trajectory import tpi


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NARECON_CACHE_DIR", str(d))
    monkeypatch.delenv("NARECON_CACHE_MAX_MB", raising=False)
    return d / "trajectory"


def _build():
    return tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)


def test_cached_design_equals_a_fresh_build(cache):
    calls = []

    def build():
        calls.append(1)
        return _build()

    a, how_a = tc.cached_design({"p": 0.3}, build)
    b, how_b = tc.cached_design({"p": 0.3}, build)
    assert (how_a, how_b) == ("computed", "cached") and len(calls) == 1
    ref = _build()
    assert np.array_equal(b.k, ref.k) and np.array_equal(b.t, ref.t)
    assert b.fov_m == ref.fov_m and b.matrix == ref.matrix and b.dwell_s == ref.dwell_s
    assert b.gamma_hz_per_t == ref.gamma_hz_per_t
    assert (b.solid_angle is None) == (ref.solid_angle is None)
    if ref.solid_angle is not None:
        assert np.array_equal(b.solid_angle, ref.solid_angle)
    assert json.dumps(b.params, sort_keys=True, default=str) == json.dumps(
        json.loads(json.dumps(ref.params, default=str)), sort_keys=True, default=str
    )
    for key, v in (ref.waveforms or {}).items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(b.waveforms[key], v), key
    assert tc.info()["entries"] == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:1000],  # truncated
        lambda b: b + b"x",  # appended
        lambda b: b[:-5] + bytes([b[-5] ^ 1]) + b[-4:],  # one bit of the last array
        lambda b: b"PK\x03\x04" + b[4:],  # not our format (e.g. a zip)
    ],
)
def test_damaged_entry_is_rebuilt(cache, damage):
    tc.cached_design({"p": 0.3}, _build)
    (entry,) = list(cache.glob("*" + tc.SUFFIX))
    entry.write_bytes(damage(entry.read_bytes()))
    t, how = tc.cached_design({"p": 0.3}, _build)
    assert how == "computed" and np.array_equal(t.k, _build().k)
    t2, how2 = tc.cached_design({"p": 0.3}, _build)  # rebuilt and stored again
    assert how2 == "cached" and np.array_equal(t2.k, t.k)


def test_entry_arrays_are_mapped_copy_on_write(cache, tmp_path):
    """read_arrays gives back every array bit for bit, writable without changing the file."""
    from recon.trajectory.dcf_cache import read_arrays, write_arrays

    rng = np.random.default_rng(3)
    arrays = {
        "a": rng.standard_normal((7, 5, 3)),
        "b": np.arange(11, dtype=np.int64),
        "c": np.zeros((0, 3)),
        "d": rng.random(3).astype(np.float32),
    }
    path = tmp_path / "e.nrc"
    with open(path, "wb") as f:
        write_arrays(f, {"x": 1, "s": "é"}, arrays)
    before = path.read_bytes()
    meta, back = read_arrays(path)
    assert meta == {"x": 1, "s": "é"} and list(back) == list(arrays)
    for name, a in arrays.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape and np.array_equal(back[name], a)
    back["a"][0, 0, 0] = 99.0
    assert path.read_bytes() == before


def test_key_follows_parameters_and_generator_code(cache, monkeypatch):
    k1 = tc.design_key({"p": 0.3})
    assert tc.design_key({"p": 0.31}) != k1
    monkeypatch.setattr(tc, "_CODE_DIGEST", "another generator")
    assert tc.design_key({"p": 0.3}) != k1


def test_cache_off(monkeypatch):
    monkeypatch.setenv("NARECON_CACHE_DIR", "off")
    _, how = tc.cached_design({"p": 0.3}, _build)
    assert how == "computed (cache off)"


def test_second_run_reads_the_design_and_reconstructs_the_same(cache, tmp_path):
    """The sample's design is stored by the first reconstruction and read by the second."""
    from pathlib import Path

    import recon

    raw = Path(__file__).resolve().parents[1] / "data_samples" / "raw.dat"
    opts = {"calibration": "none", "b0": "none", "qa": False}
    import recon.pipeline as pl

    made = []
    plan = pl.plan_nufft
    monkey = pytest.MonkeyPatch()
    monkey.setattr(pl, "plan_nufft", lambda *a, **kw: made.append(plan(*a, **kw)) or made[-1])
    try:
        a = recon.reconstruct(raw, opts)
        assert tc.info()["entries"] == 1
        b = recon.reconstruct(raw, opts)
    finally:
        monkey.undo()
    assert np.array_equal(a.trajectory.k, b.trajectory.k)
    assert np.allclose(a.echoes, b.echoes, rtol=0, atol=1e-6 * np.abs(a.echoes).max())
    # both runs' NUFFTs took the design's points (made once when it was built, mapped when read)
    assert [op.points_source for op in made] == ["given", "given"]


def test_cli_cache_info_reports_both_caches(cache, capsys):
    from recon.cli import main

    tc.cached_design({"p": 0.3}, _build)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["trajectory"]["entries"] == 1 and info["trajectory"]["directory"] == str(cache)
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert tc.info()["entries"] == 0


def test_a_design_carries_its_identity_read_only_and_copies_do_not(cache):
    """The design key stands for k and t downstream (the kernel cache skips hashing k): so the
    design's k and t are read-only, a replaced trajectory has no identity, and the identity follows
    the design's parameters (two designs never share one)."""
    import dataclasses

    from recon.calibrate.kernel_cache import kernel_key

    a, _ = tc.cached_design({"p": 0.3}, _build)
    b, how = tc.cached_design({"p": 0.3}, _build)
    c, _ = tc.cached_design({"p": 0.31}, _build)
    assert how == "cached" and a.design_identity() == b.design_identity() == tc.design_key({"p": 0.3})
    assert c.design_identity() != a.design_identity()
    with pytest.raises(ValueError):
        b.k[0, 0, 0] = 1.0
    with pytest.raises(ValueError):
        b.t[0] = 1.0
    assert dataclasses.replace(b, k=b.k * 1.01).design_identity() is None
    w = np.ones(a.k.shape[:2])
    args = (w, a.t, a.matrix, a.fov_m, 1e-3, 0.05)
    assert kernel_key(None, *args, k_identity=a.design_identity()) == kernel_key(a.k, *args, k_identity=a.design_identity())
    assert kernel_key(None, *args, k_identity=a.design_identity()) != kernel_key(a.k, *args)
    assert kernel_key(None, *args, k_identity=a.design_identity()) != kernel_key(None, *args, k_identity=c.design_identity())


def test_cached_design_is_not_validated_twice(cache, monkeypatch):
    """A stored design passed validate() when it was built; its digest-checked entry is not re-validated."""
    from recon.trajectory.base import Trajectory

    t0, _ = tc.cached_design({"p": 0.3}, _build)
    calls = []
    real = Trajectory.validate
    monkeypatch.setattr(Trajectory, "validate", lambda self: calls.append(1) or real(self))
    t1, how = tc.cached_design({"p": 0.3}, _build)
    assert how == "cached" and calls == [] and np.array_equal(t1.k, t0.k)
    Trajectory(k=t1.k, t=t1.t, fov_m=t1.fov_m, matrix=t1.matrix, dwell_s=t1.dwell_s)
    assert calls == [1]  # any other construction validates


def test_damaged_entry_headers_raise_valueerror_only(tmp_path):
    """Random byte changes in an entry's first 400 bytes (magic, lengths, JSON header) end in
    ValueError, which every cache turns into a rebuild, never in another exception."""
    import random

    from recon.trajectory.dcf_cache import read_arrays, write_arrays

    p = tmp_path / "e.nrc"
    with open(p, "wb") as f:
        write_arrays(f, {"a": 1}, {"k": np.arange(12.0).reshape(3, 4), "t": np.arange(4)})
    blob = p.read_bytes()
    rng = random.Random(0)
    refused = 0
    for _ in range(300):
        b = bytearray(blob)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(0, min(len(b), 400))] = rng.randrange(256)
        p.write_bytes(bytes(b))
        try:
            read_arrays(p)
        except ValueError:
            refused += 1
    assert refused > 200


def test_store_removes_entries_of_the_earlier_format(cache):
    """The .npz entries of earlier versions (never read again, not counted by the size bound) go when a
    design is stored; nothing else in the directory is touched."""
    cache.mkdir(parents=True, exist_ok=True)
    old = cache / "0123abcd.npz"
    old.write_bytes(b"PK old zip entry")
    other = cache / "notes.txt"
    other.write_text("keep")
    tc.cached_design({"p": 0.3}, _build)
    assert not old.exists() and other.read_text() == "keep"
    assert len(list(cache.glob("*" + tc.SUFFIX))) == 1


def test_cached_design_carries_the_nufft_points_bit_identical_to_a_conversion(cache):
    """The points stored with a design are make_points' of its k (the independent truth: a fresh
    conversion); a NUFFT given them converts nothing and transforms bit-identically to one from k."""
    from recon.nufft import NUFFT, make_points

    a, how_a = tc.cached_design({"p": 0.3}, _build)
    b, how_b = tc.cached_design({"p": 0.3}, _build)
    assert (how_a, how_b) == ("computed", "cached")
    ref = make_points(_build().k, b.matrix, b.fov_m, np.complex64)
    for t in (a, b):  # the built design keeps the points it stored; the loaded one maps them
        pts = t.nufft_points(t.matrix, t.fov_m)
        assert pts is not None and pts.shape == tuple(t.matrix)
        for d in range(3):
            assert pts.x[d].dtype == np.float32 and np.array_equal(pts.x[d], ref.x[d])
        assert pts.lo == ref.lo and pts.hi == ref.hi
    pts = b.nufft_points(b.matrix, b.fov_m)
    assert b.nufft_points(b.matrix, b.fov_m, np.complex128) is None  # other dtype: none kept
    assert b.nufft_points(tuple(2 * m for m in b.matrix), b.fov_m) is None  # other grid
    given = NUFFT(b.k, b.matrix, b.fov_m, points=pts)
    fresh = NUFFT(_build().k, b.matrix, b.fov_m)
    assert (given.points_source, fresh.points_source) == ("given", "converted")
    assert given.points()[0] is pts.x[0]  # no copy
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(b.k.shape[:-1]) + 1j * rng.standard_normal(b.k.shape[:-1])).astype(np.complex64)
    assert np.array_equal(given.adjoint(y), fresh.adjoint(y))


def test_points_that_do_not_fit_are_converted_and_bad_ones_refused(cache):
    from recon.errors import TrajectoryError
    from recon.nufft import NUFFT, NufftPoints, make_points

    t = _build()
    pts = make_points(t.k, t.matrix, t.fov_m)
    op = NUFFT(t.k, tuple(m + 2 for m in t.matrix), t.fov_m, points=pts)  # other grid: ignored, k converted
    assert op.points_source == "converted" and not np.array_equal(op.points()[0], pts.x[0])
    wide = NufftPoints(x=pts.x, shape=pts.shape, fov_m=pts.fov_m, lo=pts.lo, hi=(float("nan"),) + pts.hi[1:])
    with pytest.raises(TrajectoryError, match="NaN"):
        NUFFT(t.k, t.matrix, t.fov_m, points=wide)  # the extent is re-checked on the given numbers
    far = NufftPoints(x=pts.x, shape=pts.shape, fov_m=pts.fov_m, lo=pts.lo, hi=(10.0, 0.0, 0.0))
    with pytest.raises(TrajectoryError, match="cycles/FOV"):
        NUFFT(t.k, t.matrix, t.fov_m, points=far)


def test_entry_of_another_points_format_loads_without_points(cache, monkeypatch):
    import recon.nufft

    tc.cached_design({"p": 0.3}, _build)
    monkeypatch.setattr(recon.nufft, "POINTS_FORMAT", recon.nufft.POINTS_FORMAT + 1)
    t, how = tc.cached_design({"p": 0.3}, _build)
    assert how == "cached" and t.nufft_points(t.matrix, t.fov_m) is None


def test_a_trajectory_file_gets_its_points_once_per_content(cache, tmp_path):
    """A trajectory without a design identity (as read from a file): the first call converts and stores
    its points, a fresh object with the same k and t maps them back bit for bit, other k do not hit."""
    import dataclasses

    from recon.nufft import make_points

    def fresh():
        t = _build()
        return dataclasses.replace(t, k=np.array(t.k), t=np.array(t.t))  # no identity: content-keyed

    a = fresh()
    assert a.design_identity() is None
    assert tc.cached_points(a) == "computed"
    assert tc.cached_points(a) == "attached"
    b = fresh()
    assert tc.cached_points(b) == "cached"
    ref = make_points(_build().k, b.matrix, b.fov_m)
    pts = b.nufft_points(b.matrix, b.fov_m)
    assert all(np.array_equal(pts.x[d], ref.x[d]) for d in range(3)) and pts.lo == ref.lo
    other = dataclasses.replace(_build(), k=np.array(_build().k) * 0.9, t=np.array(_build().t))
    assert tc.cached_points(other) == "computed"
    assert tc.info()["entries"] == 2


def test_run_with_a_trajectory_file_takes_the_cached_points(cache, tmp_path):
    from pathlib import Path

    import recon
    import recon.pipeline as pl
    from recon.io import build_trajectory, load_profile, read_raw
    from recon.trajectory import write_trajectory

    raw = Path(__file__).resolve().parents[1] / "data_samples" / "raw.dat"
    tf = tmp_path / "site.h5"
    write_trajectory(build_trajectory(read_raw(raw), load_profile(None)), tf)
    made = []
    plan = pl.plan_nufft
    monkey = pytest.MonkeyPatch()
    monkey.setattr(pl, "plan_nufft", lambda *a, **kw: made.append(plan(*a, **kw)) or made[-1])
    try:
        opts = {"calibration": "none", "b0": "none", "qa": False, "traj": str(tf)}
        a = recon.reconstruct(raw, opts)
        b = recon.reconstruct(raw, opts)
    finally:
        monkey.undo()
    assert [op.points_source for op in made] == ["given", "given"]
    assert np.array_equal(a.echoes, b.echoes)
