"""Off-resonance corrections against the exact conjugate phase (dense, 16^3) and analytic spheres."""

from __future__ import annotations

import numpy as np
import pytest

from recon.b0 import CORRECTIONS, correct, mfi_coefficients, n_frequency_segments, n_time_bins
from recon.errors import InputError
from recon.nufft import NUFFT, gridding
from recon.nufft.nudft import grid_positions, nudft_matrix
from recon.trajectory import compute_dcf, tpi

TE = np.array([0.30e-3, 2.32e-3])


def _rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


# ------------------------------------------------------------------ exact conjugate phase, 16^3
@pytest.fixture(scope="module")
def dense():
    rng = np.random.default_rng(3)
    n, fov = 16, 0.224
    shape = (n,) * 3
    kmax = n / (2 * fov)
    n_proj, n_samp = 60, 40
    k = rng.uniform(-kmax, kmax, (n_proj, n_samp, 3))
    t = np.arange(n_samp) * 0.6e-3  # 24 ms
    x, y, _ = np.meshgrid(*grid_positions(shape, fov), indexing="ij")
    df = 50 * np.sin(2 * np.pi * x / fov) + 40 * y / fov  # about -70..+70 Hz
    w = rng.uniform(0.5, 1.5, (n_proj, n_samp))
    data = rng.standard_normal((2, n_proj, n_samp)) + 1j * rng.standard_normal((2, n_proj, n_samp))
    e = nudft_matrix(k, shape, fov)  # (M, N)
    truth = []
    for i in range(2):
        tt = (TE[i] + np.broadcast_to(t, (n_proj, n_samp))).reshape(-1)
        # x_j = sum_m w_m y_m exp(+i 2pi k_m.r_j) exp(+i 2pi df_j (TE + t_m))
        cp = e.conj().T * np.exp(2j * np.pi * np.outer(df.ravel(), tt))
        truth.append((cp @ (w * data[i]).ravel()).reshape(shape))
    op = NUFFT(k, shape, fov, dtype=np.complex128, eps=1e-10, n_threads=1)
    return dict(op=op, t=t, df=df, w=w, data=data, truth=np.stack(truth), n_samp=n_samp)


def test_tb_cpr_with_one_time_per_bin_is_exact(dense):
    d = dense
    x = correct("tb-cpr", d["op"], d["data"], d["w"], TE, d["t"], d["df"], n_segments=d["n_samp"], bin_eps=None)
    assert _rel(x, d["truth"]) < 1e-8


@pytest.mark.parametrize("method, tol", [("tb-cpr", 0.1), ("mfi", 0.01), ("fs-cpr", 0.15)])
def test_methods_at_default_rule_approach_exact_conjugate_phase(dense, method, tol):
    d = dense
    x = correct(method, d["op"], d["data"], d["w"], TE, d["t"], d["df"])
    assert x.shape == d["truth"].shape
    for e in range(2):
        assert _rel(x[e], d["truth"][e]) < tol


def test_more_segments_reduce_the_error(dense):
    d = dense
    errs = [_rel(correct("tb-cpr", d["op"], d["data"], d["w"], TE, d["t"], d["df"], n_segments=L), d["truth"]) for L in (4, 8, 16)]
    assert errs[0] > errs[1] > errs[2]


def test_no_field_equals_plain_gridding(dense):
    d = dense
    plain = gridding(d["op"], d["data"], d["w"])
    for m in ("tb-cpr", "fs-cpr", "mfi"):
        opts = {"bin_eps": None} if m == "tb-cpr" else {}
        x = correct(m, d["op"], d["data"], d["w"], TE, d["t"], np.zeros(d["op"].shape), **opts)
        assert _rel(x, plain) < 1e-8, m


def test_rules_and_mfi_coefficients():
    # pi * 50 Hz * 30 ms / 0.2 rad = 23.6 -> 24 bins; span 100 Hz, t_end 32 ms, x2 -> 6.4 -> 7 + 1
    assert n_time_bins(50.0, 0.030, 0.2) == 24
    assert n_time_bins(0.0, 0.030) == 1
    assert n_frequency_segments(100.0, 0.032, 2.0) == 8
    assert n_frequency_segments(0.0, 0.032, 2.0) == 1
    t = np.linspace(0.3e-3, 25e-3, 200)
    f = np.linspace(-40.0, 40.0, 5)  # the MFI rule's spacing for this window: 1 / (2 t_end) = 20 Hz
    c = mfi_coefficients(f, t, np.array([0.0, 13.0]))
    np.testing.assert_allclose(c[0], [0, 0, 1, 0, 0], atol=1e-8)  # a segment frequency maps onto itself
    fit = np.exp(2j * np.pi * np.outer(t, f)) @ c[1]
    assert np.abs(fit - np.exp(2j * np.pi * 13.0 * t)).max() < 0.02


