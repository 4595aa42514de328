"""The default run's one gridding pass: time bins that give the plain gridding, the field map and tb-cpr.

Compared with the two-pass implementation it replaces (plain gridding, field map, then tb-cpr
demodulated at the map's centre with its own bins) on the sample scan, and with the exact
gridding / the bin rule on small TPI cases.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path

import numpy as np
import pytest

from recon.b0 import correct, first_time_bins, grid_time_bins, n_time_bins
from recon.b0.correction import TimeBinnedGridder, _time_columns
from recon.b0.segments import DEFAULT_TOL_RAD, FIRST_PASS_FIELD_HZ
from recon.errors import InputError
from recon.nufft import NUFFT, gridding
from recon.trajectory import compute_dcf, tpi

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "raw.dat"
TE = np.array([0.30e-3, 2.32e-3])


def _rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / np.linalg.norm(np.ravel(b)))


@pytest.fixture(scope="module")
def case():
    n, fov = 16, 0.224
    tr = tpi(fov_m=fov, res_m=fov / n, gmax_t_per_m=None, readout_s=0.020, p=0.3, dwell_s=40e-6)
    dcf = compute_dcf(tr, "analytic")
    rng = np.random.default_rng(5)
    shp = (2, 1) + tr.k.shape[:2]
    y = (rng.standard_normal(shp) + 1j * rng.standard_normal(shp)).astype(np.complex64)
    ax = np.linspace(-1, 1, n)
    fmap = 40.0 * (0.6 * ax[:, None, None] + 0.4 * ax[None, :, None] ** 2) * np.ones((n,) * 3)
    op = NUFFT(tr.k, (n,) * 3, fov, eps=1e-9, dtype=np.complex128)
    return dict(op=op, y=y, dcf=dcf, t=tr.t, fmap=fmap, tr=tr)


def test_plain_gridding_is_the_sum_of_the_bins(case):
    c = case
    ref = gridding(c["op"], c["y"], c["dcf"])
    for n_bins in (1, 4, 11):
        tb = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], n_bins, bin_eps=None)
        assert tb.n_bins == n_bins and tb.images.shape == (2, 1, n_bins) + c["op"].shape
        assert _rel(tb.plain(), ref) < 1e-8, n_bins
    demod = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], 4, centre_hz=10.0, bin_eps=None)
    with pytest.raises(InputError):
        demod.plain()  # demodulated bins do not sum to the plain image


def test_undemodulated_bins_give_the_conjugate_phase_of_the_registered_tb_cpr(case):
    """With one time per bin both are the exact conjugate phase: equal whatever the centre."""
    c = case
    n_col = np.asarray(c["t"]).size
    a = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], n_col, bin_eps=None).combine(TE, c["fmap"])
    b = correct("tb-cpr", c["op"], c["y"], c["dcf"], TE, c["t"], c["fmap"], n_segments=n_col, bin_eps=None)
    assert _rel(a, b) < 1e-8


@pytest.mark.parametrize("half_span_hz", [5.0, 40.0, 150.0])
def test_every_sample_is_within_the_rule_of_its_bin_time(case, half_span_hz):
    """The bin rule: 2 pi h |t - tau_b| <= tol for every sample at the rule's bin count."""
    c = case
    _, t_col = _time_columns(c["op"], c["t"])
    n_bins = n_time_bins(half_span_hz, float(t_col.max() - t_col.min()))
    gr = TimeBinnedGridder(c["op"], c["t"], n_bins, c["dcf"])
    worst = max(float(np.abs(t_col[cols] - tau).max()) for (cols, _), tau in zip(gr.bins, gr.tau_s))
    assert 2 * np.pi * half_span_hz * worst <= DEFAULT_TOL_RAD * (1 + 1e-9)


def test_first_bins_follow_the_rule_for_the_first_pass_bound(case):
    c = case
    _, t_col = _time_columns(c["op"], c["t"])
    want = n_time_bins(FIRST_PASS_FIELD_HZ, float(t_col.max() - t_col.min()))
    assert first_time_bins(c["op"], c["t"]) == want
    tb = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], want, bin_eps=None)
    assert tb.bins_needed(np.full(c["op"].shape, 0.9 * FIRST_PASS_FIELD_HZ)) <= want
    assert tb.bins_needed(np.full(c["op"].shape, 1.5 * FIRST_PASS_FIELD_HZ)) > want
    assert tb.bins_needed(-c["fmap"]) == tb.bins_needed(c["fmap"])  # |df|: no demodulation


