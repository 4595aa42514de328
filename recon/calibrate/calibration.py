"""One call from an echo-1 image to a calibrated TSC map: :func:`calibrate`.

Order of operations (each documented in its module):

1. signal image S from echo 1 (:func:`recon.calibrate.tsc.signal_image`: phase-corrected real part,
   or noise-floor-corrected magnitude);
2. optional division by a receive-sensitivity map;
3. calibration: tubes (automatic detection on the echo-1 magnitude, or a tubes file) and a
   weighted line ``S = a C + b`` over the tube ROI means of S; or an internal reference region
   (CSF/vitreous at ``reference_mM``, ``b = 0``);
4. TSC = (S - b) / (a * relative relaxation factor);
5. optional ratio map TSC / mean TSC in a reference region.

The :class:`CalibrationResult` holds everything calibration.json records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from recon.atomic import atomic_file
from recon.calibrate.fit import DEVIATION_WARN, R2_ERROR, R2_WARN, LinearFit, fit_line, reference_scale
from recon.calibrate.model import SystemModel
from recon.calibrate.relax import RelaxationFactors
from recon.calibrate.tsc import divide_sensitivity, ratio_map, region_mean, signal_image, tsc_map
from recon.calibrate.tubes import (
    DEFAULT_PSF_FWHM_VOX,
    Tube,
    _check_image,
    detect_tubes,
    read_tubes_file,
    tubes_from_specs,
    voxel_sizes_mm,
)
from recon.errors import CalibrationError

log = logging.getLogger("recon.calibrate")

from recon.options import DEFAULT_REFERENCE_MM, DEFAULT_TUBES_MM  # noqa: E402  (defined once, in the option schema)

METHODS = ("auto", "file", "internal")


from recon.util import jsonable as _jsonable  # noqa: E402  (one JSON conversion for the project)


@dataclasses.dataclass
class CalibrationResult:
    """What calibration.json records.

    Attributes
    ----------
    method : ``tubes-auto``, ``tubes-file`` or ``internal-reference``.
    signal : how the calibrated image was made (mode, noise SD, phase filter).
    fit : the calibration line (slope a per mM, intercept b, R^2, residuals, deviations).
    tubes : tube ROIs with mean, SD, voxel count and centre (empty for the internal reference).
    warnings : quality warnings (also logged).
    relaxation : relaxation factors (target, reference, relative) or None.
    sensitivity_corrected : whether a receive-sensitivity map divided the signal.
    reference : internal-reference region (label, mM, voxels, mean signal) or None.
    ratio_reference : ratio-map reference region (label, voxels, mean TSC in mM) or None.
    settings : PSF FWHM, erosion, tubes file, concentrations and thresholds used.
    """

    method: str
    signal: dict
    fit: LinearFit
    tubes: list[Tube]
    warnings: list[str]
    relaxation: RelaxationFactors | None = None
    sensitivity_corrected: bool = False
    reference: dict | None = None
    ratio_reference: dict | None = None
    settings: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN/inf become null)."""
        return _jsonable(
            {
                "units": {
                    "tsc": "mM",
                    "slope": "signal per mM",
                    "intercept": "signal",
                    "centre_mm": "RAS+ mm",
                },
                "method": self.method,
                "signal": self.signal,
                "fit": self.fit.to_dict(),
                "tubes": [t.to_dict() for t in self.tubes],
                "warnings": list(self.warnings),
                "relaxation": None if self.relaxation is None else self.relaxation.to_dict(),
                "sensitivity_corrected": self.sensitivity_corrected,
                "reference": self.reference,
                "ratio_reference": self.ratio_reference,
                "settings": self.settings,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write calibration.json atomically."""
        with atomic_file(path) as tmp:
            tmp.write_text(self.to_json() + "\n")


@dataclasses.dataclass
class Calibration:
    """Calibrated maps and the record of how they were made.

    tsc : TSC map in mM (float32, image grid). signal : the calibrated signal image S.
    ratio : TSC / mean TSC in the ratio reference region, or None. result : :class:`CalibrationResult`.
    """

    tsc: np.ndarray
    signal: np.ndarray
    ratio: np.ndarray | None
    result: CalibrationResult

    @property
    def tubes(self) -> list[Tube]:
        return self.result.tubes


def _as_mask(region, shape, affine, what: str) -> np.ndarray:
    """A boolean mask from a mask array or a list of (centre_mm, radius_mm) spheres."""
    from recon.calibrate.tubes import sphere_mask

    if region is None:
        raise CalibrationError(f"no {what} given")
    if isinstance(region, np.ndarray) and region.ndim == 3:
        if region.shape != tuple(shape):
            raise CalibrationError(f"{what} mask shape {region.shape} differs from the image {tuple(shape)}")
        return region.astype(bool)
    mask = np.zeros(shape, dtype=bool)
    for item in region:
        centre, radius = item
        mask |= sphere_mask(shape, affine, centre, float(radius))
    if not mask.any():
        raise CalibrationError(f"{what} contains no voxels of the image")
    return mask


def calibrate(
    echo1: np.ndarray,
    affine: np.ndarray,
    *,
    method: str = "auto",
    concentrations_mM: Sequence[float] = DEFAULT_TUBES_MM,
    tubes_file: str | os.PathLike | None = None,
    signal: str = "auto",
    noise_sigma: float | None = None,
    phase_sigma_vox: float = 2.0,
    psf_fwhm_vox: float = DEFAULT_PSF_FWHM_VOX,
    head_mask: np.ndarray | None = None,
    detect_options: dict | None = None,
    sensitivity: np.ndarray | None = None,
    relaxation: RelaxationFactors | None = None,
    reference_region=None,
    reference_mM: float = DEFAULT_REFERENCE_MM,
    reference_label: str = "CSF",
    ratio_region=None,
    ratio_label: str | None = None,
    r2_min: float = R2_WARN,
    max_rel_dev: float = DEVIATION_WARN,
    system: SystemModel | None = None,
    apply_to: np.ndarray | None = None,
) -> Calibration:
    """Calibrate the echo-1 image into a TSC map in mM.

    Parameters
    ----------
    echo1 : 3D echo-1 image, complex (preferred: phase-corrected real signal) or magnitude.
    affine : 4x4 voxel-to-RAS+ mm affine of the image.
    method : ``auto`` (detect tubes), ``file`` (``tubes_file``) or ``internal`` (reference region).
    concentrations_mM : tube concentrations for automatic detection (matched by rank).
    tubes_file : CSV of tubes (x_mm, y_mm, z_mm, radius_mm, concentration_mM); implies ``file``.
    signal : ``auto``/``real``/``magnitude-nf``/``magnitude`` (see :mod:`recon.calibrate.tsc`).
    noise_sigma : noise SD per real channel in image units (estimated when None).
    phase_sigma_vox : Gaussian low-pass SD (voxels) of the smooth-phase estimate.
    psf_fwhm_vox : tube ROI erosion in voxels (about one PSF FWHM; 1.6 for TPI).
    head_mask : optional head mask for detection; ``detect_options`` go to :func:`detect_tubes`.
    sensitivity : optional receive-sensitivity map; the signal is divided by it before calibration.
    relaxation : optional :class:`RelaxationFactors`; TSC is divided by its ``relative`` factor.
        For the internal reference build it with ``reference='csf'``.
    reference_region : internal reference: a boolean mask or a list of (centre_mm, radius_mm).
    reference_mM : concentration of the internal reference region (default 145 mM).
    ratio_region : optional region (mask or spheres) for a ratio map TSC / mean TSC there.
    ratio_label : name of the ratio region in calibration.json (default: the region as given).
    r2_min, max_rel_dev : warning thresholds for the fit.
    system : the acquisition and reconstruction (:class:`~recon.calibrate.model.SystemModel`). When given,
        tube values come from the point-response model (:mod:`recon.calibrate.model`) instead of eroded
        ROI means; without it the erosion method is used (with a note in the warnings).
    apply_to : optional second echo-1 image of the same scan (same grid) to which the line is applied
        instead of ``echo1``: the tubes are fitted on ``echo1``, the image whose point response
        ``system`` reproduces (the gridding reconstruction), and the TSC map is made from
        ``apply_to`` (e.g. the iterative reconstruction, whose point response differs but whose
        large-object scale is the same). Signal extraction uses the same settings on both.

    Degenerate calibrations raise :class:`CalibrationError`: two tubes at one place, a slope that does
    not change over the tubes' range, or a line with R^2 below 0.5.
    """
    x, aff = _check_image(echo1, affine)
    if not np.all(np.isfinite(x)):
        raise CalibrationError("echo-1 image contains NaN or infinite values")
    if not np.any(x):
        raise CalibrationError("echo-1 image is all zero: nothing to calibrate")
    if tubes_file is not None:
        method = "file"
    if method not in METHODS:
        raise CalibrationError(f"calibration method must be one of {METHODS}, got {method!r}")
    warnings: list[str] = []
    s, sig_info = signal_image(x, signal, noise_sigma, phase_sigma_vox)
    if sensitivity is not None:
        s = divide_sensitivity(s, sensitivity)
    erode_mm = float(psf_fwhm_vox) * float(voxel_sizes_mm(aff).mean())
    settings: dict[str, Any] = {
        "psf_fwhm_vox": float(psf_fwhm_vox),
        "erosion_mm": erode_mm,
        "r2_warn_below": r2_min,
        "deviation_warn_above": max_rel_dev,
    }
    reference = None
    tubes: list[Tube] = []
    if method == "internal":
        mask = _as_mask(reference_region, x.shape, aff, "internal reference region")
        fit = reference_scale(region_mean(s, mask), reference_mM)
        reference = {
            "label": reference_label,
            "concentration_mM": float(reference_mM),
            "n_voxels": int(mask.sum()),
            "mean_signal": fit.signals[0],
        }
        label = "internal-reference"
        if relaxation is not None and len(relaxation.reference.t2star_s) > 1:
            w = (
                f"internal reference ({reference_label}) calibrated with a multi-exponential relaxation "
                f"reference "
                f"model ({relaxation.reference.name}); a fluid reference is mono-exponential"
            )
            log.warning(w)
            warnings.append(w)
    else:
        if method == "auto":
            conc = [float(c) for c in concentrations_mM]
            tubes, w = detect_tubes(
                np.abs(x),
                aff,
                conc,
                psf_fwhm_vox=psf_fwhm_vox,
                head_mask=head_mask,
                rank_image=s,
                **(detect_options or {}),
            )
            settings["concentrations_mM"] = sorted(conc)
        else:
            specs = read_tubes_file(tubes_file)
            tubes, w = tubes_from_specs(x.shape, aff, specs, erode_mm, tubes_file)
            settings["tubes_file"] = os.fspath(tubes_file)
        warnings += w
        for t in tubes:
            t.measure(s)
        _check_distinct(tubes, tubes_file)
        if system is not None:
            warnings += _model_tubes(s, np.abs(x), aff, tubes, system, method == "auto", settings)
            values = [t.model["amplitude"] for t in tubes]
            ses = [t.model["amplitude_se"] for t in tubes]
            sds = ses if all(v is not None and v > 0 for v in ses) else None
            counts = None
        else:
            values = [t.mean for t in tubes]
            sds, counts = [t.sd for t in tubes], [t.n_voxels for t in tubes]
            settings["tube_values"] = "eroded ROI means (no system model given)"
        try:
            fit = fit_line([t.concentration_mM for t in tubes], values, sds, counts)
        except CalibrationError as e:
            raise CalibrationError(e.message, tubes_file) from None
        if fit.r2 is not None and fit.r2 < R2_ERROR:
            raise CalibrationError(
                f"calibration line R^2 = {fit.r2:.3f} (< {R2_ERROR}): the tube values do not follow their "
                f"concentrations {fit.concentrations_mM} mM (wrong tubes, or none)",
                tubes_file,
            )
        warnings += fit.check(r2_min, max_rel_dev)
        label = "tubes-auto" if method == "auto" else "tubes-file"
        if system is not None:
            label += "-model"
    rel = 1.0 if relaxation is None else relaxation.relative
    if apply_to is not None:
        y, _ = _check_image(apply_to, affine)
        if y.shape != x.shape:
            raise CalibrationError(f"image to calibrate has shape {y.shape}, the fitted image {x.shape}")
        if not np.all(np.isfinite(y)):
            raise CalibrationError("image to calibrate contains NaN or infinite values")
        s, _ = signal_image(y, sig_info["mode"], noise_sigma, phase_sigma_vox)
        if sensitivity is not None:
            s = divide_sensitivity(s, sensitivity)
        settings["line_applied_to"] = "a second reconstruction of the scan (the tubes were fitted on the gridding image)"
    tsc = tsc_map(s, fit.slope, fit.intercept, rel)
    ratio, ratio_ref = None, None
    if ratio_region is not None:
        rmask = _as_mask(ratio_region, x.shape, aff, "ratio reference region")
        ratio, ref_mean = ratio_map(tsc, rmask)
        ratio_ref = {
            "label": ratio_label or _region_label(ratio_region),
            "n_voxels": int(rmask.sum()),
            "mean_tsc_mM": ref_mean,
        }
    result = CalibrationResult(
        label,
        sig_info,
        fit,
        tubes,
        warnings,
        relaxation,
        sensitivity is not None,
        reference,
        ratio_ref,
        settings,
    )
    log.info(
        "calibration (%s): a = %.4g per mM, b = %.4g%s",
        label,
        fit.slope,
        fit.intercept,
        "" if fit.r2 is None else f", R^2 = {fit.r2:.4f}",
    )
    return Calibration(tsc, s, ratio, result)


def _region_label(region) -> str:
    """A name for a region as the user gave it: its spheres in mm, or a mask."""
    if isinstance(region, np.ndarray):
        return "mask"
    parts = []
    for centre, radius in region:
        parts.append("sphere (" + ", ".join(f"{float(v):g}" for v in centre) + f") mm r {float(radius):g} mm")
    return "; ".join(parts)


def _check_distinct(tubes: list[Tube], path) -> None:
    """Two tubes at one place make a degenerate calibration."""
    for i in range(len(tubes)):
        for j in range(i + 1, len(tubes)):
            d = float(np.linalg.norm(np.subtract(tubes[i].centre_mm, tubes[j].centre_mm)))
            r = min(tubes[i].radius_mm, tubes[j].radius_mm)
            if d < max(r, 1e-6):
                raise CalibrationError(
                    f"tubes {tubes[i].concentration_mM:g} and {tubes[j].concentration_mM:g} mM lie at one place "
                    f"({d:.1f} mm apart, radius {r:.1f} mm): the calibration would be degenerate",
                    path,
                )


def _other_objects(mag: np.ndarray, tubes: list[Tube], aff: np.ndarray) -> np.ndarray:
    """Mask of everything bright that is not a tube (the head): for the fit neighbourhoods and warnings."""
    from scipy import ndimage

    from recon.calibrate.tubes import _cylinder_box, _cylinder_mask, voxel_sizes_mm

    det = ndimage.gaussian_filter(mag, 0.7)
    thr = 0.1 * float(np.percentile(det, 99.9))
    lab, _ = ndimage.label(det > thr)
    vox = voxel_sizes_mm(aff)
    zone = np.zeros(mag.shape, bool)
    for t in tubes:
        axis = np.asarray(t.axis_ras if t.axis_ras is not None else (0.0, 0.0, 1.0))
        half = (t.length_mm or 2 * t.radius_mm) / 2 + 1.5 * float(vox.mean())
        r = t.radius_mm + 1.5 * float(vox.mean())
        box = _cylinder_box(mag.shape, aff, np.asarray(t.centre_mm), r, half)  # the same voxels as the whole grid
        zone |= _cylinder_mask(mag.shape, aff, box, np.asarray(t.centre_mm), axis, r, half)
    tube_labels = set(np.unique(lab[zone]).tolist()) - {0}
    others = (lab > 0) & ~np.isin(lab, list(tube_labels))
    for tl in tube_labels:  # a component bridging tube and head: keep its part outside the tube zones
        comp = lab == tl
        if comp.sum() > 3 * max(int(zone[comp].sum()), 1):
            others |= comp & ~zone
    return others


def _model_tubes(s, mag, aff, tubes: list[Tube], system: SystemModel, rerank: bool, settings: dict) -> list[str]:
    """Fit the tubes through the point response; fills ``tube.model``; re-ranks detected tubes by amplitude."""
    from recon.calibrate.model import fit_tubes, geometry_from_tube, geometry_warnings

    others = _other_objects(mag, tubes, aff)
    geoms = [geometry_from_tube(t, aff, system) for t in tubes]
    names = [f"{t.concentration_mM:g} mM" for t in tubes]
    fits, warnings = fit_tubes(s, geoms, system, other_objects=others, erode_vox=settings["psf_fwhm_vox"])
    warnings = geometry_warnings([f.geometry for f in fits], system, others, names) + warnings
    for t, f in zip(tubes, fits):
        t.model = f.to_dict()
    if rerank:
        conc = sorted(t.concentration_mM for t in tubes)
        tubes.sort(key=lambda t: t.model["amplitude"])
        for t, c in zip(tubes, conc):
            t.concentration_mM = c
    settings["tube_values"] = "point-response model (recon.calibrate.model)"
    settings["system"] = {
        "matrix": list(system.matrix),
        "fov_m": list(system.fov_m),
        "undersampling": system.undersampling,
        "alias_free_radius_mm": system.alias_free_radius_m * 1e3,
        "tube_t2star_s": system.tube_t2star_s,
        "samples": int(np.prod(system.k.shape[:-1])),
    }
    return warnings
