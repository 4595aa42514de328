"""Trajectory-variant benchmarking (``narecon bench-traj``): which design is best for 23Na at 7T?

A variants file (TOML) lists trajectory designs, each with a protocol and reconstruction
settings; every variant is simulated on the digital head phantom and reconstructed, and the
figures of merit below are measured (never guessed). Variants run one after the other (a plain
sequential loop; the batch engine's per-scan model does not fit here and two shared cores gain
nothing from it).

Figures of merit per variant (SI inside, mm / ms / mT/m in the tables):

* design: projections, samples per projection, readout duration, scan time
  (projections x TR x echoes), peak gradient and slew of the design waveforms
  (:meth:`recon.trajectory.Trajectory.checks`), and whether the scan fits the time budget;
* PSF with T2* decay, measured from the simulated point response: a unit delta at the isocentre
  gives data y_m = decay(TE1 + t_m) for every sample; its density-compensated gridding
  x(r) = sum_m w_m y_m exp(+i 2 pi k_m . r) is evaluated exactly (finufft type 3, no grid) on
  radial lines in ``psf_directions`` directions and averaged into a radial profile. FWHM (mm)
  is twice the first half-maximum radius (linear interpolation); peak is relative to the same
  trajectory without decay. Decays: tissue 0.6 exp(-t/3.5 ms) + 0.4 exp(-t/23 ms), CSF
  exp(-t/54 ms), and none;
* SNR by pseudo-replica: ``replicas`` gridding reconstructions of pure white complex noise
  (E|n|^2 = sigma^2 per sample, sigma from the raw-data SNR of :func:`recon.sim.simulate`,
  scaled by sqrt(10 us / dwell) so longer dwells have less noise per sample) give the noise SD per
  voxel; SNR = RMS tissue signal (grey + white matter, noise power subtracted) / mean SD, and the
  efficiency SNR / sqrt(scan time in s). The analytic check is SD = sigma sqrt(sum_m w_m^2);
* accuracy on the phantom (matrix and FOV of the variant, simulated on a 2x finer grid with B0
  and the tissue relaxation): for every reconstruction method (``gridding`` = no B0 correction,
  ``tb-cpr``, ``fs-cpr``, ``mfi`` with the dual-echo field map; ``iterative`` = the pipeline's
  SigPy model with B0 and an R2* map from the echo ratio, its echo-1 image), the NRMSE of
  |echo-1 image| against the ideal echo-1 image (voxel-averaged TSC x T1 saturation x
  decay(TE1), no readout blur) and the ROI bias (mean |x| / mean ideal - 1, in %) for tubes,
  GM, WM, CSF and tumour;
* reconstruction time (NUFFT planning included) and peak Python/NumPy memory (tracemalloc; the
  C allocations inside finufft are not seen).

Written here because no library benchmarks sodium trajectory designs; every number comes from
the project's own stages (recon.trajectory, recon.sim, recon.nufft, recon.b0).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import ConfigError, InputError

log = logging.getLogger(__name__)

RECON_METHODS = ("gridding", "tb-cpr", "fs-cpr", "mfi", "iterative")
TRAJECTORY_KINDS = ("tpi", "radial", "file")
ROIS: dict[str, tuple[int, ...]] = {
    "tubes": (9, 10, 11, 12),
    "GM": (1,),
    "WM": (2,),
    "CSF": (3, 4),
    "tumour": (7, 8),
}
"""Phantom labels of each ROI (recon.sim.phantom): tumour = enhancing rim + necrotic core."""
REFERENCE_DWELL_S = 10e-6


def decay_tissue(t_s):
    """Bi-exponential tissue T2* decay 0.6 exp(-t/3.5 ms) + 0.4 exp(-t/23 ms) (t in s)."""
    t = np.asarray(t_s, dtype=np.float64)
    return 0.6 * np.exp(-t / 3.5e-3) + 0.4 * np.exp(-t / 23e-3)


def decay_csf(t_s):
    """Mono-exponential CSF T2* decay exp(-t/54 ms) (t in s)."""
    return np.exp(-np.asarray(t_s, dtype=np.float64) / 54e-3)


def decay_none(t_s):
    """No decay (ones)."""
    return np.ones_like(np.asarray(t_s, dtype=np.float64))


PSF_DECAYS: dict[str, Callable] = {"none": decay_none, "tissue": decay_tissue, "csf": decay_csf}


# ---------------------------------------------------------------------------------- variants
_TRAJ_KEYS = {"trajectory", "p", "gmax_mt_m", "readout_ms", "smax_t_m_s", "undersampling", "projections",
              "path", "dcf", "fov_mm", "res_mm", "dwell_us", "raster_us"}
_PROTO_KEYS = {"te_ms", "tr_ms", "flip_deg", "scan_budget_min"}
_RECON_KEYS = {"recon", "iterative_iter"}
_VARIANT_KEYS = {"name"} | _TRAJ_KEYS | _PROTO_KEYS | _RECON_KEYS
_SETTINGS = {"snr": 50.0, "replicas": 16, "seed": 1, "b0_scale": 1.0, "psf_directions": 26,
             "psf_points": 121, "psf_extent_vox": 3.0, "oversampling": 2.0, "phantom": True}
_DEFAULTS = {"trajectory": "tpi", "p": 0.3, "fov_mm": 224.0, "res_mm": 7.0, "dwell_us": 10.0,
             "raster_us": 10.0, "undersampling": 1.0, "te_ms": [0.30, 2.32], "tr_ms": 174.0,
             "flip_deg": 90.0, "recon": ["gridding", "tb-cpr"], "iterative_iter": 10}


@dataclasses.dataclass
class Variant:
    """One benchmarked design: trajectory parameters, protocol and reconstruction methods.

    ``params`` holds the TOML keys with defaults filled in (mm, ms, mT/m, us as written there).
    """

    name: str
    params: dict[str, Any]

    @property
    def te_s(self) -> tuple[float, ...]:
        return tuple(float(t) * 1e-3 for t in self.params["te_ms"])

    @property
    def tr_s(self) -> float:
        return float(self.params["tr_ms"]) * 1e-3

    @property
    def recon(self) -> tuple[str, ...]:
        return tuple(self.params["recon"])


@dataclasses.dataclass
class BenchConfig:
    """A parsed variants file: variants, global settings (``[settings]``) and its folder."""

    variants: list[Variant]
    settings: dict[str, Any]
    base_dir: Path
    source: Path


def load_variants(path: str | os.PathLike) -> BenchConfig:
    """Read a variants TOML file: optional ``[settings]`` and ``[defaults]``, one or more ``[[variant]]``.

    Raises :class:`ConfigError` naming the file for unknown keys, bad values or no variants.
    """
    from recon.config import read_toml

    path = Path(path)
    doc = read_toml(path, "variants file")
    extra = set(doc) - {"settings", "defaults", "variant"}
    if extra:
        raise ConfigError(
            f"unknown top-level key(s) {sorted(extra)}; use [settings], [defaults], [[variant]]", path)
    settings = dict(_SETTINGS)
    bad = set(doc.get("settings", {})) - set(_SETTINGS)
    if bad:
        raise ConfigError(f"unknown [settings] key(s) {sorted(bad)}; known: {sorted(_SETTINGS)}", path)
    settings.update(doc.get("settings", {}))
    defaults = dict(_DEFAULTS)
    bad = set(doc.get("defaults", {})) - _VARIANT_KEYS
    if bad:
        raise ConfigError(f"unknown [defaults] key(s) {sorted(bad)}; known: {sorted(_VARIANT_KEYS)}", path)
    defaults.update(doc.get("defaults", {}))
    raw = doc.get("variant", [])
    if not isinstance(raw, list) or not raw:
        raise ConfigError("no [[variant]] tables", path)
    variants, names = [], set()
    for i, v in enumerate(raw):
        bad = set(v) - _VARIANT_KEYS
        if bad:
            raise ConfigError(
                f"variant {i + 1}: unknown key(s) {sorted(bad)}; known: {sorted(_VARIANT_KEYS)}", path)
        p = dict(defaults)
        p.update(v)
        name = str(v.get("name", f"variant{i + 1}"))
        if name in names:
            raise ConfigError(f"variant name {name!r} appears twice", path)
        names.add(name)
        _check_variant(name, p, path)
        variants.append(Variant(name, p))
    if int(settings["replicas"]) < 2:
        raise ConfigError("[settings] replicas must be >= 2 (a standard deviation needs two)", path)
    return BenchConfig(variants, settings, path.resolve().parent, path)


def _check_variant(name: str, p: dict, path: Path) -> None:
    if p["trajectory"] not in TRAJECTORY_KINDS:
        raise ConfigError(
            f"variant {name!r}: trajectory must be one of {TRAJECTORY_KINDS}, got {p['trajectory']!r}", path)
    if p["trajectory"] == "file" and "path" not in p:
        raise ConfigError(f"variant {name!r}: trajectory = 'file' needs path = '<file.h5>'", path)
    if isinstance(p["recon"], str):
        p["recon"] = [p["recon"]]
    bad = [m for m in p["recon"] if m not in RECON_METHODS]
    if bad:
        raise ConfigError(f"variant {name!r}: unknown recon {bad}; choose from {RECON_METHODS}", path)
    te = p["te_ms"] if isinstance(p["te_ms"], list) else [p["te_ms"]]
    p["te_ms"] = [float(t) for t in te]
    if any(t < 0 for t in p["te_ms"]) or p["tr_ms"] <= 0:
        raise ConfigError(f"variant {name!r}: need TE >= 0 and TR > 0 (ms)", path)
    needs_two = [m for m in p["recon"] if m not in ("gridding",)]
    if needs_two and len(p["te_ms"]) < 2:
        raise ConfigError(f"variant {name!r}: {needs_two} need two echoes for the field map (te_ms)", path)


def build_trajectory(v: Variant, base_dir: str | os.PathLike = ".") -> Any:
    """The variant's :class:`recon.trajectory.Trajectory` with density weights (1/m^3) attached."""
    from recon.trajectory import compute_dcf, density_adapted_radial, read_trajectory, tpi

    p = v.params
    if p["trajectory"] == "file":
        f = Path(p["path"])
        traj = read_trajectory(f if f.is_absolute() else Path(base_dir) / f)
        method = p.get("dcf")
        if traj.dcf is not None and method is None:
            return traj
        return traj.with_dcf(compute_dcf(traj, method or "pipe"))
    gmax = p.get("gmax_mt_m")
    common = dict(
        fov_m=p["fov_mm"] * 1e-3,
        res_m=p["res_mm"] * 1e-3,
        p=float(p["p"]),
        gmax_t_per_m=None if gmax is None else gmax * 1e-3,
        readout_s=None if p.get("readout_ms") is None else p["readout_ms"] * 1e-3,
        smax_t_per_m_per_s=p.get("smax_t_m_s"),
        dwell_s=p["dwell_us"] * 1e-6,
        grad_raster_s=p["raster_us"] * 1e-6,
        undersampling=float(p["undersampling"]),
    )
    if gmax is None and common["readout_s"] is None:
        common["gmax_t_per_m"] = 4e-3
    if p["trajectory"] == "tpi":
        traj = tpi(**common)
    else:
        traj = density_adapted_radial(n_projections=p.get("projections"), **common)
    return traj.with_dcf(compute_dcf(traj, p.get("dcf") or "analytic"))


