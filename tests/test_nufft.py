"""NUFFT operator against exact non-uniform DFT sums (FINUFFT-style sampled-index checks)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import BackendUnavailableError, InputError, TrajectoryError
from recon.nufft import NUFFT, available_backends
from recon.nufft.nudft import nudft_adjoint_at, nudft_forward_at, nudft_matrix
from recon.trajectory import tpi

SHAPES = [((16, 16, 16), (0.2, 0.2, 0.2)), ((12, 15, 9), (0.18, 0.25, 0.11)), ((7, 10, 13), (0.1, 0.3, 0.2))]


def _random_k(rng, shape, fov, m):
    kn = np.asarray(shape) / (2 * np.asarray(fov))
    return rng.uniform(-1, 1, (m, 3)) * kn


def _cplx(rng, shape):
    return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)


@pytest.mark.parametrize("eps,dtype", [(1e-3, np.complex64), (1e-3, np.complex128), (1e-6, np.complex128)])
@pytest.mark.parametrize("shape,fov", SHAPES)
def test_against_exact_dft(rng, shape, fov, eps, dtype):
    k = _random_k(rng, shape, fov, 3000)
    op = NUFFT(k, shape, fov, eps=eps, dtype=dtype)
    x = _cplx(rng, shape)
    y = op.forward(x.astype(dtype))
    idx = rng.choice(len(k), 25, replace=False)
    ref = nudft_forward_at(x, k, fov, idx)
    assert np.linalg.norm(y[idx] - ref) / np.linalg.norm(ref) <= 10 * eps
    d = _cplx(rng, len(k))
    a = op.adjoint(d.astype(dtype))
    vox = np.stack([rng.integers(0, n, 20) for n in shape], axis=-1)
    ref = nudft_adjoint_at(d, k, shape, fov, vox)
    assert np.linalg.norm(a[tuple(vox.T)] - ref) / np.linalg.norm(ref) <= 10 * eps


@pytest.mark.parametrize("eps", [1e-3, 1e-6])
def test_tpi_against_exact_dft(rng, eps):
    tr = tpi(fov_m=0.224, res_m=0.014, p=0.3, gmax_t_per_m=4e-3)  # 16^3
    shape = tr.matrix
    op = NUFFT(tr.k, shape, tr.fov_m, eps=eps, dtype=np.complex128)
    x = _cplx(rng, shape)
    y = op.forward(x)
    assert y.shape == tr.k.shape[:2]
    idx = rng.choice(tr.k.shape[0] * tr.k.shape[1], 30, replace=False)
    ref = nudft_forward_at(x, tr.k, tr.fov_m, idx)
    assert np.linalg.norm(y.reshape(-1)[idx] - ref) / np.linalg.norm(ref) <= 10 * eps
    d = _cplx(rng, tr.k.shape[:2])
    vox = np.array([[0, 0, 0], [8, 8, 8], [15, 3, 9], [1, 14, 7]])
    ref = nudft_adjoint_at(d, tr.k, shape, tr.fov_m, vox)
    a = op.adjoint(d)
    assert np.linalg.norm(a[tuple(vox.T)] - ref) / np.linalg.norm(ref) <= 10 * eps


def test_dense_matrix_small(rng):
    shape, fov = (5, 6, 4), (0.1, 0.12, 0.08)
    k = _random_k(rng, shape, fov, 200)
    E = nudft_matrix(k, shape, fov)
    op = NUFFT(k, shape, fov, eps=1e-9, dtype=np.complex128)
    x = _cplx(rng, shape)
    np.testing.assert_allclose(op.forward(x), E @ x.ravel(), rtol=1e-7, atol=1e-7 * np.abs(E @ x.ravel()).max())
    d = _cplx(rng, 200)
    np.testing.assert_allclose(op.adjoint(d).ravel(), E.conj().T @ d, atol=1e-7 * np.abs(E.conj().T @ d).max())


@pytest.mark.parametrize("dtype,tol", [(np.complex64, 1e-4), (np.complex128, 1e-10)])
def test_adjoint_identity(rng, dtype, tol):
    shape, fov = (14, 11, 9), (0.2, 0.15, 0.12)
    k = _random_k(rng, shape, fov, 4000)
    op = NUFFT(k, shape, fov, eps=1e-6 if dtype == np.complex64 else 1e-12, dtype=dtype)
    x = _cplx(rng, shape).astype(dtype)
    y = _cplx(rng, 4000).astype(dtype)
    lhs = np.vdot(y, op.forward(x))
    rhs = np.vdot(op.adjoint(y), x)
    assert abs(lhs - rhs) / abs(lhs) < tol


def test_grid_convention_single_voxel(rng):
    """A delta at voxel j gives y_m = exp(-i 2 pi k_m . r_j), r_j = (j - floor(N/2)) fov / N."""
    shape, fov = (8, 9, 10), (0.16, 0.27, 0.3)
    k = _random_k(rng, shape, fov, 50)
    x = np.zeros(shape, complex)
    j = (6, 2, 7)
    x[j] = 1
    r = np.array([(j[d] - shape[d] // 2) * fov[d] / shape[d] for d in range(3)])
    y = NUFFT(k, shape, fov, eps=1e-12, dtype=np.complex128).forward(x)
    np.testing.assert_allclose(y, np.exp(-2j * np.pi * k @ r), atol=1e-10)


def test_batches_and_plan_reuse(rng):
    shape, fov = (10, 10, 10), 0.2
    k = _random_k(rng, shape, (fov,) * 3, 1000).reshape(10, 100, 3)
    op = NUFFT(k, shape, fov, eps=1e-9, dtype=np.complex128)
    x = _cplx(rng, (2, 3) + shape)
    y = op.forward(x)
    assert y.shape == (2, 3, 10, 100)
    for a in range(2):
        for b in range(3):
            np.testing.assert_allclose(y[a, b], op.forward(x[a, b]), atol=1e-10)
    a = op.adjoint(y)
    assert a.shape == (2, 3) + shape
    np.testing.assert_allclose(a[1, 2], op.adjoint(y[1, 2]), atol=1e-8)
    assert set(op._plans) == {1, 6}


def test_input_validation(rng):
    k = _random_k(rng, (8, 8, 8), (0.2,) * 3, 100)
    with pytest.raises(TrajectoryError):
        NUFFT(k[:, :2], (8, 8, 8), 0.2)
    with pytest.raises(TrajectoryError):
        NUFFT(np.full((4, 3), np.nan), (8, 8, 8), 0.2)
    with pytest.raises(TrajectoryError):  # k in rad/m or 1/cm mix-ups land far off the grid
        NUFFT(k * 2 * np.pi * 10, (8, 8, 8), 0.2)
    with pytest.raises(InputError):
        NUFFT(k, (8, 8), 0.2)
    with pytest.raises(InputError):
        NUFFT(k, (8, 8, 8), 0.2, backend="nonesuch")
    op = NUFFT(k, (8, 8, 8), 0.2)
    with pytest.raises(InputError):
        op.forward(np.zeros((8, 8, 9), complex))
    with pytest.raises(InputError):
        op.adjoint(np.zeros(99, complex))


def test_gpu_request_without_gpu_is_a_clear_error():
    reasons = available_backends()
    assert reasons["finufft"] is None
    if reasons.get("cupy") is not None:
        with pytest.raises(BackendUnavailableError) as e:
            NUFFT(np.zeros((4, 3)), (8, 8, 8), 0.2, device="gpu")
        assert "cupy" in str(e.value).lower() or "gpu" in str(e.value).lower()


def test_input_validation_on_the_float32_points(rng):
    """Finiteness and extent are checked on the points the backend gets (one pass per axis)."""
    k = _random_k(rng, (8, 8, 8), (0.2,) * 3, 100)
    bad = k.copy()
    bad[17, 1] = np.inf
    with pytest.raises(TrajectoryError, match="NaN or infinite"):
        NUFFT(bad, (8, 8, 8), 0.2)
    edge = k.copy()
    edge[3, 2] = 1.5 * 8 / 0.2 * 1.0001  # just past 1.5 x the grid (cycles/FOV)
    with pytest.raises(TrajectoryError, match="beyond"):
        NUFFT(edge, (8, 8, 8), 0.2)
    edge[3, 2] = 1.5 * 8 / 0.2 * 0.999
    NUFFT(edge, (8, 8, 8), 0.2)
    # strided k (a view of every other sample) gives the same operator as its contiguous copy
    x = _cplx(rng, (8, 8, 8)).astype(np.complex64)
    view = np.concatenate([k, k])[::2]
    np.testing.assert_array_equal(NUFFT(view, (8, 8, 8), 0.2).forward(x), NUFFT(view.copy(), (8, 8, 8), 0.2).forward(x))


@pytest.mark.parametrize("upsampfac", [1.25, 2.0])
def test_both_upsampling_choices_meet_the_accuracy(rng, upsampfac):
    """choose_upsampfac may pick either kernel: both reach the requested accuracy (exact NUDFT)."""
    shape, fov = (16, 16, 16), (0.2,) * 3
    k = _random_k(rng, shape, fov, 4000)
    for eps in (1e-4, 1e-6):
        op = NUFFT(k, shape, fov, eps=eps, dtype=np.complex128, upsampfac=upsampfac)
        x = _cplx(rng, shape)
        idx = rng.choice(len(k), 25, replace=False)
        ref = nudft_forward_at(x, k, fov, idx)
        assert np.linalg.norm(op.forward(x)[idx] - ref) / np.linalg.norm(ref) <= 10 * eps


def test_upsampling_rule_follows_the_measurements():
    """The measured cases of benchmarks/README.md ("NUFFT upsampling"): 4.85 M samples."""
    from recon.nufft.finufft_backend import choose_upsampfac

    m = 3920 * 1238
    assert choose_upsampfac(m, (64,) * 3, 1e-4) == 2.0  # dense, fine grid 128^3: 2.0 fastest
    assert choose_upsampfac(m, (128,) * 3, 1e-4) == 1.25  # 2.3 per voxel, fine grid 256^3: 1.25 (2.0 was 2.4-2.8x slower)
    assert choose_upsampfac(m, (128,) * 3, 1e-6) == 1.25
    assert choose_upsampfac(m, (64,) * 3, 1e-6) == 1.25  # the wide 2.0 kernel at 1e-6 loses
    assert choose_upsampfac(1000, (64,) * 3, 1e-4) is None  # very sparse: finufft's own choice


def test_subset_shares_the_points_and_matches_a_fresh_operator_and_the_exact_sum(rng):
    """NUFFT.subset (the time bins' plans): points cut from the parent's converted points are
    bit-identical to a fresh operator's over k[index], and its adjoint meets the exact sum."""
    shape, fov = (10, 12, 8), (0.2, 0.24, 0.16)
    k = _random_k(rng, shape, fov, 30 * 40).reshape(30, 40, 3)
    op = NUFFT(k, shape, fov, eps=1e-6)
    cols = slice(7, 23)
    sub = op.subset((slice(None), cols), eps=1e-5)
    fresh = NUFFT(k[:, cols], shape, fov, eps=1e-5)
    assert sub.kshape == (30, 16) and sub.eps == 1e-5 and op.eps == 1e-6
    for a, b in zip(sub.points(), fresh.points()):
        assert np.array_equal(a, b)
    y = _cplx(rng, (30, 16))
    vox = np.stack([rng.integers(0, n, 20) for n in shape], axis=-1)
    ref = nudft_adjoint_at(y, k[:, cols], shape, fov, vox)
    got = sub.adjoint(y.astype(np.complex64))[tuple(vox.T)]
    assert np.linalg.norm(got - ref) <= 1e-4 * np.linalg.norm(ref)
    assert op.adjoint(_cplx(rng, (30, 40))).shape == shape  # the parent is unchanged
