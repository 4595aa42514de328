"""Calibration of sodium images to tissue sodium concentration (TSC, mM).

* :func:`calibrate` -- echo-1 image + affine -> :class:`Calibration` (TSC map, signal, ratio map,
  :class:`CalibrationResult` = calibration.json content).
* :mod:`recon.calibrate.tubes` -- automatic tube detection, tubes files, ROI statistics.
* :mod:`recon.calibrate.fit` -- weighted line ``S = a C + b`` with R^2, residuals, warnings.
* :mod:`recon.calibrate.tsc` -- phase-corrected real / noise-floor-corrected signal, TSC and ratio maps.
* :mod:`recon.calibrate.relax` -- T1 saturation and T2* (over the readout) factors, tissue vs reference.
* :mod:`recon.calibrate.qa` -- the QA figure (qa.png).
"""

from recon.calibrate.calibration import (
    DEFAULT_REFERENCE_MM,
    DEFAULT_TUBES_MM,
    Calibration,
    CalibrationResult,
    calibrate,
)
from recon.calibrate.fit import LinearFit, fit_line, reference_scale
from recon.calibrate.model import SystemModel, fit_tubes
from recon.calibrate.qa import qa_figure
from recon.calibrate.relax import (
    CSF,
    SALINE_TUBE,
    TISSUE,
    ReadoutWeighting,
    RelaxationFactors,
    RelaxationModel,
    relaxation_factors,
    t1_saturation,
    t2star_factor,
)
from recon.calibrate.tsc import noise_floor_correct, phase_correct, ratio_map, signal_image, tsc_map
from recon.calibrate.tubes import Tube, TubeSpec, detect_tubes, read_tubes_file, sphere_mask, tubes_from_specs

__all__ = [
    "calibrate",
    "SystemModel",
    "fit_tubes",
    "Calibration",
    "CalibrationResult",
    "DEFAULT_TUBES_MM",
    "DEFAULT_REFERENCE_MM",
    "LinearFit",
    "fit_line",
    "reference_scale",
    "qa_figure",
    "RelaxationModel",
    "RelaxationFactors",
    "ReadoutWeighting",
    "relaxation_factors",
    "t1_saturation",
    "t2star_factor",
    "TISSUE",
    "CSF",
    "SALINE_TUBE",
    "signal_image",
    "phase_correct",
    "noise_floor_correct",
    "tsc_map",
    "ratio_map",
    "Tube",
    "TubeSpec",
    "detect_tubes",
    "read_tubes_file",
    "tubes_from_specs",
    "sphere_mask",
]