# --------------------------------------------------------------------------------------- PSF
def sphere_directions(n: int) -> np.ndarray:
    """``n`` unit vectors (n, 3) spread over the sphere (golden-angle spiral)."""
    from recon.trajectory.radial import fibonacci_directions

    return fibonacci_directions(n)


def point_response(
    k: np.ndarray, dcf: np.ndarray, values: np.ndarray, points_m: np.ndarray, eps: float = 1e-9
) -> np.ndarray:
    """Gridding reconstruction of a unit delta at the origin, evaluated at ``points_m`` (..., 3) in m.

    x(r) = sum_m w_m v_m exp(+i 2 pi k_m . r) with k in cycles/m, w the density weights (1/m^3)
    and v the per-sample data of the delta (its decay); exact to ``eps`` (finufft type 3).
    """
    import finufft

    kf = np.asarray(k, dtype=np.float64).reshape(-1, 3) * (2 * np.pi)
    c = (np.asarray(dcf, dtype=np.float64) * np.asarray(values)).reshape(-1).astype(np.complex128)
    pts = np.asarray(points_m, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    out = finufft.nufft3d3(
        np.ascontiguousarray(kf[:, 0]), np.ascontiguousarray(kf[:, 1]), np.ascontiguousarray(kf[:, 2]), c,
        np.ascontiguousarray(flat[:, 0]), np.ascontiguousarray(flat[:, 1]), np.ascontiguousarray(flat[:, 2]),
        eps=eps, isign=1,
    )
    return out.reshape(pts.shape[:-1])


def radial_psf(
    traj,
    dcf: np.ndarray,
    decay: Callable | None = None,
    te_s: float = 0.0,
    n_directions: int = 26,
    n_points: int = 121,
    extent_vox: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged PSF of a trajectory with a signal decay.

    Returns (r in m, profile): the real part of the point response on radial lines from the
    origin in ``n_directions`` directions, averaged over the directions, out to ``extent_vox``
    voxels (of the trajectory's grid, axis 0) in ``n_points`` steps. The delta's data are
    ``decay(te_s + t_m)`` per sample (ones without decay). Without decay the value at r = 0 is
    the sampled k-space volume sum_m w_m (1/m^3); compare peaks as ratios to that.
    """
    dx = traj.fov_m[0] / traj.matrix[0]
    r = np.linspace(0.0, extent_vox * dx, n_points)
    dirs = sphere_directions(n_directions)
    pts = dirs[:, None, :] * r[None, :, None]
    t = traj.sample_times()
    v = np.ones(t.shape) if decay is None else decay(te_s + t)
    x = point_response(traj.k, dcf, v, pts)
    return r, x.real.mean(axis=0)


def fwhm(r: np.ndarray, profile: np.ndarray) -> float:
    """Full width at half maximum of a radial profile (r ascending from 0): 2 x the first radius
    where the profile falls to half its value at r = 0, linearly interpolated (NaN if never)."""
    r = np.asarray(r, dtype=np.float64)
    p = np.asarray(profile, dtype=np.float64)
    half = 0.5 * p[0]
    below = np.nonzero(p < half)[0]
    if p[0] <= 0 or below.size == 0:
        return float("nan")
    i = int(below[0])
    r0, r1, p0, p1 = r[i - 1], r[i], p[i - 1], p[i]
    return float(2 * (r0 + (p0 - half) * (r1 - r0) / (p0 - p1)))


def ball_psf(r_m: np.ndarray, kmax_per_m: float) -> np.ndarray:
    """Analytic PSF of a uniformly sampled k-space ball of radius kmax (1/m), normalised to 1 at r = 0:
    3 (sin u - u cos u) / u^3 with u = 2 pi kmax r."""
    u = 2 * np.pi * kmax_per_m * np.asarray(r_m, dtype=np.float64)
    out = np.ones_like(u)
    m = u > 1e-6
    out[m] = 3 * (np.sin(u[m]) - u[m] * np.cos(u[m])) / u[m] ** 3
    return out


# ------------------------------------------------------------------------------------ noise
def pseudo_replica_sd(op, dcf: np.ndarray, sigma: float, replicas: int = 16, seed: int = 0,
                      batch: int = 4, recon: Callable | None = None) -> np.ndarray:
    """Noise SD per voxel (N0, N1, N2) of a linear reconstruction by pseudo-replicas.

    Each replica is white complex Gaussian noise (E|n|^2 = sigma^2 per sample, real and imaginary
    parts sigma^2 / 2 each) on every sample of ``op``; ``recon(noise)`` (default: gridding with
    ``dcf``) is applied to batches of ``batch`` replicas. The SD is the complex one,
    sqrt(mean |x - mean x|^2) with the n - 1 normalisation.
    """
    from recon.nufft import gridding

    if replicas < 2:
        raise InputError(f"pseudo-replica SD needs at least 2 replicas, got {replicas}")
    recon = recon or (lambda y: gridding(op, y, dcf))
    rng = np.random.default_rng(seed)
    s1 = np.zeros(op.shape, dtype=np.complex128)
    s2 = np.zeros(op.shape, dtype=np.float64)
    done = 0
    while done < replicas:
        b = min(batch, replicas - done)
        shp = (b,) + tuple(op.kshape)
        n = (rng.standard_normal(shp, dtype=np.float32) + 1j * rng.standard_normal(shp, dtype=np.float32))
        n *= np.float32(sigma / math.sqrt(2))
        x = np.asarray(recon(n.astype(np.complex64)))
        s1 += x.sum(0)
        s2 += (np.abs(x) ** 2).sum(0)
        done += b
    var = (s2 - np.abs(s1) ** 2 / replicas) / (replicas - 1)
    return np.sqrt(np.clip(var, 0, None))


def analytic_noise_sd(dcf: np.ndarray, sigma: float) -> float:
    """Noise SD of a gridding reconstruction at any voxel: sigma sqrt(sum_m w_m^2)."""
    w = np.asarray(dcf, dtype=np.float64)
    return float(sigma * math.sqrt(float((w**2).sum())))


# ---------------------------------------------------------------------------------- phantom
def ideal_image(phantom, traj, te_s: float | None, tr_s: float, flip_deg: float,
                supersample: int = 2) -> np.ndarray:
    """The ideal image on the trajectory's grid: voxel-averaged sum over compartments of
    fraction x TSC x T1 saturation x decay(te_s) (decay 1 when ``te_s`` is None), in mM."""
    from recon.sim.phantom import grid_points

    sub = grid_points(traj.matrix, traj.fov_m, (0.0, 0.0, 0.0), supersample=supersample)
    comps, frac = phantom.fractions(sub)
    amp = np.array([c.tsc_mM * c.t1_factor(tr_s, flip_deg) * (1.0 if te_s is None else float(c.decay(te_s)))
                    for c in comps], dtype=np.float64)
    img = np.tensordot(amp, frac, axes=1)
    return img.mean(axis=0) if supersample > 1 else img


def roi_bias(image: np.ndarray, ideal: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Bias in % per ROI of :data:`ROIS`: mean |image| / mean ideal - 1 (NaN for an empty ROI)."""
    out = {}
    mag = np.abs(image)
    for name, labs in ROIS.items():
        m = np.isin(labels, labs)
        out[name] = float(100 * (mag[m].mean() / ideal[m].mean() - 1)) if m.any() else float("nan")
    return out


def nrmse(image: np.ndarray, ideal: np.ndarray) -> float:
    """|| |image| - ideal || / || ideal || over the whole grid."""
    return float(np.linalg.norm(np.abs(image) - ideal) / np.linalg.norm(ideal))


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn``; return its result, the wall time in s and the peak traced memory in MiB."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] - base
    if not was:
        tracemalloc.stop()
    return out, dt, peak / 2**20


# ---------------------------------------------------------------------------------- variant
def run_variant(v: Variant, settings: dict[str, Any], base_dir: str | os.PathLike = ".",
                quick: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Benchmark one variant. Returns (row of scalar results, curves for the plots)."""
    from recon.log import stage

    s = dict(settings)
    if quick:
        s["replicas"] = min(int(s["replicas"]), 4)
        s["psf_directions"] = min(int(s["psf_directions"]), 6)
        s["psf_points"] = min(int(s["psf_points"]), 61)
    p = v.params
    with stage(f"{v.name}: trajectory", log):
        traj = build_trajectory(v, base_dir)
    dcf = traj.dcf
    chk = traj.checks()
    n_echo = len(v.te_s)
    scan_s = traj.scan_time_s(v.tr_s, n_echo)
    budget_s = None if p.get("scan_budget_min") is None else float(p["scan_budget_min"]) * 60
    dx_mm = traj.fov_m[0] / traj.matrix[0] * 1e3
    row: dict[str, Any] = {
        "name": v.name,
        "trajectory": p["trajectory"],
        "p": p.get("p") if p["trajectory"] != "file" else traj.params.get("p"),
        "gmax_design_mT_m": (traj.params.get("gmax_t_per_m") or float("nan")) * 1e3,
        "matrix": traj.matrix[0],
        "voxel_mm": dx_mm,
        "projections": chk["n_projections"],
        "samples": chk["n_samples"],
        "readout_ms": chk["readout_s"] * 1e3,
        "te_ms": " ".join(f"{t:g}" for t in p["te_ms"]),
        "tr_ms": p["tr_ms"],
        "scan_time_min": scan_s / 60,
        "scan_budget_min": None if budget_s is None else budget_s / 60,
        "within_budget": None if budget_s is None else bool(scan_s <= budget_s * (1 + 1e-9)),
        "peak_gradient_mT_m": chk["max_gradient_t_per_m"] * 1e3,
        "peak_slew_T_m_s": chk["max_slew_t_per_m_per_s"],
        "dwell_us": traj.dwell_s * 1e6,
    }
    curves: dict[str, Any] = {"name": v.name, "readout_ms": row["readout_ms"]}

    # --- PSF
    with stage(f"{v.name}: PSF ({s['psf_directions']} directions)", log):
        ref_peak = None
        for dname in ("none", "tissue", "csf"):
            r, prof = radial_psf(traj, dcf, PSF_DECAYS[dname], v.te_s[0], int(s["psf_directions"]),
                                 int(s["psf_points"]), float(s["psf_extent_vox"]))
            if ref_peak is None:
                ref_peak = float(prof[0])
            row[f"psf_fwhm_{dname}_mm"] = fwhm(r, prof) * 1e3
            row[f"psf_fwhm_{dname}_vox"] = row[f"psf_fwhm_{dname}_mm"] / dx_mm
            row[f"psf_peak_{dname}"] = float(prof[0]) / ref_peak
            curves[f"psf_{dname}"] = (r * 1e3, prof / ref_peak)

    if not s.get("phantom", True):
        return row, curves

    # --- phantom simulation, field map, reconstructions
    from recon.b0 import correct, estimate_fieldmap
    from recon.nufft import NUFFT, gridding
    from recon.sim import HeadPhantom, simulate

    phantom = HeadPhantom(b0_scale=float(s["b0_scale"]))
    snr_eff = float(s["snr"]) * math.sqrt(traj.dwell_s / REFERENCE_DWELL_S)
    n_samp = traj.n_projections * traj.n_samples
    with stage(f"{v.name}: simulate the phantom ({n_samp} samples x {n_echo} echoes)", log):
        sim = simulate(phantom, traj, te_s=v.te_s, tr_s=v.tr_s, flip_deg=float(p["flip_deg"]), snr=snr_eff,
                       seed=int(s["seed"]), oversampling=float(s["oversampling"]))
    sigma = float(sim.truth.info["simulation"]["sigma"])
    labels = sim.truth.labels
    data = sim.acquisition.data[:, 0]  # (echo, proj, samp), one coil
    ideal_te = ideal_image(phantom, traj, v.te_s[0], v.tr_s, float(p["flip_deg"]))
    fmap = None
    if n_echo >= 2 and any(m != "gridding" for m in v.recon):
        op0 = NUFFT(traj.k, traj.matrix, traj.fov_m)
        plain = gridding(op0, data[:2], dcf)
        fmap = estimate_fieldmap(plain[0], plain[1], v.te_s[0], v.te_s[1])
        brain = np.isin(labels, (1, 2, 3, 4, 6, 7, 8))
        row["fieldmap_rms_err_Hz"] = float(np.sqrt(np.mean((fmap[brain] - sim.truth.b0_hz[brain]) ** 2)))
    images = {}
    for m in v.recon:
        with stage(f"{v.name}: reconstruct ({m})", log):
            if m == "iterative":
                from recon.iterative import reconstruct_iterative

                def fn():
                    op = NUFFT(traj.k, traj.matrix, traj.fov_m)
                    # the pipeline's model: B0 and a per-voxel R2* from the echo ratio, gradient
                    # regulariser; compared at TE1 like the gridding methods (decay blur removed)
                    res = reconstruct_iterative(op, data, dcf, v.te_s, traj.t, fmap,
                                                decay="r2star-map" if n_echo >= 2 else "none",
                                                regulariser="gradient", lamda=0.1,
                                                max_iter=int(p["iterative_iter"]))
                    return res.echoes[0]
                ideal = ideal_te
            else:
                method = "none" if m == "gridding" else m

                def fn(method=method):
                    op = NUFFT(traj.k, traj.matrix, traj.fov_m)
                    if method == "none":
                        return gridding(op, data[0], dcf)
                    return correct(method, op, data, dcf, v.te_s, traj.t, fmap)[0]
                ideal = ideal_te
            x, dt, mem = _measure(fn)
        images[m] = x
        row[f"nrmse_{m}"] = nrmse(x, ideal)
        for roi, b in roi_bias(x, ideal, labels).items():
            row[f"bias_{roi}_{m}_pct"] = b
        row[f"recon_time_{m}_s"] = dt
        row[f"peak_mem_{m}_MiB"] = mem

    # --- SNR by pseudo-replica (plain gridding of pure noise)
    with stage(f"{v.name}: pseudo-replica SNR ({s['replicas']} replicas)", log):
        op = NUFFT(traj.k, traj.matrix, traj.fov_m)
        sd = pseudo_replica_sd(op, dcf, sigma, int(s["replicas"]), seed=int(s["seed"]) + 1)
    tissue = np.isin(labels, (1, 2))
    x = images.get("gridding", next(iter(images.values())) if images else gridding(op, data[0], dcf))
    noise_sd = float(sd[tissue].mean())
    sig = math.sqrt(max(float(np.mean(np.abs(x[tissue]) ** 2)) - noise_sd**2, 0.0))
    row["noise_sd_mM"] = noise_sd
    row["noise_sd_analytic_mM"] = analytic_noise_sd(dcf, sigma)
    row["snr_tissue"] = sig / noise_sd
    row["snr_efficiency_per_sqrt_s"] = row["snr_tissue"] / math.sqrt(scan_s)
    if budget_s is not None:
        n_avg = int(math.floor(budget_s / scan_s + 1e-9))
        row["snr_in_budget"] = row["snr_tissue"] * math.sqrt(n_avg)
    curves["scan_time_min"] = row["scan_time_min"]
    curves["snr_tissue"] = row["snr_tissue"]
    curves["bias"] = {m: {roi: row[f"bias_{roi}_{m}_pct"] for roi in ROIS} for m in v.recon}
    return row, curves


# ----------------------------------------------------------------------------------- output
def rows_to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """CSV text of the result rows (union of the columns, in first-seen order)."""
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: _fmt_csv(r.get(c)) for c in cols})
    return buf.getvalue()


def _fmt_csv(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _f(v, nd=1):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def rows_to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: design + PSF + SNR, then accuracy per reconstruction method."""
    out = ["## Design, PSF and SNR", ""]
    hdr = ["variant", "proj", "samples", "readout ms", "scan min", "in budget", "Gpk mT/m", "slew T/m/s",
           "FWHM none mm", "FWHM tissue mm", "peak tissue", "FWHM CSF mm", "peak CSF", "SNR tissue",
           "SNR/sqrt(s)", "SNR in budget"]
    out.append("| " + " | ".join(hdr) + " |")
    out.append("|" + "---|" * len(hdr))
    for r in rows:
        cells = [r["name"], str(r["projections"]), str(r["samples"]), _f(r["readout_ms"], 2),
                 _f(r["scan_time_min"], 1), _f(r.get("within_budget")), _f(r["peak_gradient_mT_m"], 1),
                 _f(r["peak_slew_T_m_s"], 0), _f(r["psf_fwhm_none_mm"], 2), _f(r["psf_fwhm_tissue_mm"], 2),
                 _f(r["psf_peak_tissue"], 3), _f(r["psf_fwhm_csf_mm"], 2), _f(r["psf_peak_csf"], 3),
                 _f(r.get("snr_tissue"), 1), _f(r.get("snr_efficiency_per_sqrt_s"), 2),
                 _f(r.get("snr_in_budget"), 1)]
        out.append("| " + " | ".join(cells) + " |")
    methods = [m for m in RECON_METHODS if any(f"nrmse_{m}" in r for r in rows)]
    if methods:
        out += ["", "## Accuracy on the phantom (echo 1; bias in % of the ideal image)", ""]
        hdr = ["variant", "recon", "NRMSE"] + [f"{roi} %" for roi in ROIS] + ["time s", "peak MiB"]
        out.append("| " + " | ".join(hdr) + " |")
        out.append("|" + "---|" * len(hdr))
        for r in rows:
            for m in methods:
                if f"nrmse_{m}" not in r:
                    continue
                cells = [r["name"], m, _f(r[f"nrmse_{m}"], 3)]
                cells += [_f(r[f"bias_{roi}_{m}_pct"], 1) for roi in ROIS]
                cells += [_f(r[f"recon_time_{m}_s"], 2), _f(r[f"peak_mem_{m}_MiB"], 0)]
                out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_plots(curves: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> list[str]:
    """PSF profiles, bias versus readout length and SNR versus scan time as PNG files in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out_dir = Path(out_dir)
    names = []
    fig, axs = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for c in curves:
        for ax, d in zip(axs, ("none", "tissue", "csf")):
            r, prof = c[f"psf_{d}"]
            ax.plot(r, prof, label=c["name"])
    for ax, d in zip(axs, ("no decay", "tissue 0.6x3.5 / 0.4x23 ms", "CSF 54 ms")):
        ax.set_title(f"PSF, {d}")
        ax.set_xlabel("radius (mm)")
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
    axs[0].set_ylabel("PSF (relative to the no-decay peak)")
    axs[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "psf_profiles.png", dpi=110)
    plt.close(fig)
    names.append("psf_profiles.png")

    withb = [c for c in curves if "bias" in c]
    if withb:
        methods = [m for m in RECON_METHODS if any(m in c["bias"] for c in withb)]
        fig, axs = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 4.5), sharey=True,
                                squeeze=False)
        for ax, m in zip(axs[0], methods):
            for roi, mk in zip(ROIS, "osD^v"):
                pts = sorted((c["readout_ms"], c["bias"][m][roi]) for c in withb if m in c["bias"])
                ax.plot([a for a, _ in pts], [b for _, b in pts], marker=mk, ls="none", label=roi)
            ax.set_title(f"ROI bias, {m}")
            ax.set_xlabel("readout (ms)")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xticks([1, 2, 5, 10, 20, 50])
            ax.axhline(0, color="k", lw=0.5)
            ax.grid(alpha=0.3)
        axs[0][0].set_ylabel("bias vs ideal echo-1 image (%)")
        axs[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "bias_vs_readout.png", dpi=110)
        plt.close(fig)
        names.append("bias_vs_readout.png")

        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for c in withb:
            ax.scatter(c["scan_time_min"], c["snr_tissue"])
            ax.annotate(c["name"], (c["scan_time_min"], c["snr_tissue"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        times = [c["scan_time_min"] for c in withb]
        t = np.linspace(min(times) * 0.8, max(times) * 1.1, 50)
        best = max(c["snr_tissue"] / math.sqrt(c["scan_time_min"]) for c in withb)
        ax.plot(t, best * np.sqrt(t), "k:", lw=0.8, label="best efficiency x sqrt(time)")
        ax.set_xlabel("scan time (min)")
        ax.set_ylabel("tissue SNR (pseudo-replica)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "snr_vs_scan_time.png", dpi=110)
        plt.close(fig)
        names.append("snr_vs_scan_time.png")
    return names


def run_bench(variants_file: str | os.PathLike, out_dir: str | os.PathLike, *, quick: bool = False,
              force: bool = False, only: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run every variant of ``variants_file`` and write results.csv, results.md and the plots into
    ``out_dir`` atomically (nothing is left there if a variant fails). Returns the result rows."""
    from recon.atomic import atomic_dir
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
    for i, v in enumerate(variants):
        log.info("variant %d of %d: %s", i + 1, len(variants), v.name)
        row, cur = run_variant(v, cfg.settings, cfg.base_dir, quick=quick)
        rows.append(row)
        curves.append(cur)
    total = time.perf_counter() - t0
    with atomic_dir(out_dir, overwrite=force) as tmp:
        (tmp / "results.csv").write_text(rows_to_csv(rows))
        md = [f"# bench-traj results: {cfg.source.name}", "",
              f"Settings: {cfg.settings}{' (quick)' if quick else ''}; {len(rows)} variants in {total:.0f} s "
              "(sequential).", "", rows_to_markdown(rows)]
        plots = write_plots(curves, tmp)
        md += ["", "Plots: " + ", ".join(f"[{p}]({p})" for p in plots), ""]
        (tmp / "results.md").write_text("\n".join(md))
    return rows
