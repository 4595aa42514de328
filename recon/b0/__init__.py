"""B0 stage: dual-echo field mapping and off-resonance correction.

Sign convention (DESIGN.md): a spin at off-resonance df (Hz) contributes exp(-i 2 pi df (TE + t))
to the signal, so df = -angle(x2 conj(x1)) / (2 pi (TE2 - TE1)).

Typical use by the pipeline::

    from recon.b0 import estimate_fieldmap, correct
    plain = gridding(op, data, dcf)                          # (echo, ..., N0, N1, N2)
    df = estimate_fieldmap(plain[0], plain[1], te[0], te[1])  # Hz, 0 outside support + margin
    images = correct("tb-cpr", op, data, dcf, te, traj.t, df) # (echo, ..., N0, N1, N2)

The default run does the same in one gridding pass::

    bins = grid_time_bins(op, data, dcf, traj.t, first_time_bins(op, traj.t))  # not demodulated
    plain = bins.plain()                                      # = gridding(op, data, dcf)
    df = estimate_fieldmap(plain[0], plain[1], te[0], te[1])
    images = bins.combine(te, df)  # if bins.bins_needed(df, mask) <= bins.n_bins, else correct(...)

Public API

* :func:`estimate_fieldmap` (``smooth`` or ``poly`` regularisation, unwrapping, extrapolation),
  :func:`refine_fieldmap` (re-estimates the residual field from the corrected echoes),
  :func:`support_mask`, :func:`load_fieldmap_nifti` (proton or sodium Hz through both affines),
  :data:`GAMMA_RATIO_NA_H`.
* :func:`correct` with the registry :data:`CORRECTIONS`: ``tb-cpr`` (time-binned conjugate
  phase, default, fast), ``fs-cpr`` (frequency-segmented conjugate phase), ``mfi``
  (multi-frequency interpolation), ``none``; :func:`register_correction` adds methods.
* :func:`grid_time_bins` / :class:`TimeBins`: the default run's one gridding pass (time-bin
  images whose sum is the plain gridding and whose combination is tb-cpr); :func:`first_time_bins`.
* :class:`TimeSegmentedOperator`: forward/adjoint with B0 and optional R2* for iterative
  reconstruction (Sutton et al. 2003).
* Segment-count rules: :func:`n_time_bins`, :func:`n_frequency_segments` (see
  :mod:`recon.b0.segments`).
"""

from recon.b0.correction import (
    CORRECTIONS,
    TimeBinnedGridder,
    TimeBins,
    correct,
    first_time_bins,
    grid_time_bins,
    mfi_coefficients,
    register_correction,
)
from recon.b0.fieldmap import (
    GAMMA_RATIO_NA_H,
    dephasing_factor,
    estimate_fieldmap,
    load_fieldmap_nifti,
    refine_fieldmap,
    support_mask,
    unaliased_range_hz,
)
from recon.b0.operator import TimeSegmentedOperator
from recon.b0.segments import DEFAULT_TOL_RAD, n_frequency_segments, n_time_bins

__all__ = [
    "estimate_fieldmap",
    "dephasing_factor",
    "support_mask",
    "load_fieldmap_nifti",
    "refine_fieldmap",
    "unaliased_range_hz",
    "GAMMA_RATIO_NA_H",
    "correct",
    "CORRECTIONS",
    "register_correction",
    "TimeBinnedGridder",
    "TimeBins",
    "grid_time_bins",
    "first_time_bins",
    "mfi_coefficients",
    "TimeSegmentedOperator",
    "n_time_bins",
    "n_frequency_segments",
    "DEFAULT_TOL_RAD",
]
