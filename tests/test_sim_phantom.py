"""The analytic phantom: compartments, values, geometry (orientation), B0 and sensitivities."""

from __future__ import annotations

import numpy as np
import pytest

from recon.errors import InputError
from recon.sim import DEFAULT_COMPARTMENTS, HeadPhantom, grid_points


def test_literature_values_in_the_ranges_of_the_issue():
    c = DEFAULT_COMPARTMENTS
    for fluid in ("csf_sulcal", "csf_ventricles", "vitreous"):
        assert 140 <= c[fluid].tsc_mM <= 145
        assert c[fluid].frac_short == 0 and 0.050 <= c[fluid].t2s_long_s <= 0.055
        assert 0.050 <= c[fluid].t1_s <= 0.065
    for tissue in ("grey_matter", "white_matter"):
        assert 35 <= c[tissue].tsc_mM <= 45 and c[tissue].frac_short == 0.6
        assert 0.003 <= c[tissue].t2s_short_s <= 0.004 and 0.020 <= c[tissue].t2s_long_s <= 0.030
        assert 0.035 <= c[tissue].t1_s <= 0.040
    assert 50 <= c["tumour_rim"].tsc_mM <= 80
    tubes = HeadPhantom().tubes
    assert sorted(t.concentration_mM for t in tubes) == [30, 60, 90, 120]


def test_points_inside_compartments_have_their_values():
    ph = HeadPhantom(marker=True, head_scale=1.0)  # the head's literature geometry, unscaled
    pts = {
        "tube_30mM": (-0.084, -0.022, 0.0),
        "tube_120mM": (0.084, 0.022, 0.0),
        "necrotic_core": tuple(np.add(ph.tumour_centre, 0)),
        "vitreous": (0.032, -0.080, -0.038),
        "white_matter": (0.035, 0.020, 0.0),
        "marker": ph.marker_centre,
    }
    expect = {
        "tube_30mM": 30,
        "tube_120mM": 120,
        "necrotic_core": 120,
        "vitreous": 140,
        "white_matter": 36,
        "marker": 145,
    }
    tsc = ph.tsc_mM(np.array(list(pts.values())))
    assert np.allclose(tsc, [expect[k] for k in pts], atol=1e-3)
    assert ph.tsc_mM(np.array([[0.105, 0.105, 0.105]]))[0] == 0  # background


def test_fractions_are_partial_volumes_and_grid_independent():
    ph = HeadPhantom()
    comps, f = ph.fractions(grid_points(24, 0.224))
    assert f.min() >= 0 and f.sum(0).max() <= 1 + 1e-6
    # analytic: the same physical point has the same value on a coarse and a fine grid
    a = ph.tsc_mM(grid_points(16, 0.224))  # voxel i centre at (i - 8) * 14 mm
    b = ph.tsc_mM(grid_points(32, 0.224))  # voxel 2i has the same centre
    assert np.array_equal(a, b[::2, ::2, ::2])


def test_orientation_marker_is_right_anterior_superior():
    ph = HeadPhantom(marker=True)
    pts = grid_points(32, 0.224)
    lab = ph.labels(pts)
    marker = next(c for c in ph.table() if c.name == "marker")
    centroid = pts[lab == marker.label].mean(axis=0)  # LPS metres
    ras = np.array([-centroid[0], -centroid[1], centroid[2]])
    assert np.all(ras > 0.04)  # right, anterior, superior
    # the head's eyes are anterior (RAS y > 0) and inferior
    eyes = pts[lab == DEFAULT_COMPARTMENTS["vitreous"].label].mean(axis=0)
    assert -eyes[1] > 0.06 and eyes[2] < -0.02


def test_b0_map_tens_of_hz_with_frontal_hot_spot():
    ph = HeadPhantom()
    pts = grid_points(32, 0.224)
    lab = ph.labels(pts)
    b0 = ph.b0_hz(pts)
    inside = b0[(lab > 0) & (lab < 9)]
    assert 10 < np.ptp(inside) < 150 and np.abs(inside).max() < 100
    peak = pts[np.unravel_index(np.argmax(np.where(lab > 0, b0, -np.inf)), b0.shape)]
    assert abs(peak[0]) < 0.01 and peak[1] < -0.05 and peak[2] < 0  # midline, anterior, inferior
    assert np.all(HeadPhantom(b0_scale=0).b0_hz(pts) == 0)


def test_receive_sensitivities():
    ph = HeadPhantom()
    pts = grid_points(16, 0.224)
    assert np.all(ph.receive_sensitivity(pts) == 1)
    bc = np.abs(ph.receive_sensitivity(pts, 1, "birdcage"))[0][ph.labels(pts) > 0]
    assert 0.85 < bc.min() and bc.max() < 1.15
    ring = ph.receive_sensitivity(pts, 8)
    assert ring.shape == (8, 16, 16, 16)
    # each loop sees most signal on its own side of the head
    for c in (0, 2, 4, 6):
        ang = 2 * np.pi * c / 8
        w = np.abs(ring[c])
        centre = (pts * w[..., None]).sum((0, 1, 2)) / w.sum()
        assert centre[:2] @ np.array([np.cos(ang), np.sin(ang)]) > 0.03


def test_bad_options():
    with pytest.raises(InputError):
        HeadPhantom(tumour="huge")
    with pytest.raises(InputError):
        HeadPhantom().receive_sensitivity(np.zeros((2, 3)), 0)
