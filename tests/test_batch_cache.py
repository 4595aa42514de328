"""Plans handed down: reuse only for identical protocols, results equal to uncached builds."""

from __future__ import annotations

import types

import numpy as np
import pytest

import recon.pipeline as pl
from recon.errors import TrajectoryError
from recon.log import StageTimer
from recon.nufft.nudft import nudft_forward_at
from recon.options import RunOptions
from recon.plans import PlanCache, Plans, nufft_key
from recon.trajectory import density_adapted_radial, write_trajectory


def test_lru_and_counters():
    c = PlanCache(max_entries=2)
    built = []
    for key in ("a", "b", "a", "c", "b"):
        c.get_or_build("x", key, lambda k=key: built.append(k) or k.upper())
    assert built == ["a", "b", "c", "b"]  # "b" was evicted by "c" (LRU, "a" used more recently)
    assert c.stats() == {"x": {"hits": 1, "misses": 4}}
    with pytest.raises(ValueError):
        c.get_or_build("x", "d", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert c.peek("x", "d") is None  # failures are not cached


def test_nufft_key_depends_on_every_sample():
    k = np.random.default_rng(0).uniform(-50, 50, (10, 20, 3))
    k2 = k.copy()
    k2[7, 13, 2] += 1e-9
    assert nufft_key(k, (16,) * 3, 0.2, eps=1e-4) == nufft_key(k.copy(), [16] * 3, (0.2,) * 3, eps=1e-4)
    assert nufft_key(k, (16,) * 3, 0.2, eps=1e-4) != nufft_key(k2, (16,) * 3, 0.2, eps=1e-4)
    assert nufft_key(k, (16,) * 3, 0.2, eps=1e-4) != nufft_key(k, (16,) * 3, 0.2, eps=1e-6)


def test_array_digest_is_xxh3_of_dtype_shape_and_bytes():
    import xxhash

    from recon.plans import array_digest

    a = np.random.default_rng(1).standard_normal((5, 7, 3))
    ref = xxhash.xxh3_128(f"{a.dtype.str}{a.shape}".encode() + a.tobytes()).hexdigest()
    assert array_digest(a) == ref == array_digest(np.asfortranarray(a))  # the C-order bytes, whatever the layout
    b = a.copy()
    b.reshape(-1).view(np.uint8)[37] ^= 1  # one bit of one sample
    assert array_digest(b) != ref
    assert array_digest(a.reshape(7, 5, 3)) != ref  # same bytes, other shape
    assert array_digest(a.astype(np.float32)) != array_digest(a)


@pytest.fixture
def traj_file(tmp_path):
    traj = density_adapted_radial(fov_m=0.2, res_m=0.025, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6)
    path = tmp_path / "t.h5"
    write_trajectory(traj, path)
    return path, traj


def fake_acq(traj, n_samples=None):
    return types.SimpleNamespace(
        n_samples=n_samples or traj.n_samples,
        n_projections=traj.n_projections,
        projection_index=np.arange(traj.n_projections)[None],
        dwell_s=traj.dwell_s,
        sources=("scan.dat",),
    )


def test_plans_reuse_and_check(traj_file, rng):
    path, traj = traj_file
    opts = RunOptions(traj=str(path), dcf="analytic", eps=1e-6)
    # without a cache nothing is kept (a single narecon run)
    assert pl.load_trajectory(fake_acq(traj), opts, Plans())[0] is not pl.load_trajectory(fake_acq(traj), opts, Plans())[0]
    cache = PlanCache()
    plans = Plans(cache)
    t1, _ = pl.load_trajectory(fake_acq(traj), opts, plans, StageTimer())
    t2, _ = pl.load_trajectory(fake_acq(traj), opts, plans, StageTimer())
    w1, _ = pl.density_weights(t1, opts, plans, StageTimer())
    w2, _ = pl.density_weights(t2, opts, plans, StageTimer())
    op1 = plans.nufft(t1.k, (8, 8, 8), 0.2, eps=1e-6)
    op2 = plans.nufft(t2.k.copy(), (8, 8, 8), 0.2, eps=1e-6)
    with pytest.raises(TrajectoryError, match="samples per readout"):  # cached, still checked per scan
        pl.load_trajectory(fake_acq(traj, n_samples=traj.n_samples + 1), opts, plans, StageTimer())
    assert t1 is t2 and w1 is w2 and op1 is op2
    # the file's content key (taken for its NUFFT points) lets its analytic weights come from the disk
    # cache: stored once in memory (a miss), found by peek on the next scan (no hit counted)
    assert cache.stats() == {
        "dcf": {"hits": 0, "misses": 1},
        "nufft": {"hits": 1, "misses": 1},
        "trajectory": {"hits": 2, "misses": 1},
    }
    # independent truth: the cached objects equal fresh builds, the operator an exact DFT
    fresh, _ = pl.load_trajectory(fake_acq(traj), opts)
    np.testing.assert_array_equal(t1.k, fresh.k)
    np.testing.assert_array_equal(w1, pl.density_weights(fresh, opts)[0])
    x = (rng.standard_normal((8, 8, 8)) + 1j * rng.standard_normal((8, 8, 8))).astype(np.complex64)
    sel = rng.choice(t1.k.reshape(-1, 3).shape[0], 200, replace=False)
    exact = nudft_forward_at(x, t1.k, (0.2,) * 3, sel)
    got = op2.forward(x).reshape(-1)[sel]
    assert np.linalg.norm(got - exact) / np.linalg.norm(exact) < 1e-4


def test_changed_trajectory_file_is_rebuilt(traj_file):
    path, traj = traj_file
    opts = RunOptions(traj=str(path))
    cache = PlanCache()
    plans = Plans(cache)
    t1, _ = pl.load_trajectory(fake_acq(traj), opts, plans)
    write_trajectory(traj, path)  # rewritten: new mtime
    import os

    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    t2, _ = pl.load_trajectory(fake_acq(traj), opts, plans)
    assert t1 is not t2 and cache.stats()["trajectory"] == {"hits": 0, "misses": 2}


def test_digest_memo_hashes_each_live_array_once_and_freezes_it():
    from recon.batch.cache import DigestMemo
    from recon.plans import array_digest

    memo = DigestMemo()
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 3))
    d = memo(a)
    assert d == array_digest(a) and memo(a) == d and memo.computed == 1  # remembered
    assert not a.flags.writeable  # an in-place write cannot make the remembered digest stale
    with pytest.raises(ValueError):
        a[0, 0] = 1.0
    b = a.copy()  # same bytes, another object: hashed (and equal)
    assert memo(b) == d and memo.computed == 2
    b2 = a.copy()
    b2[7, 1] += 1e-12
    assert memo(b2) != d
    for _ in range(20):  # freed arrays: a new object that may reuse an id is hashed afresh
        c = rng.standard_normal((50, 3))
        assert memo(c) == array_digest(c)
        del c
    assert memo(a.T) == array_digest(a.T)  # a view with another layout is its own entry
    assert memo([1.0, 2.0]) == array_digest(np.asarray([1.0, 2.0]))  # not an array: hashed every time


def test_remembered_digests_give_the_plain_keys_and_are_undone():
    import recon.plans as rp
    from recon.batch.cache import DigestMemo, remembered_digests

    k = np.random.default_rng(4).uniform(-50, 50, (10, 20, 3))
    plain = nufft_key(k.copy(), (16,) * 3, 0.2, eps=1e-4)
    memo = DigestMemo()
    with remembered_digests(memo):
        assert rp.array_digest is memo
        assert rp.nufft_key(k, (16,) * 3, 0.2, eps=1e-4) == plain
        assert rp.nufft_key(k, (16,) * 3, 0.2, eps=1e-4) == plain
        assert Plans.dcf_key(types.SimpleNamespace(k=k), "analytic")[0] == plain[0]
    assert memo.computed == 1  # k hashed once for three keys
    assert rp.array_digest is not memo
