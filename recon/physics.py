"""Physical constants and relaxation models of sodium MRI, defined once for the whole package.

* Gyromagnetic ratios / 2 pi (Hz/T) of 23Na and 1H and their ratio (scales a proton field map to 23Na).
* :func:`t1_saturation`: spoiled steady-state (Ernst) signal fraction; keyword-only so that the
  argument order cannot be confused (the package once had two copies with different orders).
* :func:`multiexp_decay` / :func:`biexp_decay`: normalised T2* decay ``sum_i w_i exp(-t / T2*_i)``.
* :class:`Relaxation` and the literature presets: :data:`TISSUE_PRIORS` (per compartment, the values
  the simulator's phantom uses), :data:`TISSUE` / :data:`CSF` / :data:`SALINE_TUBE` (the models the
  calibration's relaxation correction uses) and :data:`RELAXATION_RANGES` (the literature ranges the
  validation family draws from).

Sources (see also notes/sodium_domain.md): tissue T2* bi-exponential 60/40 (Hubbard 1970 for the
spin-3/2 split; Riemer et al. 2018 at 3T: WM 3.4 / 23.5 ms, GM 3.9 / 26.3 ms; Niesporek et al. at 7T:
3.5 / 23.3 ms), CSF mono-exponential 54 +- 4 ms (Fleysher et al. 2009, 7T), saline 50-60 ms. T1 of
brain sodium 30-40 ms and of fluids 50-65 ms are marked [unverified] in the notes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from recon.errors import InputError

GAMMA_BAR_23NA_HZ_PER_T = 11.262e6
"""Gyromagnetic ratio / 2 pi of 23Na in Hz/T."""
GAMMA_BAR_1H_HZ_PER_T = 42.577478e6
"""Gyromagnetic ratio / 2 pi of 1H in Hz/T."""
GAMMA_RATIO_NA_H = GAMMA_BAR_23NA_HZ_PER_T / GAMMA_BAR_1H_HZ_PER_T
"""gamma(23Na) / gamma(1H) = 0.2645: scales a proton field map in Hz to 23Na Hz."""


def t1_saturation(*, tr_s: float, flip_deg: float, t1_s: float) -> float:
    """Spoiled steady-state signal relative to full relaxation, ``sin a (1 - E1) / (1 - cos a E1)``.

    ``E1 = exp(-TR / T1)``; TR and T1 in s, flip angle in degrees. Dimensionless.
    Raises :class:`recon.errors.InputError` for TR <= 0 or T1 <= 0.
    """
    if not (tr_s > 0 and t1_s > 0):
        raise InputError(f"TR and T1 must be positive, got TR {tr_s} s, T1 {t1_s} s")
    a = math.radians(flip_deg)
    e1 = math.exp(-tr_s / t1_s)
    return math.sin(a) * (1.0 - e1) / (1.0 - math.cos(a) * e1)


def multiexp_decay(t_s, fractions: Sequence[float], t2star_s: Sequence[float]) -> np.ndarray:
    """Normalised T2* decay ``sum_i w_i exp(-t / T2*_i)`` at times ``t_s`` (s); ``w`` sums to 1 here."""
    t = np.asarray(t_s, dtype=np.float64)
    w = np.asarray(fractions, dtype=np.float64)
    w = w / w.sum()
    return sum(float(f) * np.exp(-t / float(t2)) for f, t2 in zip(w, t2star_s))


def biexp_decay(t_s, frac_short: float, t2s_short_s: float, t2s_long_s: float) -> np.ndarray:
    """Bi-exponential decay ``f exp(-t/T2s) + (1 - f) exp(-t/T2l)`` (t in s)."""
    return multiexp_decay(t_s, (frac_short, 1.0 - frac_short), (t2s_short_s, t2s_long_s))


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """Relaxation of one sodium compartment: T1 (s) and bi-exponential T2* (``frac_short`` of the
    signal at t = 0 decays with ``t2s_short_s``, the rest with ``t2s_long_s``; a fluid has
    ``frac_short = 0``)."""

    t1_s: float
    t2s_short_s: float
    t2s_long_s: float
    frac_short: float

    def decay(self, t_s) -> np.ndarray:
        """Normalised T2* decay at ``t_s`` (s)."""
        return biexp_decay(t_s, self.frac_short, self.t2s_short_s, self.t2s_long_s)

    def pools(self) -> list[tuple[float, float]]:
        """[(fraction, T2* in s)] of the exponential pools (one for a fluid)."""
        if self.frac_short <= 0 or self.t2s_short_s == self.t2s_long_s:
            return [(1.0, self.t2s_long_s)]
        return [(self.frac_short, self.t2s_short_s), (1.0 - self.frac_short, self.t2s_long_s)]


def _fluid(t1_s: float, t2_s: float) -> Relaxation:
    return Relaxation(t1_s, t2_s, t2_s, 0.0)


TISSUE_PRIORS: dict[str, Relaxation] = {
    "grey_matter": Relaxation(0.038, 0.0040, 0.026, 0.6),  # Riemer 2018; Niesporek 7T; T1 [unverified]
    "white_matter": Relaxation(0.036, 0.0035, 0.023, 0.6),  # Riemer 2018; Niesporek 7T
    "csf": _fluid(0.060, 0.054),  # Fleysher 2009 (7T T2* 54 ms); T1 [unverified]
    "vitreous": _fluid(0.060, 0.050),  # fluid
    "oedema": Relaxation(0.045, 0.005, 0.035, 0.45),  # model: raised extracellular volume
    "tumour": Relaxation(0.042, 0.0045, 0.030, 0.5),  # model values
    "necrotic_core": Relaxation(0.055, 0.005, 0.045, 0.2),  # model values
    "saline": _fluid(0.055, 0.050),  # aqueous NaCl tube, saline 50-60 ms
}
"""Literature relaxation of each compartment at 7T (T1, T2* in s), as the digital phantom uses them."""

RELAXATION_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "tissue": {  # grey and white matter, tumour
        "t1_s": (0.030, 0.045),
        "t2s_short_s": (0.0025, 0.0055),
        "t2s_long_s": (0.018, 0.032),
        "frac_short": (0.5, 0.7),
    },
    "fluid": {"t1_s": (0.050, 0.065), "t2s_long_s": (0.045, 0.060)},  # CSF, vitreous, tubes
}
"""Literature ranges (7T, see the module docstring) from which the validation family draws relaxation."""


@dataclasses.dataclass(frozen=True)
class RelaxationPreset:
    """A named relaxation model for the calibration's correction (``fractions`` sum to 1)."""

    name: str
    t1_s: float
    t2star_s: tuple[float, ...]
    fractions: tuple[float, ...]


