"""GPU backend on a real CUDA device (marked ``gpu``; run with ``pytest -m gpu`` on a GPU node).

Truths: FINUFFT on the host and cuFINUFFT on the device (independent implementations), the
adjoint identity, and the host emulation of the same kernels.
"""

from __future__ import annotations

import numpy as np
import pytest

from recon.device import cuda_unavailable_reason
from recon.nufft import NUFFT

_REASON = cuda_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"no CUDA device: {_REASON}")]

FOV = 0.224


def _tpi_k(res=0.007):
    from recon.trajectory import tpi

    return tpi(fov_m=FOV, res_m=res).k.reshape(-1, 3)


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cplx(rng, shape, dtype):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.mark.parametrize("method", ["gm", "sm"])
@pytest.mark.parametrize("shape", [(32, 32, 32), (31, 33, 30)])
@pytest.mark.parametrize("eps,dtype", [(1e-4, np.complex64), (1e-6, np.complex128)])
def test_cupy_matches_finufft(rng, method, shape, eps, dtype):
    k = _tpi_k()
    ref = NUFFT(k, shape, FOV, backend="finufft", eps=1e-12, dtype=np.complex128)
    op = NUFFT(k, shape, FOV, device="gpu", eps=eps, dtype=dtype, method=method)
    assert op.backend_name == "cupy"
    x = _cplx(rng, (2,) + shape, dtype)
    y = _cplx(rng, (2, len(k)), dtype)
    assert _rel(op.forward(x), ref.forward(x.astype(np.complex128))) <= 10 * eps
    assert _rel(op.adjoint(y), ref.adjoint(y.astype(np.complex128))) <= 10 * eps


def test_cupy_matches_cufinufft(rng):
    pytest.importorskip("cufinufft")
    shape = (32, 32, 32)
    k = _tpi_k()
    ours = NUFFT(k, shape, FOV, backend="cupy", eps=1e-6, dtype=np.complex128)
    theirs = NUFFT(k, shape, FOV, backend="cufinufft", eps=1e-6, dtype=np.complex128)
    x = _cplx(rng, shape, np.complex128)
    y = _cplx(rng, (len(k),), np.complex128)
    assert _rel(ours.forward(x), theirs.forward(x)) <= 1e-5
    assert _rel(ours.adjoint(y), theirs.adjoint(y)) <= 1e-5


def test_cupy_adjoint_identity_and_device_arrays(rng):
    import cupy as cp

    shape = (24, 24, 24)
    k = _tpi_k(0.0093)
    op = NUFFT(k, shape, FOV, backend="cupy", eps=1e-6, dtype=np.complex128)
    x = cp.asarray(_cplx(rng, (2,) + shape, np.complex128))
    y = cp.asarray(_cplx(rng, (2, len(k)), np.complex128))
    ax, ahy = op.forward(x), op.adjoint(y)
    assert isinstance(ax, cp.ndarray) and isinstance(ahy, cp.ndarray)  # stayed on the device
    lhs, rhs = complex(cp.vdot(y, ax)), complex(cp.vdot(ahy, x))
    assert abs(lhs - rhs) <= 1e-8 * abs(lhs)


def test_cupy_equals_host_emulation_and_chunking(rng):
    shape = (20, 20, 20)
    k = _tpi_k(0.0112)
    x = _cplx(rng, (3,) + shape, np.complex128)
    y = _cplx(rng, (3, len(k)), np.complex128)
    host = NUFFT(k, shape, FOV, backend="cuda-host", eps=1e-6, dtype=np.complex128)
    dev = NUFFT(k, shape, FOV, backend="cupy", eps=1e-6, dtype=np.complex128, max_device_bytes=3_000_000)
    plan = dev._plan(3)
    assert not plan.resident and plan.group < 3
    assert _rel(dev.forward(x), host.forward(x)) < 1e-12
    assert _rel(dev.adjoint(y), host.adjoint(y)) < 1e-12


def test_selftest_kernel_on_device(rng):
    import cupy as cp

    from recon.nufft.cupy_backend import CupyLauncher, kernel_dir, kernel_sources

    launcher = CupyLauncher(kernel_sources(), kernel_dir())
    x = rng.standard_normal(1000)
    n_blocks = -(-len(x) // 64)
    sums, total = cp.zeros(n_blocks), cp.zeros(1)
    launcher.launch("selftest_block_sum", (n_blocks, 1, 1), (64, 1, 1), [cp.asarray(x), np.int32(len(x)), sums, total])
    np.testing.assert_allclose(sums.get(), np.add.reduceat(x, np.arange(0, len(x), 64)), rtol=1e-12)
    np.testing.assert_allclose(float(total.get()[0]), x.sum(), rtol=1e-12)
