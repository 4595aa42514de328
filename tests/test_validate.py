"""The validation family: the draw respects its fixed ranges, is reproducible, and builds valid simulator inputs."""

from __future__ import annotations

import numpy as np
import pytest

from recon.validate import RANGES, alias_free_radius_m, draw_case
from recon.validate.ranges import BRAIN_SEMI_M, _head_distance


@pytest.mark.parametrize("index", range(3))
def test_cases_respect_the_ranges(index):
    c = draw_case(7, index)
    vox = c["fov_mm"] * 1e-3 / c["matrix"]
    assert c["trajectory"] == RANGES["trajectory"][index % 2]
    assert c["matrix"] == (64 if index % 3 == 2 else 40)
    lo, hi = RANGES["undersampling"]
    assert lo <= c["undersampling"] <= hi
    r_sup = alias_free_radius_m(c["fov_mm"] * 1e-3, c["undersampling"])
    assert RANGES["n_tubes"][0] <= len(c["tubes"]) <= RANGES["n_tubes"][1]
    semi = np.asarray(BRAIN_SEMI_M) * c["head_scale"]
    centre = np.asarray(c["head_centre_mm"]) * 1e-3
    conc = sorted(t["concentration_mM"] for t in c["tubes"])
    assert np.all(np.diff(conc) >= RANGES["tube_min_separation_mM"])
    for t in c["tubes"]:
        assert RANGES["tube_radius_vox"][0] - 1e-9 <= t["radius_vox"] <= RANGES["tube_radius_vox"][1]
        assert t["radius_m"] <= RANGES["tube_radius_max_mm"] * 1e-3 + 1e-12
        # the whole cylinder (dense sample of its surface) inside the supported sphere, clear of the head
        a = np.asarray(t["axis"])
        e1 = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(a, e1)
        ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        s = np.linspace(-0.5, 0.5, 33)[:, None, None] * t["length_m"] * a
        ring = t["radius_m"] * (np.cos(ang)[:, None] * e1 + np.sin(ang)[:, None] * e2)
        pts = (np.asarray(t["centre_m"]) + s + ring[None]).reshape(-1, 3)
        assert np.sqrt((pts**2).sum(1)).max() <= r_sup * 1.001
        assert _head_distance(pts, centre, semi).min() > 0.5 * vox
    for name in ("grey_matter", "white_matter"):
        r = c["relaxation"][name]
        for key, (lo, hi) in RANGES["relaxation"]["tissue"].items():
            assert lo <= r[key] <= hi


def test_draw_is_reproducible_and_independent_of_the_number_of_cases():
    assert draw_case(3, 5) == draw_case(3, 5)
    assert draw_case(3, 5) != draw_case(4, 5)


def test_case_builds_phantom_and_trajectory():
    from recon.validate.cases import phantom_for, trajectory_for

    c = draw_case(7, 1)
    ph = phantom_for(c)
    assert len(ph.tubes) == len(c["tubes"])
    assert ph.compartments["white_matter"].t2s_short_s == c["relaxation"]["white_matter"]["t2s_short_s"]
    tr = trajectory_for(c)
    assert tr.params["generator"] == c["trajectory"] and tuple(tr.matrix) == (c["matrix"],) * 3
    # the head's labels fall where the case put it: the brain centre is inside the phantom's head
    comps, f = ph.fractions(np.asarray(c["head_centre_mm"])[None] * 1e-3)
    assert f[:, 0].sum() == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_one_case_of_the_family_meets_the_tube_target(tmp_path):
    """End to end (simulate -> recon.reconstruct -> measure) on case 1 of seed 1 (radial, 40^3)."""
    from recon.validate.run import run_case

    rec = run_case(draw_case(1, 1), ("default",), workdir=tmp_path)
    rows = rec["modes"]["default"]["rows"]
    assert rec["modes"]["default"].get("error") is None
    tubes = [r for r in rows if r["class"] == "tube_mM"]
    assert tubes and all(r["passed"] for r in tubes)


def test_t1_prior_error_is_the_saturation_ratio_against_the_priors():
    """The T1 split of the validation: closed-form 1 - exp(-TR/T1) ratios at 90 deg (independent of t1_saturation)."""
    import math

    from recon.physics import CSF, SALINE_TUBE
    from recon.validate.run import t1_prior_error

    def info(t1_csf, t1_tube):
        return {
            "protocol": {"tr_s": 0.174, "flip_deg": 90.0},
            "compartments": [{"name": "csf_ventricles", "t1_s": t1_csf}, {"name": "tube_1_40mM", "t1_s": t1_tube}],
        }

    def s(t1):
        return 1 - math.exp(-0.174 / t1)

    assert abs(t1_prior_error(info(CSF.t1_s, SALINE_TUBE.t1_s), "csf_ventricles")) < 1e-12
    want = (s(0.050) / s(0.065)) / (s(CSF.t1_s) / s(SALINE_TUBE.t1_s)) - 1
    assert t1_prior_error(info(0.050, 0.065), "csf_ventricles") == pytest.approx(want, rel=1e-9)
    assert want > 0.02  # the family's range is wide enough to matter against a 3 % bound
    assert t1_prior_error(info(0.050, 0.065), "absent") is None
