"""Disk cache of built-in trajectory designs, keyed by their parameters and the generator code.

Designing the built-in TPI of the 64^3 protocol costs 0.6-0.7 s (4.8 s at 128^3), several
NUFFT-equivalents of a run whose floor is one adjoint; every scan of a protocol has the same
design. :func:`cached_design` returns the design for a parameter description, from
``<cache>/trajectory/<key>.nrc`` when present, else built and stored. The key is a BLAKE2b digest
of the parameters (JSON), narecon's version and the bytes of every module of
:mod:`recon.trajectory` (so a change of any generator invalidates every entry without a manual
version bump). Entries are :func:`recon.trajectory.dcf_cache.write_arrays` files: k, t, solid
angle, waveforms, the NUFFT's float32 points on the design's own grid
(:class:`recon.nufft.NufftPoints`, 58 MB at the 64^3 protocol: a run's NUFFT set-up then converts
no k; stamped with :data:`recon.nufft.POINTS_FORMAT`) and a JSON header; the arrays memory-mapped
on load and checked against an XXH3 digest; written atomically. The directory shares the bound
``NARECON_CACHE_MAX_MB`` and the switch ``NARECON_CACHE_DIR=off`` with the DCF cache
(:mod:`recon.trajectory.dcf_cache`). Trajectory files keep their NUFFT points here too
(:func:`cached_points`, ``points-<key>.nrc``, keyed by their content). A damaged entry is removed and the design rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recon.trajectory import dcf_cache as _dcf_cache
from recon.trajectory.base import Trajectory, verified_trajectory
from recon.trajectory.dcf_cache import cache_root, store_entry, touch

log = logging.getLogger(__name__)

SUFFIX = ".nrc"
_LEGACY_SUFFIX = ".npz"  # entries of narecon <= session 5 (zip archives): removed by clear()
_CODE_DIGEST: str | None = None


def cache_dir() -> Path | None:
    """The design cache directory (not created here), or None when caching is off."""
    root = cache_root()
    return None if root is None else root / "trajectory"


def code_digest() -> str:
    """Digest of narecon's version and the source of every :mod:`recon.trajectory` module."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        from recon import __version__

        h = hashlib.blake2b(digest_size=16)
        h.update(__version__.encode())
        for p in sorted(Path(__file__).parent.glob("*.py")):
            h.update(p.name.encode())
            h.update(p.read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def design_key(description: Any) -> str:
    """Cache key of a design: its parameters (JSON-serialisable) with :func:`code_digest`."""
    desc = json.dumps({"design": description, "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.blake2b(desc.encode(), digest_size=20).hexdigest()


def cached_design(description: Any, build: Callable[[], Trajectory]) -> tuple[Trajectory, str]:
    """The trajectory ``build()`` returns for ``description``, through the disk cache.

    Returns (trajectory, "cached" | "computed" | "computed (cache off)" | "computed (not cached: why)").
    """
    key = design_key(description)
    d = cache_dir()
    if d is None:
        traj = build()
        traj.mark_design(key)
        return traj, "computed (cache off)"
    entry = d / f"{key}{SUFFIX}"
    traj = _load(entry)
    if traj is not None:
        log.info("trajectory design from the cache %s", entry)
        traj.mark_design(key)
        return traj, "cached"
    traj = build()
    why = _store(entry, traj)
    traj.mark_design(key)  # the design's identity: downstream caches key on it instead of hashing k
    return traj, "computed" if why is None else f"computed (not cached: {why})"


def _meta(traj: Trajectory) -> dict[str, Any]:
    from recon.util import jsonable

    wf = traj.waveforms or {}
    return {
        "fov_m": list(traj.fov_m),
        "matrix": list(traj.matrix),
        "dwell_s": traj.dwell_s,
        "gamma_hz_per_t": traj.gamma_hz_per_t,
        "params": jsonable(traj.params),
        "waveform_scalars": {k: jsonable(v) for k, v in wf.items() if not isinstance(v, np.ndarray)},
    }


def _points_for_store(traj: Trajectory) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The NUFFT points of the design on its own grid (complex64 runs), made once and attached to
    ``traj``: arrays and header fields for the entry (none when they cannot be made)."""
    from recon import nufft
    from recon.errors import NareconError

    pts = traj.nufft_points(traj.matrix, traj.fov_m)
    if pts is None:
        try:
            pts = nufft.make_points(traj.k, traj.matrix, traj.fov_m, np.complex64)
        except NareconError as e:  # a design beyond 1.5 x its grid is refused by the NUFFT; keep it without points
            log.debug("no NUFFT points stored with the design: %s", e)
            return {}, {}
        traj.attach_points(pts)
    meta = {
        "format": nufft.POINTS_FORMAT,
        "shape": list(pts.shape),
        "fov_m": list(pts.fov_m),
        "lo": list(pts.lo),
        "hi": list(pts.hi),
    }
    return {f"points_{d}": pts.x[d] for d in range(3)}, {"nufft_points": meta}


def _attach_points(traj: Trajectory, meta: dict[str, Any] | None, z: dict[str, np.ndarray]) -> None:
    """Attach the entry's NUFFT points to ``traj`` when their format is this code's."""
    from recon import nufft

    if not meta or meta.get("format") != nufft.POINTS_FORMAT or any(f"points_{d}" not in z for d in range(3)):
        return
    pts = nufft.NufftPoints(
        x=tuple(z[f"points_{d}"] for d in range(3)),
        shape=tuple(int(v) for v in meta["shape"]),
        fov_m=tuple(float(v) for v in meta["fov_m"]),
        lo=tuple(float(v) for v in meta["lo"]),
        hi=tuple(float(v) for v in meta["hi"]),
    )
    if pts.x[0].dtype == np.float32 and len({a.shape for a in pts.x}) == 1:
        traj.attach_points(pts)


POINTS_PREFIX = "points-"
"""Name prefix of the NUFFT-points entries of trajectories without a design identity (trajectory files)."""


def cached_points(traj: Trajectory) -> str:
    """Attach the NUFFT points of ``traj`` on its own grid (complex64 runs), through the disk cache.

    For trajectories that are not built-in designs (a site's trajectory file, whose design entry
    cannot carry them): keyed by :meth:`Trajectory.content_key` (the XXH3 digest of k and t, which
    the calibration's kernel cache computes anyway), the grid, the FOV and
    :data:`recon.nufft.POINTS_FORMAT`; a miss converts k once and stores the points (58 MB at the
    64^3 protocol) as ``points-<key>.nrc`` beside the designs. Returns how: "attached" (already),
    "cached", "computed", "computed (not cached: why)", "cache off" or "not made (why)" (the NUFFT
    then converts k itself, and refuses it with the same error where the points are bad).
    """
    from recon.errors import NareconError

    if traj.nufft_points(traj.matrix, traj.fov_m) is not None:
        return "attached"
    d = cache_dir()
    if d is None:
        return "cache off"
    from recon import nufft

    desc = json.dumps(
        {"content": traj.content_key(), "matrix": list(traj.matrix), "fov_m": list(traj.fov_m), "format": nufft.POINTS_FORMAT},
        sort_keys=True,
    )
    entry = d / f"{POINTS_PREFIX}{hashlib.blake2b(desc.encode(), digest_size=20).hexdigest()}{SUFFIX}"
    if entry.is_file():
        try:
            meta, z = _dcf_cache.read_arrays(entry)
            _attach_points(traj, meta.get("nufft_points"), z)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("NUFFT points cache entry %s unreadable (%s): remaking", entry, e)
            entry.unlink(missing_ok=True)
        if traj.nufft_points(traj.matrix, traj.fov_m) is not None:
            touch(entry)
            return "cached"
    try:
        arrays, pmeta = _points_for_store(traj)
    except (NareconError, ValueError) as e:
        return f"not made ({e})"
    if not arrays:
        return "not made (k beyond the NUFFT's range)"

    def write(f) -> None:
        _dcf_cache.write_arrays(f, pmeta, arrays)

    why = store_entry(entry, sum(a.nbytes for a in arrays.values()), write, "the NUFFT points", suffix=SUFFIX)
    return "computed" if why is None else f"computed (not cached: {why})"


def _store(entry: Path, traj: Trajectory) -> str | None:
    arrays: dict[str, np.ndarray] = {"k": traj.k, "t": traj.t}
    if traj.dcf is not None:
        arrays["dcf"] = traj.dcf
    if traj.solid_angle is not None:
        arrays["solid_angle"] = traj.solid_angle
    for k, v in (traj.waveforms or {}).items():
        if isinstance(v, np.ndarray):
            arrays[f"waveform_{k}"] = v
    pts, pmeta = _points_for_store(traj)
    arrays.update(pts)

    def write(f) -> None:
        _dcf_cache.write_arrays(f, {**_meta(traj), **pmeta}, arrays)

    nbytes = sum(a.nbytes for a in arrays.values())
    return store_entry(entry, nbytes, write, "the trajectory design", suffix=SUFFIX, legacy_suffix=_LEGACY_SUFFIX)


def _load(entry: Path) -> Trajectory | None:
    if not entry.is_file():
        return None
    try:
        meta, z = _dcf_cache.read_arrays(entry)
        wf = dict(meta.pop("waveform_scalars") or {})
        pmeta = meta.pop("nufft_points", None)
        for name, a in z.items():
            if name.startswith("waveform_"):
                wf[name[len("waveform_") :]] = a
        traj = verified_trajectory(  # validated when it was built; the digest matched
            k=z["k"],
            t=z["t"],
            dcf=z.get("dcf"),
            solid_angle=z.get("solid_angle"),
            waveforms=wf or None,
            **meta,
        )
        _attach_points(traj, pmeta, z)
    except Exception as e:  # any damage: rebuild (the entry is ours; never trusted over a rebuild)
        log.warning("trajectory cache entry %s unreadable (%s): rebuilding", entry, e)
        entry.unlink(missing_ok=True)
        return None
    touch(entry)
    return traj


def info() -> dict[str, Any]:
    """Directory, entry count and total size of the design cache (JSON-ready)."""
    return _dcf_cache.info(cache_dir(), SUFFIX)


def clear() -> int:
    """Remove every design cache entry; returns how many were removed."""
    return _dcf_cache.clear(cache_dir(), SUFFIX) + _dcf_cache.clear(cache_dir(), _LEGACY_SUFFIX)
