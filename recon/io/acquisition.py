"""The :class:`Acquisition`: what every reader produces and every later stage consumes.

Units are SI throughout (s, Hz, T, m, degrees for the flip angle).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recon.errors import InputError


@dataclasses.dataclass
class Acquisition:
    """k-space data and the header values the reconstruction needs.

    Attributes
    ----------
    data : complex64 array (n_echoes, n_coils, n_projections, n_samples).
    te_s : echo times in s, one per echo.
    tr_s : repetition time in s.
    flip_deg : excitation flip angle in degrees.
    dwell_s : ADC dwell time in s (spacing of the stored samples).
    nucleus : e.g. ``"23Na"``.
    frequency_hz : transmit (Larmor) frequency in Hz.
    field_t : nominal B0 in T.
    projection_index : int array (n_echoes, n_projections): the projection (Lin counter) of each
        stored readout, so data[e, :, i] belongs to trajectory projection projection_index[e, i].
    noise : complex64 (n_coils, n_noise_samples) from noise-adjust scans, or None.
    fov_m : field of view per axis in m (from the protocol), or None.
    matrix : nominal matrix per axis, or None.
    geometry : dict with ``position_m`` (3,) slice centre in the scanner's patient coordinates
        (Siemens: x = sag, y = cor, z = tra, i.e. LPS), ``rotation`` (3, 3) matrix whose columns
        are the directions of the readout, phase and slice axes in those coordinates, and
        ``patient_position`` (e.g. "HFS"); or None.
    header : free-form dict: ``software``, ``protocol``, ``sequence``, ``wip_long`` and
        ``wip_double`` (sWipMemBlock alFree/adFree as {index: value}), ``format`` ("VB", "VD/VE",
        "XA", "ISMRMRD", "simulated"), and anything else a reader found useful.
    sources : the file(s) this was read from.
    """

    data: np.ndarray
    te_s: tuple
    tr_s: float
    flip_deg: float
    dwell_s: float
    nucleus: str
    frequency_hz: float
    field_t: float
    projection_index: np.ndarray | None = None
    noise: np.ndarray | None = None
    fov_m: tuple | None = None
    matrix: tuple | None = None
    geometry: dict[str, Any] | None = None
    header: dict[str, Any] = dataclasses.field(default_factory=dict)
    sources: tuple = ()

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        if self.data.ndim != 4:
            raise InputError(f"acquisition data must be (echo, coil, projection, sample), got shape {self.data.shape}")
        self.te_s = tuple(float(t) for t in np.atleast_1d(self.te_s))
        if len(self.te_s) != self.data.shape[0]:
            raise InputError(f"{len(self.te_s)} echo times for {self.data.shape[0]} echoes in the data")
        if self.projection_index is None:
            self.projection_index = np.tile(np.arange(self.data.shape[2]), (self.data.shape[0], 1))
        self.projection_index = np.asarray(self.projection_index)

    def __repr__(self) -> str:
        te = ", ".join(f"{t * 1e3:.3g}" for t in self.te_s)
        src = ", ".join(str(s) for s in self.sources) or "memory"
        noise = "none" if self.noise is None else f"{np.asarray(self.noise).shape[-1]} samples"
        return (
            f"Acquisition({self.nucleus}: {self.n_echoes} echo(es) TE [{te}] ms, {self.n_coils} coil(s), "
            f"{self.n_projections} readouts x {self.n_samples} samples, TR {self.tr_s * 1e3:.4g} ms, "
            f"dwell {self.dwell_s * 1e6:.4g} us, noise {noise}, from {src})"
        )

    @property
    def n_echoes(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_coils(self) -> int:
        return int(self.data.shape[1])

    @property
    def n_projections(self) -> int:
        return int(self.data.shape[2])

    @property
    def n_samples(self) -> int:
        return int(self.data.shape[3])
