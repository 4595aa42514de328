"""Analysis after reconstruction: ROI statistics on NIfTI volumes and the longitudinal study.

* :mod:`recon.analysis.roi` — sphere ROIs (mm or voxel centres, radius in mm) weighted by
  fractional voxel overlap, label-mask ROIs resampled through the affines, weighted statistics.
* :mod:`recon.analysis.stats` — paired t-tests with counts and effect size, ellipsoid volumes,
  time-point labels.
* :mod:`recon.analysis.study` — sessions table -> per-tissue values and study tables.
* :mod:`recon.analysis.report` — CSV tables, PNG figures and the Markdown report.
"""

from recon.analysis.roi import (
    SUPERSAMPLE,
    Image,
    MaskROI,
    RoiResult,
    SphereROI,
    load_image,
    measure,
    read_roi_table,
    resample_labels_nearest,
    sphere_weights,
    weighted_stats,
)
from recon.analysis.stats import PairedTest, ellipsoid_volume_mm3, paired_ttest, timepoint_hours

__all__ = [
    "SUPERSAMPLE",
    "Image",
    "MaskROI",
    "RoiResult",
    "SphereROI",
    "load_image",
    "measure",
    "read_roi_table",
    "resample_labels_nearest",
    "sphere_weights",
    "weighted_stats",
    "PairedTest",
    "ellipsoid_volume_mm3",
    "paired_ttest",
    "timepoint_hours",
]
