"""Weighted linear calibration fit ``signal = a * C + b`` over tubes of known concentration.

A two-parameter weighted least-squares line with its covariance, written out here (about ten
lines of normal equations) because scipy's ``linregress`` has no weights and ``np.polyfit``
refuses a covariance for fewer than four points. Weights are the inverse variance of each ROI
mean, ``n / SD^2``; spatial noise correlation scales all of them alike and does not change the
line. R^2 is the ordinary (unweighted) coefficient of determination of the fitted line.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from recon.errors import CalibrationError

log = logging.getLogger("recon.calibrate")

R2_WARN = 0.98
"""Warn when the calibration line's R^2 is below this."""
R2_ERROR = 0.5
"""Below this R^2 the calibration is degenerate (no line through the tubes): a :class:`CalibrationError`."""
DEVIATION_WARN = 0.05
"""Warn when a tube's back-calculated concentration deviates from its nominal value by more than this."""


@dataclasses.dataclass
class LinearFit:
    """Result of ``signal = slope * C + intercept``.

    Attributes
    ----------
    slope : a, signal units per mM.
    intercept : b, signal units.
    slope_se, intercept_se : standard errors (None when the fit has no degrees of freedom).
    r2 : coefficient of determination of the line (unweighted); None for a one-point reference.
    concentrations_mM, signals, weights : the fitted points.
    residuals : signal - fitted signal, signal units.
    deviations_mM : back-calculated (S - b) / a minus nominal C, mM.
    relative_deviations : deviations_mM / C.
    weighting : ``inverse-variance`` or ``uniform``.
    """

    slope: float
    intercept: float
    slope_se: float | None
    intercept_se: float | None
    r2: float | None
    concentrations_mM: list[float]
    signals: list[float]
    weights: list[float]
    residuals: list[float]
    deviations_mM: list[float]
    relative_deviations: list[float]
    weighting: str

    def to_mM(self, signal):
        """Concentration in mM from signal: (S - b) / a."""
        return (np.asarray(signal) - self.intercept) / self.slope

    def check(self, r2_min: float = R2_WARN, max_rel_dev: float = DEVIATION_WARN) -> list[str]:
        """Quality warnings (R^2 too low, tubes deviating too much), each also logged."""
        out = []
        if self.r2 is not None and self.r2 < r2_min:
            out.append(f"calibration R^2 = {self.r2:.4f} is below {r2_min}")
        for c, d in zip(self.concentrations_mM, self.relative_deviations):
            if abs(d) > max_rel_dev:
                out.append(f"tube {c:g} mM deviates from the calibration line by {100 * d:+.1f}% (limit {100 * max_rel_dev:.0f}%)")
        for w in out:
            log.warning(w)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_line(
    concentrations_mM: Sequence[float],
    signals: Sequence[float],
    sds: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
) -> LinearFit:
    """Weighted least-squares line through (C_i, S_i), weights ``n_i / SD_i^2``.

    Uniform weights when SDs are not given, or any is zero or not finite (noise-free data).
    Raises :class:`CalibrationError` for fewer than two distinct concentrations or a slope <= 0.
    """
    c = np.asarray(concentrations_mM, dtype=np.float64)
    s = np.asarray(signals, dtype=np.float64)
    if c.shape != s.shape or c.ndim != 1:
        raise CalibrationError(f"{c.size} concentrations for {s.size} signals")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
        raise CalibrationError("calibration points contain NaN or infinite values")
    if np.unique(c).size < 2:
        raise CalibrationError(f"need at least two distinct concentrations to fit a line, got {c.tolist()} mM")
    w = np.ones_like(c)
    weighting = "uniform"
    if sds is not None:
        sd = np.asarray(sds, dtype=np.float64)
        n = np.ones_like(sd) if counts is None else np.asarray(counts, dtype=np.float64)
        if np.all(np.isfinite(sd)) and np.all(sd > 0) and np.all(n > 0):
            w = n / sd**2
            w = w / w.mean()
            weighting = "inverse-variance"
    A = np.stack([c, np.ones_like(c)], axis=1)
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(A * sw[:, None], s * sw, rcond=None)
    a, b = float(coef[0]), float(coef[1])
    if not a > 0:
        raise CalibrationError(
            f"calibration slope is not positive ({a:.4g} per mM): the tube signals do not "
            f"increase with concentration {c.tolist()} mM"
        )
    span = float(np.ptp(c))
    if a * span < 1e-6 * float(np.abs(s).max()):
        raise CalibrationError(
            f"calibration slope {a:.4g} per mM is degenerate: over {span:g} mM the tube signals change by "
            f"{a * span:.3g} of {float(np.abs(s).max()):.3g} (tubes at one place, or no tubes)"
        )
    fitted = a * c + b
    res = s - fitted
    dof = c.size - 2
    a_se = b_se = None
    if dof > 0:
        cov = np.linalg.inv(A.T @ (A * w[:, None])) * float((w * res**2).sum() / dof)
        a_se, b_se = float(np.sqrt(cov[0, 0])), float(np.sqrt(cov[1, 1]))
    ss_tot = float(((s - s.mean()) ** 2).sum())
    r2 = 1.0 - float((res**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    dev = (s - b) / a - c
    rel = np.where(c != 0, dev / np.where(c != 0, c, 1.0), np.nan)
    return LinearFit(
        a,
        b,
        a_se,
        b_se,
        r2,
        c.tolist(),
        s.tolist(),
        w.tolist(),
        res.tolist(),
        dev.tolist(),
        rel.tolist(),
        weighting,
    )


def reference_scale(signal_mean: float, reference_mM: float) -> LinearFit:
    """One-point calibration through the origin: ``a = S_ref / C_ref``, ``b = 0`` (internal reference)."""
    if not (np.isfinite(signal_mean) and signal_mean > 0):
        raise CalibrationError(f"reference region mean signal is {signal_mean!r}: it must be positive")
    if not reference_mM > 0:
        raise CalibrationError(f"reference concentration must be positive, got {reference_mM} mM")
    a = float(signal_mean) / float(reference_mM)
    return LinearFit(
        a,
        0.0,
        None,
        None,
        None,
        [float(reference_mM)],
        [float(signal_mean)],
        [1.0],
        [0.0],
        [0.0],
        [0.0],
        "single reference",
    )
