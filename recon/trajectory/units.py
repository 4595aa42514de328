"""Plausibility of a trajectory's k units against the raw data it is to reconstruct.

A trajectory file in the wrong units still makes an image (a useless one) unless someone
checks. :func:`check_trajectory_units` compares, in both directions:

* the largest |k| with the Nyquist radius matrix / (2 FOV) of the raw data header (FOV and
  matrix from the protocol; the trajectory's own when the header has none or is a Pulseq
  interpreter's, whose protocol values are dummies): a design reaches
  0.45 to 2.2 times it (radial with ramps ~0.9, TPI 1.0); outside, the likely unit mix-up is
  named (1/cm, 1/mm, rad/m, cycles/FOV, normalized) from the factor;
* the sample where the data's own k-space centre lies (largest mean |signal| along the
  readout) with the trajectory's |k| there: it must be near each readout's smallest |k|
  (a reversed or shifted readout, or k of another sequence, fails here).
"""

from __future__ import annotations

import math

import numpy as np

from recon.errors import TrajectoryError

KMAX_RATIO_RANGE = (0.45, 2.2)
"""Accepted largest |k| of a trajectory relative to the header's Nyquist radius matrix / (2 FOV)."""
CENTRE_K_FRACTION = 0.25
"""Largest |k| (fraction of the trajectory's kmax) allowed at the data's k-space centre sample."""
_CENTRE_PROMINENCE = 3.0
CHECK_PROJECTIONS = 512
"""Projections (evenly strided) the checks look at: plausibility needs no full pass over k and data."""


def _likely_unit(ratio: float, fov: float, kn: float) -> str:
    """The unit mix-up that best explains kmax being ``ratio`` x the Nyquist radius."""
    cands = {
        "1/cm (values 100x too small for 1/m)": 0.01,
        "1/mm (values 1000x too small for 1/m)": 0.001,
        "cycles/FOV (grid units: divide by the FOV in m)": fov,
        "normalized units (+-0.5 at Nyquist)": 0.5 / kn,
        "rad/m (values 2 pi too large for 1/m)": 2 * math.pi,
        "1/m declared as 1/cm (100x too large)": 100.0,
        "1/m declared as 1/mm (1000x too large)": 1000.0,
    }
    best = min(cands, key=lambda c: abs(math.log(ratio / cands[c])))
    return best


def check_trajectory_units(traj, acq, source: str | None = None) -> dict[str, float]:
    """Raise :class:`TrajectoryError` if ``traj``'s k cannot be in cycles/m for ``acq``; return the measures.

    Returns ``kmax_ratio`` (largest |k| over the header's Nyquist radius), ``centre_sample``
    (the data's k-space centre along the readout, or -1 if the data have no clear peak) and
    ``centre_k_fraction`` (trajectory |k| there over kmax).
    """
    src = source or (acq.sources[0] if getattr(acq, "sources", None) else None)
    # Pulseq interpreters write dummy protocol values: there the trajectory's own FOV/matrix are the reference
    pulseq = "pulseq" in str((getattr(acq, "header", None) or {}).get("sequence", "")).lower()
    hdr_fov, hdr_mat = getattr(acq, "fov_m", None), getattr(acq, "matrix", None)
    use_hdr = hdr_fov is not None and hdr_mat is not None and not pulseq
    fov = np.broadcast_to(np.asarray(hdr_fov if use_hdr else traj.fov_m, dtype=float), (3,))
    mat = np.broadcast_to(np.asarray(hdr_mat if use_hdr else traj.matrix, dtype=float), (3,))
    # axes the header declares as resolved (matrix > 1): a 2D slice has no kz to speak of
    ax = mat > 1
    if not np.any(ax):
        return {"kmax_ratio": float("nan"), "centre_sample": -1, "centre_k_fraction": float("nan"), "reference": "none"}
    kn = mat[ax] / (2 * fov[ax])
    # an even stride of projections: every readout of a design reaches about the same kmax, and a
    # unit mix-up scales all of them (the full arrays are validated for finite values on loading)
    k_all = np.asarray(traj.k)
    stride = max(1, k_all.shape[0] // CHECK_PROJECTIONS) if k_all.ndim == 3 else 1
    ksub = k_all[::stride]
    kabs = np.array([max(-float(ksub[..., d].min()), float(ksub[..., d].max())) for d in range(3)])[ax]  # no |k| temporary
    ratio = float(np.max(kabs / kn))
    if not ratio > 0:  # all-zero k (or NaN): no unit explains it
        raise TrajectoryError("trajectory k is zero on every resolved axis (no k-space coverage)", src)
    lo, hi = KMAX_RATIO_RANGE
    if not (lo <= ratio <= hi):
        unit = _likely_unit(ratio, float(fov[ax][0]), float(kn[0]))
        what = "small" if ratio < lo else "large"
        ref = "" if use_hdr else " (the trajectory's own)"
        raise TrajectoryError(
            f"trajectory k reaches {ratio:.3g} x the Nyquist radius {kn.max():.4g} 1/m of the header's matrix "
            f"{mat.astype(int).tolist()} and FOV {(fov * 1e3).round(1).tolist()} mm{ref} (expected {lo}-{hi} x): "
            f"k is too {what} for cycles/m, likely {unit}; convert it (narecon traj import --units ...)",
            src,
        )
    out = {
        "kmax_ratio": ratio,
        "centre_sample": -1,
        "centre_k_fraction": float("nan"),
        "reference": "header" if use_hdr else "trajectory",
    }
    # the data's own k-space centre along the readout
    if getattr(acq, "data", None) is None or acq.n_samples != traj.n_samples or acq.n_samples < 3:
        return out
    pidx_all = np.asarray(acq.projection_index)[0]
    if pidx_all.max() >= traj.n_projections:
        return out
    rows = slice(None, None, max(1, pidx_all.size // CHECK_PROJECTIONS))  # the same stride of acquired readouts
    pidx = pidx_all[rows]
    prof = np.abs(acq.data[:, :, rows]).mean(axis=(0, 1, 2))
    med = float(np.median(prof))
    j = int(np.argmax(prof))
    if not (med > 0 and prof[j] > _CENTRE_PROMINENCE * med):
        return out
    # |k| at that sample above each readout's own closest approach to the centre (0 for a line
    # through or from the centre, whatever its offset: Cartesian lines, radial spokes)
    kp = traj.k[pidx]
    kr = np.sqrt(np.einsum("ijk,ijk->ij", kp, kp))  # |k| without the (n, n_samp, 3) square temporary
    kmax = float(kr.max())
    excess = kr[:, j] - kr.min(axis=1)
    frac = float(excess.mean() / kmax) if kmax > 0 else 0.0
    out.update(centre_sample=j, centre_k_fraction=frac)
    if frac > CENTRE_K_FRACTION:
        closest = int(np.median(np.argmin(kr, axis=1)))
        raise TrajectoryError(
            f"the data's k-space centre is at readout sample {j}, where the trajectory's |k| is {frac:.2f} x kmax above "
            f"each readout's closest approach to the centre (sample {closest}): the trajectory does not belong to these data "
            "(reversed or shifted readout, wrong sample count, or another sequence)",
            src,
        )
    return out