TISSUE = RelaxationPreset("tissue (bi-exponential, brain parenchyma)", t1_s=0.035, t2star_s=(0.0035, 0.023), fractions=(0.6, 0.4))
"""Brain tissue: 60 % short (3.5 ms) / 40 % long (23 ms) T2*, T1 35 ms (7T literature, WM/GM-like)."""
CSF = RelaxationPreset("CSF/vitreous (mono-exponential)", t1_s=0.060, t2star_s=(0.054,), fractions=(1.0,))
"""CSF or vitreous: mono-exponential T2* 54 ms (Fleysher 2009, 7T), T1 60 ms."""
SALINE_TUBE = RelaxationPreset("aqueous NaCl tube (mono-exponential)", t1_s=0.055, t2star_s=(0.050,), fractions=(1.0,))
"""Calibration tube of aqueous saline: mono-exponential T2* 50 ms, T1 55 ms."""


def tissue_decay(t_s) -> np.ndarray:
    """The :data:`TISSUE` preset's decay (WM-like 0.6 exp(-t/3.5 ms) + 0.4 exp(-t/23 ms)), t in s."""
    return multiexp_decay(t_s, TISSUE.fractions, TISSUE.t2star_s)


def csf_decay(t_s) -> np.ndarray:
    """The :data:`CSF` preset's decay exp(-t/54 ms), t in s."""
    return multiexp_decay(t_s, CSF.fractions, CSF.t2star_s)


def two_pool_decay(t_s, tissue_fraction) -> np.ndarray:
    """Partial-volume decay ``a tissue_decay(t) + (1 - a) csf_decay(t)`` (t in s, ``a`` in [0, 1]).

    The signal of a voxel that holds a fraction ``a`` (of its signal at t = 0) of bi-exponential
    tissue (:data:`TISSUE`) and the rest of mono-exponential fluid (:data:`CSF`): a grey/white or
    tissue/CSF boundary voxel is such a mixture, which one mono-exponential R2* does not describe
    over a readout of several T2*_short. Broadcasts ``t_s`` against ``tissue_fraction``.
    """
    a = np.asarray(tissue_fraction, dtype=np.float64)
    return a * tissue_decay(t_s) + (1.0 - a) * csf_decay(t_s)


def tissue_fraction_from_ratio(ratio, te1_s: float, te2_s: float) -> np.ndarray:
    """The tissue fraction ``a`` of :func:`two_pool_decay` whose echo ratio d(TE2)/d(TE1) is ``ratio``.

    Exact inverse (the ratio is a Moebius function of ``a``), clipped to [0, 1]: ratios above the
    fluid's give 0 (fluid), below the tissue's give 1. Times in s.
    """
    r = np.asarray(ratio, dtype=np.float64)
    t1, t2 = float(tissue_decay(te1_s)), float(tissue_decay(te2_s))
    f1, f2 = float(csf_decay(te1_s)), float(csf_decay(te2_s))
    a = (f2 - r * f1) / ((f2 - t2) - r * (f1 - t1))
    return np.clip(a, 0.0, 1.0)
