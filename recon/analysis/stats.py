"""Statistics for the longitudinal study: paired t-tests, ellipsoid tumour volumes, time labels.

The paired t-test is :func:`scipy.stats.ttest_rel` (two-sided) on the complete pairs only;
this module adds the pairing of incomplete data, the degrees of freedom, the effect size and
the counts that a report needs.

Effect size: Cohen's d_z = mean(d) / SD(d) (SD with ddof = 1) of the paired differences
d = a - b, which equals t / sqrt(n).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class PairedTest:
    """Result of a two-sided paired t-test of a against b (differences a - b)."""

    n_pairs: int
    n_missing: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    t: float
    df: int
    p: float
    cohen_dz: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_ttest(a: dict, b: dict, universe=None) -> PairedTest:
    """Paired t-test over the keys present (and finite) in both ``a`` and ``b``.

    Parameters
    ----------
    a, b : mappings from a pairing key (e.g. (subject, lesion)) to a value.
    universe : optional iterable of all keys the study expects (e.g. every lesion); keys in it
        that are not complete pairs count as missing too.

    Returns
    -------
    PairedTest with n_pairs, n_missing (keys of a, b or universe without a finite pair), the
    means, t, df = n - 1, two-sided p and Cohen's d_z. With fewer than 2 pairs, or zero
    variance of the differences, t, p and d_z are NaN.
    """
    from scipy import stats

    keys_all = set(a) | set(b) | (set(universe) if universe is not None else set())
    keys = sorted((k for k in keys_all if k in a and k in b and np.isfinite(a[k]) and np.isfinite(b[k])), key=str)
    x = np.array([a[k] for k in keys], float)
    y = np.array([b[k] for k in keys], float)
    n = len(keys)
    nan = float("nan")
    if n == 0:
        return PairedTest(0, len(keys_all), nan, nan, nan, nan, nan, 0, nan, nan)
    d = x - y
    sd = float(np.std(d, ddof=1)) if n > 1 else nan
    if n < 2 or not sd > 0:
        t = p = dz = nan
    else:
        res = stats.ttest_rel(x, y)
        t, p = float(res.statistic), float(res.pvalue)
        dz = float(d.mean() / sd)
    return PairedTest(n, len(keys_all) - n, float(x.mean()), float(y.mean()), float(d.mean()), sd, t, max(n - 1, 0), p, dz)


def adjust_pvalues(p) -> tuple[np.ndarray, np.ndarray]:
    """Multiple-comparison adjusted p-values (Holm, Benjamini-Hochberg) of the finite entries of ``p``.

    Holm (1979) step-down controls the family-wise error rate: with the m finite p-values sorted
    ascending, p_holm(i) = max_{j <= i} min(1, (m - j + 1) p(j)). Benjamini-Hochberg (1995)
    controls the false discovery rate: :func:`scipy.stats.false_discovery_control` (method "bh").
    NaN entries (tests that could not be computed) stay NaN and do not count in m.
    Returns (p_holm, p_bh) as float arrays of the shape of ``p``.
    """
    from scipy import stats

    p = np.asarray(p, dtype=float)
    holm = np.full(p.shape, np.nan)
    bh = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return holm, bh
    pv = p[ok]
    order = np.argsort(pv, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * pv[order]))
    h = np.empty(m)
    h[order] = stepped
    holm[ok] = h
    bh[ok] = stats.false_discovery_control(pv, method="bh")
    return holm, bh


def ellipsoid_volume_mm3(a_mm: float, b_mm: float, m_mm: float, c: float) -> float:
    """Tumour volume by the ellipsoid ("Coniglobus") formula V = pi/6 * a * b * m * c.

    a, b : the two largest perpendicular in-plane diameters in mm; m : slice thickness in mm;
    c : number of slices on which the tumour appears (so m * c is the third diameter in mm).
    Returns mm^3 (divide by 1000 for mL).
    """
    return math.pi / 6.0 * a_mm * b_mm * m_mm * c


_UNITS_H = {
    "h": 1.0,
    "hr": 1.0,
    "hrs": 1.0,
    "hour": 1.0,
    "hours": 1.0,
    "d": 24.0,
    "day": 24.0,
    "days": 24.0,
    "w": 168.0,
    "wk": 168.0,
    "wks": 168.0,
    "week": 168.0,
    "weeks": 168.0,
    "m": 730.5,
    "mo": 730.5,
    "mon": 730.5,
    "month": 730.5,
    "months": 730.5,
    "y": 8766.0,
    "yr": 8766.0,
    "year": 8766.0,
    "years": 8766.0,
    "min": 1.0 / 60.0,
}
_BASELINE = {"pre", "baseline", "base", "bl", "before", "t0", "0"}


def timepoint_hours(label: str) -> float | None:
    """Nominal time after treatment in hours for labels like pre, 48h, 1w, 1m, 3m, 2 weeks.

    ``pre``/``baseline`` give 0; ``m`` means months (30.44 days). Unknown labels give None.
    """
    s = label.strip().lower()
    if s in _BASELINE:
        return 0.0
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)", s)
    if not m:
        return None
    num, unit = float(m.group(1)), m.group(2) or "h"
    return num * _UNITS_H[unit] if unit in _UNITS_H else None


def order_timepoints(labels: list[str]) -> list[str]:
    """Distinct labels sorted by :func:`timepoint_hours`; unknown labels keep their order, last."""
    seen: list[str] = []
    for lab in labels:
        if lab not in seen:
            seen.append(lab)
    known = sorted((lab for lab in seen if timepoint_hours(lab) is not None), key=timepoint_hours)
    return known + [lab for lab in seen if timepoint_hours(lab) is None]