def _stage_inputs(case, fmap_scale):
    from recon.options import RunOptions
    from recon.pipeline import FieldMap, KSpace, combine

    c = case
    ks = KSpace(data=c["y"], k=c["tr"].k, dcf=c["dcf"], t_s=c["t"], projections=np.arange(c["tr"].k.shape[0]))
    acq = types.SimpleNamespace(te_s=tuple(TE), n_echoes=2)
    plain = gridding(c["op"], c["y"], c["dcf"])
    fmap = FieldMap(fmap_scale * c["fmap"], {})
    return ks, acq, plain, combine(plain), fmap, RunOptions()


def test_correct_b0_uses_the_bins_or_regrids_when_the_field_needs_more(case, caplog):
    from recon.b0 import support_mask
    from recon.pipeline import correct_b0

    c = case
    tb = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], first_time_bins(c["op"], c["t"]), bin_eps=None)
    # within the first-pass bound (|df| <= 40 Hz < 60 Hz): the gridded bins are combined
    ks, acq, plain, cplain, fmap, opts = _stage_inputs(c, 1.0)
    img, method, _ = correct_b0(c["op"], ks, acq, plain, cplain, fmap, "tb-cpr", opts, bins=tb)
    assert method == "tb-cpr"
    np.testing.assert_allclose(img, tb.combine(TE, fmap.hz)[:, 0], rtol=0, atol=1e-12 * np.abs(img).max())
    # four times the field (160 Hz): more bins than gridded, so tb-cpr regrids with the rule
    ks, acq, plain, cplain, fmap, opts = _stage_inputs(c, 4.0)
    assert tb.bins_needed(fmap.hz, support_mask(np.abs(cplain[0]))) > tb.n_bins
    lg = logging.getLogger("recon.pipeline")
    lg.addHandler(caplog.handler)  # directly: a CLI test earlier in the session may stop propagation to root
    try:
        with caplog.at_level(logging.INFO, logger="recon.pipeline"):
            img, _, _ = correct_b0(c["op"], ks, acq, plain, cplain, fmap, "tb-cpr", opts, bins=tb)
    finally:
        lg.removeHandler(caplog.handler)
    assert "regridding" in caplog.text
    ref = correct("tb-cpr", c["op"], c["y"], c["dcf"], TE, c["t"], fmap.hz, mask=support_mask(np.abs(cplain[0])))
    np.testing.assert_allclose(img, ref[:, 0], rtol=0, atol=1e-6 * np.abs(ref).max())


def _two_pass(source):
    """The default run before the one-pass change: plain gridding, field map, tb-cpr by its own bins."""
    from recon import pipeline as P
    from recon.io.geometry import nifti_affine
    from recon.plans import Plans

    opts = P.RunOptions()
    plans = Plans()
    acq = P.load_acquisition(source, opts)
    traj, _ = P.load_trajectory(acq, opts, plans)
    dcf, _ = P.density_weights(traj, opts, plans)
    ks = P.prepare_kspace(acq, traj, dcf)
    op = P.plan_nufft(ks, tuple(traj.matrix), traj.fov_m, opts, plans)
    affine = nifti_affine(acq.geometry, traj.fov_m, tuple(traj.matrix))
    plain = P.grid(op, ks, acq.te_s)
    cplain = P.combine(plain, ks.noise_cov)
    fmap = P.field_map(op, ks, acq, plain, cplain, affine, "tb-cpr", opts, plans)
    images, _, _ = P.correct_b0(op, ks, acq, plain, cplain, fmap, "tb-cpr", opts, plans)
    cal, tsc, _, _ = P.calibrate_images(images, affine, acq, ks, traj, opts, plans=plans)
    converged = P.combine(
        correct("tb-cpr", op, ks.data, ks.dcf, acq.te_s, ks.t_s, fmap.hz, n_segments=60, plans=plans), ks.noise_cov
    )
    return dict(images=images, fmap=fmap.hz, tsc=tsc, cal=cal, converged=converged)


