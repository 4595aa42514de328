"""Sequence profiles: TOML files that map raw-data header fields to trajectory design parameters.

A profile says where a sequence keeps the parameters of its trajectory (usually in the free
parameters ``sWipMemBlock.alFree/adFree`` of a custom sequence) and in which units. The
format is documented in the shipped ``recon/profiles/default.toml``; in short, ``[params]``
holds one entry per design parameter, either a constant or a table
``{from = "wip_double[1]", scale = 1e-3, default = ..., zero_is_none = true, map = {...}}``.

Public functions: :func:`load_profile`, :func:`trajectory_params` (header -> parameters),
:func:`encode_params` (parameters -> wip_long / wip_double, for writers of synthetic files),
:func:`build_trajectory` and :func:`check_match`.
"""

from __future__ import annotations

import copy
import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from recon import physics
from recon.config import parse_toml
from recon.errors import ConfigError, TrajectoryError

#: parameters a profile may define, with the type after scaling
PARAMS = {
    "generator": str,
    "fov_m": float,
    "res_m": float,
    "p": float,
    "gmax_t_per_m": float,
    "readout_s": float,
    "smax_t_per_m_per_s": float,
    "undersampling": float,
    "dwell_s": float,
    "grad_raster_s": float,
    "n_projections": int,
    "gamma_hz_per_t": float,
}
_GENERATOR_KW = (
    "fov_m",
    "res_m",
    "p",
    "gmax_t_per_m",
    "readout_s",
    "smax_t_per_m_per_s",
    "dwell_s",
    "gamma_hz_per_t",
    "undersampling",
    "grad_raster_s",
)

#: gyromagnetic ratio / 2 pi in Hz/T by nucleus (magnitudes)
GAMMA_BAR_HZ_PER_T = {
    "1H": physics.GAMMA_BAR_1H_HZ_PER_T,
    "23Na": physics.GAMMA_BAR_23NA_HZ_PER_T,
    "129Xe": 11.777e6,
    "31P": 17.235e6,
    "19F": 40.078e6,
    "7Li": 16.548e6,
    "13C": 10.7084e6,
    "17O": 5.772e6,
    "39K": 1.989e6,
    "3He": 32.434e6,
    "2H": 6.536e6,
}

_REF = re.compile(r"^(wip_long|wip_double)\[(\d+)\]$")


def gamma_for(nucleus: str) -> float | None:
    """Gyromagnetic ratio / 2 pi in Hz/T of a nucleus name such as "23Na" (None if unknown)."""
    key = (nucleus or "").strip()
    for k, v in GAMMA_BAR_HZ_PER_T.items():
        if k.lower() == key.lower():
            return v
    return None


