"""Relaxation weighting of the sodium signal: T1 saturation and T2* decay over the readout.

Tissue and the calibration reference (aqueous tubes, or CSF for the internal reference) relax
differently, so a calibration line measured on tubes maps tissue signal to concentration with a
bias. The correction divides the tissue signal by the *relative* weighting
``total(target) / total(reference)``; every factor is written out.

Models (closed forms, written here because no library provides this MR-specific algebra):

* T1, spoiled steady state (Ernst): ``f_T1 = sin(a) (1 - E1) / (1 - cos(a) E1)``, ``E1 = exp(-TR/T1)``.
* T2*, mono- or multi-exponential: ``d(t) = sum_i w_i exp(-t / T2*_i)`` (``sum w_i = 1``).
* T2* over the readout (the "object" model): sample ``m`` is acquired at ``TE + t_m``. A gridding
  reconstruction of a Gaussian blob of FWHM ``L`` returns at the blob's centre
  ``sum_m w_m G(k_m) d(TE + t_m) / sum_m w_m G(k_m)``, with ``w_m`` the density weights and
  ``G(k) = exp(-2 pi^2 s^2 |k|^2)`` (``s = L / 2.3548``) the blob's normalised spectrum. This is the
  mean of the decay weighted by the k-space centre: ``L -> infinity`` gives the decay when the
  readout passes k = 0 (TE for centre-out readouts), ``L -> 0`` the PSF peak (all samples weighted
  by density). Defaults: ``L`` = 100 mm for tissue (brain-scale regions) and 30 mm for the
  reference (tubes, ventricles, vitreous). A Gaussian rather than a uniform sphere because the
  sphere's oscillating spectrum aliases on the discrete samples for objects much larger than a
  voxel (factors above 1 were measured). On the digital phantom (TPI, 6.4 mm voxels, 6.8 ms
  readout) this model predicts a white-matter/tube weighting ratio of 0.971; the reconstruction
  showed 0.969. Without a trajectory the factor is ``d(TE)``.

Literature values (see notes/sodium_domain.md) give the presets; T1 values are marked
unverified there and should be replaced by measured values when available.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from recon import physics
from recon.errors import CalibrationError
from recon.physics import t1_saturation


@dataclasses.dataclass(frozen=True)
class RelaxationModel:
    """Relaxation of one sodium pool.

    Attributes
    ----------
    name : short label written into calibration.json.
    t1_s : longitudinal relaxation time in s.
    t2star_s : one (mono-exponential) or more T2* components in s.
    fractions : signal fraction of each component at t = 0 (normalised to sum 1).
    """

    name: str
    t1_s: float
    t2star_s: tuple[float, ...]
    fractions: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        t2 = tuple(float(x) for x in np.atleast_1d(self.t2star_s))
        fr = tuple(float(x) for x in np.atleast_1d(self.fractions))
        if len(fr) != len(t2):
            raise CalibrationError(f"relaxation model {self.name!r}: {len(t2)} T2* values but {len(fr)} fractions")
        if self.t1_s <= 0 or min(t2) <= 0 or min(fr) < 0 or sum(fr) <= 0:
            raise CalibrationError(f"relaxation model {self.name!r}: T1, T2* must be > 0 and fractions >= 0")
        s = sum(fr)
        object.__setattr__(self, "t2star_s", t2)
        object.__setattr__(self, "fractions", tuple(f / s for f in fr))
        object.__setattr__(self, "t1_s", float(self.t1_s))

    def decay(self, t_s) -> np.ndarray:
        """Normalised transverse decay d(t) = sum_i w_i exp(-t / T2*_i) at times ``t_s`` (s)."""
        return physics.multiexp_decay(t_s, self.fractions, self.t2star_s)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "t1_s": self.t1_s,
            "t2star_s": list(self.t2star_s),
            "fractions": list(self.fractions),
        }


def _from_preset(p: physics.RelaxationPreset) -> RelaxationModel:
    return RelaxationModel(p.name, t1_s=p.t1_s, t2star_s=p.t2star_s, fractions=p.fractions)


TISSUE = _from_preset(physics.TISSUE)
"""Brain tissue (:data:`recon.physics.TISSUE`): 60 % 3.5 ms / 40 % 23 ms T2*, T1 35 ms."""
CSF = _from_preset(physics.CSF)
"""CSF or vitreous (:data:`recon.physics.CSF`): mono-exponential T2* 54 ms, T1 60 ms."""
SALINE_TUBE = _from_preset(physics.SALINE_TUBE)
"""Calibration tube of aqueous saline (:data:`recon.physics.SALINE_TUBE`): T2* 50 ms, T1 55 ms."""
PRESETS = {"tissue": TISSUE, "csf": CSF, "saline": SALINE_TUBE, "tube": SALINE_TUBE}


def get_model(model: RelaxationModel | str) -> RelaxationModel:
    """A model instance, or a preset by name (``tissue``, ``csf``, ``saline``/``tube``)."""
    if isinstance(model, RelaxationModel):
        return model
    try:
        return PRESETS[str(model).lower()]
    except KeyError:
        raise CalibrationError(f"unknown relaxation model {model!r}; presets: {sorted(PRESETS)}") from None


def gaussian_spectrum(k_per_m, fwhm_m: float) -> np.ndarray:
    """Normalised Fourier transform of a Gaussian blob of FWHM ``fwhm_m``: ``exp(-2 pi^2 s^2 k^2)``."""
    sd = float(fwhm_m) / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return np.exp(-2.0 * np.pi**2 * sd**2 * np.asarray(k_per_m, dtype=np.float64) ** 2)


DEFAULT_TARGET_FWHM_M = 0.100
"""Object scale for tissue in the readout model (brain-scale regions), m."""
DEFAULT_REFERENCE_FWHM_M = 0.030
"""Object scale for the reference (tubes, ventricles, vitreous) in the readout model, m."""


@dataclasses.dataclass
class ReadoutWeighting:
    """Sample times and weights of a readout, flattened: what the T2* readout factor needs.

    Attributes
    ----------
    kmag_per_m : |k| of each sample (cycles/m).
    t_s : time of each sample from the first ADC sample (s).
    dcf : density weight of each sample (1/m^3; only relative values matter).
    """

    kmag_per_m: np.ndarray
    t_s: np.ndarray
    dcf: np.ndarray

    @classmethod
    def from_trajectory(cls, traj, dcf: np.ndarray | None = None) -> ReadoutWeighting:
        """From a :class:`recon.trajectory.Trajectory`; weights: ``dcf``, ``traj.dcf`` or the analytic DCF."""
        if dcf is None:
            dcf = traj.dcf
        if dcf is None:
            from recon.trajectory.dcf import compute_dcf

            dcf = compute_dcf(traj, "analytic")
        k = np.sqrt((np.asarray(traj.k) ** 2).sum(-1))
        t = np.broadcast_to(np.asarray(traj.t), k.shape)
        w = np.asarray(dcf, dtype=np.float64)
        if w.shape != k.shape:
            raise CalibrationError(f"density weights of shape {w.shape} do not match the trajectory {k.shape}")
        return cls(k.ravel(), np.ascontiguousarray(t).ravel(), w.ravel())


def t2star_factor(
    model: RelaxationModel,
    te_s: float,
    readout: ReadoutWeighting | None = None,
    object_fwhm_m: float = DEFAULT_TARGET_FWHM_M,
) -> float:
    """T2* signal factor at echo time ``te_s`` (s), over the readout when ``readout`` is given.

    Without ``readout``: ``d(TE)``. With it: the centre of a Gaussian object of FWHM
    ``object_fwhm_m`` (module docstring), ``sum w G d(TE + t) / sum w G``.
    """
    if readout is None:
        return float(model.decay(te_s))
    wf = readout.dcf * gaussian_spectrum(readout.kmag_per_m, object_fwhm_m)
    den = wf.sum()
    if not np.isfinite(den) or abs(den) <= 0:
        raise CalibrationError("readout weighting has zero total weight (check the density weights)")
    return float((wf * model.decay(te_s + readout.t_s)).sum() / den)


@dataclasses.dataclass
class RelaxationFactors:
    """Signal weightings of the target (tissue) and the reference (tubes/CSF) and their ratio.

    ``relative = total_target / total_reference``; calibrated TSC = (S - b) / (a * relative).
    """

    target: RelaxationModel
    reference: RelaxationModel
    tr_s: float
    flip_deg: float
    te_s: float
    t1_target: float
    t1_reference: float
    t2star_target: float
    t2star_reference: float
    readout_model: str
    target_fwhm_m: float | None
    reference_fwhm_m: float | None

    @property
    def total_target(self) -> float:
        return self.t1_target * self.t2star_target

    @property
    def total_reference(self) -> float:
        return self.t1_reference * self.t2star_reference

    @property
    def relative(self) -> float:
        return self.total_target / self.total_reference

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_model": self.target.to_dict(),
            "reference_model": self.reference.to_dict(),
            "tr_s": self.tr_s,
            "flip_deg": self.flip_deg,
            "te_s": self.te_s,
            "readout_model": self.readout_model,
            "target_fwhm_m": self.target_fwhm_m,
            "reference_fwhm_m": self.reference_fwhm_m,
            "t1_target": self.t1_target,
            "t1_reference": self.t1_reference,
            "t2star_target": self.t2star_target,
            "t2star_reference": self.t2star_reference,
            "total_target": self.total_target,
            "total_reference": self.total_reference,
            "relative": self.relative,
        }


def relaxation_factors(
    tr_s: float,
    flip_deg: float,
    te_s: float,
    target: RelaxationModel | str = TISSUE,
    reference: RelaxationModel | str = SALINE_TUBE,
    readout: ReadoutWeighting | None = None,
    target_fwhm_m: float = DEFAULT_TARGET_FWHM_M,
    reference_fwhm_m: float = DEFAULT_REFERENCE_FWHM_M,
) -> RelaxationFactors:
    """T1 and T2* factors of ``target`` and ``reference`` at the protocol's TR (s), flip (deg) and TE (s).

    Pass ``readout`` (e.g. ``ReadoutWeighting.from_trajectory(traj)``) to include the decay over
    the readout (object scales ``target_fwhm_m``, ``reference_fwhm_m`` in m); otherwise the T2*
    factor is taken at TE only.
    """
    target, reference = get_model(target), get_model(reference)
    over = readout is not None
    return RelaxationFactors(
        target=target,
        reference=reference,
        tr_s=float(tr_s),
        flip_deg=float(flip_deg),
        te_s=float(te_s),
        t1_target=t1_saturation(tr_s=tr_s, flip_deg=flip_deg, t1_s=target.t1_s),
        t1_reference=t1_saturation(tr_s=tr_s, flip_deg=flip_deg, t1_s=reference.t1_s),
        t2star_target=t2star_factor(target, te_s, readout, target_fwhm_m),
        t2star_reference=t2star_factor(reference, te_s, readout, reference_fwhm_m),
        readout_model="gaussian-object centre over the readout" if over else "at TE",
        target_fwhm_m=float(target_fwhm_m) if over else None,
        reference_fwhm_m=float(reference_fwhm_m) if over else None,
    )
