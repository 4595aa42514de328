"""Iterative reconstruction: SigPy wrapping, adjointness, and the dense weighted least-squares truth."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.iterative import TISSUE_BIEXP, make_linop, r2star_from_echoes, reconstruct_iterative, tissue_fraction_from_echoes
from recon.nufft import NUFFT
from recon.nufft.nudft import nudft_matrix

sp = pytest.importorskip("sigpy")


def _problem(rng, n=6, m=1500, fov=0.12):
    shape = (n, n, n)
    kn = n / (2 * fov)
    k = rng.uniform(-1, 1, (m, 3)) * kn
    # sample times: a "readout" ordering by |k| (centre-out), 0..8 ms
    t = np.linalg.norm(k, axis=-1) / (np.sqrt(3) * kn) * 8e-3
    w = rng.uniform(0.5, 1.5, m) * (2 * kn) ** 3 / m
    return shape, fov, k, t, w


def _dense(k, shape, fov, t_abs, f, r2=None, sample_decay=None, frac=None):
    from recon.physics import CSF, TISSUE

    e = nudft_matrix(k, shape, fov)
    z = (2j * np.pi * f + (0 if r2 is None else r2)).ravel()
    e = e * np.exp(-np.outer(t_abs, z))
    if frac is not None:  # two-pool: a tissue(t) + (1 - a) csf(t), the presets written out
        tis = sum(a * np.exp(-t_abs / t2) for a, t2 in zip(TISSUE.fractions, TISSUE.t2star_s))
        flu = sum(a * np.exp(-t_abs / t2) for a, t2 in zip(CSF.fractions, CSF.t2star_s))
        e = e * (np.outer(tis, frac.ravel()) + np.outer(flu, 1 - frac.ravel()))
    if sample_decay is not None:
        e = e * sample_decay[:, None]
    return e


def test_linop_wrapper_adjoint(rng):
    shape, fov, k, t, w = _problem(rng)
    op = NUFFT(k, shape, fov, eps=1e-10, dtype=np.complex128)
    L = make_linop(op, shape, op.kshape)
    x = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    y = rng.standard_normal(op.kshape) + 1j * rng.standard_normal(op.kshape)
    assert np.vdot(y, L(x)) == pytest.approx(np.vdot(L.H(y), x), rel=1e-9)
    with pytest.raises((ValueError, RuntimeError)):  # SigPy checks the shape
        L(np.zeros((5, 5, 5), complex))


@pytest.mark.parametrize(
    "decay, normal",
    [("none", "toeplitz"), ("r2star-map", "toeplitz"), ("tissue", "toeplitz"), ("r2star-map", "nufft"), ("two-pool", "toeplitz")],
)
def test_matches_dense_weighted_least_squares(rng, decay, normal):
    """Joint two-echo LS solution equals the dense-matrix solution (B0 + decay in the model)."""
    shape, fov, k, t, w = _problem(rng)
    op = NUFFT(k, shape, fov, eps=1e-7, dtype=np.complex128)
    f = rng.uniform(-40, 40, shape)
    r2 = rng.uniform(20, 80, shape) if decay == "r2star-map" else None
    frac = rng.uniform(0, 1, shape) if decay == "two-pool" else None
    tes = (0.3e-3, 2.32e-3)
    dv = (fov / shape[0]) ** 3
    x_true = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    blocks, ys = [], []
    for te in tes:
        sd = sum(a * np.exp(-(te + t) / t2) for a, t2 in TISSUE_BIEXP) if decay == "tissue" else None
        e = dv * _dense(k, shape, fov, te + t, f, r2, sd, frac)
        blocks.append(e)
        ys.append(e @ x_true.ravel() + 1e-3 * np.abs(e @ x_true.ravel()).max() * rng.standard_normal(len(k)))
    sw = np.sqrt(np.concatenate([w, w]))
    e_all, y_all = np.vstack(blocks), np.concatenate(ys)
    x_ls = np.linalg.lstsq(sw[:, None] * e_all, sw * y_all, rcond=None)[0]
    res = reconstruct_iterative(
        op,
        np.stack(ys),
        w,
        tes,
        t,
        f,
        decay=decay,
        r2star_hz=r2,
        tissue_fraction=frac,
        regulariser="none",
        max_iter=60,
        tol=1e-10,
        n_segments=16,
        normal=normal,
        objective=True,
    )
    assert res.settings["normal"] == normal
    err = np.linalg.norm(res.x.ravel() - x_ls) / np.linalg.norm(x_ls)
    assert err < 5e-3
    # the objective decreases monotonically for CG on the normal equations' residual norm in the data term
    assert res.objective[-1] <= res.objective[0]


def test_warm_start_is_gridding(rng):
    from recon.nufft import gridding

    shape, fov, k, t, w = _problem(rng)
    op = NUFFT(k, shape, fov, eps=1e-10, dtype=np.complex128)
    y = rng.standard_normal((1, len(k))) + 0j
    seen = {}

    def cb(it, x, obj):
        seen.setdefault(it, obj)

    res = reconstruct_iterative(op, y, w, (0.0,), t, None, regulariser="none", max_iter=3, callback=cb)
    assert sorted(seen) == [1, 2, 3] and res.iterations == 3
    assert set(seen.values()) == {None} and res.objective == []  # no objective unless asked
    assert len(res.residual) == 3 and res.residual[-1] < 1
    # the model's normal-equation right-hand side equals the gridding image
    g = gridding(op, y[0], w)
    assert np.all(np.isfinite(g))


def test_r2star_from_echoes():
    x1 = np.full((8, 8, 8), 10.0)
    t2 = 20e-3
    x2 = x1 * np.exp(-(2.32e-3 - 0.3e-3) / t2)
    r2 = r2star_from_echoes(x1, x2, 0.3e-3, 2.32e-3, smooth_vox=0.5)
    assert np.allclose(r2, 1 / t2, rtol=1e-6)
    with pytest.raises(InputError):
        r2star_from_echoes(x1, x2, 2e-3, 1e-3)


def test_tissue_fraction_from_echoes_inverts_the_two_pool_decay():
    from recon.physics import two_pool_decay

    te1, te2 = 0.3e-3, 2.32e-3
    for a_true in (0.0, 0.35, 1.0):
        x1 = np.full((8, 8, 8), 10.0 * two_pool_decay(te1, a_true))
        x2 = np.full((8, 8, 8), 10.0 * two_pool_decay(te2, a_true))
        assert np.allclose(tissue_fraction_from_echoes(x1, x2, te1, te2, smooth_vox=0.5), a_true, atol=1e-9)
    # faster than tissue reads as tissue, slower than fluid as fluid (clipped), background as fluid
    x1 = np.full((16, 8, 8), 10.0)
    x1[:6] = 0.1
    a = tissue_fraction_from_echoes(x1, 0.3 * x1, te1, te2, smooth_vox=0.5)
    assert np.all(a[8:] == 1.0) and np.all(a[:3] == 0.0)
    assert np.all(tissue_fraction_from_echoes(x1[2:], x1[2:], te1, te2, smooth_vox=0.5) == 0.0)
    with pytest.raises(InputError):
        tissue_fraction_from_echoes(x1, x1, 2e-3, 1e-3)


def test_intravoxel_dephasing_is_divided_out_of_the_echo_ratio():
    """A linear field of 40 Hz per voxel along x: each echo loses sinc(40 Hz * TE) of its magnitude
    (the mean of exp(i 2 pi df t) over a voxel), which is not decay; given the map, the estimates see
    through it. Differences reaching outside the mask are not taken (no gradient at the cut-off)."""
    from recon.b0 import dephasing_factor
    from recon.physics import two_pool_decay

    te1, te2, g = 0.3e-3, 2.32e-3, 40.0
    shape = (16, 8, 8)
    f = g * np.arange(shape[0], dtype=float)[:, None, None] * np.ones(shape)
    inside = np.zeros(shape, bool)
    inside[2:14] = True
    d1, d2 = dephasing_factor(f, te1, inside), dephasing_factor(f, te2, inside)
    assert np.allclose(d2[3:13], np.sinc(g * te2)) and np.allclose(d2[[0, 1, 2, 13, 14, 15]], 1.0)
    assert dephasing_factor(f * 50, te2).min() == 0.5  # beyond half a cycle per voxel: the floor
    a_true = 0.4
    x1 = np.full(shape, 10.0 * two_pool_decay(te1, a_true)) * d1
    x2 = np.full(shape, 10.0 * two_pool_decay(te2, a_true)) * d2
    naive = tissue_fraction_from_echoes(x1, x2, te1, te2, smooth_vox=0.3)
    fixed = tissue_fraction_from_echoes(x1, x2, te1, te2, smooth_vox=0.3, fieldmap_hz=f, mask=inside)
    assert np.all(naive[5:11] > a_true + 0.02)  # the dephasing reads as faster decay
    assert np.allclose(fixed[5:11], a_true, atol=1e-3)
    t2 = 20e-3
    y2 = np.full(shape, 10.0 * np.exp(-(te2 - te1) / t2)) * d2 / d1
    r2 = r2star_from_echoes(np.full(shape, 10.0), y2, te1, te2, smooth_vox=0.3, fieldmap_hz=f, mask=inside)
    assert np.allclose(r2[5:11], 1 / t2, rtol=1e-3)


def test_bad_arguments(rng):
    shape, fov, k, t, w = _problem(rng)
    op = NUFFT(k, shape, fov)
    y = np.zeros((2, len(k)), complex)
    with pytest.raises(InputError):
        reconstruct_iterative(op, y, w, (1e-3,), t)  # 2 echoes of data, 1 TE
    with pytest.raises(InputError):
        reconstruct_iterative(op, y, w, (1e-3, 2e-3), t, regulariser="wavelet")
    y[0, 0] = np.nan
    with pytest.raises(InputError):
        reconstruct_iterative(op, y, w, (1e-3, 2e-3), t)


def test_same_code_on_the_cuda_kernel_backend(rng):
    """The iterative solver runs unchanged on the GPU backend's kernels (here compiled for the host)."""
    from recon.nufft.operator import available_backends

    if available_backends().get("cuda-host") is not None:
        pytest.skip(f"cuda-host backend unavailable: {available_backends()['cuda-host']}")
    shape, fov, k, t, w = _problem(rng)
    f = rng.uniform(-20, 20, shape)
    y = rng.standard_normal((2, len(k))) + 1j * rng.standard_normal((2, len(k)))
    kw = dict(regulariser="tikhonov", lamda=0.01, max_iter=8, tol=0, n_segments=6)
    ref = reconstruct_iterative(NUFFT(k, shape, fov, eps=1e-6, dtype=np.complex128), y, w, (3e-4, 2.3e-3), t, f, **kw)
    got = reconstruct_iterative(
        NUFFT(k, shape, fov, backend="cuda-host", eps=1e-6, dtype=np.complex128), y, w, (3e-4, 2.3e-3), t, f, **kw
    )
    assert np.linalg.norm(got.x - ref.x) / np.linalg.norm(ref.x) < 1e-4


def test_given_gridding_images_replace_the_internal_gridding(rng):
    """The pipeline hands its gridding images over (R2* estimate and warm start): same result."""
    from recon.nufft import gridding

    shape, fov, k, t, w = _problem(rng)
    op = NUFFT(k, shape, fov, eps=1e-10, dtype=np.complex128)
    f = rng.uniform(-20, 20, shape)
    y = rng.standard_normal((2, len(k))) + 1j * rng.standard_normal((2, len(k)))
    kw = dict(decay="r2star-map", regulariser="gradient", lamda=0.1, max_iter=4, tol=0, n_segments=5)
    a = reconstruct_iterative(op, y, w, (3e-4, 2.3e-3), t, f, **kw)
    b = reconstruct_iterative(op, y, w, (3e-4, 2.3e-3), t, f, gridded=gridding(op, y, w), **kw)
    np.testing.assert_allclose(b.x, a.x, rtol=1e-9, atol=1e-9 * np.abs(a.x).max())
    np.testing.assert_allclose(b.r2star_hz, a.r2star_hz, rtol=1e-9, atol=1e-9)
