"""Resource limits: every size that comes from an input is checked here before anything is allocated.

One place for the named limits and their defaults (:data:`DEFAULTS`). Override them with the
environment variable ``NARECON_LIMITS`` (comma-separated ``name=value``; sizes accept
``kB/MB/GB/TB`` and ``KiB/MiB/GiB/TiB``), e.g. ``NARECON_LIMITS="memory=64GiB,matrix=768"``, or in
code with :func:`override`. A refused size is a :class:`LimitError` (an
:class:`~recon.errors.InputError`) that names the field, the size it asks for, the memory it
would need and how to raise the limit.

Limits
------
memory : bytes one reconstruction (or one input array) may need; default 80 % of the physical
    memory (at least 2 GiB).
trajectory_points : projections x samples of one trajectory (default 1e8; a 2 mm TPI has ~3e7).
matrix : largest reconstruction matrix per axis (default 512).
fieldmap_voxels : voxels of an external field map (default 2**25 = 320^3 ~ 33.5 M).
fieldmap_hz : largest plausible |field map| in Hz at the map's nucleus (default 5000 Hz,
    17 ppm of 1H at 7 T).
raw_abs : largest plausible |real| or |imaginary| part of a raw sample (default 1e20; scanner data
    are below 1e3, and 1e36 overflows float32 in the gridding sums).

The bounds of run options (``b0_segments`` <= 256, ``b0_refine`` <= 5, ``matrix`` <= 512) are in
the option schema (:mod:`recon.options`); :func:`estimate_recon_memory` bounds their product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from recon.errors import ConfigError, InputError

ENV = "NARECON_LIMITS"


class LimitError(InputError):
    """An input asks for more than a resource limit allows (raise it with NARECON_LIMITS)."""


def _physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 << 30


#: default limits (see the module docstring for their meaning and units)
DEFAULTS: dict[str, float] = {
    "memory": float(max(2 << 30, int(0.8 * _physical_memory()))),
    "trajectory_points": 1e8,
    "matrix": 512,
    "fieldmap_voxels": float(2**25),
    "fieldmap_hz": 5000.0,
    "raw_abs": 1e20,
}
#: limits given in bytes (accept size suffixes, printed as GiB)
_BYTES = {"memory"}
_overrides: dict[str, float] = {}

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1e3,
    "kb": 1e3,
    "m": 1e6,
    "mb": 1e6,
    "g": 1e9,
    "gb": 1e9,
    "t": 1e12,
    "tb": 1e12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_size(text: str | float | int, what: str = "size") -> float:
    """``"8GB"`` -> 8e9, ``"1.5GiB"`` -> 1610612736.0, ``1e6`` -> 1e6; ConfigError if not a positive size."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        v = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise ConfigError(f"{what} must be a size such as 8GB, 512MiB or 1e9, got {text!r}")
        v = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(v) or v <= 0:
        raise ConfigError(f"{what} must be a positive size, got {text!r}")
    return v


def _from_env() -> dict[str, float]:
    text = os.environ.get(ENV, "").strip()
    out: dict[str, float] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in DEFAULTS:
            raise ConfigError(f"{ENV}: expected name=value with a name of {', '.join(DEFAULTS)}, got {item.strip()!r}")
        out[name] = parse_size(value, f"{ENV} {name}")
    return out


def get(name: str) -> float:
    """Current value of limit ``name`` (code override > NARECON_LIMITS > default)."""
    if name not in DEFAULTS:
        raise KeyError(name)
    if name in _overrides:
        return _overrides[name]
    return _from_env().get(name, DEFAULTS[name])


def current() -> dict[str, float]:
    """All limits as they apply now."""
    return {n: get(n) for n in DEFAULTS}


@contextlib.contextmanager
def override(**limits: float | str) -> Iterator[None]:
    """Set limits for the duration of a block, e.g. ``with override(memory="4GiB"):``."""
    global _overrides
    unknown = set(limits) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown limit(s) {sorted(unknown)} (known: {', '.join(DEFAULTS)})")
    old = dict(_overrides)
    _overrides = {**_overrides, **{k: parse_size(v, k) for k, v in limits.items()}}
    try:
        yield
    finally:
        _overrides = old


