"""narecon bench-traj: PSF measurement, pseudo-replica noise, variants file, CLI outputs.

Truths: the analytic PSF of a uniformly sampled k-space ball (FWHM 1.59 voxel widths), the
analytic noise propagation of gridding (SD = sigma sqrt(sum w^2)), a Gaussian's FWHM.
"""

from __future__ import annotations

import csv
import math
import re

import numpy as np
import pytest

from recon.bench import (
    ball_psf,
    decay_csf,
    decay_tissue,
    fwhm,
    load_variants,
    pseudo_replica_sd,
    radial_psf,
)
from recon.errors import ConfigError
from recon.trajectory import compute_dcf, density_adapted_radial, tpi

FOV = 0.224
RES = 0.014  # 16^3 keeps every test fast


@pytest.fixture(scope="module")
def ball():
    """Fully sampled k-space ball: constant-speed radial (p = 1), Nyquist projections, analytic DCF."""
    tr = density_adapted_radial(fov_m=FOV, res_m=RES, p=1.0, gmax_t_per_m=4e-3, dwell_s=5e-6)
    return tr, compute_dcf(tr, "analytic")


def test_fwhm_of_gaussian():
    r = np.linspace(0, 5, 501)
    s = 1.3
    expect = 2 * math.sqrt(2 * math.log(2)) * s
    assert fwhm(r, np.exp(-(r**2) / (2 * s**2))) == pytest.approx(expect, rel=1e-4)
    assert math.isnan(fwhm(r, np.ones_like(r)))


def test_psf_of_spherical_kspace_is_1p59_voxels(ball):
    tr, w = ball
    r, prof = radial_psf(tr, w, None, 0.0, n_directions=26, n_points=241, extent_vox=3.0)
    # the value at r = 0 is the sampled k-space volume (4/3 pi kmax^3 for a full ball)
    kmax = 1 / (2 * RES)
    assert prof[0] == pytest.approx(4 / 3 * math.pi * kmax**3, rel=0.01)
    assert fwhm(r, prof) / RES == pytest.approx(1.59, rel=0.03)
    # and the whole profile follows the analytic ball PSF 3 (sin u - u cos u) / u^3
    assert np.max(np.abs(prof / prof[0] - ball_psf(r, kmax))) < 0.02
    assert fwhm(r, ball_psf(r, kmax)) / RES == pytest.approx(1.5904, abs=1e-3)


def test_psf_widens_monotonically_with_readout():
    widths, peaks, csf = [], [], []
    readouts = []
    for g in (8e-3, 4e-3, 2e-3, 1e-3):
        tr = tpi(fov_m=FOV, res_m=RES, p=0.3, gmax_t_per_m=g)
        w = compute_dcf(tr, "analytic")
        readouts.append(tr.readout_s)
        r, p0 = radial_psf(tr, w, None, 0.3e-3, n_directions=6, n_points=161)
        r, pt = radial_psf(tr, w, decay_tissue, 0.3e-3, n_directions=6, n_points=161)
        r, pc = radial_psf(tr, w, decay_csf, 0.3e-3, n_directions=6, n_points=161)
        assert fwhm(r, p0) / RES == pytest.approx(1.59, rel=0.03)  # no decay: readout does not matter
        widths.append(fwhm(r, pt))
        peaks.append(pt[0] / p0[0])
        csf.append(fwhm(r, pc))
    assert np.all(np.diff(readouts) > 0)
    assert np.all(np.diff(widths) > 0), widths
    assert np.all(np.diff(peaks) < 0), peaks
    # CSF (54 ms) blurs far less than tissue (3.5 / 23 ms) at the longest readout
    assert csf[-1] < widths[-1]
    # peak of the tissue PSF is bounded by the decay at the echo time and at the end of the readout
    assert decay_tissue(0.3e-3) > peaks[0] > decay_tissue(0.3e-3 + readouts[0])