def load_profile(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Load a profile TOML file (None: the shipped default). Raises ConfigError naming the file."""
    if path is None:
        text = resources.files("recon").joinpath("profiles/default.toml").read_text()
        src = "recon/profiles/default.toml"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("sequence profile not found", p)
        text, src = p.read_text(), str(p)
    prof = parse_toml(text, src)
    params = prof.get("params")
    if not isinstance(params, dict):
        raise ConfigError("profile has no [params] table", src)
    for name, spec in params.items():
        if name not in PARAMS:
            raise ConfigError(f"unknown parameter {name!r} (known: {', '.join(PARAMS)})", src)
        if isinstance(spec, dict):
            ref = spec.get("from")
            if not isinstance(ref, str) or not (_REF.match(ref) or ref.startswith(("acq.", "header."))):
                raise ConfigError(
                    f"parameter {name!r}: 'from' must be wip_long[i], wip_double[i], acq.<name> or header.<key>, got {ref!r}",
                    src,
                )
            unknown = set(spec) - {"from", "scale", "default", "zero_is_none", "map"}
            if unknown:
                raise ConfigError(f"parameter {name!r}: unknown keys {sorted(unknown)}", src)
    prof["_source"] = src
    return prof


def _apply_scale(v: float, scale: float) -> float:
    """v * scale, computed as a division by 1/scale when that is a whole number (10 * 1e-6 -> 1e-05)."""
    inv = 1.0 / scale
    if abs(inv - round(inv)) < 1e-9 * abs(inv) and round(inv) != 0:
        return v / round(inv)
    return v * scale


def _none(v):
    return None if isinstance(v, str) and v.lower() == "none" else v


def _lookup(acq, ref: str):
    """Value of a header reference, or a KeyError."""
    m = _REF.match(ref)
    if m:
        table = (acq.header or {}).get(m.group(1)) or {}
        idx = int(m.group(2))
        if idx in table:
            return table[idx]
        if str(idx) in table:
            return table[str(idx)]
        raise KeyError(ref)
    root, _, rest = ref.partition(".")
    obj: Any = acq if root == "acq" else (acq.header or {})
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", rest):
        if part.startswith("["):
            obj = obj[int(part[1:-1])]
        elif isinstance(obj, dict):
            obj = obj[part]
        else:
            try:
                obj = getattr(obj, part)
            except AttributeError as e:
                raise KeyError(ref) from e
    if obj is None:
        raise KeyError(ref)
    return obj


def trajectory_params(acq, profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trajectory design parameters (SI units) for ``acq`` under ``profile`` (None: default).

    Returns a dict with the keys of :data:`PARAMS` that the profile defines, plus
    ``gamma_hz_per_t`` from the nucleus when the profile does not set it. Raises ConfigError
    when a field without default is missing from the header.
    """
    profile = load_profile(None) if profile is None else profile
    src = profile.get("_source", "profile")
    out: dict[str, Any] = {}
    for name, spec in profile["params"].items():
        if not isinstance(spec, dict):
            out[name] = _none(spec)
            continue
        try:
            v = _lookup(acq, spec["from"])
        except (KeyError, IndexError, TypeError):
            if "default" not in spec:
                raise ConfigError(
                    f"parameter {name!r}: header field {spec['from']} is absent and the profile gives no default",
                    src,
                ) from None
            out[name] = _none(spec["default"])
            continue
        if spec.get("zero_is_none") and v == 0:
            out[name] = None
            continue
        if "map" in spec:
            key = str(int(v)) if isinstance(v, (int, float)) and float(v).is_integer() else str(v)
            if key not in spec["map"]:
                raise ConfigError(
                    f"parameter {name!r}: value {v} of {spec['from']} is not one of {sorted(spec['map'])}",
                    src,
                )
            out[name] = spec["map"][key]
            continue
        try:
            v = _apply_scale(float(v), float(spec.get("scale", 1.0)))
        except (TypeError, ValueError):
            raise ConfigError(f"parameter {name!r}: header field {spec['from']} = {v!r} is not a number", src) from None
        if not math.isfinite(v):
            raise ConfigError(f"parameter {name!r}: header field {spec['from']} = {v!r} is not a finite number", src)
        out[name] = int(round(v)) if PARAMS[name] is int else v
    if out.get("gamma_hz_per_t") is None:
        g = gamma_for(getattr(acq, "nucleus", ""))
        if g is None:
            raise ConfigError(f"unknown nucleus {acq.nucleus!r}: set gamma_hz_per_t in the profile", src)
        out["gamma_hz_per_t"] = g
    gen = out.get("generator", "tpi")
    if gen not in ("tpi", "radial"):
        raise ConfigError(f"generator must be 'tpi' or 'radial', got {gen!r}", src)
    out["generator"] = gen
    return out


def encode_params(params: dict[str, Any], profile: dict[str, Any] | None = None) -> tuple[dict[int, int], dict[int, float]]:
    """Inverse of :func:`trajectory_params` for writers: (wip_long, wip_double) for ``params``.

    Only parameters that the profile reads from ``wip_long[i]``/``wip_double[i]`` are encoded;
    None becomes 0 where ``zero_is_none`` is set. Put the result into
    ``acq.header['wip_long']``/``['wip_double']`` before :func:`recon.io.write_twix`.
    """
    profile = load_profile(None) if profile is None else profile
    src = profile.get("_source", "profile")
    wl: dict[int, int] = {}
    wd: dict[int, float] = {}
    for name, spec in profile["params"].items():
        if not isinstance(spec, dict) or name not in params:
            continue
        m = _REF.match(spec["from"])
        if not m:
            continue
        v = params[name]
        if v is None:
            if not spec.get("zero_is_none"):
                raise ConfigError(f"parameter {name!r} is None but {spec['from']} cannot store None", src)
            stored: Any = 0
        elif "map" in spec:
            inv = {val: key for key, val in spec["map"].items()}
            if v not in inv:
                raise ConfigError(f"parameter {name!r}: {v!r} is not one of {sorted(inv)}", src)
            stored = int(inv[v])
        else:
            stored = _apply_scale(float(v), 1.0 / float(spec.get("scale", 1.0)))
        idx = int(m.group(2))
        if m.group(1) == "wip_long":
            wl[idx] = int(round(stored))
        else:
            wd[idx] = float(stored)
    return wl, wd


def generate_trajectory(acq, profile: dict[str, Any] | None = None):
    """Generate the trajectory that ``profile`` describes for ``acq`` (no check against the data).

    Its size is estimated from the design parameters first (:func:`recon.limits.check_design`):
    a design above the limits is a LimitError before anything is allocated."""
    from recon import limits
    from recon.trajectory import design_trajectory

    src = ", ".join(acq.sources) if getattr(acq, "sources", None) else None
    try:
        prm = trajectory_params(acq, profile)
    except ConfigError as e:
        if src is None or e.path is None or e.path == src:
            raise
        raise ConfigError(f"{e.message} (sequence profile {e.path})", src) from e
    if prm.get("n_projections") is not None:
        limits.check("trajectory_points", float(prm["n_projections"]), "header n_projections", src)
    limits.check_design(prm, src)  # before building: one edited header digit must not allocate 13 GiB
    kw = {k: prm[k] for k in _GENERATOR_KW if k in prm}
    if kw.get("gmax_t_per_m") is not None and prm.get("readout_s") is not None:
        kw["gmax_t_per_m"] = None  # an explicit readout duration wins over a default amplitude
    try:
        traj = design_trajectory(prm["generator"], n_projections=prm.get("n_projections"), **kw)
        if prm["generator"] == "radial":
            return traj
    except TrajectoryError as e:
        if e.path is not None or src is None:
            raise
        raise TrajectoryError(f"trajectory design from the header: {e.message}", src) from e
    if prm.get("n_projections") is not None and prm["n_projections"] != traj.n_projections:
        raise TrajectoryError(
            f"the profile's TPI parameters give {traj.n_projections} projections but the header says {prm['n_projections']}",
            profile.get("_source") if profile else None,
        )
    return traj


def build_trajectory(acq, profile: dict[str, Any] | None = None, dcf: str | None = None):
    """Generate the trajectory that ``profile`` describes for ``acq`` and check that it matches.

    ``dcf``: optional density compensation method ("analytic" or "pipe") to attach.
    Raises ConfigError (profile), TrajectoryError (generator, or mismatch with the data).
    """
    from recon.trajectory import compute_dcf

    traj = generate_trajectory(acq, profile)
    check_match(acq, traj)
    if dcf:
        traj = traj.with_dcf(compute_dcf(traj, dcf))
    return traj


def check_match(acq, traj) -> None:
    """Raise TrajectoryError saying precisely how ``traj`` and the data of ``acq`` differ.

    Compared: samples per readout, number of projections (and that every projection index
    of the data exists in the trajectory), and the dwell time (relative tolerance 1e-6).
    """
    import numpy as np

    diffs = []
    if acq.n_samples != traj.n_samples:
        diffs.append(f"samples per readout: data {acq.n_samples}, trajectory {traj.n_samples}")
    pidx = np.asarray(acq.projection_index)
    if acq.n_projections != traj.n_projections:
        diffs.append(f"projections: data {acq.n_projections} readouts per echo, trajectory {traj.n_projections}")
    if pidx.size and (pidx.max() >= traj.n_projections or pidx.min() < 0):
        diffs.append(f"projection index of the data reaches {int(pidx.max())}, trajectory has 0..{traj.n_projections - 1}")
    if not (math.isfinite(acq.dwell_s) and math.isclose(acq.dwell_s, traj.dwell_s, rel_tol=1e-6)):
        diffs.append(f"dwell time: data {acq.dwell_s * 1e6:.6g} us, trajectory {traj.dwell_s * 1e6:.6g} us")
    if diffs:
        src = ", ".join(acq.sources) if getattr(acq, "sources", None) else None
        raise TrajectoryError("trajectory does not match the raw data: " + "; ".join(diffs), src)


def copy_profile(profile: dict[str, Any]) -> dict[str, Any]:
    """A deep copy (profiles are plain dicts; edit a copy to override single entries)."""
    return copy.deepcopy(profile)
