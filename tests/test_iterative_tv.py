"""Total variation in the iterative reconstruction: ADMM against an independent minimiser, a weight
that does not depend on the data's units, and the per-regulariser default weight."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from recon.iterative import _diff, _diff_adjoint, reconstruct_iterative, tv_scale
from recon.nufft import NUFFT
from recon.options import DEFAULT_ITER_LAMDA, DEFAULT_TV_LAMDA, RunOptions, default_lamda
from tests.test_iterative import _dense, _problem

TES = (0.3e-3, 2.32e-3)


def _blocky(rng, n=6, m=1800, noise=0.05):
    """Two echoes of a piecewise-constant object (a cube with a brighter core) and their dense matrices."""
    shape, fov, k, t, w = _problem(rng, n=n, m=m)
    x = np.zeros(shape, complex)
    x[1:5, 1:5, 1:5] = 1.0
    x[2:4, 2:4, 2:4] = 2.0
    dv = (fov / n) ** 3
    blocks, ys = [], []
    for te in TES:
        e = dv * _dense(k, shape, fov, te + t, np.zeros(shape))
        y = e @ x.ravel()
        blocks.append(e)
        ys.append(y + noise * np.abs(y).max() * rng.standard_normal(len(k)))
    return shape, fov, k, t, w, dv, np.vstack(blocks), np.stack(ys)


def test_diff_adjoint_is_the_adjoint(rng):
    v = rng.standard_normal((5, 6, 7)) + 1j * rng.standard_normal((5, 6, 7))
    g = rng.standard_normal((3, 5, 6, 7)) + 1j * rng.standard_normal((3, 5, 6, 7))
    assert np.vdot(g, _diff(v, np)) == pytest.approx(np.vdot(_diff_adjoint(g, np), v), rel=1e-12)


def test_tv_matches_an_independent_minimiser(rng):
    """ADMM's x minimises sum_e ||A'_e x - y'_e||^2 + lamda s ||D x||_1: the same x (and objective)
    as L-BFGS on the dense matrices with a smoothed |.| (sqrt(|d|^2 + 1e-8), |x| ~ 1-2), a different method."""
    shape, fov, k, t, w, dv, e, ys = _blocky(rng)
    op = NUFFT(k, shape, fov, eps=1e-10, dtype=np.complex128)
    res = reconstruct_iterative(
        op, ys, w, TES, t, None, regulariser="tv", lamda=0.05, max_iter=100, tol=0, progress=False, objective=True
    )
    mu = res.settings["tv_weight"]
    assert mu == pytest.approx(0.05 * res.settings["tv_scale"]) and mu > 0
    s = np.sqrt(np.concatenate([w, w]) / dv)  # A' x = sqrt(W / dV) E x (E holds dV), y' = sqrt(W / dV) y
    ea, ya = s[:, None] * e, s * ys.ravel()
    n = int(np.prod(shape))

    def f(v):
        x = (v[:n] + 1j * v[n:]).reshape(shape)
        r = ea @ x.ravel() - ya
        d = _diff(x, np)
        m = np.sqrt(np.abs(d) ** 2 + 1e-8)
        g = (2 * (ea.conj().T @ r)).reshape(shape) + mu * _diff_adjoint(d / m, np)
        return float(np.vdot(r, r).real + mu * m.sum()), np.concatenate([g.real.ravel(), g.imag.ravel()])

    # started from the least-squares solution, not from ADMM's answer
    x_ls = np.linalg.lstsq(ea, ya, rcond=None)[0]
    o = minimize(
        f,
        np.concatenate([x_ls.real, x_ls.imag]),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-10},
    )
    x_ref = (o.x[:n] + 1j * o.x[n:]).reshape(shape)
    assert np.linalg.norm(res.x - x_ref) / np.linalg.norm(x_ref) < 2e-3
    assert res.objective[-1] <= o.fun * (1 + 1e-5)
    # TV changed the solution: it is not the least-squares one
    assert np.linalg.norm(res.x.ravel() - x_ls) / np.linalg.norm(x_ls) > 0.02
    # the ADMM primal residual is recorded per outer iteration and falls
    assert len(res.residual) == 100 and res.residual[-1] < res.residual[0]


def test_tv_weight_does_not_depend_on_the_data_units(rng):
    """Data x 1000 (another receiver gain): the scale, the weight and the solution x 1000."""
    shape, fov, k, t, w, dv, e, ys = _blocky(rng)
    op = NUFFT(k, shape, fov, eps=1e-10, dtype=np.complex128)
    kw = dict(regulariser="tv", lamda=0.05, max_iter=20, tol=0, progress=False)
    a = reconstruct_iterative(op, ys, w, TES, t, None, **kw)
    b = reconstruct_iterative(op, 1000 * ys, w, TES, t, None, **kw)
    assert b.settings["tv_scale"] == pytest.approx(1000 * a.settings["tv_scale"], rel=1e-9)
    assert np.linalg.norm(b.x - 1000 * a.x) / np.linalg.norm(b.x) < 1e-8
    # the scale is the 99.5th percentile of the warm start's magnitude
    assert tv_scale(np.arange(1001.0)) == pytest.approx(995.0)


def test_default_weight_per_regulariser(rng):
    shape, fov, k, t, w, dv, e, ys = _blocky(rng)
    op = NUFFT(k, shape, fov, eps=1e-8, dtype=np.complex128)
    tv = reconstruct_iterative(op, ys, w, TES, t, None, regulariser="tv", max_iter=2, progress=False)
    grad = reconstruct_iterative(op, ys, w, TES, t, None, regulariser="gradient", max_iter=2, progress=False)
    assert tv.settings["lamda"] == DEFAULT_TV_LAMDA == default_lamda("tv")
    assert grad.settings["lamda"] == DEFAULT_ITER_LAMDA == default_lamda("gradient")
    assert default_lamda("none") == 0.0 and RunOptions().iter_lamda is None
    with pytest.raises(Exception, match="lamda"):
        reconstruct_iterative(op, ys, w, TES, t, None, regulariser="tv", lamda=float("nan"), progress=False)
