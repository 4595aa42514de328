"""One benchmark variant on :func:`recon.reconstruct`, and the loop over the variants file.

Per variant: the design (:func:`recon.bench.variants.build_trajectory`) and its PSF; the phantom
simulated along it (:func:`recon.sim.simulate`, one coil); each reconstruction method run by
:func:`recon.reconstruct` exactly as ``narecon run`` would (options ``b0`` = none / tb-cpr /
fs-cpr / mfi / iterative, no calibration), all methods sharing one :class:`recon.plans.Plans`
cache (so the NUFFT plan is built once per variant); its echo-1 image against the ideal image;
the pseudo-replica SNR through the same plan.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.bench.metrics import ideal_image, measure_cost, nrmse, roi_bias
from recon.bench.noise import analytic_noise_sd, pseudo_replica_sd
from recon.bench.psf import PSF_DECAYS, fwhm, radial_psf
from recon.bench.variants import REFERENCE_DWELL_S, ROIS, Variant, build_trajectory, load_variants
from recon.errors import ConfigError

log = logging.getLogger("recon.bench")


def recon_options(method: str, v: Variant) -> dict[str, Any]:
    """The :class:`recon.options.RunOptions` mapping that makes :func:`recon.reconstruct` run ``method``."""
    opts: dict[str, Any] = {"calibration": "none", "qa": False}
    if method == "gridding":
        opts["b0"] = "none"
    elif method == "iterative":
        opts.update(
            b0="iterative",
            iter_decay="r2star-map" if len(v.te_s) >= 2 else "none",
            iter_regulariser="gradient",
            iter_lamda=0.1,
            iter_max=int(v.params["iterative_iter"]),
        )
    else:
        opts["b0"] = method
    return opts


def design_row(v: Variant, traj, settings: dict[str, Any]) -> dict[str, Any]:
    """Design figures of the variant: size, readout, scan time and budget, peak gradient and slew."""
    p = v.params
    chk = traj.checks()
    n_echo = len(v.te_s)
    scan_s = traj.scan_time_s(v.tr_s, n_echo)
    budget_s = None if p.get("scan_budget_min") is None else float(p["scan_budget_min"]) * 60
    slew_limit = float(settings["slew_limit_t_m_s"])
    slew = float(chk["max_slew_t_per_m_per_s"])
    return {
        "name": v.name,
        "trajectory": p["trajectory"],
        "p": p.get("p") if p["trajectory"] != "file" else traj.params.get("p"),
        "gmax_design_mT_m": (traj.params.get("gmax_t_per_m") or float("nan")) * 1e3,
        "matrix": traj.matrix[0],
        "voxel_mm": traj.fov_m[0] / traj.matrix[0] * 1e3,
        "projections": chk["n_projections"],
        "samples": chk["n_samples"],
        "readout_ms": chk["readout_s"] * 1e3,
        "te_ms": " ".join(f"{t:g}" for t in p["te_ms"]),
        "tr_ms": p["tr_ms"],
        "scan_time_min": scan_s / 60,
        "scan_budget_min": None if budget_s is None else budget_s / 60,
        "within_budget": None if budget_s is None else bool(scan_s <= budget_s * (1 + 1e-9)),
        "peak_gradient_mT_m": chk["max_gradient_t_per_m"] * 1e3,
        "peak_slew_T_m_s": slew,
        "slew_limit_T_m_s": slew_limit,
        "exceeds_slew_limit": bool(slew > slew_limit * (1 + 1e-6)),
        "dwell_us": traj.dwell_s * 1e6,
    }


def run_variant(
    v: Variant, settings: dict[str, Any], base_dir: str | os.PathLike = ".", quick: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Benchmark one variant. Returns (row of scalar results, curves for the plots)."""
    import recon
    from recon.log import stage
    from recon.nufft import gridding
    from recon.options import RunOptions
    from recon.plans import PlanCache, Plans

    s = dict(settings)
    if quick:
        s["replicas"] = min(int(s["replicas"]), 4)
        s["psf_directions"] = min(int(s["psf_directions"]), 6)
        s["psf_points"] = min(int(s["psf_points"]), 61)
    p = v.params
    with stage(f"{v.name}: trajectory", log):
        traj = build_trajectory(v, base_dir)
    dcf = traj.dcf
    row = design_row(v, traj, s)
    dx_mm = row["voxel_mm"]
    n_echo = len(v.te_s)
    curves: dict[str, Any] = {
        "name": v.name,
        "readout_ms": row["readout_ms"],
        "exceeds_slew_limit": row["exceeds_slew_limit"],
    }

    with stage(f"{v.name}: PSF ({s['psf_directions']} directions)", log):
        ref_peak = None
        for dname in ("none", "tissue", "csf"):
            r, prof = radial_psf(
                traj, dcf, PSF_DECAYS[dname], v.te_s[0], int(s["psf_directions"]), int(s["psf_points"]), float(s["psf_extent_vox"])
            )
            if ref_peak is None:
                ref_peak = float(prof[0])
            row[f"psf_fwhm_{dname}_mm"] = fwhm(r, prof) * 1e3
            row[f"psf_fwhm_{dname}_vox"] = row[f"psf_fwhm_{dname}_mm"] / dx_mm
            row[f"psf_peak_{dname}"] = float(prof[0]) / ref_peak
            curves[f"psf_{dname}"] = (r * 1e3, prof / ref_peak)
    if not s.get("phantom", True):
        return row, curves

    from recon.sim import HeadPhantom, simulate

    phantom = HeadPhantom(b0_scale=float(s["b0_scale"]))
    snr_eff = float(s["snr"]) * math.sqrt(traj.dwell_s / REFERENCE_DWELL_S)
    with stage(f"{v.name}: simulate the phantom ({traj.n_projections * traj.n_samples} samples x {n_echo} echoes)", log):
        sim = simulate(
            phantom,
            traj,
            te_s=v.te_s,
            tr_s=v.tr_s,
            flip_deg=float(p["flip_deg"]),
            snr=snr_eff,
            seed=int(s["seed"]),
            oversampling=float(s["oversampling"]),
        )
    sigma = float(sim.truth.info["simulation"]["sigma"])
    labels = sim.truth.labels
    ideal = ideal_image(phantom, traj, v.te_s[0], v.tr_s, float(p["flip_deg"]))
    plans = Plans(PlanCache())  # every method (and the noise replicas) shares the variant's NUFFT plan
    images = {}
    for m in v.recon:
        with stage(f"{v.name}: recon.reconstruct ({m})", log):
            res, dt, mem = measure_cost(
                lambda m=m: recon.reconstruct(sim.acquisition, recon_options(m, v), trajectory=traj, plans=plans)
            )
        x = res.echoes[0]
        images[m] = x
        if "fieldmap_rms_err_Hz" not in row and res.fieldmap_info.get("source") == "dual echo":
            brain = np.isin(labels, (1, 2, 3, 4, 6, 7, 8))
            row["fieldmap_rms_err_Hz"] = float(np.sqrt(np.mean((res.fieldmap_hz[brain] - sim.truth.b0_hz[brain]) ** 2)))
        row[f"nrmse_{m}"] = nrmse(x, ideal)
        for roi, b in roi_bias(x, ideal, labels).items():
            row[f"bias_{roi}_{m}_pct"] = b
        row[f"recon_time_{m}_s"] = dt
        row[f"peak_mem_{m}_MiB"] = mem

    with stage(f"{v.name}: pseudo-replica SNR ({s['replicas']} replicas)", log):
        eps = RunOptions().eps
        op = plans.nufft(traj.k, tuple(traj.matrix), traj.fov_m, device="cpu", eps=eps)
        sd = pseudo_replica_sd(op, dcf, sigma, int(s["replicas"]), seed=int(s["seed"]) + 1)
    tissue = np.isin(labels, (1, 2))
    x = images.get("gridding", next(iter(images.values())) if images else gridding(op, sim.acquisition.data[0, 0], dcf))
    noise_sd = float(sd[tissue].mean())
    sig = math.sqrt(max(float(np.mean(np.abs(x[tissue]) ** 2)) - noise_sd**2, 0.0))
    scan_s = row["scan_time_min"] * 60
    row["noise_sd_mM"] = noise_sd
    row["noise_sd_analytic_mM"] = analytic_noise_sd(dcf, sigma)
    row["snr_tissue"] = sig / noise_sd
    row["snr_efficiency_per_sqrt_s"] = row["snr_tissue"] / math.sqrt(scan_s)
    if row["scan_budget_min"] is not None:
        # averages of the whole acquisition that fit the budget; none when one does not fit
        n_avg = int(math.floor(row["scan_budget_min"] * 60 / scan_s + 1e-9))
        row["averages_in_budget"] = n_avg
        row["snr_in_budget"] = row["snr_tissue"] * math.sqrt(n_avg) if n_avg > 0 else float("nan")
    curves["scan_time_min"] = row["scan_time_min"]
    curves["snr_tissue"] = row["snr_tissue"]
    curves["bias"] = {m: {roi: row[f"bias_{roi}_{m}_pct"] for roi in ROIS} for m in v.recon}
    return row, curves


