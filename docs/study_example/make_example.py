"""Simulated longitudinal sodium study for ``narecon study`` (the docs example).

Five simulated patients (one lesion each), five time points (pre, 48h, 1w, 1m, 3m). The tumour
TSC follows the study's pattern: a rise at 48 h, a fall by 1 week and 1 month, and a second
rise at 3 months in two of the five lesions. One session (P4 at 1w) is missing, to show how
missing sessions are handled. Tumour diameters a, b and slice count c (1 mm slices) shrink
after treatment (hypothetical 1H measurements, as entered by a reader).

Two ways to make the TSC maps:

``--mode image`` (default, about a minute): the analytic head phantom of :mod:`recon.sim`
(solid tumour; grey/white matter, CSF and tumour TSC set per patient and time point) is
voxel-averaged on the reconstruction grid (64^3, 3.5 mm, 2^3 sub-samples per voxel), blurred
by a Gaussian of 5.6 mm FWHM (the ideal TPI PSF at 3.5 mm, notes section 5) and given white
noise of 2.3 mM SD (the gridding noise the simulator reports at raw SNR 200). The result is
written as ``DIR/<session>/tsc_mM.nii.gz`` with the affine of ``narecon run`` outputs.

``--mode pipeline``: each session becomes Siemens raw data (the ``recon.sim`` forward model:
TPI p = 0.3, 4 mT/m, TE 0.30/2.32 ms, T1/T2* per compartment, B0; three noise-free
simulations combined linearly, noise at raw SNR 200) written as ``raw.dat`` and reconstructed
with ``narecon run`` into ``DIR/<session>/``.

Then ``narecon study sessions.csv --out OUT`` writes the report (committed under
docs/study_example/output/).

Usage::

    python docs/study_example/make_example.py --work /tmp/narecon_study [--mode image|pipeline]
    narecon study /tmp/narecon_study/sessions.csv --out docs/study_example/output --force
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

TIMEPOINTS = ["pre", "48h", "1w", "1m", "3m"]
# tumour TSC (mM) per patient over the time points; None = session missing
TUMOUR_MM = {
    "P1": [62.0, 71.0, 58.0, 52.0, 60.0],  # second rise at 3m
    "P2": [55.0, 63.0, 54.0, 49.0, 47.0],
    "P3": [70.0, 78.0, 66.0, 60.0, 67.0],  # second rise at 3m
    "P4": [58.0, 64.5, None, 51.0, 49.5],  # 1w session missing
    "P5": [66.0, 72.0, 61.0, 57.0, 55.0],
}
# per-patient scaling of normal tissue (inter-subject variability)
TISSUE_SCALE = {"P1": 1.00, "P2": 0.95, "P3": 1.04, "P4": 0.98, "P5": 1.02}
# tumour diameters a, b (mm) and slice count c (1 mm slices) per time point (hypothetical 1H reads)
DIAMS = {
    "P1": [(30, 27, 25), (31, 28, 26), (28, 25, 24), (25, 22, 21), (26, 23, 22)],
    "P2": [(22, 18, 19), (23, 19, 19), (20, 17, 18), (17, 14, 15), (15, 12, 13)],
    "P3": [(34, 30, 28), (35, 31, 29), (32, 29, 27), (29, 26, 25), (30, 27, 26)],
    "P4": [(18, 15, 16), (18, 16, 16), (17, 15, 15), (15, 13, 13), (13, 11, 12)],
    "P5": [(26, 22, 21), (27, 23, 22), (24, 21, 20), (21, 18, 18), (19, 16, 16)],
}
SLICE_MM = 1.0
# ROI centres in patient LPS mm (phantom coordinates), chosen where a 7 mm cube is >99 % one tissue
ROIS_LPS_MM = {
    "tumour": (-32.0, -18.0, 22.0),
    "contralateral": (32.0, -18.0, 22.0),
    "oedema": (-24.0, -38.0, 21.5),
    "CSF": (11.0, -3.0, 11.0),
    "WM": (18.0, -45.0, 7.5),
    "GM": (25.0, -62.5, 7.5),
}
RADIUS_MM = 2.0
FWHM_MM = 5.6
NOISE_MM = 2.3


def phantom_for(patient: str, tumour_mM: float):
    """The head phantom of ``patient`` with tumour TSC ``tumour_mM`` (solid tumour)."""
    return _component_phantom(tumour_mM, TISSUE_SCALE[patient])


def write_rois(path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "x", "y", "z", "radius_mm"])
        for name, (x, y, z) in ROIS_LPS_MM.items():
            w.writerow([name, -x, -y, z, RADIUS_MM])  # LPS -> RAS mm


def image_mode(work: Path, seed: int = 7) -> None:
    import nibabel as nib
    from scipy.ndimage import gaussian_filter

    from recon.io.geometry import nifti_affine
    from recon.sim.phantom import grid_points

    n, fov = 64, 0.224
    affine = nifti_affine(None, fov, n)
    pts = grid_points(n, fov, supersample=2)  # (8, 64, 64, 64, 3)
    # fractions once; TSC is linear in the compartment concentrations
    base = phantom_for("P1", 65.0)
    comps, frac = base.fractions(pts)
    frac = frac.mean(axis=1)  # voxel averages (n_comp, 64, 64, 64)
    names = [c.name for c in comps]
    rng = np.random.default_rng(seed)
    sigma_vox = FWHM_MM / (2 * np.sqrt(2 * np.log(2))) / (fov * 1e3 / n)
    for patient, series in TUMOUR_MM.items():
        for tp, tum in zip(TIMEPOINTS, series):
            if tum is None:
                continue
            ph = phantom_for(patient, tum)
            table = {c.name: c.tsc_mM for c in ph.table()}
            conc = np.array([table[nm] for nm in names], dtype=np.float64)
            tsc = np.tensordot(conc, frac, axes=1)
            img = gaussian_filter(tsc, sigma_vox, mode="constant") + rng.normal(0.0, NOISE_MM, tsc.shape)
            d = work / f"{patient}_{tp}"
            d.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(img.astype(np.float32), affine), d / "tsc_mM.nii.gz")
            print(f"  {d.name}: tumour {tum} mM")


SCALED = ("grey_matter", "white_matter", "csf_sulcal", "csf_ventricles", "oedema")


def _component_phantom(tumour_mM: float, scale: float):
    """Phantom with tumour TSC ``tumour_mM`` and the per-patient tissues scaled by ``scale``."""
    from recon.sim.phantom import DEFAULT_COMPARTMENTS, HeadPhantom, default_tubes

    comps = dict(DEFAULT_COMPARTMENTS)
    for name in SCALED:
        comps[name] = dataclasses.replace(comps[name], tsc_mM=comps[name].tsc_mM * scale)
    comps["tumour_rim"] = dataclasses.replace(comps["tumour_rim"], tsc_mM=tumour_mM)
    # the example's geometry (ROI centres above): the head at scale 1, so the tubes go to the FOV's
    # corners (beside a full-size head there is no room inside the alias-free sphere; narecon run warns)
    return HeadPhantom(tumour="solid", compartments=comps, head_scale=1.0, tubes=default_tubes(layout="corners"))


def pipeline_mode(work: Path, snr: float = 200.0, bin_s: float = 364e-6, run: bool = True) -> None:
    """Raw data per session from three noise-free simulations, reconstructed by ``narecon run``.

    The raw data are linear in each compartment's TSC (relaxation is per compartment), so
    data(session) = D_fixed + scale * D_tissue + TSC_tumour * D_tumour + noise, with
    D_fixed (eyes, tubes; tumour and tissues at 0), D_tissue (the scaled tissues at their
    default TSC) and D_tumour (tumour at 1 mM) from three noise-free simulations. Noise is
    complex Gaussian with SD = |echo-1 DC| / ``snr`` of the default phantom, a new seed per
    session (and noise-adjust readouts of the same SD).
    """
    from recon.sim.output import write_simulation
    from recon.sim.simulate import SimResult, simulate
    from recon.trajectory import tpi

    traj = tpi(fov_m=0.224, res_m=0.0035, p=0.3, gmax_t_per_m=4e-3, dwell_s=10e-6)
    cache = work / "components.pkl"
    if cache.exists():
        with open(cache, "rb") as f:
            base_res, parts = pickle.load(f)
    else:
        parts = {}
        for key, (tum, scale) in {"full": (65.0, 1.0), "no_tumour": (0.0, 1.0), "fixed": (0.0, 0.0)}.items():
            res = simulate(_component_phantom(tum, scale), traj, snr=None, bin_s=bin_s, n_threads=1)
            parts[key] = res.acquisition.data  # complex64
            if key == "full":
                base_res = res
        with open(cache, "wb") as f:
            pickle.dump((base_res, parts), f)
    parts = {k: v.astype(np.complex128) for k, v in parts.items()}
    d_tum = (parts["full"] - parts["no_tumour"]) / 65.0
    d_tissue = parts["no_tumour"] - parts["fixed"]
    d_fixed = parts["fixed"]
    sigma = float(np.abs(parts["full"][0, :, :, 0]).max()) / snr
    acq0 = base_res.acquisition
    for k, (patient, series) in enumerate(TUMOUR_MM.items()):
        for j, (tp, tum) in enumerate(zip(TIMEPOINTS, series)):
            if tum is None:
                continue
            sim_dir = work / "raw" / f"{patient}_{tp}"
            if not (sim_dir / "raw.dat").exists():
                rng = np.random.default_rng(1000 + 10 * k + j)
                data = d_fixed + TISSUE_SCALE[patient] * d_tissue + tum * d_tum
                data = data + sigma * (rng.standard_normal(data.shape) + 1j * rng.standard_normal(data.shape)) / np.sqrt(2)
                n_noise = 4 * data.shape[-1]
                noise = (
                    sigma
                    * (rng.standard_normal((data.shape[1], n_noise)) + 1j * rng.standard_normal((data.shape[1], n_noise)))
                    / np.sqrt(2)
                )
                acq = dataclasses.replace(acq0, data=data.astype(np.complex64), noise=noise.astype(np.complex64))
                write_simulation(SimResult(acq, base_res.truth), traj, sim_dir, overwrite=True)
            run_dir = work / f"{patient}_{tp}"
            if run and not (run_dir / "tsc_mM.nii.gz").exists():
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "recon",
                        "-q",
                        "run",
                        str(sim_dir / "raw.dat"),
                        "--out",
                        str(run_dir),
                        "--force",
                    ],
                    check=True,
                )
                print(f"  {run_dir.name}: tumour {tum} mM")


def write_sessions(work: Path) -> Path:
    sess = work / "sessions.csv"
    with open(sess, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["subject", "lesion", "timepoint", "path", "rois", "a_mm", "b_mm", "m_mm", "c"])
        for patient, series in TUMOUR_MM.items():
            for i, (tp, tum) in enumerate(zip(TIMEPOINTS, series)):
                a, b, c = DIAMS[patient][i]
                path = "" if tum is None else f"{patient}_{tp}"
                w.writerow([patient, "L1", tp, path, "" if tum is None else "rois.csv", a, b, SLICE_MM, c])
    return sess


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/narecon_study", help="folder for the simulated sessions")
    ap.add_argument("--mode", choices=["image", "pipeline"], default="image")
    ap.add_argument("--clean", action="store_true", help="remove --work first")
    ap.add_argument("--no-run", action="store_true", help="pipeline mode: write raw data only, no narecon run")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.clean and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_rois(work / "rois.csv")
    if args.mode == "image":
        image_mode(work)
    else:
        pipeline_mode(work, run=not args.no_run)
    sess = write_sessions(work)
    print(f"wrote {sess}; next: narecon study {sess} --out OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
