"""Paired t-test against the textbook formula, ellipsoid volume, time-point ordering."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special, stats

from recon.analysis.stats import ellipsoid_volume_mm3, order_timepoints, paired_ttest, timepoint_hours


def test_paired_ttest_matches_hand_formula_and_scipy():
    a = {
        ("s1", "l1"): 22.85,
        ("s1", "l2"): 24.19,
        ("s2", "l1"): 22.28,
        ("s3", "l1"): 36.08,
        ("s4", "l1"): 30.0,
    }
    b = {
        ("s1", "l1"): 23.23,
        ("s1", "l2"): 24.43,
        ("s2", "l1"): 27.53,
        ("s3", "l1"): 25.92,
        ("s5", "l1"): 1.0,
    }
    r = paired_ttest(a, b)
    d = np.array([22.85 - 23.23, 24.19 - 24.43, 22.28 - 27.53, 36.08 - 25.92])
    n = 4
    mean = d.sum() / n
    sd = math.sqrt(((d - mean) ** 2).sum() / (n - 1))
    t = mean / (sd / math.sqrt(n))
    p = 2 * special.stdtr(n - 1, -abs(t))  # Student t CDF, independent of ttest_rel
    assert (r.n_pairs, r.n_missing, r.df) == (4, 2, 3)
    assert r.t == pytest.approx(t, rel=1e-12)
    assert r.p == pytest.approx(p, rel=1e-10)
    assert r.cohen_dz == pytest.approx(mean / sd, rel=1e-12)
    assert r.cohen_dz == pytest.approx(t / math.sqrt(n), rel=1e-12)
    ref = stats.ttest_rel([22.85, 24.19, 22.28, 36.08], [23.23, 24.43, 27.53, 25.92])
    assert r.t == pytest.approx(ref.statistic) and r.p == pytest.approx(ref.pvalue)


def test_paired_ttest_degenerate_cases():
    r = paired_ttest({1: 1.0}, {1: 2.0})
    assert r.n_pairs == 1 and math.isnan(r.t) and math.isnan(r.p)
    r = paired_ttest({1: 1.0, 2: float("nan")}, {3: 2.0, 2: 1.0})
    assert r.n_pairs == 0 and r.n_missing == 3


def test_ellipsoid_volume_formula():
    # a sphere of diameter 20 mm: a = b = 20, m * c = 2 mm * 10 slices -> 4/3 pi 10^3 mm^3
    assert ellipsoid_volume_mm3(20, 20, 2, 10) == pytest.approx(4 / 3 * math.pi * 1000)
    # the clinical form: 12 x 9 mm, 10 slices of 1 mm -> 565.49 mm^3 = 0.565 mL
    assert ellipsoid_volume_mm3(12, 9, 1, 10) == pytest.approx(math.pi / 6 * 1080)


def test_timepoint_labels_are_ordered():
    assert timepoint_hours("pre") == 0 and timepoint_hours("48h") == 48 and timepoint_hours("1w") == 168
    assert timepoint_hours("1m") == pytest.approx(730.5) and timepoint_hours("2 weeks") == 336
    assert order_timepoints(["1m", "pre", "1w", "48h", "3m", "1w"]) == ["pre", "48h", "1w", "1m", "3m"]
    assert order_timepoints(["x", "pre", "y"]) == ["pre", "x", "y"]
