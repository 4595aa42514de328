"""Time-segmented B0/R2* operator against an explicit dense encoding matrix at 16^3."""

from __future__ import annotations

import numpy as np
import pytest

from recon.b0 import TimeSegmentedOperator
from recon.errors import InputError
from recon.nufft import NUFFT
from recon.nufft.nudft import grid_positions, nudft_matrix

N, FOV = 16, 0.224
SHAPE = (N, N, N)
TE = 2.32e-3


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(7)
    kmax = N / (2 * FOV)
    n_proj, n_samp = 80, 50
    k = rng.uniform(-kmax, kmax, (n_proj, n_samp, 3))
    t = np.arange(n_samp) * 0.5e-3  # 25 ms readout
    x, y, z = np.meshgrid(*grid_positions(SHAPE, FOV), indexing="ij")
    df = 40 * np.cos(2 * np.pi * x / FOV) + 60 * y / FOV + 10  # about -30..+80 Hz
    r2 = 30.0 + 20.0 * (z > 0)  # 1/s
    tt = (TE + np.broadcast_to(t, (n_proj, n_samp))).reshape(-1)
    rates = (r2 + 2j * np.pi * df).ravel()
    # the explicit model of DESIGN.md: E[m, j] = exp(-i 2pi k_m.r_j) exp(-(R2*_j + i 2pi df_j)(TE + t_m))
    e_full = nudft_matrix(k, SHAPE, FOV) * np.exp(-np.outer(tt, rates))
    op = NUFFT(k, SHAPE, FOV, dtype=np.complex128, eps=1e-10, n_threads=1)
    return dict(k=k, t=t, df=df, r2=r2, e=e_full, op=op, rng=rng)


def _rel(a, b):
    return np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b))


@pytest.mark.parametrize("n_segments, tol", [(None, 5e-3), (16, 1e-6)])
def test_forward_adjoint_match_dense_matrix(problem, n_segments, tol):
    p = problem
    a = TimeSegmentedOperator(p["op"], p["t"], p["df"], te_s=TE, r2star_hz=p["r2"], n_segments=n_segments)
    x = p["rng"].standard_normal(SHAPE) + 1j * p["rng"].standard_normal(SHAPE)
    y = p["rng"].standard_normal(p["op"].kshape) + 1j * p["rng"].standard_normal(p["op"].kshape)
    assert _rel(a.forward(x), p["e"] @ x.ravel()) < tol
    assert _rel(a.adjoint(y), p["e"].conj().T @ y.ravel()) < tol


def test_default_segment_count_is_modest(problem):
    p = problem
    a = TimeSegmentedOperator(p["op"], p["t"], p["df"], te_s=TE, r2star_hz=p["r2"])
    assert 3 <= a.n_segments <= 12


def test_adjoint_identity_and_batch(problem):
    p = problem
    a = TimeSegmentedOperator(p["op"], p["t"], p["df"], te_s=TE, r2star_hz=p["r2"], n_segments=6)
    rng = p["rng"]
    x = rng.standard_normal((2,) + SHAPE) + 1j * rng.standard_normal((2,) + SHAPE)
    y = rng.standard_normal((2,) + p["op"].kshape) + 1j * rng.standard_normal((2,) + p["op"].kshape)
    ax, ahy = a.forward(x), a.adjoint(y)
    assert ax.shape == y.shape and ahy.shape == x.shape
    lhs, rhs = np.vdot(y, ax), np.vdot(ahy, x)
    assert abs(lhs - rhs) / abs(lhs) < 1e-12
    # a batch (e.g. coils) equals item-by-item transforms
    assert _rel(ax[1], a.forward(x[1])) < 1e-12
    assert _rel(ahy[0], a.adjoint(y[0])) < 1e-12


def test_no_field_reduces_to_nufft(problem):
    p = problem
    a = TimeSegmentedOperator(p["op"], p["t"], np.zeros(SHAPE), te_s=0.0)
    x = p["rng"].standard_normal(SHAPE) + 0j
    assert _rel(a.forward(x), p["op"].forward(x)) < 1e-9


def test_shapes_are_checked(problem):
    p = problem
    with pytest.raises(InputError, match="field map shape"):
        TimeSegmentedOperator(p["op"], p["t"], np.zeros((8, 8, 8)))
    with pytest.raises(InputError, match="sample times"):
        TimeSegmentedOperator(p["op"], p["t"][:10], p["df"])
    a = TimeSegmentedOperator(p["op"], p["t"], p["df"], n_segments=3)
    with pytest.raises(InputError, match="image must have shape"):
        a.forward(np.zeros((8, 8, 8), complex))
    with pytest.raises(InputError, match="data must have shape"):
        a.adjoint(np.zeros((3, 3), complex))
    with pytest.raises(InputError, match="R2"):
        TimeSegmentedOperator(p["op"], p["t"], p["df"], r2star_hz=-1.0)


@pytest.mark.parametrize("n_segments, tol", [(None, 5e-3), (24, 1e-5)])
def test_two_pool_decay_matches_dense_matrix(problem, n_segments, tol):
    """Each voxel decays as a tissue(t) + (1 - a) csf(t) (recon.physics.two_pool_decay, written out
    here from the presets' fractions and T2*): the operator against the explicit matrix of that model."""
    from recon.physics import CSF, TISSUE

    p = problem
    x_, y_, z_ = np.meshgrid(*grid_positions(SHAPE, FOV), indexing="ij")
    a_map = np.clip(0.5 + x_ / FOV + 0.3 * np.sin(2 * np.pi * z_ / FOV), 0.0, 1.0)  # 0..1, both ends present
    tt = (TE + np.broadcast_to(p["t"], p["op"].kshape)).reshape(-1)
    tissue = sum(f * np.exp(-tt / t2) for f, t2 in zip(TISSUE.fractions, TISSUE.t2star_s))
    fluid = sum(f * np.exp(-tt / t2) for f, t2 in zip(CSF.fractions, CSF.t2star_s))
    decay = tissue[:, None] * a_map.ravel()[None] + fluid[:, None] * (1 - a_map.ravel())[None]
    e_full = nudft_matrix(p["k"], SHAPE, FOV) * decay * np.exp(-2j * np.pi * np.outer(tt, p["df"].ravel()))
    a = TimeSegmentedOperator(p["op"], p["t"], p["df"], te_s=TE, tissue_fraction=a_map, n_segments=n_segments)
    x = p["rng"].standard_normal(SHAPE) + 1j * p["rng"].standard_normal(SHAPE)
    y = p["rng"].standard_normal(p["op"].kshape) + 1j * p["rng"].standard_normal(p["op"].kshape)
    assert _rel(a.forward(x), e_full @ x.ravel()) < tol
    assert _rel(a.adjoint(y), e_full.conj().T @ y.ravel()) < tol


def test_two_pool_and_r2star_are_exclusive_and_checked(problem):
    p = problem
    with pytest.raises(InputError, match="not both"):
        TimeSegmentedOperator(p["op"], p["t"], p["df"], r2star_hz=p["r2"], tissue_fraction=0.5)
    with pytest.raises(InputError, match="within"):
        TimeSegmentedOperator(p["op"], p["t"], p["df"], tissue_fraction=1.5)