def test_bad_arguments(dense):
    d = dense
    with pytest.raises(InputError, match="unknown B0 correction"):
        correct("nope", d["op"], d["data"], d["w"], TE, d["t"], d["df"])
    with pytest.raises(InputError, match="echo times"):
        correct("tb-cpr", d["op"], d["data"], d["w"], TE[:1], d["t"], d["df"])
    with pytest.raises(InputError, match="field map shape"):
        correct("tb-cpr", d["op"], d["data"], d["w"], TE, d["t"], np.zeros((4, 4, 4)))
    with pytest.raises(InputError, match="data must have shape"):
        correct("tb-cpr", d["op"], d["data"][..., :5], d["w"], TE, d["t"], d["df"])
    assert {"none", "tb-cpr", "fs-cpr", "mfi"} <= set(CORRECTIONS)


# ------------------------------------------------------------- analytic spheres, TPI 25 ms, 32^3
def _ball_ft(k, radius, centre):
    """Exact Fourier transform of a unit ball: int_ball exp(-i 2pi k.r) d^3r."""
    kr = np.sqrt((k**2).sum(-1))
    a = 2 * np.pi * kr * radius
    with np.errstate(invalid="ignore", divide="ignore"):
        v = (np.sin(a) - a * np.cos(a)) / (2 * np.pi**2 * kr**3)
    v = np.where(kr < 1e-9, 4 * np.pi * radius**3 / 3, v)
    return v * np.exp(-2j * np.pi * (k @ np.asarray(centre)))


SPHERES = [  # radius m, centre m, value, off-resonance Hz
    (0.025, (0.05, 0.05, 0.0), 1.0, 0.0),
    (0.025, (0.05, -0.05, 0.0), 2.0, 40.0),
    (0.025, (-0.05, 0.05, 0.0), 1.5, -35.0),
    (0.025, (-0.05, -0.05, 0.0), 1.0, 25.0),
]


@pytest.fixture(scope="module")
def spheres():
    n, fov = 32, 0.224
    tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=0.025, p=0.3, dwell_s=40e-6)
    dcf = compute_dcf(tr, "analytic")
    k = tr.k
    y = np.zeros((2,) + k.shape[:2], complex)
    y0 = np.zeros_like(y)
    for radius, c, v, f in SPHERES:
        ft = v * _ball_ft(k, radius, c)
        for e in range(2):
            y[e] += ft * np.exp(-2j * np.pi * f * (TE[e] + tr.t))  # DESIGN.md sign
            y0[e] += ft
    pos = np.stack(np.meshgrid(*grid_positions((n,) * 3, fov), indexing="ij"), -1)
    fmap = np.zeros((n,) * 3)
    for radius, c, _, f in SPHERES:  # true field, carried 2.5 voxels past each sphere
        fmap[np.sqrt(((pos - np.asarray(c)) ** 2).sum(-1)) <= radius + 2.5 * fov / n] = f
    op = NUFFT(k, (n,) * 3, fov)
    ref = gridding(op, y0, dcf)
    return dict(op=op, y=y, dcf=dcf, t=tr.t, fmap=fmap, ref=ref)


