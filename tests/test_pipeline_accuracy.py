"""End-to-end accuracy on the protocol geometry (slow: a 64^3 simulation on a 128^3 grid).

Simulated 7T dual-echo TPI (224 mm, 3.5 mm, p 0.3, 4 mT/m, 12.4 ms readout, fully sampled), noise
(raw SNR 150), the phantom's B0 map and bi-exponential decay; the default phantom (head scaled 0.85,
four tubes beside it inside the alias-free sphere); reconstructed by ``narecon run`` with its
defaults plus ``--regions`` over the truth's fine labels and ``--tube-edge-mm`` at the simulator's
boundary blur. Criteria of issue 15, each measured where its method applies:

* tubes: each tube's model amplitude within 1.5 mM of the calibration line;
* voxel means in the truth's labels eroded by the point response (1.6 voxels): grey and white
  matter within 10 % (the map has no relaxation correction by default: tissue's T1, its T2* at TE
  and its readout decay differ from the tubes'; measured -5.6 % / -3.6 %); compartments thinner
  than 3 voxels after erosion are point-response dominated (ringing, spill-in) and not judged by
  voxel means;
* regional TSC through the system model over the fine truth labels: fluids within 3 %, lesions
  within 5 %, grey/white matter within 5 %.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from recon.pipeline import RunOptions, run

pytestmark = pytest.mark.slow

FLUIDS = ("csf_sulcal", "csf_ventricles", "vitreous")
LESIONS = ("oedema", "tumour_rim", "necrotic_core")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from recon.sim import HeadPhantom, simulate, write_simulation
    from recon.trajectory import tpi

    d = tmp_path_factory.mktemp("sim") / "sim"
    traj = tpi(fov_m=0.224, res_m=0.0035, p=0.3, gmax_t_per_m=4e-3)
    ph = HeadPhantom()
    write_simulation(simulate(ph, traj, snr=150.0, seed=1), traj, d, phantom=ph)
    return d


def test_accuracy(simulated, tmp_path):
    info = json.loads((simulated / "truth.json").read_text())
    opts = RunOptions(qa=False, regions=str(simulated / "truth_labels_fine.nii.gz"), tube_edge_mm=info["phantom"]["edge_mm"])
    out = Path(run([str(simulated / "raw.dat")], tmp_path / "a", opts)["out"])
    cal = json.loads((out / "calibration.json").read_text())
    dev = cal["fit"]["deviations_mM"]
    tsc = nib.load(out / "tsc_mM.nii.gz").get_fdata()
    labels = nib.load(simulated / "truth_labels.nii.gz").get_fdata()
    regional = {r["name"]: float(r["model_mM"]) for r in csv.DictReader(open(out / "regions.tsv"), delimiter="\t")}
    rows, bad = [], []
    for c in info["compartments"]:
        name, true = c["name"], c["tsc_mM"]
        edt = ndimage.distance_transform_edt(labels == c["label"])
        roi = edt >= 1.6
        eroded = float(tsc[roi].mean()) / true - 1 if roi.sum() >= 3 else None
        reg = regional[name] / true - 1 if name in regional else None
        rows.append((name, true, eroded, reg, int(roi.sum()), float(edt.max())))
        if name in ("grey_matter", "white_matter"):
            if eroded is None or abs(eroded) > 0.10:
                bad.append(f"{name} eroded {eroded}")
        bound = 0.03 if name in FLUIDS else 0.05 if name in LESIONS or name.endswith("matter") else None
        if bound is not None and (reg is None or abs(reg) > bound):
            bad.append(f"{name} regional {reg}")
    print("\ncompartment      true   eroded    regional  voxels  max depth (vox)")
    for name, true, e, r, n, depth in rows:
        fe = "   n/a  " if e is None else f"{100 * e:+6.1f} %"
        fr = "   n/a  " if r is None else f"{100 * r:+6.1f} %"
        print(f"{name:15s} {true:6.1f} {fe} {fr} {n:6d} {depth:6.2f}")
    print("tube deviations from the line (mM):", np.round(dev, 2).tolist())
    bad += [f"tube {i} {d:+.2f} mM" for i, d in enumerate(dev) if abs(d) > 1.5]
    assert not bad, bad
