"""Issue 10 on the digital phantom (slow): iterative beats FS-CPR gridding at the same noise.

32^3 head phantom (7 mm), TPI 6.2 ms readout, B0 map and bi-exponential decay simulated on
64^3, raw SNR 150; both reconstructions calibrated with the tubes as ``narecon run`` does.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from recon.pipeline import RunOptions, run

pytestmark = pytest.mark.slow


@pytest.mark.xfail(
    strict=True,
    reason="known limit (session 9): with today's phantom at 32^3 (7 mm) the tubes are 2 voxels in the FOV's "
    "corners, outside the alias-free sphere; the iterative map (two-pool decay) has NRMSE 0.2576 against "
    "fs-cpr's 0.2577, but its eroded tube means ring: 60 mM tube 5.4 % off against 3.1 % (r2star-map: NRMSE 0.2585)",
)
def test_iterative_lower_nrmse_and_bias_no_worse(tmp_path):
    import dataclasses

    from recon.sim import HeadPhantom, simulate, write_simulation
    from recon.sim.phantom import default_tubes
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.007, p=0.3, gmax_t_per_m=4e-3)
    # 7 mm voxels: the tubes of `narecon simulate --matrix 32` (2 voxels, in the FOV's corners; the
    # default 13 mm tubes beside the head are 1.9 voxels and one is lost to the head's point response)
    tubes = tuple(dataclasses.replace(t, radius_m=0.014) for t in default_tubes(layout="corners"))
    write_simulation(simulate(HeadPhantom(tubes=tubes), traj, snr=150.0, seed=2), traj, tmp_path / "sim")
    raw = [str(tmp_path / "sim" / "raw.dat")]
    truth = nib.load(tmp_path / "sim" / "truth_tsc_mM.nii.gz").get_fdata()
    labels = nib.load(tmp_path / "sim" / "truth_labels.nii.gz").get_fdata()
    info = json.loads((tmp_path / "sim" / "truth.json").read_text())
    head = ndimage.binary_dilation(truth > 0, iterations=1)
    res = {}
    for name, opts in (
        ("fs-cpr", RunOptions(b0="fs-cpr", qa=False)),
        ("iterative", RunOptions(b0="iterative", iter_max=10, qa=False)),
    ):
        run(raw, tmp_path / name, opts)
        t = nib.load(tmp_path / name / "tsc_mM.nii.gz").get_fdata()
        nrmse = np.linalg.norm((t - truth)[head]) / np.linalg.norm(truth[head])
        bias = {}
        for c in info["compartments"]:
            roi = ndimage.distance_transform_edt(labels == c["label"]) >= 1.6
            if roi.sum() >= 3:
                bias[c["name"]] = abs(t[roi].mean() / c["tsc_mM"] - 1)
        res[name] = (nrmse, bias)
        print(name, round(nrmse, 4), {k: round(100 * v, 1) for k, v in bias.items()})
    assert res["iterative"][0] < res["fs-cpr"][0]
    for roi, b in res["fs-cpr"][1].items():
        assert res["iterative"][1][roi] <= b + 0.01, roi  # no worse (1 % tolerance for noise)
