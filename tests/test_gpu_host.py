"""GPU backend kernels run on the CPU (host emulation of kernels/*.cu through the same launch code).

Truths: FINUFFT (an independent implementation) at a tighter tolerance, the exact NUDFT of
recon.nufft.nudft at selected entries, direct numerical integration of the ES kernel, and the
adjoint identity. Tolerances follow the issue: relative error <= 10 * eps.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from recon.errors import BackendUnavailableError, InputError
from recon.nufft import NUFFT
from recon.nufft.nudft import nudft_adjoint_at, nudft_forward_at

cb = pytest.importorskip("recon.nufft.cupy_backend")
from recon.nufft._hostcuda import compiler  # noqa: E402

pytestmark = pytest.mark.skipif(compiler() is None, reason="no C++ compiler (g++) for the host emulation")

FOV = 0.224


def _tpi_k() -> np.ndarray:
    from recon.trajectory import tpi

    t = tpi(fov_m=FOV, res_m=0.014)  # kmax * fov = 8 cycles/FOV: fits a 15/16-point grid
    return t.k[::25].reshape(-1, 3)  # 10 projections x 310 samples


def _random_k(rng, shape, m=2500) -> np.ndarray:
    return (rng.random((m, 3)) - 0.5) * np.asarray(shape) / FOV


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _cplx(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("traj", ["tpi", "random"])
@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 17, 13)])
@pytest.mark.parametrize("eps,dtype", [(1e-4, np.complex64), (1e-6, np.complex64), (1e-6, np.complex128)])
def test_host_kernels_match_finufft(rng, traj, shape, eps, dtype):
    k = _tpi_k() if traj == "tpi" else _random_k(rng, shape)
    ref = NUFFT(k, shape, FOV, backend="finufft", eps=1e-12, dtype=np.complex128)
    op = NUFFT(k, shape, FOV, backend="cuda-host", eps=eps, dtype=dtype)
    x = _cplx(rng, (2,) + shape, dtype)
    y = _cplx(rng, (2, len(k)), dtype)
    fwd = op.forward(x)
    adj = op.adjoint(y)
    assert fwd.dtype == dtype and adj.dtype == dtype and adj.shape == (2,) + shape
    assert _rel(fwd, ref.forward(x.astype(np.complex128))) <= 10 * eps
    assert _rel(adj, ref.adjoint(y.astype(np.complex128))) <= 10 * eps


def test_host_kernels_match_exact_nudft(rng):
    shape = (12, 11, 10)
    k = _random_k(rng, shape, 800)
    op = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-6, dtype=np.complex128)
    x = _cplx(rng, shape, np.complex128)
    y = _cplx(rng, (len(k),), np.complex128)
    idx = np.arange(0, 800, 37)
    ex_f = nudft_forward_at(x, k, FOV, idx)
    assert _rel(op.forward(x)[idx], ex_f) <= 1e-5
    vox = np.array([[0, 0, 0], [6, 5, 5], [11, 10, 9], [3, 7, 1]])
    ex_a = nudft_adjoint_at(y, k, shape, FOV, vox)
    a = op.adjoint(y)
    assert _rel(a[tuple(vox.T)], ex_a) <= 1e-5


@pytest.mark.parametrize("method", ["gm", "sm"])
def test_adjoint_identity_and_batch(rng, method):
    shape = (14, 16, 15)
    k = _tpi_k()
    op = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-6, dtype=np.complex128, method=method)
    x = _cplx(rng, (3,) + shape, np.complex128)
    y = _cplx(rng, (3, len(k)), np.complex128)
    ax, ahy = op.forward(x), op.adjoint(y)
    lhs, rhs = np.vdot(y, ax), np.vdot(ahy, x)
    assert abs(lhs - rhs) <= 1e-6 * abs(lhs)
    # a batch of 3 equals three single transforms
    for i in range(3):
        np.testing.assert_allclose(op.forward(x[i]), ax[i], rtol=0, atol=1e-12 * np.abs(ax).max())
        np.testing.assert_allclose(op.adjoint(y[i]), ahy[i], rtol=0, atol=1e-12 * np.abs(ahy).max())


@pytest.mark.parametrize("method", ["gm", "sm"])
def test_generic_width_kernels(rng, method):
    """Widths without a compiled-in constant (ns 9 at eps 1e-8; ns 5 forced generic) run the _w0 kernels."""
    shape = (12, 13, 12)
    k = _random_k(rng, shape, 1500)
    x = _cplx(rng, shape, np.complex128)
    y = _cplx(rng, (len(k),), np.complex128)
    ref = NUFFT(k, shape, FOV, backend="finufft", eps=1e-12, dtype=np.complex128)
    for eps, spec in ((1e-8, True), (1e-4, False)):
        op = NUFFT(k, shape, FOV, backend="cuda-host", eps=eps, dtype=np.complex128, method=method, specialize=spec)
        assert op._plan(1).ns not in op._plan(1).widths
        assert _rel(op.forward(x), ref.forward(x)) <= 10 * eps
        assert _rel(op.adjoint(y), ref.adjoint(y)) <= 10 * eps


@pytest.mark.parametrize("max_points", [1024, 7])
def test_sm_equals_gm(rng, max_points):
    shape = (16, 16, 16)
    k = _random_k(rng, shape, 3000)
    y = _cplx(rng, (2, len(k)), np.complex64)
    gm = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-4, method="gm").adjoint(y)
    sm_op = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-4, method="sm", sm_max_points=max_points)
    sm = sm_op.adjoint(y)
    plan = sm_op._plan(2)
    assert plan.method == "sm"  # the shared-memory kernel really ran
    assert plan._subs_host[2].max() <= max_points
    assert _rel(sm, gm) < 1e-5  # float32 accumulation order differs only


@pytest.mark.parametrize("n_bins", [7, 65536, 200_000])
def test_stable_bin_argsort_equals_numpy(rng, n_bins):
    flat = rng.integers(0, n_bins, 50_000)
    np.testing.assert_array_equal(cb.stable_bin_argsort(flat, n_bins), np.argsort(flat, kind="stable"))


def test_subproblems_cover_every_point_once():
    sorted_bins = np.repeat([0, 3, 4, 9], [5, 1, 12, 7])
    sub_bin, start, count = cb._subproblems(sorted_bins, 10, 4)
    covered = np.concatenate([np.arange(s, s + c) for s, c in zip(start, count)])
    np.testing.assert_array_equal(covered, np.arange(len(sorted_bins)))
    assert count.max() <= 4
    np.testing.assert_array_equal(sorted_bins[start], sub_bin)
    np.testing.assert_array_equal(sorted_bins[start + count - 1], sub_bin)


def test_auto_method_picks_sm_for_dense_tpi_and_gm_for_sparse(rng):
    shape = (16, 16, 16)
    from recon.trajectory import tpi

    dense = tpi(fov_m=FOV, res_m=0.014).k.reshape(-1, 3)  # 77500 samples on 16^3: ~19 per voxel
    sparse = _random_k(rng, shape, 300)
    assert NUFFT(dense, shape, FOV, backend="cuda-host", eps=1e-4)._plan(1).method == "sm"
    assert NUFFT(sparse, shape, FOV, backend="cuda-host", eps=1e-4)._plan(1).method == "gm"


def test_chunked_memory_path_gives_same_result(rng):
    """A device budget too small for the batch and the samples: groups of transforms, streamed chunks."""
    shape = (16, 16, 16)
    k = _random_k(rng, shape, 3000)
    x = _cplx(rng, (3,) + shape, np.complex128)
    y = _cplx(rng, (3, len(k)), np.complex128)
    full = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-6, dtype=np.complex128)
    for method in ("gm", "sm"):
        small = NUFFT(
            k,
            shape,
            FOV,
            backend="cuda-host",
            eps=1e-6,
            dtype=np.complex128,
            method=method,
            max_device_bytes=1_300_000,
        )
        plan = small._plan(3)
        assert plan.group < 3 and not plan.resident and plan.chunk < len(k)
        assert plan.memory_estimate(plan.group, plan.chunk, False) <= plan.budget
        np.testing.assert_allclose(small.forward(x), full.forward(x), rtol=0, atol=1e-10 * np.abs(full.forward(x)).max())
        np.testing.assert_allclose(small.adjoint(y), full.adjoint(y), rtol=0, atol=1e-10 * np.abs(full.adjoint(y)).max())


def test_too_little_memory_is_a_clear_error(rng):
    k = _random_k(rng, (16, 16, 16), 100)
    op = NUFFT(k, (16, 16, 16), FOV, backend="cuda-host", eps=1e-4, max_device_bytes=10_000)
    with pytest.raises(BackendUnavailableError, match="GiB of device memory"):
        op.forward(np.zeros((16, 16, 16), np.complex64))


def test_es_params_follow_finufft_rule():
    assert cb.es_params(1e-4)[:2] == (5, pytest.approx(2.30 * 5))
    assert cb.es_params(1e-6)[:2] == (7, pytest.approx(2.30 * 7))
    assert cb.es_params(1e-2)[:2] == (3, pytest.approx(2.26 * 3))
    assert cb.es_params(1e-3)[:2] == (4, pytest.approx(2.38 * 4))
    assert cb.es_params(0.5)[0] == 2 and cb.es_params(1e-20)[0] == 16
    with pytest.raises(InputError):
        cb.es_params(1e-4, upsampfac=1.25)
    assert [cb.next235even(n) for n in (1, 31, 32, 33, 98, 110, 254)] == [2, 32, 32, 36, 100, 120, 256]


def test_deapodization_factors_against_riemann_sum():
    ns, beta, c = cb.es_params(1e-6)
    nf, n = 34, 17
    z = np.linspace(-ns / 2, ns / 2, 200001)
    phi = np.exp(beta * (np.sqrt(np.maximum(1 - c * z * z, 0)) - 1))
    modes = np.arange(n) - n // 2
    direct = np.array([np.trapezoid(phi * np.cos(2 * np.pi * m * z / nf), z) for m in modes])
    np.testing.assert_allclose(cb.es_fourier(ns, beta, nf, n), direct, rtol=1e-7)


def test_host_backend_rejects_wrong_shapes(rng):
    k = _random_k(rng, (8, 8, 8), 50)
    op = NUFFT(k, (8, 8, 8), FOV, backend="cuda-host", eps=1e-4)
    with pytest.raises(InputError):
        op._plan(1).forward(np.zeros((1, 8, 8, 7), np.complex64))


def test_emulated_builtins_barrier_shared_atomics(rng):
    """kernels/selftest.cu: a shared-memory tree reduction (right only if __syncthreads is a
    barrier and __shared__ is per block) and atomicAdd of the block sums, against numpy."""
    launcher = cb._HostPlatform().launcher
    x = rng.standard_normal(1000)
    n_blocks = -(-len(x) // 64)
    block_sums = np.zeros(n_blocks)
    total = np.zeros(1)
    args = [x, np.int32(len(x)), block_sums, total]
    launcher.launch("selftest_block_sum", (n_blocks, 1, 1), (64, 1, 1), args, sync=True)
    expect = np.add.reduceat(x, np.arange(0, len(x), 64))
    np.testing.assert_allclose(block_sums, expect, rtol=1e-12)
    np.testing.assert_allclose(total[0], x.sum(), rtol=1e-12)
    with pytest.raises(TypeError):
        launcher.launch("selftest_block_sum", (1, 1, 1), (64, 1, 1), [x, len(x), block_sums, total], sync=True)


def test_kernel_sources_found():
    """The sources are found in the repository's kernels/ (or the installed package recon._kernels),
    and pyproject.toml ships kernels/ as package recon._kernels with its .cu/.cuh files."""
    import importlib.util
    from pathlib import Path

    import tomllib

    root = Path(cb.__file__).parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    st = pyproject["tool"]["setuptools"]
    assert st["package-dir"]["recon._kernels"] == "kernels" and "recon._kernels" in st["packages"]
    data = st["package-data"]
    assert "*.cu" in data["recon._kernels"] and "*.cuh" in data["recon._kernels"]
    assert "_hostcuda.h" in data["recon.nufft"]
    assert sorted(p.name for p in (root / "kernels").glob("*.cu")) == sorted(cb.KERNEL_FILES)
    names = sorted(p.name for p in cb.kernel_sources())
    assert names == ["deapod.cu", "interp.cu", "selftest.cu", "spread.cu"]
    assert (cb.kernel_dir() / "narecon_nufft.cuh").is_file()
    if importlib.util.find_spec("recon._kernels") is not None:  # an installed wheel: the package holds them
        import importlib.resources

        pkg = importlib.resources.files("recon._kernels")
        assert sorted(p.name for p in pkg.iterdir() if p.name.endswith(".cu")) == sorted(cb.KERNEL_FILES)


def test_rawmodule_code_changes_with_kernel_sources(tmp_path):
    """CuPy caches by code string: an edited .cu or .cuh must change it."""
    for f in [*cb.kernel_sources(), cb.kernel_dir() / "narecon_nufft.cuh"]:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    srcs = [tmp_path / f.name for f in cb.kernel_sources()]
    before = cb.rawmodule_code(srcs)
    assert before == cb.rawmodule_code(cb.kernel_sources())
    assert all(f'#include "{f.name}"' in before for f in srcs)
    (tmp_path / "narecon_nufft.cuh").write_text((tmp_path / "narecon_nufft.cuh").read_text() + "\n// edit\n")
    assert cb.rawmodule_code(srcs) != before


def test_import_recon_does_not_import_cupy_and_gpu_error_is_clear():
    code = (
        "import sys, numpy as np, recon, recon.nufft, recon.device\n"
        "import recon.nufft.cupy_backend, recon.nufft.cufinufft_backend\n"
        "assert 'cupy' not in sys.modules, 'cupy imported at import time'\n"
        "if recon.device.cuda_unavailable_reason() is None: print('HAVE_GPU'); raise SystemExit\n"
        "from recon.errors import BackendUnavailableError\n"
        "from recon.nufft import NUFFT\n"
        "try:\n"
        "    NUFFT(np.zeros((4, 3)), (8, 8, 8), 0.2, device='gpu')\n"
        "except BackendUnavailableError as e:\n"
        "    print('ERR', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    if "HAVE_GPU" in out:
        pytest.skip("a CUDA device is present here")
    assert out.startswith("ERR") and "cupy" in out and ("gpu-cu12" in out or "CUDA" in out)