def test_pseudo_replica_sd_matches_analytic_noise_propagation():
    from recon.bench import analytic_noise_sd
    from recon.nufft import NUFFT

    tr = tpi(fov_m=FOV, res_m=RES, p=0.3, gmax_t_per_m=4e-3)
    w = compute_dcf(tr, "analytic")
    op = NUFFT(tr.k, tr.matrix, tr.fov_m)
    sigma = 3.0e-4
    sd = pseudo_replica_sd(op, w, sigma, replicas=32, seed=5)
    expect = sigma * math.sqrt(float((w**2).sum()))
    assert analytic_noise_sd(w, sigma) == pytest.approx(expect)
    assert sd.mean() == pytest.approx(expect, rel=0.10)
    # white noise through gridding has the same SD at every voxel: the centre voxel too
    c = tuple(m // 2 for m in tr.matrix)
    assert sd[c] == pytest.approx(expect, rel=0.35)  # 32 replicas: one voxel's SD is +-13 % (1 s.d.)


def _write(tmp_path, text, name="v.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_variants_file_defaults_and_errors(tmp_path):
    p = _write(
        tmp_path,
        """
[settings]
replicas = 4
[defaults]
res_mm = 14.0
[[variant]]
name = "a"
p = 0.25
[[variant]]
name = "b"
trajectory = "radial"
recon = "gridding"
te_ms = 0.3
""",
    )
    cfg = load_variants(p)
    assert [v.name for v in cfg.variants] == ["a", "b"]
    a, b = cfg.variants
    assert a.params["res_mm"] == 14.0 and a.params["p"] == 0.25 and a.params["trajectory"] == "tpi"
    assert a.te_s == pytest.approx((0.3e-3, 2.32e-3)) and a.tr_s == pytest.approx(0.174)
    assert b.recon == ("gridding",) and b.te_s == pytest.approx((0.3e-3,))
    assert cfg.settings["replicas"] == 4

    cases = {
        "[[variant]]\nname = 'x'\ngmax = 4\n": "unknown key",
        "[settings]\nreplicas = 4\n": "no [[variant]]",
        "[[variant]]\nrecon = ['sense']\n": "unknown recon",
        "[[variant]]\ntrajectory = 'spiral'\n": "trajectory must be one of",
        "[[variant]]\ntrajectory = 'file'\n": "needs path",
        "[[variant]]\nname = 'x'\n[[variant]]\nname = 'x'\n": "appears twice",
        "[[variant]]\nte_ms = [0.3]\nrecon = ['tb-cpr']\n": "two echoes",
        "[[variant]\n": "invalid TOML",
    }
    for i, (text, msg) in enumerate(cases.items()):
        f = _write(tmp_path, text, f"bad{i}.toml")
        with pytest.raises(ConfigError, match=re.escape(msg)) as e:
            load_variants(f)
        assert str(f) in str(e.value)
    with pytest.raises(ConfigError, match="not found"):
        load_variants(tmp_path / "missing.toml")


TINY = """
[settings]
snr = 50
replicas = 8
psf_directions = 6
psf_points = 61
[defaults]
res_mm = 14.0
scan_budget_min = 5.0
[[variant]]
name = "tpi-fast"
trajectory = "tpi"
p = 0.3
gmax_mt_m = 8.0
recon = ["gridding", "tb-cpr"]
[[variant]]
name = "radial"
trajectory = "radial"
p = 0.3
gmax_mt_m = 8.0
recon = ["gridding"]
"""


def test_cli_end_to_end_outputs(tmp_path):
    from recon.cli import main

    v = _write(tmp_path, TINY)
    out = tmp_path / "res"
    assert main(["-q", "bench-traj", str(v), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["bias_vs_readout.png", "psf_profiles.png", "results.csv", "results.md", "snr_vs_scan_time.png"]
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["name"] for r in rows] == ["tpi-fast", "radial"]
    for r in rows:
        # design numbers against the generators' own definitions
        assert float(r["peak_gradient_mT_m"]) == pytest.approx(8.0, rel=1e-3)
        assert float(r["scan_time_min"]) == pytest.approx(int(r["projections"]) * 0.174 * 2 / 60, rel=1e-9)
        # pseudo-replica noise against the analytic propagation
        assert float(r["noise_sd_mM"]) == pytest.approx(float(r["noise_sd_analytic_mM"]), rel=0.10)
        assert float(r["psf_fwhm_none_vox"]) == pytest.approx(1.59, rel=0.03)
        assert float(r["psf_peak_none"]) == pytest.approx(1.0)
        assert 0 < float(r["psf_peak_tissue"]) < float(r["psf_peak_csf"]) < 1
        assert 0 < float(r["nrmse_gridding"]) < 1
        assert r["within_budget"] == str(float(r["scan_time_min"]) <= 5.0)
    assert "nrmse_tb-cpr" in rows[0] and rows[1].get("nrmse_tb-cpr", "") == ""
    md = (out / "results.md").read_text()
    assert "| tpi-fast | tb-cpr |" in md and "| radial | gridding |" in md

    # an existing output without --force is refused and left as it was
    before = (out / "results.csv").read_bytes()
    assert main(["-q", "bench-traj", str(v), "--out", str(out), "--only", "radial"]) == 2
    assert (out / "results.csv").read_bytes() == before


def test_failing_variant_leaves_no_output(tmp_path):
    from recon.cli import main

    v = _write(tmp_path, '[[variant]]\nname = "f"\ntrajectory = "file"\npath = "nope.h5"\n')
    out = tmp_path / "res"
    assert main(["-q", "bench-traj", str(v), "--out", str(out)]) == 2
    assert not out.exists()
