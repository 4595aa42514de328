"""The receive profile of a coil array (recon.receive), against the simulator's known loop sensitivities.

An array's combined image is the object times the array's root-sum-of-squares sensitivity; the tubes beside
the head see more of it than the brain, so an uncorrected map reads the brain low. A homogeneous-coil
reference scan of the same object measures the profile; the corrected map then agrees with the one-coil scan.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from recon.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """One phantom seen by an 8-loop array and by a uniform coil (16^3 TPI); the reference written as twix."""
    from recon.io import write_twix
    from recon.sim import HeadPhantom, simulate
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.224 / 24, p=0.3, undersampling=2.0)
    ph = HeadPhantom()
    array = simulate(ph, traj, snr=2000, n_coils=8, n_threads=1).acquisition
    sim = simulate(ph, traj, snr=2000, n_coils=1, n_threads=1, seed=7)
    path = tmp_path_factory.mktemp("receive") / "reference.dat"
    write_twix(sim.acquisition, path)
    write_twix(array, path.parent / "array.dat")
    geo = dict(sim.acquisition.geometry or {})
    geo["position_m"] = tuple(np.asarray(geo.get("position_m", (0.0, 0.0, 0.0)), dtype=float) + [0.0, 0.0, 0.02])
    write_twix(dataclasses.replace(sim.acquisition, geometry=geo), path.parent / "moved.dat")  # 20 mm along z
    tissue = [c["label"] for c in sim.truth.info["compartments"] if not c["name"].startswith("tube")]
    head = ndimage.binary_erosion(np.isin(sim.truth.labels, tissue))
    tubes = path.parent / "tubes.csv"  # the tubes file a user writes (RAS mm): 16^3 is too coarse to find them
    rows = ["x_mm,y_mm,z_mm,radius_mm,concentration_mM,length_mm,ax,ay,az"]
    for t in ph.tubes:
        c, a = np.asarray(t.centre_m) * 1e3, np.asarray(t.axis)
        vals = (-c[0], -c[1], c[2], t.radius_m * 1e3, t.concentration_mM, t.length_m * 1e3, -a[0], -a[1], a[2])
        rows.append(",".join(f"{v:.6g}" for v in vals))
    tubes.write_text("\n".join(rows) + "\n")
    return {
        "traj": traj, "phantom": ph, "array": array, "reference": sim.acquisition, "ref_path": str(path), "head": head,
        "array_path": str(path.parent / "array.dat"), "moved_path": str(path.parent / "moved.dat"),
        "tubes": str(tubes),
    }  # fmt: skip


def _inside(img: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(img > 0.5 * np.percentile(img, 99))


def test_profile_is_the_arrays_rss_sensitivity(scans):
    """receive_profile of the two plain gridding images has the shape of the true RSS sensitivity: inside the head
    the rms deviation of their ratio from its median is < 2 %, and < 1/3 of the sensitivity's own variation (which is
    what an uncorrected map carries; the sensitivity varies by > 20 % there). 14 mm voxels: the point response mixes
    the profile with the object's edges."""
    import recon
    from recon.receive import receive_profile
    from recon.sim import grid_points

    traj, ph = scans["traj"], scans["phantom"]
    opts = {"calibration": "none", "qa": False, "b0": "none"}
    a = recon.reconstruct(scans["array"], opts, trajectory=traj).echoes[0]
    r = recon.reconstruct(scans["reference"], opts, trajectory=traj).echoes[0]
    prof = receive_profile(a, r, 224 / 24)
    rss = np.sqrt((np.abs(ph.receive_sensitivity(grid_points(traj.matrix, traj.fov_m), 8)) ** 2).sum(0))
    inside = _inside(np.abs(r))
    want = rss / np.median(rss[prof.support])
    q = (prof.map / want)[inside]  # the profile's shape error (its scale is free: the tubes calibrate it)
    shape_err = float(np.sqrt(np.mean((q / np.median(q) - 1) ** 2)))
    flat_err = float(np.sqrt(np.mean((want[inside] / np.median(want[inside]) - 1) ** 2)))  # no correction
    print(f"shape error rms {shape_err:.4f} (uncorrected {flat_err:.4f})")
    assert inside.sum() > 20
    assert rss[inside].max() / rss[inside].min() > 1.2
    assert shape_err < 0.02 and flat_err > 3 * shape_err
    with pytest.raises(InputError, match="shape"):
        receive_profile(a, r[:-1], 9.3)
    with pytest.raises(InputError, match="no signal"):
        receive_profile(a, np.zeros_like(r), 9.3)


def test_reference_scan_makes_the_array_map_agree_with_one_coil(scans, tmp_path):
    """Calibrated TSC inside the head (truth labels, eroded; 24^3): the 8-coil map with --receive-reference within 2 %
    of the 1-coil map of the same phantom (measured +0.2 %), without it off by > 10 % (measured -15.8 %) and warned
    about in calibration.json; written as receive_map.nii.gz with its record."""
    import recon

    traj = scans["traj"]
    base = {"qa": False, "calibration": scans["tubes"]}
    one = recon.reconstruct(scans["reference"], base, trajectory=traj)
    plain = recon.reconstruct(scans["array"], base, trajectory=traj)
    fixed = recon.reconstruct(scans["array_path"], {**base, "receive_reference": scans["ref_path"]}, trajectory=traj)
    inside = scans["head"]
    assert inside.sum() > 20
    ref_mean = float(one.tsc_mM[inside].mean())
    got = {"array": float(plain.tsc_mM[inside].mean()), "corrected": float(fixed.tsc_mM[inside].mean())}
    print(f"head mean: one coil {ref_mean:.2f} mM, {got}")
    assert abs(float(fixed.tsc_mM[inside].mean()) / ref_mean - 1) < 0.02
    assert abs(float(plain.tsc_mM[inside].mean()) / ref_mean - 1) > 0.10
    assert any("receive reference" in w for w in plain.calibration_dict()["warnings"])
    rec = fixed.calibration_dict()["receive_profile"]
    assert rec["reference_coils"] == 1 and rec["profile_max"] / rec["profile_min"] > 1.2
    recon.write_run(fixed, tmp_path / "out")
    assert (tmp_path / "out" / "receive_map.nii.gz").exists()
    assert "receive_profile" in json.loads((tmp_path / "out" / "calibration.json").read_text())


def test_receive_reference_is_checked_before_work(scans, tmp_path):
    """A missing reference, a reference without calibration, and a reference of another grid: one clear error each."""
    import recon

    traj = scans["traj"]
    with pytest.raises(ConfigError, match="file not found"):
        recon.reconstruct(scans["array"], {"receive_reference": str(tmp_path / "no.dat")}, trajectory=traj)
    with pytest.raises(ConfigError, match="needs a calibration"):
        recon.reconstruct(scans["array"], {"receive_reference": scans["ref_path"], "calibration": "none"}, trajectory=traj)
    with pytest.raises(InputError, match="grid or position"):
        recon.reconstruct(
            scans["array"],
            {"receive_reference": scans["moved_path"], "qa": False, "calibration": scans["tubes"]},
            trajectory=traj,
        )
