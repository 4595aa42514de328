"""The operator contract (recon.linop): adjoint identities, the one shape check, SigPy views, and the
Toeplitz normal operator against A^H W A applied explicitly (dense matrix and NUFFTs)."""

from __future__ import annotations

import numpy as np
import pytest

from recon.b0 import TimeSegmentedOperator
from recon.b0.toeplitz import ToeplitzNormal
from recon.errors import InputError
from recon.iterative import _Scaled
from recon.linop import LinearOperator, check_shape
from recon.nufft import NUFFT
from recon.nufft.nudft import grid_positions, nudft_matrix

N, FOV = 8, 0.12
SHAPE = (N, N, N)


def _rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(5)
    kmax = N / (2 * FOV)
    n_proj, n_samp = 30, 20
    k = rng.uniform(-kmax, kmax, (n_proj, n_samp, 3))
    t = np.arange(n_samp) * 0.6e-3  # 12 ms
    x, y, _ = np.meshgrid(*grid_positions(SHAPE, FOV), indexing="ij")
    df = 50 * x / FOV + 30 * np.cos(2 * np.pi * y / FOV)
    r2 = np.full(SHAPE, 40.0)
    w = rng.uniform(0.5, 1.5, (n_proj, n_samp))
    op = NUFFT(k, SHAPE, FOV, dtype=np.complex128, eps=1e-12, n_threads=1)
    return dict(k=k, t=t, df=df, r2=r2, w=w, op=op, rng=rng)


def _operators(s):
    tso = TimeSegmentedOperator(s["op"], s["t"], s["df"], te_s=2e-3, r2star_hz=s["r2"], n_segments=4)
    scaled = _Scaled(tso, np.sqrt(s["w"]).astype(np.complex128))
    return {"nufft": s["op"], "time-segmented": tso, "scaled": scaled}


@pytest.mark.parametrize("name", ["nufft", "time-segmented", "scaled"])
def test_adjoint_identity_through_the_contract(small, name):
    a = _operators(small)[name]
    assert isinstance(a, LinearOperator)
    rng = small["rng"]
    x = rng.standard_normal((2,) + a.ishape) + 1j * rng.standard_normal((2,) + a.ishape)  # a batch of 2
    y = rng.standard_normal((2,) + a.oshape) + 1j * rng.standard_normal((2,) + a.oshape)
    ax, ahy = a.forward(x), a.adjoint(y)
    assert ax.shape == (2,) + a.oshape and ahy.shape == (2,) + a.ishape
    lhs, rhs = np.vdot(y, ax), np.vdot(ahy, x)
    assert abs(lhs - rhs) <= 1e-9 * abs(lhs)
    np.testing.assert_allclose(a.normal(x), a.adjoint(a.forward(x)), rtol=1e-12, atol=0)
    # the SigPy view is the same operator
    sp = pytest.importorskip("sigpy")
    lin = a.sigpy()
    assert isinstance(lin, sp.linop.Linop)
    np.testing.assert_allclose(lin(x[0]), ax[0], rtol=1e-12, atol=0)
    np.testing.assert_allclose(lin.H(y[0]), ahy[0], rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["nufft", "time-segmented", "scaled"])
def test_shape_errors_raise_the_projects_error(small, name):
    a = _operators(small)[name]
    with pytest.raises(InputError, match="image must have shape"):
        a.forward(np.zeros((N, N, N - 1), complex))
    with pytest.raises(InputError, match="data must have shape"):
        a.adjoint(np.zeros((3, 3), complex))
    with pytest.raises(InputError, match="image must have shape"):
        a.normal(np.zeros((4,), complex))


def test_check_shape_returns_the_batch_shape():
    assert check_shape(np.zeros((2, 3, 4, 5)), (4, 5), "x") == (2, 3)
    assert check_shape(np.zeros((4, 5)), (4, 5), "x") == ()
    with pytest.raises(InputError, match="x must have shape"):
        check_shape(np.zeros(5), (4, 5), "x")


