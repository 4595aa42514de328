"""The variants file (TOML) of ``narecon bench-traj`` and the trajectory design of each variant."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from recon.errors import ConfigError

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
"""Dwell time (s) at which [settings] snr is the raw-data SNR; other dwells scale it by sqrt(dwell / this)."""


# ---------------------------------------------------------------------------------- variants
_TRAJ_KEYS = {
    "trajectory",
    "p",
    "gmax_mt_m",
    "readout_ms",
    "smax_t_m_s",
    "undersampling",
    "projections",
    "path",
    "dcf",
    "fov_mm",
    "res_mm",
    "dwell_us",
    "raster_us",
}
_PROTO_KEYS = {"te_ms", "tr_ms", "flip_deg", "scan_budget_min"}
_RECON_KEYS = {"recon", "iterative_iter"}
_VARIANT_KEYS = {"name"} | _TRAJ_KEYS | _PROTO_KEYS | _RECON_KEYS
_SETTINGS = {
    "snr": 50.0,
    "replicas": 16,
    "seed": 1,
    "b0_scale": 1.0,
    "psf_directions": 26,
    "psf_points": 121,
    "psf_extent_vox": 3.0,
    "oversampling": 2.0,
    "phantom": True,
    "slew_limit_t_m_s": 150.0,
}
"""[settings] keys and defaults; ``slew_limit_t_m_s`` is the scanner's slew limit against which each
design's peak slew is flagged (ideal TPI/radial designs switch the gradient on instantly)."""
_DEFAULTS = {
    "trajectory": "tpi",
    "p": 0.3,
    "fov_mm": 224.0,
    "res_mm": 7.0,
    "dwell_us": 10.0,
    "raster_us": 10.0,
    "undersampling": 1.0,
    "te_ms": [0.30, 2.32],
    "tr_ms": 174.0,
    "flip_deg": 90.0,
    "recon": ["gridding", "tb-cpr"],
    "iterative_iter": 10,
}


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
        raise ConfigError(f"unknown top-level key(s) {sorted(extra)}; use [settings], [defaults], [[variant]]", path)
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
            raise ConfigError(f"variant {i + 1}: unknown key(s) {sorted(bad)}; known: {sorted(_VARIANT_KEYS)}", path)
        p = dict(defaults)
        p.update(v)
        name = str(v.get("name", f"variant{i + 1}"))
        if name in names:
            raise ConfigError(f"variant name {name!r} appears twice", path)
        names.add(name)
        _check_variant(name, p, path)
        variants.append(Variant(name, p))
    if not float(settings["slew_limit_t_m_s"]) > 0:
        raise ConfigError("[settings] slew_limit_t_m_s must be positive (T/m/s)", path)
    if int(settings["replicas"]) < 2:
        raise ConfigError("[settings] replicas must be >= 2 (a standard deviation needs two)", path)
    return BenchConfig(variants, settings, path.resolve().parent, path)


def _check_variant(name: str, p: dict, path: Path) -> None:
    if p["trajectory"] not in TRAJECTORY_KINDS:
        raise ConfigError(f"variant {name!r}: trajectory must be one of {TRAJECTORY_KINDS}, got {p['trajectory']!r}", path)
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
    from recon.trajectory import compute_dcf, design_trajectory, read_trajectory

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
    traj = design_trajectory(p["trajectory"], n_projections=p.get("projections"), **common)
    return traj.with_dcf(compute_dcf(traj, p.get("dcf") or "analytic"))
