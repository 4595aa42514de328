"""Disk cache of the calibration's point-response kernel, keyed by the protocol's content.

:meth:`recon.calibrate.SystemModel.kernel` grids the system's point response onto a box of twice
the matrix, one adjoint NUFFT per tube T2* (about 1 s of the 64^3 protocol's run, the same for
every scan of a protocol). :func:`cached_kernel` returns the kernel's image from
``<cache>/psf/<key>.nrc`` when present, else builds and stores it. The key is a digest of k, the
density weights and the sample times (:func:`recon.plans.array_digest`, XXH3-128; a built-in
design's identity instead of k), with the matrix, FOV, kernel accuracy, T2*, narecon's version,
finufft's version and the source of :mod:`recon.calibrate.model` and this module (a change of
either invalidates every entry).

Entries are :func:`recon.trajectory.dcf_cache.write_arrays` files (``image``, complex64 on the 2N
box, 16 MB at 64^3; mapped on load and checked against their XXH3 digest), written atomically; the
directory shares the bound ``NARECON_CACHE_MAX_MB`` and the switch ``NARECON_CACHE_DIR=off`` with
the DCF cache (:mod:`recon.trajectory.dcf_cache`), and ``narecon cache info|clear`` covers it (and
the ``.npz`` entries of earlier versions). An entry that does not load or does not have the box's
shape is removed and the kernel rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from recon.plans import array_digest
from recon.trajectory import dcf_cache as _dcf_cache
from recon.trajectory.dcf_cache import cache_root, store_entry, touch

log = logging.getLogger(__name__)

SUFFIX = ".nrc"
_LEGACY_SUFFIX = ".npz"  # entries of narecon <= session 5: removed by clear()
_CODE_DIGEST: str | None = None


def cache_dir() -> Path | None:
    """The kernel cache directory (not created here), or None when caching is off."""
    root = cache_root()
    return None if root is None else root / "psf"


def code_digest() -> str:
    """Digest of narecon's and finufft's versions and the source of the kernel's modules."""
    global _CODE_DIGEST
    if _CODE_DIGEST is None:
        import importlib.metadata as md

        from recon import __version__

        h = hashlib.blake2b(digest_size=16)
        h.update(__version__.encode())
        try:
            h.update(md.version("finufft").encode())
        except md.PackageNotFoundError:  # pragma: no cover - core dependency
            pass
        here = Path(__file__).parent
        for name in ("model.py", "kernel_cache.py"):
            h.update(name.encode())
            h.update((here / name).read_bytes())
        _CODE_DIGEST = h.hexdigest()
    return _CODE_DIGEST


def kernel_key(
    k: np.ndarray | None,
    dcf: np.ndarray,
    t_s: np.ndarray,
    matrix,
    fov_m,
    eps: float,
    t2star_s: float,
    k_identity: str | None = None,
) -> str:
    """Cache key of a kernel: content digests of k, weights and times with the grid, accuracy, T2* and code.

    ``k_identity``: a content key of k and t known without hashing (a built-in design's
    :meth:`recon.trajectory.Trajectory.design_identity`); then ``k`` may be None.
    """
    if k is None and k_identity is None:
        raise ValueError("kernel_key needs k or its identity")
    desc = json.dumps(
        {
            "k": f"design:{k_identity}" if k_identity is not None else array_digest(np.asarray(k)),
            "dcf": array_digest(np.asarray(dcf)),
            "t": array_digest(np.asarray(t_s)),
            "matrix": [int(m) for m in matrix],
            "fov_m": [float(f) for f in fov_m],
            "eps": float(eps),
            "t2star_s": float(t2star_s),
            "code": code_digest(),
        },
        sort_keys=True,
    )
    return hashlib.blake2b(desc.encode(), digest_size=20).hexdigest()


def cached_kernel(key: Callable[[], str], box: tuple, build: Callable[[], np.ndarray]) -> tuple[np.ndarray, str]:
    """The point-response image of a kernel on ``box`` through the disk cache, and how it was obtained.

    ``key()`` is called only when the cache is on. Returns (image, "cached" | "computed" |
    "computed (cache off)" | "computed (not cached: why)"). Only the image is stored (the spectrum
    is one FFT away and the default fit never needs the full-box one).
    """
    d = cache_dir()
    if d is None:
        return build(), "computed (cache off)"
    entry = d / f"{key()}{SUFFIX}"
    hit = _load(entry, tuple(box))
    if hit is not None:
        log.info("point-response kernel from the cache %s", entry)
        return hit, "cached"
    img = build()
    why = _store(entry, img)
    return img, "computed" if why is None else f"computed (not cached: {why})"


def _load(entry: Path, box: tuple) -> np.ndarray | None:
    if not entry.is_file():
        return None
    try:
        _, z = _dcf_cache.read_arrays(entry)
        img = z["image"]
        if not (img.shape == box and img.dtype == np.complex64 and np.isfinite(img).all()):
            raise ValueError(f"shape or values do not fit the box {box}")
    except Exception as e:  # any damage: rebuild (the entry is ours; never trusted over a rebuild)
        log.warning("kernel cache entry %s unreadable (%s): rebuilding", entry, e)
        entry.unlink(missing_ok=True)
        return None
    touch(entry)
    return img


def _store(entry: Path, img: np.ndarray) -> str | None:
    def write(f) -> None:
        _dcf_cache.write_arrays(f, {}, {"image": img})

    return store_entry(entry, img.nbytes, write, "the point-response kernel", suffix=SUFFIX, legacy_suffix=_LEGACY_SUFFIX)


def info() -> dict[str, Any]:
    """Directory, entry count and total size of the kernel cache (JSON-ready)."""
    return _dcf_cache.info(cache_dir(), SUFFIX)


def clear() -> int:
    """Remove every kernel cache entry; returns how many were removed."""
    return _dcf_cache.clear(cache_dir(), SUFFIX) + _dcf_cache.clear(cache_dir(), _LEGACY_SUFFIX)