def test_sign_convention_phase_of_echo_images(spheres):
    s = spheres
    plain = gridding(s["op"], s["y"], s["dcf"])
    # centre voxel of the +40 Hz sphere: phase difference of the echoes is -2 pi df (TE2 - TE1)
    n = s["op"].shape[0]
    i = [int(round(c / (0.224 / n))) + n // 2 for c in SPHERES[1][1]]
    dphi = np.angle(plain[1][tuple(i)] * np.conj(plain[0][tuple(i)]))
    assert dphi == pytest.approx(-2 * np.pi * 40.0 * (TE[1] - TE[0]), abs=0.05)


@pytest.mark.parametrize("method", ["tb-cpr", "fs-cpr", "mfi"])
def test_correction_reduces_error_3x_on_spheres(spheres, method):
    s = spheres
    none = correct("none", s["op"], s["y"], s["dcf"], TE, s["t"], s["fmap"])
    x = correct(method, s["op"], s["y"], s["dcf"], TE, s["t"], s["fmap"])
    for e in range(2):
        before, after = _rel(none[e], s["ref"][e]), _rel(x[e], s["ref"][e])
        assert after < before / 3, (method, e, before, after)


# ------------------------------------------------- lean tb-cpr == the per-sample implementation
def _tb_cpr_per_sample(op, data, dcf, te_s, t_s, fieldmap_hz, n_bins, bin_eps=1e-4):
    """The tb-cpr of narecon 0.x, kept as the reference: samples gathered per bin by fancy
    indexing, demodulation per sample and echo, one NUFFT call per echo and bin."""
    t = np.broadcast_to(np.asarray(t_s, dtype=np.float64), op.kshape).ravel()
    lo, hi = float(fieldmap_hz.min()), float(fieldmap_hz.max())
    fc = 0.5 * (lo + hi)
    edges = np.linspace(t.min(), t.max(), n_bins + 1)
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
    k = np.asarray(op.k, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(dcf, dtype=np.float64).ravel()
    bins = []
    for b in range(n_bins):
        sel = np.nonzero(idx == b)[0]
        if sel.size:
            tau = 0.5 * float(t[sel].min() + t[sel].max())  # the bin's midpoint time
            bins.append((sel, tau, NUFFT(k[sel], op.shape, op.fov, eps=max(op.eps, bin_eps), dtype=op.dtype)))
    delta = fieldmap_hz - fc
    out = []
    for e in range(data.shape[0]):
        demod = w * np.exp(2j * np.pi * fc * (te_s[e] + t))
        y = data[e].reshape(-1, t.size) * demod
        acc = 0
        for sel, tau, nb in bins:
            acc = acc + nb.adjoint(np.ascontiguousarray(y[:, sel])) * np.exp(2j * np.pi * (te_s[e] + tau) * delta)
        out.append(acc.reshape(data.shape[1:-2] + op.shape))
    return np.stack(out)


@pytest.fixture(scope="module")
def tpi_case():
    n, fov = 16, 0.224
    tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=0.020, p=0.3, dwell_s=40e-6)
    dcf = compute_dcf(tr, "analytic")
    rng = np.random.default_rng(11)
    shp = (2, 3) + tr.k.shape[:2]  # 2 echoes x 3 coils
    y = (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)).astype(np.complex64)
    ax = np.linspace(-1, 1, n)
    fmap = 60.0 * (0.6 * ax[:, None, None] + 0.4 * ax[None, :, None] ** 2) * np.ones((n,) * 3)
    # a tight NUFFT (complex128, eps 1e-9) so that the comparison sees the maths, not NUFFT error
    op = NUFFT(tr.k, (n,) * 3, fov, eps=1e-9, dtype=np.complex128)
    return dict(op=op, y=y, dcf=dcf, t=tr.t, fmap=fmap, k=tr.k, fov=fov, n=n)


def test_lean_tb_cpr_matches_the_per_sample_implementation(tpi_case):
    c = tpi_case
    for n_bins in (1, 5, 9):
        x = correct("tb-cpr", c["op"], c["y"], c["dcf"], TE, c["t"], c["fmap"], n_segments=n_bins, bin_eps=None)
        ref = _tb_cpr_per_sample(c["op"], c["y"], c["dcf"], TE, c["t"], c["fmap"], n_bins, bin_eps=1e-9)
        assert x.shape == ref.shape == (2, 3) + c["op"].shape
        assert _rel(x, ref) < 1e-7, n_bins


def test_tb_cpr_with_per_sample_times_equals_per_readout_times(tpi_case):
    """Times given per sample (P = 1 layout, columns sorted by time) give the same images."""
    c = tpi_case
    t_full = np.ascontiguousarray(np.broadcast_to(c["t"], c["op"].kshape))
    a = correct("tb-cpr", c["op"], c["y"][:, :1], c["dcf"], TE, c["t"], c["fmap"], n_segments=6)
    b = correct("tb-cpr", c["op"], c["y"][:, :1], c["dcf"], TE, t_full, c["fmap"], n_segments=6)
    assert _rel(b, a) < 1e-7


def test_tb_cpr_bin_plans_come_from_the_plan_cache(tpi_case):
    from recon.plans import PlanCache, Plans

    c = tpi_case
    plans = Plans(PlanCache(max_entries=64))
    x1 = correct("tb-cpr", c["op"], c["y"], c["dcf"], TE, c["t"], c["fmap"], n_segments=7, plans=plans)
    assert plans.stats()["time-bins"] == {"hits": 0, "misses": 1}  # the 7 bin plans: one entry
    op2 = NUFFT(np.array(c["k"]), c["op"].shape, c["fov"], eps=1e-9, dtype=np.complex128)  # next scan: new arrays
    x2 = correct("tb-cpr", op2, c["y"], c["dcf"], TE, c["t"], c["fmap"], n_segments=7, plans=plans)
    assert plans.stats()["time-bins"] == {"hits": 1, "misses": 1}  # no new plan built
    assert "nufft" not in plans.stats()
    np.testing.assert_array_equal(x1, x2)
