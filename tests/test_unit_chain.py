"""The unit chain of DESIGN.md: a uniform sphere of value c reconstructs to c with each DCF."""

from __future__ import annotations

import numpy as np
import pytest

from recon.nufft import NUFFT, gridding
from recon.trajectory import compute_dcf, density_adapted_radial, tpi


def sphere_ft(k: np.ndarray, radius_m: float, value: float) -> np.ndarray:
    """Analytic Fourier transform (value * m^3) of a uniform sphere at the origin."""
    kr = np.linalg.norm(k, axis=-1)
    x = 2 * np.pi * kr * radius_m
    out = np.ones_like(x)
    m = x > 1e-8
    out[m] = 3 * (np.sin(x[m]) - x[m] * np.cos(x[m])) / x[m] ** 3
    return value * 4 / 3 * np.pi * radius_m**3 * out


def central_mean(img, fov_m, radius_m):
    n = img.shape[0]
    r = (np.arange(n) - n // 2) * fov_m / n
    rr = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    return img[rr <= radius_m]


@pytest.fixture(scope="module")
def tpi64():
    return tpi(fov_m=0.224, res_m=0.0035, p=0.3, gmax_t_per_m=4e-3)


def test_analytic_weights_cover_the_sphere(tpi64):
    w = compute_dcf(tpi64, "analytic")
    kmax = 1 / 0.007
    assert w.sum() == pytest.approx(4 / 3 * np.pi * kmax**3, rel=2e-3)
    assert np.all(w[:, 0] == 0)
    # |k|^2 up to k0, constant beyond (TPI)
    kr = np.linalg.norm(tpi64.k, axis=-1)
    inner = (kr > 5) & (kr < 0.25 * kmax)
    ratio = w[inner] / kr[inner] ** 2
    assert ratio.std() / ratio.mean() < 0.05
    outer = (kr > 0.4 * kmax) & (kr < 0.95 * kmax)
    assert w[outer].std() / w[outer].mean() < 0.05


@pytest.mark.parametrize("value", [1.0, 140.0])
def test_unit_chain_tpi_analytic(tpi64, value):
    w = compute_dcf(tpi64, "analytic")
    y = sphere_ft(tpi64.k, 0.06, value)
    op = NUFFT(tpi64.k, tpi64.matrix, tpi64.fov_m, eps=1e-4)
    img = gridding(op, y.astype(np.complex64), w)
    c = central_mean(img.real, 0.224, 0.035)
    assert c.mean() == pytest.approx(value, rel=0.02)
    assert np.abs(img.imag).max() < 0.01 * value
    # outside the sphere (beyond the ringing) the image is ~0
    n = 64
    r = (np.arange(n) - n // 2) * 0.224 / n
    rr = np.sqrt(r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2)
    assert np.abs(img.real[(rr > 0.08) & (rr < 0.1)]).mean() < 0.02 * value


def test_unit_chain_pipe_and_slew_limited():
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3, smax_t_per_m_per_s=100.0)
    op = NUFFT(tr.k, tr.matrix, tr.fov_m, eps=1e-4)
    y = sphere_ft(tr.k, 0.06, 2.0).astype(np.complex64)
    for method in ("analytic", "pipe"):
        w = compute_dcf(tr, method)
        img = gridding(op, y, w)
        c = central_mean(img.real, 0.224, 0.03)
        assert c.mean() == pytest.approx(2.0, rel=0.02), method


def test_unit_chain_radial():
    tr = density_adapted_radial(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    op = NUFFT(tr.k, tr.matrix, tr.fov_m, eps=1e-4)
    img = gridding(op, sphere_ft(tr.k, 0.06, 3.0).astype(np.complex64), compute_dcf(tr, "analytic"))
    assert central_mean(img.real, 0.224, 0.03).mean() == pytest.approx(3.0, rel=0.02)


def test_pipe_agrees_with_analytic_in_the_interior():
    tr = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    wa = compute_dcf(tr, "analytic")
    wp = compute_dcf(tr, "pipe")
    kr = np.linalg.norm(tr.k, axis=-1)
    mid = (kr > 0.35 / 0.014) & (kr < 0.8 / 0.014)
    assert np.median(wp[mid] / wa[mid]) == pytest.approx(1.0, rel=0.1)