def run_bench(
    variants_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quick: bool = False,
    force: bool = False,
    only: Sequence[str] | None = None,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Run every variant of ``variants_file`` and write results.csv, results.md and the plots into
    ``out_dir`` atomically (nothing is left there if a variant fails). Returns the result rows.

    ``progress``: a tqdm bar over the variants (None: only when stderr is a terminal).
    """
    from tqdm import tqdm

    from recon.atomic import atomic_dir
    from recon.bench.report import rows_to_csv, rows_to_markdown, write_plots
    from recon.errors import OutputError

    cfg = load_variants(variants_file)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise OutputError("output directory exists and is not empty (use --force to overwrite)", out_dir)
    variants = cfg.variants
    if only:
        missing = set(only) - {v.name for v in variants}
        if missing:
            raise ConfigError(f"no variant(s) named {sorted(missing)}", cfg.source)
        variants = [v for v in variants if v.name in set(only)]
    rows, curves = [], []
    t0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = tqdm(variants, desc="bench-traj", unit="variant", disable=not show, file=sys.stderr)
    for i, v in enumerate(bar):
        bar.set_postfix_str(v.name)
        log.info("variant %d of %d: %s", i + 1, len(variants), v.name)
        row, cur = run_variant(v, cfg.settings, cfg.base_dir, quick=quick)
        rows.append(row)
        curves.append(cur)
    bar.close()
    total = time.perf_counter() - t0
    with atomic_dir(out_dir, overwrite=force) as tmp:
        (tmp / "results.csv").write_text(rows_to_csv(rows))
        md = [
            f"# bench-traj results: {cfg.source.name}",
            "",
            f"Settings: {cfg.settings}{' (quick)' if quick else ''}; {len(rows)} variants in {total:.0f} s (sequential).",
            "",
            rows_to_markdown(rows),
        ]
        plots = write_plots(curves, tmp)
        md += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
        (tmp / "results.md").write_text("\n".join(md))
    return rows