@pytest.mark.skipif(not SAMPLE.exists(), reason="data_samples/raw.dat missing")
def test_default_run_matches_the_two_pass_implementation():
    """Sample scan (40^3): field map equal, images within the two-pass binning error, TSC and the line within 1 %.

    Measured: field map max difference 1.2e-5 Hz; echo images 6.6 % / 6.3 % apart, which is the
    two-pass tb-cpr's own distance from the 60-bin conjugate phase (6.9 % / 6.5 %; the one-pass
    images are 1.3 % / 1.3 % from it: undemodulated bins and midpoint bin times); slope 0.11 %
    apart; grey / white matter TSC 0.34 % / 0.11 % apart.
    """
    import nibabel as nib
    from scipy import ndimage

    from recon import reconstruct

    ref = _two_pass(str(SAMPLE))
    new = reconstruct(str(SAMPLE))
    assert "gridding (both echoes, all coils)" not in new.timings_s  # one pass: no plain gridding
    assert any(k.startswith("gridding into") for k in new.timings_s)
    assert np.abs(new.fieldmap_hz - ref["fmap"]).max() < 1e-2  # Hz: the bins' sum is the plain image
    for e in range(2):
        assert _rel(new.echoes[e], ref["images"][e]) < 0.08
        # and much closer to the converged conjugate phase than the two-pass default
        assert _rel(new.echoes[e], ref["converged"][e]) < 0.5 * _rel(ref["images"][e], ref["converged"][e])
    assert new.calibration.result.fit.slope == pytest.approx(ref["cal"].result.fit.slope, rel=0.01)
    labels = nib.load(REPO / "data_samples" / "truth_labels.nii.gz").get_fdata()
    for lab in (1, 2):
        roi = ndimage.binary_erosion(labels == lab, iterations=1)
        assert new.tsc_mM[roi].mean() == pytest.approx(ref["tsc"][roi].mean(), rel=0.01)


def test_a_plan_cache_keeps_the_bins_as_one_entry(case):
    """A batch worker's cache: the second scan of the protocol reuses the whole set of bin plans (one
    ``time-bins`` hit, no ``nufft`` plans built or evicted per bin); the images are the same."""
    from recon.plans import PlanCache, Plans

    c = case
    plans = Plans(PlanCache(max_entries=2))
    n = first_time_bins(c["op"], c["t"])
    assert n > 2  # more bins than the per-kind capacity: caching them one by one would evict them
    a = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], n, bin_eps=None, plans=plans)
    b = grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], n, bin_eps=None, plans=plans)
    st = plans.stats()
    assert st["time-bins"] == {"hits": 1, "misses": 1}
    assert "nufft" not in st
    np.testing.assert_array_equal(a.plain(), b.plain())
    # and a different bin count is a different entry
    grid_time_bins(c["op"], c["y"], c["dcf"], c["t"], n + 1, bin_eps=None, plans=plans)
    assert plans.stats()["time-bins"]["misses"] == 2


def test_fftw_measure_only_for_large_fine_grids_executed_often():
    """The FFTW planner rule (recon.nufft.finufft_backend.choose_fftw) and its wiring into the time bins'
    shared plan: the 128^3 protocol's bins (fine grid 160^3, 24 executes) plan with FFTW_MEASURE, the
    64^3 protocol's (80^3) and a single transform keep finufft's ESTIMATE."""
    from recon.nufft.finufft_backend import FFTW_MEASURE, choose_fftw

    assert choose_fftw((128,) * 3, 1.25, 24) == FFTW_MEASURE
    assert choose_fftw((128,) * 3, 1.25, 1) is None
    assert choose_fftw((64,) * 3, 1.25, 12) is None and choose_fftw((64,) * 3, 2.0, 12) is None
    rng = np.random.default_rng(0)
    n = 128
    k = rng.uniform(-0.5, 0.5, (40, 600, 3)) * n / 0.224  # cycles/m within the 128^3 grid
    t = np.arange(600) * 4e-5
    op = NUFFT(k, (n,) * 3, 0.224)
    gr = TimeBinnedGridder(op, t, 24, np.ones(k.shape[:2]))
    assert {nb.options.get("fftw") for _, nb in gr.bins} == {FFTW_MEASURE}
    small = NUFFT(k * 0.5, (64,) * 3, 0.224)
    gr = TimeBinnedGridder(small, t, 12, np.ones(k.shape[:2]))
    assert all("fftw" not in nb.options for _, nb in gr.bins)


def test_bins_planned_with_fftw_measure_equal_estimate(case):
    """FFTW_MEASURE changes FFTW's algorithm, not the transform: the bins agree to float rounding."""
    from recon.nufft.finufft_backend import FFTW_MEASURE

    op, y, dcf, t = case["op"], case["y"], case["dcf"], case["t"]
    a = TimeBinnedGridder(op, t, 6, dcf).grid(y[:, 0], dcf)
    gm = TimeBinnedGridder(op, t, 6, dcf)
    gm.bins = [(cols, nb.subset((slice(None), slice(None)), fftw=FFTW_MEASURE, **nb.options)) for cols, nb in gm.bins]
    b = gm.grid(y[:, 0], dcf)
    assert _rel(b, a) < 1e-5
