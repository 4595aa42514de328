"""The CPU NUFFT benchmark's peer adapters: each stated sign/scale convention, checked against
an exact non-uniform DFT on a small problem (so the benchmark's error column means what it says),
and the BART .cfl round trip."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from recon.nufft.nudft import nudft_matrix

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("nufft_cpu_bench", ROOT / "benchmarks" / "nufft_cpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(5)
    shape, fov = (16, 16, 16), 0.2
    kshape = (12, 40)
    # up to the grid edge |k| = N/2 / fov, where BART without -P goes wrong
    k = rng.uniform(-0.5, 0.5, kshape + (3,)) * np.asarray(shape) / fov
    k = k.reshape(-1, 3)
    x = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    y = (rng.standard_normal(len(k)) + 1j * rng.standard_normal(len(k))).astype(np.complex64)
    e = nudft_matrix(k, shape, fov)  # exact, float64
    return dict(
        k=k,
        kshape=kshape,
        shape=shape,
        fov=fov,
        x=x,
        y=y,
        fwd=e @ x.ravel(),
        adj=(e.conj().T @ y).reshape(shape),
    )


# tolerances: the finufft-based ones at eps 1e-4; SigPy's fixed width-4 kernel and BART are coarser
TOL = {
    "narecon": 1e-3,
    "finufft-default": 1e-3,
    "finufft-uf2": 1e-3,
    "mrinufft": 1e-3,
    "sigpy": 5e-2,
    "bart": 1e-2,
}


@pytest.mark.parametrize("name", list(TOL))
def test_adapter_convention_matches_exact_dft(bench, problem, name):
    why = bench.available(name)
    if why:
        pytest.skip(f"{name}: {why}")
    p = problem
    impl = bench.make_impl(name, p["k"], p["kshape"], p["shape"], p["fov"], 1e-4, 1)
    impl.setup()
    try:
        if isinstance(impl, bench.Bart):
            impl.stage_forward(p["x"])
            impl.stage_adjoint(p["y"])
        f = impl.fwd_ours(impl.forward(p["x"]))
        a = impl.adj_ours(impl.adjoint(p["y"]))
    finally:
        if hasattr(impl, "close"):
            impl.close()
    assert np.linalg.norm(f - p["fwd"]) / np.linalg.norm(p["fwd"]) < TOL[name]
    assert np.linalg.norm(a - p["adj"]) / np.linalg.norm(p["adj"]) < TOL[name]


def test_bart_without_periodic_flag_is_wrong_at_the_grid_edge(bench, problem):
    """The benchmark runs BART with -P; this pins why (samples near |k| = N/2)."""
    if bench.available("bart"):
        pytest.skip("bart not installed")
    p = problem
    impl = bench.make_impl("bart-default", p["k"], p["kshape"], p["shape"], p["fov"], 1e-4, 1)
    impl.setup()
    try:
        impl.stage_forward(p["x"])
        f = impl.fwd_ours(impl.forward(p["x"]))
    finally:
        impl.close()
    err = np.abs(f - p["fwd"]) / np.sqrt(np.mean(np.abs(p["fwd"]) ** 2))
    kinf = np.abs(p["k"] * p["fov"]).max(axis=1)
    inner, edge = kinf < p["shape"][0] / 2 - 2, kinf > p["shape"][0] / 2 - 0.5
    assert err[inner].mean() < 1e-2
    assert err[edge].mean() > 5e-2


def test_cfl_round_trip(bench, tmp_path):
    a = (np.arange(24) + 1j * np.arange(24)[::-1]).astype(np.complex64).reshape(4, 3, 2)
    # BART dims (2, 3, 4) in Fortran order is this C-ordered (4, 3, 2) array
    bench.write_cfl(tmp_path / "a", a, (2, 3, 4))
    flat, dims = bench.read_cfl(tmp_path / "a")
    assert dims == [2, 3, 4]
    np.testing.assert_array_equal(flat.reshape(2, 3, 4, order="F"), a.transpose(2, 1, 0))
