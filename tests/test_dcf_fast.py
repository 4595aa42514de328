"""The lean Pipe-Menon weights against the previous 30-iteration ones (reference below) through
the unit chain (a uniform sphere reconstructs to c), and the disk cache of density weights."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from test_unit_chain import central_mean, sphere_ft

from recon.nufft import NUFFT, gridding
from recon.plans import PlanCache, Plans
from recon.trajectory import compute_dcf, tpi, write_trajectory
from recon.trajectory import dcf_cache as dc
from recon.trajectory.dcf import is_centre_out


def pipe_reference(traj, n_iter: int = 30, eps: float = 1e-3) -> np.ndarray:
    """The previous ``dcf_pipe``: complex128, start from ones, 30 fixed-point iterations."""
    import finufft

    fov = np.asarray(traj.fov_m)
    grid = tuple(int(2 * m) for m in traj.matrix)
    kg = traj.k.reshape(-1, 3) * fov
    pts = [np.ascontiguousarray(2 * np.pi * kg[:, d] / grid[d]) for d in range(3)]
    kw = dict(spreadinterponly=1, nthreads=2, modeord=0, upsampfac=2.0)
    spread = finufft.Plan(1, grid, 1, eps, +1, dtype="complex128", **kw)
    spread.setpts(*pts)
    interp = finufft.Plan(2, grid, 1, eps, -1, dtype="complex128", **kw)
    interp.setpts(*pts)
    w = np.ones(kg.shape[0])
    for _ in range(n_iter):
        d = interp.execute(spread.execute(w.astype(np.complex128))).real
        w = w / np.maximum(d, 1e-12 * d.max())
    one = finufft.Plan(1, grid, 1, eps, +1, dtype="complex128", **kw)
    z = np.zeros(1)
    one.setpts(z, z, z)
    ks = one.execute(np.ones(1, dtype=np.complex128)).real.sum()
    return (w * ks**2 * np.prod(1 / fov)).reshape(traj.k.shape[:2])


def _sphere_image(tr, w, value=2.0):
    op = NUFFT(tr.k, tr.matrix, tr.fov_m, eps=1e-4)
    return gridding(op, sphere_ft(tr.k, 0.06, value).astype(np.complex64), w).real


def _outside(img, fov=0.224):
    n = img.shape[0]
    r = (np.arange(n) - n // 2) * fov / n
    rr = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    return np.abs(img[(rr > 0.08) & (rr < 0.1)]).mean()


@pytest.mark.parametrize("smax", [None, 100.0])
def test_lean_pipe_keeps_the_unit_chain_and_beats_the_old_weights(smax):
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3, smax_t_per_m_per_s=smax)
    assert is_centre_out(tr)
    new = compute_dcf(tr, "pipe")
    old = pipe_reference(tr)
    img_new, img_old = _sphere_image(tr, new), _sphere_image(tr, old)
    c_new, c_old = central_mean(img_new, 0.224, 0.03).mean(), central_mean(img_old, 0.224, 0.03).mean()
    assert c_new == pytest.approx(2.0, rel=0.02)  # the unit chain's tolerance
    assert c_old == pytest.approx(2.0, rel=0.02)
    assert abs(c_new - 2.0) <= abs(c_old - 2.0) + 0.002
    # low spatial frequencies: the ringing outside the sphere is lower than with the old weights
    assert _outside(img_new) < 0.02 * 2.0
    assert _outside(img_new) < _outside(img_old)
    # the weights agree with the old ones in the interior of k-space (median within 1 %)
    kr = np.linalg.norm(tr.k, axis=-1)
    mid = (kr > 0.1 * kr.max()) & (kr < 0.9 * kr.max())
    assert np.median(new[mid] / old[mid]) == pytest.approx(1.0, abs=0.01)
    # Pipe-Menon inflates the outermost shell (the kernel reaches past kmax) as before
    assert new.sum() == pytest.approx(old.sum(), rel=0.05)


def test_non_centre_out_trajectory_starts_from_ones():
    tr = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    rev = dataclasses.replace(tr, k=tr.k[:, ::-1].copy(), waveforms=None)  # readouts from kmax inwards
    assert not is_centre_out(rev)
    w = compute_dcf(rev, "pipe", n_iter=30)
    np.testing.assert_allclose(w[:, ::-1], pipe_reference(tr), rtol=2e-3, atol=1e-3 * w.max())


def test_pipe_plans_are_reused_through_a_plan_cache():
    tr = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    plans = Plans(PlanCache())
    a = compute_dcf(tr, "pipe", plans=plans)
    b = compute_dcf(tr, "pipe", plans=plans)
    np.testing.assert_array_equal(a, b)
    assert plans.stats()["spreader"] == {"hits": 1, "misses": 1}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NARECON_CACHE_DIR", str(d))
    monkeypatch.delenv("NARECON_CACHE_MAX_MB", raising=False)
    return d / "dcf"


@pytest.fixture(scope="module")
def file_traj(tmp_path_factory):
    tr = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)
    p = tmp_path_factory.mktemp("traj") / "site.h5"
    write_trajectory(tr, p)
    from recon.trajectory import read_trajectory

    t = read_trajectory(p)
    t.params["generator"] = "file"  # as a site's own trajectory: auto -> pipe
    return t, p


def test_cache_computes_once_then_reads_back(cache, file_traj):
    tr, p = file_traj
    w1, how1 = dc.cached_dcf(tr, "auto", source_path=p)
    w2, how2 = dc.cached_dcf(tr, "auto", source_path=p)
    assert how1 == "computed (pipe)" and how2 == "cached (pipe)"
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(w1, compute_dcf(tr, "pipe"))
    assert len(list(cache.glob("*" + dc._SUFFIX))) == 1
    assert not list(cache.glob(".*"))  # no temporary left behind


def test_cache_key_follows_the_file_content(cache, file_traj, tmp_path):
    tr, p = file_traj
    dc.cached_dcf(tr, "pipe", source_path=p)
    q = tmp_path / "other.h5"
    write_trajectory(dataclasses.replace(tr, k=tr.k * 0.999), q)
    assert dc.dcf_key(tr, "pipe", source_path=p) != dc.dcf_key(tr, "pipe", source_path=q)
    assert dc.dcf_key(tr, "pipe", source_path=p) == dc.dcf_key(tr, "pipe", source_path=p)
    assert dc.dcf_key(tr, "pipe", {"n_iter": 3}, source_path=p) != dc.dcf_key(tr, "pipe", source_path=p)


def test_corrupt_or_mismatched_entry_is_recomputed(cache, file_traj):
    tr, p = file_traj
    w, _ = dc.cached_dcf(tr, "pipe", source_path=p)
    entry = next(cache.glob("*" + dc._SUFFIX))
    entry.write_bytes(b"not numpy")
    w2, how = dc.cached_dcf(tr, "pipe", source_path=p)
    assert how == "computed (pipe)"
    np.testing.assert_array_equal(w, w2)
    with open(entry, "wb") as f:  # a well-formed entry of the wrong shape
        dc.write_arrays(f, {}, {"dcf": np.ones((3, 3))})
    assert dc.cached_dcf(tr, "pipe", source_path=p)[1] == "computed (pipe)"


def test_size_bound_evicts_least_recently_used(cache, file_traj, monkeypatch):
    tr, p = file_traj
    nbytes = tr.k.shape[0] * tr.k.shape[1] * 8
    monkeypatch.setenv("NARECON_CACHE_MAX_MB", str(1.5 * nbytes / 2**20))  # room for one entry
    dc.cached_dcf(tr, "pipe", source_path=p)
    first = set(cache.glob("*" + dc._SUFFIX))
    dc.cached_dcf(tr, "pipe", source_path=p, n_iter=2)
    after = set(cache.glob("*" + dc._SUFFIX))
    assert len(after) == 1 and after != first


def test_analytic_and_file_weights_bypass_the_cache(cache, file_traj):
    tr, p = file_traj
    w, how = dc.cached_dcf(tr, "analytic", source_path=p)
    assert how == "computed (analytic)"
    np.testing.assert_array_equal(w, compute_dcf(tr, "analytic"))
    with_w = tr.with_dcf(w)
    assert dc.cached_dcf(with_w, "auto")[1] == "from trajectory file"
    assert not cache.exists() or not list(cache.glob("*" + dc._SUFFIX))


def test_cache_off(monkeypatch, file_traj):
    monkeypatch.setenv("NARECON_CACHE_DIR", "off")
    assert dc.cache_dir() is None
    assert dc.cached_dcf(file_traj[0], "pipe")[1] == "computed (pipe, cache off)"


def test_cli_cache_info_and_clear(cache, file_traj, capsys):
    from recon.cli import main

    tr, p = file_traj
    dc.cached_dcf(tr, "pipe", source_path=p)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["entries"] == 1 and info["directory"] == str(cache) and info["size_bytes"] > 0
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert dc.info()["entries"] == 0


def test_plan_cache_is_consulted_before_the_disk(cache, file_traj):
    tr, p = file_traj
    plans = Plans(PlanCache())
    w1, how1 = dc.cached_dcf(tr, "pipe", plans=plans)
    w2, how2 = dc.cached_dcf(tr, "pipe", plans=plans)
    assert (how1, how2) == ("computed (pipe)", "cached in memory (pipe)")
    assert w2 is w1
    fresh = Plans(PlanCache())
    assert dc.cached_dcf(tr, "pipe", plans=fresh)[1] == "cached (pipe)"
    assert dc.cached_dcf(tr, "pipe", plans=fresh)[1] == "cached in memory (pipe)"


def test_pipeline_density_stage_uses_the_cache(cache, file_traj):
    from recon.options import RunOptions
    from recon.pipeline import density_weights

    tr, _ = file_traj
    opts = RunOptions()
    w1, m1 = density_weights(tr, opts)
    w2, m2 = density_weights(tr, opts)
    assert m1 == m2 == "pipe"
    np.testing.assert_array_equal(w1, w2)
    assert dc.info()["entries"] == 1


def test_analytic_weights_of_a_built_in_design_are_cached_others_computed(cache):
    """A design from the design cache carries its identity: its analytic weights are read back (equal to
    a fresh computation); a trajectory without one (a copy) is computed, never looked up by a stale key."""
    from recon.trajectory import design_cache as tc

    def build():
        return tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)

    tr, _ = tc.cached_design({"p": 0.3, "test": "analytic"}, build)
    w1, how1 = dc.cached_dcf(tr, "analytic")
    w2, how2 = dc.cached_dcf(tr, "analytic")
    assert (how1, how2) == ("computed (analytic)", "cached (analytic)")
    assert np.array_equal(w2, compute_dcf(build(), "analytic"))
    other = dataclasses.replace(tr, k=tr.k * 1.01)
    w3, how3 = dc.cached_dcf(other, "analytic")
    assert how3 == "computed (analytic)" and not np.array_equal(w3, w2)


def test_only_finite_non_negative_weights_are_stored(cache, tmp_path):
    """A load does not re-check the weights: the store refuses any it could not hand back."""
    for bad in (np.nan, -1.0, np.inf):
        w = np.ones((4, 5))
        w[2, 3] = bad
        entry = tmp_path / f"bad{dc._SUFFIX}"
        assert dc._store(entry, w) is not None and not entry.exists()
    assert dc._store(tmp_path / f"good{dc._SUFFIX}", np.ones((4, 5))) is None
    np.testing.assert_array_equal(dc._load(tmp_path / f"good{dc._SUFFIX}", (4, 5)), np.ones((4, 5)))