def test_toeplitz_normal_equals_the_dense_normal_matrix(small):
    """sum_e A_e^H W A_e by Toeplitz embedding == the dense encoding matrix's E^H W E (exact truth)."""
    s = small
    te = (0.3e-3, 2.3e-3)
    k, t, df, r2, w = s["k"], s["t"], s["df"], s["r2"], s["w"]
    ops = [TimeSegmentedOperator(s["op"], t, df, te_s=tt, r2star_hz=r2, n_segments=5) for tt in te]
    tn = ToeplitzNormal(s["op"], [(a._b, w, a._e) for a in ops])  # per-echo full weights
    e0 = nudft_matrix(k, SHAPE, FOV)
    x = s["rng"].standard_normal(SHAPE) + 1j * s["rng"].standard_normal(SHAPE)
    # the same segmented model as a dense matrix: E_e = sum_l diag(b_l) E0 diag(e_l)
    ref = 0
    for a in ops:
        b = np.broadcast_to(a._b, (a.n_segments,) + a.oshape).reshape(a.n_segments, -1)
        ee = a._e.reshape(a.n_segments, -1)
        m = sum(b[i][:, None] * e0 * ee[i][None, :] for i in range(a.n_segments))
        ref = ref + m.conj().T @ (w.ravel() * (m @ x.ravel()))
    got = tn.normal(x)
    assert _rel(got, ref.reshape(SHAPE)) < 1e-9
    # Hermitian and positive: <x, N x> real > 0
    q = np.vdot(x, got)
    assert abs(q.imag) < 1e-9 * abs(q.real) and q.real > 0


def test_toeplitz_normal_matches_the_nufft_normal_at_default_accuracy():
    """Toeplitz vs A^H W A through NUFFTs, complex64 at the default eps on a TPI case (16^3)."""
    from recon.trajectory import compute_dcf, tpi

    n, fov = 16, 0.224
    tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=0.020, p=0.3, dwell_s=40e-6)
    w = compute_dcf(tr, "analytic")
    op = NUFFT(tr.k, (n,) * 3, fov)  # complex64, eps 1e-6 (the defaults)
    ax = np.linspace(-1, 1, n)
    df = 60.0 * (0.6 * ax[:, None, None] + 0.4 * ax[None, :, None] ** 2) * np.ones((n,) * 3)
    dv = (fov / n) ** 3
    ops = [TimeSegmentedOperator(op, tr.t, df, te_s=te) for te in (0.3e-3, 2.32e-3)]
    assert min(a.n_segments for a in ops) > 1
    scale = np.sqrt(w * dv)
    tn = ToeplitzNormal(op, [a.toeplitz_term() for a in ops], base_weights=scale**2)
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((n,) * 3) + 1j * rng.standard_normal((n,) * 3)).astype(np.complex64)
    explicit = sum(_Scaled(a, scale.astype(np.complex64)).normal(x) for a in ops)
    assert _rel(tn.normal(x), explicit) <= 1e-3
    # kernels are shared: both echoes have the same coefficients and weights without R2*; the
    # low-rank form spends fewer adjoint NUFFTs than there are segment pairs
    n_pairs = ops[0].n_segments * (ops[0].n_segments + 1) // 2
    # the L kernels of the pairs l = l' are real (float32), the L (L - 1) / 2 others complex64
    n_seg = ops[0].n_segments
    assert tn.kernel_bytes == (n_seg * 4 + (n_pairs - n_seg) * 8) * (2 * n) ** 3
    assert tn.n_psf < n_pairs


def test_toeplitz_low_rank_kernels_with_r2star_and_decay_match_the_explicit_normal(small):
    """Per-echo R2* (coefficients differ per echo) and a per-time decay factor: the SVD-combined
    kernels give the same normal operator as the NUFFTs applied explicitly."""
    s = small
    w = s["w"]
    ops, terms, scaled = [], [], []
    for te in (0.3e-3, 2.3e-3):
        a = TimeSegmentedOperator(s["op"], s["t"], s["df"], te_s=te, r2star_hz=s["r2"], n_segments=4)
        d = np.exp(-(te + a.t_compact_s) / 20e-3)  # a decay per readout time
        ops.append(a)
        terms.append(a.toeplitz_term(d**2))
        scaled.append(_Scaled(a, np.sqrt(w) * d))
    tn = ToeplitzNormal(s["op"], terms, base_weights=w)
    x = s["rng"].standard_normal(SHAPE) + 1j * s["rng"].standard_normal(SHAPE)
    explicit = sum(op.normal(x) for op in scaled)
    assert _rel(tn.normal(x), explicit) < 1e-6
    assert tn.n_psf < 2 * 10  # fewer NUFFTs than the 2 x 10 segment pairs
