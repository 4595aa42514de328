"""Issue 15 section 3: the iterative path keeps the calibration.

The tube model reproduces the *gridding* point response, so in an iterative run the tubes are
fitted on the B0-corrected gridding image of the same scan and the line is applied to the
iterative image (whose large-object scale is the same). Independent truth: the shipped sample's
truth labels and TSC (recon.sim). Fitting the tubes on the iterative image instead (the previous
behaviour) read white matter +7.3 % and oedema +12.5 % on the session-3 sample, 6.7 points above gridding; on
the session-4 sample (volume-conserving simulator) white matter reads -4.2 % iterative, -5.4 % gridding.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import recon

SAMPLE = Path(__file__).resolve().parents[1] / "data_samples"


@pytest.fixture(scope="module")
def truth():
    lab = np.asarray(nib.load(SAMPLE / "truth_labels.nii.gz").dataobj)
    tsc = np.asarray(nib.load(SAMPLE / "truth_tsc_mM.nii.gz").dataobj).astype(np.float64)
    import json

    info = json.loads((SAMPLE / "truth.json").read_text())
    return lab, tsc, {c["name"]: c["label"] for c in info["compartments"]}


def test_iterative_run_fits_tubes_on_the_gridding_image(truth):
    lab, ttsc, names = truth
    res = recon.reconstruct(SAMPLE / "raw.dat", {"b0": "iterative", "iter_max": 8, "qa": False})
    cal = res.calibration.result
    assert "line_applied_to" in cal.settings
    assert np.abs(cal.fit.deviations_mM).max() <= 0.5  # tubes on their line (mM)
    m = ndimage.binary_erosion(lab == names["white_matter"], iterations=1)
    bias = res.tsc_mM[m].astype(np.float64).mean() / ttsc[m].mean() - 1
    grid = recon.reconstruct(SAMPLE / "raw.dat", {"qa": False})
    bias_grid = grid.tsc_mM[m].astype(np.float64).mean() / ttsc[m].mean() - 1
    # neither map corrects the tissue's readout decay (relaxation = none): both read white matter low (-4.2 / -5.4 %); the
    # iterative one must be at least as right as gridding and on the same line (the previous behaviour,
    # tubes fitted on the iterative image, read +6.7 points above gridding)
    assert abs(bias) <= abs(bias_grid) + 0.01, (bias, bias_grid)
    assert abs(bias - bias_grid) <= 0.04, (bias, bias_grid)
    # the TSC map is the iterative image's, not the gridding one's
    assert not np.allclose(res.tsc_mM, grid.tsc_mM, rtol=1e-3)
    assert cal.fit.slope == pytest.approx(grid.calibration.result.fit.slope, rel=2e-3)  # same line as gridding