def gib(n_bytes: float) -> str:
    """A byte count for messages: '13.4 GiB', '512 MiB'."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.3g} GiB"
    return f"{n_bytes / 2**20:.3g} MiB"


_UNIT_WORDS = {"trajectory_points": " points", "fieldmap_voxels": " voxels", "fieldmap_hz": " Hz"}


def _shown(name: str, value: float) -> str:
    return gib(value) if name in _BYTES else f"{value:.3g}{_UNIT_WORDS.get(name, '')}"


def _how(name: str, value: float) -> str:
    return f"{name} = {_shown(name, value)}; raise it with {ENV}={name}=<{'size' if name in _BYTES else 'value'}>"


def check(name: str, value: float, field: str, source: str | os.PathLike | None = None, need_bytes: float | None = None) -> None:
    """Raise LimitError when ``value`` exceeds limit ``name``; ``field`` says where the value comes from."""
    lim = get(name)
    if math.isfinite(value) and value <= lim:
        return
    need = f", would need {gib(need_bytes)}" if need_bytes is not None else ""
    raise LimitError(f"{field}: {_shown(name, value)}{need}, above the limit {_how(name, lim)}", source)


def check_bytes(n_bytes: float, field: str, source: str | os.PathLike | None = None) -> None:
    """Raise LimitError when ``n_bytes`` exceeds the memory limit."""
    lim = get("memory")
    if math.isfinite(n_bytes) and n_bytes <= lim:
        return
    raise LimitError(f"{field} would need {gib(n_bytes)}, above the limit {_how('memory', lim)}", source)


# ----------------------------------------------------------------------------- trajectory designs

#: peak bytes the trajectory builders allocate per k-space point (measured: TPI 95-160, radial 57)
TRAJ_BYTES_PER_POINT = 160.0


def estimate_design_size(params: Mapping[str, Any]) -> tuple[float, float]:
    """(projections, samples) a TPI or radial design will have, estimated without building it.

    ``params``: the design parameters of :func:`recon.io.profile.trajectory_params` (SI units).
    Estimates (within ~10 % for the shipped designs): projections 4 pi p (kmax FOV)^2 / undersampling
    for TPI (Boada's cone distribution), 4 pi (kmax FOV)^2 / undersampling for radial unless given;
    samples = readout / dwell with the readout of Boada Eq. 14 (x 1.3 for slew-limited designs).
    Raises InputError when a parameter is not a finite number.
    """
    from recon.trajectory.tpi import tpi_readout_s

    names = ("fov_m", "res_m", "p", "dwell_s", "gamma_hz_per_t", "undersampling", "gmax_t_per_m", "readout_s")
    vals: dict[str, float | None] = {}
    for n in names:
        v = params.get(n)
        if v is None:
            vals[n] = None
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise InputError(f"design parameter {n} is not a number: {v!r}") from None
        if not math.isfinite(v):
            raise InputError(f"design parameter {n} is not a finite number: {v!r}")
        vals[n] = v
    fov, res = vals["fov_m"] or 0.224, vals["res_m"] or 0.0035
    p = vals["p"] if vals["p"] is not None else 0.3
    us = vals["undersampling"] or 1.0
    if fov <= 0 or res <= 0 or p <= 0 or us <= 0:
        return 0.0, 0.0  # the builder's own checks say what is wrong
    kmax = 1.0 / (2.0 * res)
    kf = kmax * fov
    gen = params.get("generator", "tpi")
    if gen == "radial":
        n_proj = float(params.get("n_projections") or 4 * math.pi * kf**2 / us)
    else:
        n_proj = 4 * math.pi * p * kf**2 / us
    dwell = vals["dwell_s"] or 10e-6
    gamma = vals["gamma_hz_per_t"] or 11.262e6
    if vals["gmax_t_per_m"] and vals["gmax_t_per_m"] > 0 and not vals["readout_s"]:
        readout = tpi_readout_s(kmax, p, vals["gmax_t_per_m"], abs(gamma))
    elif vals["readout_s"] and vals["readout_s"] > 0:
        readout = vals["readout_s"]
    else:
        readout = tpi_readout_s(kmax, p, 4e-3, abs(gamma))
    if params.get("smax_t_per_m_per_s"):
        readout *= 1.3
    return n_proj, readout / dwell if dwell > 0 else 0.0


def check_design(params: Mapping[str, Any], source: str | os.PathLike | None = None) -> None:
    """Refuse a trajectory design whose size (projections x samples) or builder memory exceeds the limits."""
    n_proj, n_samp = estimate_design_size(params)
    points = n_proj * n_samp
    desc = (
        f"trajectory design (FOV {params.get('fov_m')} m, resolution {params.get('res_m')} m): "
        f"~{n_proj:.3g} projections x ~{n_samp:.3g} samples"
    )
    need = points * TRAJ_BYTES_PER_POINT
    check("trajectory_points", points, desc, source, need_bytes=need)
    check_bytes(need, desc, source)


def check_trajectory_shape(n_proj: int, n_samp: int, field: str, source: str | os.PathLike | None = None) -> None:
    """Refuse a declared trajectory shape above ``trajectory_points`` (k, t, dcf of a file)."""
    points = float(n_proj) * float(n_samp)
    check("trajectory_points", points, f"{field} of {n_proj} x {n_samp} points", source, need_bytes=points * 40)


def check_matrix(matrix: Any, field: str = "matrix", source: str | os.PathLike | None = None) -> tuple[int, int, int]:
    """A reconstruction matrix (int or 3 ints) checked to be whole numbers in [4, limit matrix]; returns 3 ints."""
    import numpy as np

    try:
        arr = np.asarray(matrix, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InputError(f"{field} must be 1 or 3 whole numbers, got {matrix!r}", source) from None
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3 or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise InputError(f"{field} must be 1 or 3 whole numbers, got {matrix!r}", source)
    if arr.min() < 4:
        raise InputError(f"{field} must be at least 4 per axis, got {arr.astype(int).tolist()}", source)
    lim = get("matrix")
    if arr.max() > lim:
        vox = float(np.prod(arr))
        raise LimitError(
            f"{field} = {arr.astype(int).tolist()} would need {gib(vox * 8 * 16)} for its NUFFT grid, "
            f"above the limit {_how('matrix', lim)}",
            source,
        )
    return tuple(int(v) for v in arr)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- whole reconstruction


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a reconstruction needs, by part (an upper estimate; ``total`` is their sum)."""

    parts: dict[str, float]

    @property
    def total(self) -> float:
        return float(sum(self.parts.values()))

    def describe(self) -> str:
        big = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return ", ".join(f"{k} {gib(v)}" for k, v in big)


def estimate_recon_memory(
    matrix: tuple[int, int, int] | int,
    n_projections: int,
    n_samples: int,
    *,
    n_coils: int = 1,
    n_echoes: int = 2,
    upsampling: float = 2.0,
    b0_method: str = "none",
    n_segments: int = 1,
    iterative: bool = False,
    tube_model: bool = False,
    complex_bytes: int = 8,
) -> MemoryEstimate:
    """Upper estimate in bytes of the memory one reconstruction needs (before any of it is allocated).

    matrix : reconstruction matrix (N or (N0, N1, N2)).
    n_projections, n_samples : trajectory size; n_coils, n_echoes : raw data size.
    upsampling : NUFFT oversampling sigma (fine grid (sigma N)^3, finufft 2.0 or 1.25).
    b0_method : "none", "tb-cpr" (one plan per time bin), "fs-cpr"/"mfi" (one image per frequency)
        or "iterative"; n_segments : its time bins or frequencies.
    iterative : CG reconstruction (about 6 image-sized vectors per echo, one plan per time segment).
    tube_model : the point-response tube calibration (:mod:`recon.calibrate.model`): one NUFFT onto
        the 2N box and about 6 arrays of the box (8 x the image each).
    complex_bytes : 8 (complex64) or 16 (complex128).
    """
    n = (int(matrix),) * 3 if isinstance(matrix, (int, float)) else tuple(int(v) for v in matrix)
    vox = float(n[0]) * n[1] * n[2]
    grid = vox * upsampling**3 * complex_bytes
    img = vox * complex_bytes
    points = float(n_projections) * n_samples
    seg = max(1, int(n_segments))
    plans = 1
    images = n_echoes * max(1, n_coils) + 4 * n_echoes  # coil images, echo images, magnitude/TSC/B0 maps
    if b0_method == "tb-cpr":
        plans += seg
        images += seg * n_echoes
    elif b0_method in ("fs-cpr", "mfi"):
        images += seg * n_echoes
    if iterative or b0_method == "iterative":
        plans += seg
        images += 6 * n_echoes
    parts = {
        "raw data": points * n_coils * n_echoes * 8.0,
        "trajectory": points * (3 * 8 + 8 + 8),
        "NUFFT grids": grid * plans,
        "images": img * images,
        "NUFFT sort/spread buffers": points * 16.0 * plans,
    }
    if tube_model:
        parts["tube model (point-response kernel on the 2N box)"] = 8 * grid + 6 * 8 * img
    return MemoryEstimate(parts)


def check_recon_memory(estimate: MemoryEstimate, what: str = "the reconstruction", source: str | os.PathLike | None = None) -> None:
    """Raise LimitError when ``estimate`` exceeds the memory limit, naming the largest parts."""
    lim = get("memory")
    if estimate.total <= lim:
        return
    raise LimitError(
        f"{what} would need about {gib(estimate.total)} ({estimate.describe()}), above the limit "
        f"{_how('memory', lim)} (or lower --matrix / --b0-segments)",
        source,
    )


__all__ = [
    "DEFAULTS",
    "ENV",
    "LimitError",
    "MemoryEstimate",
    "check",
    "check_bytes",
    "check_design",
    "check_matrix",
    "check_recon_memory",
    "check_trajectory_shape",
    "current",
    "estimate_design_size",
    "estimate_recon_memory",
    "get",
    "gib",
    "override",
    "parse_size",
]
