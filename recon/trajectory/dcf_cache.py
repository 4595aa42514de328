"""Disk cache of density weights, keyed by the trajectory's content.

Pipe-Menon weights of a trajectory file cost a few NUFFT-equivalents; a site that reconstructs
every scan with the same trajectory file should pay them once. :func:`cached_dcf` returns the
weights of a trajectory and where they came from:

* ``traj.dcf`` when the trajectory carries weights (method ``auto``): "from trajectory file";
* ``analytic`` weights are computed (cheaper than reading them back);
* other methods (``pipe``) are looked up in the cache directory under a key made of the
  trajectory's content key (:meth:`~recon.trajectory.Trajectory.content_key`: a built-in design's
  identity, else an XXH3 digest of k and t; BLAKE2b of the file's bytes when a ``source_path`` is
  given), the method, its options and :data:`recon.trajectory.dcf.PIPE_VERSION`; on a miss they
  are computed and stored.

Cache directory: ``$NARECON_CACHE_DIR/dcf`` if set, else ``platformdirs.user_cache_dir("narecon")/dcf``
when platformdirs is installed, else ``$XDG_CACHE_HOME/narecon/dcf`` (default ``~/.cache``).
Entries are ``<key>.nrc`` (:func:`write_arrays`: float64, n_projections x n_samples, mapped on
load and checked against their XXH3 digest; only finite non-negative weights are stored), written
atomically (temporary file and rename, so concurrent workers never read half a file); a hit refreshes the entry's
modification time, and after each store the least recently used entries are removed until the
directory holds at most ``NARECON_CACHE_MAX_MB`` (default 2048) MB. An entry that does not load
or does not fit the trajectory is removed and recomputed. ``NARECON_CACHE_DIR=off`` (or ``0``)
disables the cache. The command ``narecon cache info`` / ``narecon cache clear`` shows or
empties it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recon.trajectory.base import Trajectory

if TYPE_CHECKING:
    from recon.plans import Plans

log = logging.getLogger(__name__)

DEFAULT_MAX_MB = 2048
"""Default size bound of the DCF cache directory in MB (``NARECON_CACHE_MAX_MB``)."""

_SUFFIX = ".nrc"
_LEGACY_SUFFIX = ".npy"  # entries of narecon <= session 5: removed by clear()


def cache_root() -> Path | None:
    """The narecon cache directory (not created here), or None when caching is switched off."""
    env = os.environ.get("NARECON_CACHE_DIR")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "none", "false"):
            return None
        return Path(env).expanduser()
    try:
        import platformdirs
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "narecon"
    return Path(platformdirs.user_cache_dir("narecon"))


def cache_dir() -> Path | None:
    """The DCF cache directory (not created here), or None when the cache is switched off."""
    root = cache_root()
    return None if root is None else root / "dcf"


def max_bytes() -> int:
    """Size bound of the cache directory in bytes (``NARECON_CACHE_MAX_MB``, default :data:`DEFAULT_MAX_MB`)."""
    try:
        mb = float(os.environ.get("NARECON_CACHE_MAX_MB", DEFAULT_MAX_MB))
    except ValueError:
        mb = DEFAULT_MAX_MB
    return int(max(mb, 0) * 1024 * 1024)


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b digest of a file's bytes (read in 8 MB blocks)."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def dcf_key(traj: Trajectory, method: str, options: dict[str, Any] | None = None, source_path=None) -> str:
    """Cache key of the weights of ``traj`` by ``method``: content hash, grid, method, options, version."""
    from recon.trajectory.dcf import PIPE_VERSION

    content = file_digest(source_path) if source_path is not None else traj.content_key()
    desc = json.dumps(
        {
            "content": content,
            "shape": list(traj.k.shape),
            "fov_m": list(traj.fov_m),
            "matrix": list(traj.matrix),
            "method": method,
            "options": options or {},
            "version": PIPE_VERSION,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.blake2b(desc.encode(), digest_size=20).hexdigest()


#: generators whose trajectories have analytic weights (``--dcf auto`` picks ``analytic`` for them)
ANALYTIC_GENERATORS = ("tpi", "radial", "xenon-radial")


def resolve_method(traj: Trajectory, method: str) -> str:
    """``auto`` -> ``analytic`` for the built-in generators (:data:`ANALYTIC_GENERATORS`), else ``pipe``."""
    if method != "auto":
        return method
    return "analytic" if traj.params.get("generator") in ANALYTIC_GENERATORS else "pipe"


def cached_dcf(
    traj: Trajectory,
    method: str = "auto",
    *,
    source_path: str | os.PathLike | None = None,
    plans: Plans | None = None,
    **options: Any,
) -> tuple[np.ndarray, str]:
    """Density weights (n_proj, n_samp) in 1/m^3 of ``traj`` and how they were obtained.

    ``method``: a name of :data:`recon.trajectory.dcf.DCF_METHODS` or ``auto`` (the file's own
    weights if it has them, else analytic for built-in generators and pipe otherwise).
    ``source_path``: the trajectory file, whose content hash keys the cache. ``plans``: handed
    to the method (and its in-memory cache is used first). Returns ``(dcf, how)`` with ``how``
    one of "from trajectory file", "computed (analytic)", "cached (analytic)" (a built-in design's,
    keyed by its identity), "cached (pipe)", "computed (pipe)", "computed (pipe, not cached: ...)".
    """
    from recon.plans import plans_or_default

    if method == "auto" and traj.dcf is not None:
        return traj.dcf, "from trajectory file"
    method = resolve_method(traj, method)
    pl = plans_or_default(plans)
    if method == "analytic" and traj.design_identity() is None:  # cheaper to compute than to hash k for a key
        return pl.dcf(traj, method, **options), "computed (analytic)"
    # Pipe-Menon weights, and analytic weights of a built-in design (keyed by the design: no hashing;
    # 0.1-0.17 s to compute at the 64^3 protocol against ~0.04 s to read)
    if pl.cache is not None:  # a batch worker's in-memory cache first (no disk read)
        w = pl.cache.peek("dcf", pl.dcf_key(traj, method, **options))
        if w is not None:
            return w, f"cached in memory ({method})"
    d = cache_dir()
    if d is None:
        return pl.dcf(traj, method, **options), f"computed ({method}, cache off)"
    try:
        key = dcf_key(traj, method, options, source_path)
    except OSError as e:
        return pl.dcf(traj, method, **options), f"computed ({method}, not cached: {e.strerror})"
    entry = d / f"{key}{_SUFFIX}"
    w = _load(entry, traj.k.shape[:2])
    if w is not None:
        log.info("density weights (%s) from the cache %s", method, entry)
        if pl.cache is not None:
            pl.cache.get_or_build("dcf", pl.dcf_key(traj, method, **options), lambda: w)
        return w, f"cached ({method})"
    w = pl.dcf(traj, method, **options)
    why = _store(entry, w)
    return w, f"computed ({method})" if why is None else f"computed ({method}, not cached: {why})"


def _load(entry: Path, shape: tuple) -> np.ndarray | None:
    """The weights of a cache entry (mapped; finite and non-negative when stored, digest-checked), or None."""
    if not entry.is_file():
        return None
    try:
        _, z = read_arrays(entry)
        w = z["dcf"]
        ok = w.shape == tuple(shape) and w.dtype == np.float64
    except (OSError, ValueError, KeyError) as e:
        log.warning("DCF cache entry %s unreadable (%s): recomputing", entry, e)
        ok = False
    if not ok:
        entry.unlink(missing_ok=True)
        return None
    touch(entry)
    return w


def store_entry(entry: Path, nbytes: int, write, what: str, suffix: str = _SUFFIX, legacy_suffix: str | None = None) -> str | None:
    """Write one cache entry atomically (``write(file object)``) and bound its directory to
    :func:`max_bytes`; returns None or why it was not stored. Shared by every on-disk cache
    (density weights, trajectory designs, point-response kernels); ``what`` names the content in the log.
    ``legacy_suffix``: entries of an earlier format in this cache's own directory (never read again, and
    not counted by the bound) are removed after a store, as ``narecon cache clear`` removes them."""
    from recon.atomic import atomic_file
    from recon.errors import OutputError

    bound = max_bytes()
    if nbytes > bound:
        return f"{nbytes / 1e6:.0f} MB exceeds the cache bound NARECON_CACHE_MAX_MB"
    try:
        with atomic_file(entry) as tmp:
            with open(tmp, "wb") as f:
                write(f)
    except (OSError, OutputError, TypeError, ValueError) as e:
        log.warning("cannot store %s in the cache %s: %s", what, entry.parent, e)
        return str(e)
    _evict(entry.parent, bound, keep=entry, suffix=suffix)
    if legacy_suffix:
        for p in entries(entry.parent, legacy_suffix):
            p.unlink(missing_ok=True)
    return None


ENTRY_MAGIC = b"NARECONC"
"""First bytes of an array-store cache entry (:func:`write_arrays`)."""
_ENTRY_VERSION = 1
_ENTRY_ALIGN = 64
_ENTRY_HEADER_MAX = 1 << 20  # bytes of JSON header; a longer one is damage, not an entry


def _raw(a: np.ndarray):
    """The bytes of a C-contiguous array without a copy (memoryview cannot cast an empty one)."""
    return memoryview(a).cast("B") if a.size else b""


def write_arrays(f, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``meta`` (JSON) and ``arrays`` to the open binary file ``f`` as one cache entry.

    Layout: :data:`ENTRY_MAGIC`, version and header length (two little-endian uint32), the JSON
    header (meta; each array's name, dtype, shape and offset; the end offset; an XXH3-128 digest of
    the arrays' bytes), then each array's C-order bytes at a 64-byte-aligned offset. Unlike an
    ``.npz`` (zip members read through a CRC and copied), :func:`read_arrays` maps the arrays in
    place: the 116 MB design of the 64^3 protocol loads in ~0.02 s instead of ~0.2 s.
    """
    import xxhash

    order = [(name, np.ascontiguousarray(a)) for name, a in arrays.items()]
    digest = xxhash.xxh3_128()
    for _, a in order:
        digest.update(_raw(a))

    def header(base: int) -> tuple[bytes, list, int]:
        table, off = [], base
        for name, a in order:
            off += -off % _ENTRY_ALIGN
            table.append([name, a.dtype.str, list(a.shape), off])
            off += a.nbytes
        doc = {"meta": meta, "arrays": table, "end": off, "digest": digest.hexdigest()}
        return json.dumps(doc).encode(), table, off

    # the header's length moves the data: fix the base once the header length is known (two passes at most)
    base = 0
    for _ in range(8):
        text, table, _end = header(base)
        want = len(ENTRY_MAGIC) + 8 + len(text)
        if want <= base:
            break
        base = want + (-want % _ENTRY_ALIGN)
    else:  # pragma: no cover - the header's length converges in two passes
        raise ValueError("cache entry header does not converge")
    f.write(ENTRY_MAGIC + np.array([_ENTRY_VERSION, len(text)], dtype="<u4").tobytes() + text)
    for (_, a), (_, _, _, off) in zip(order, table):
        f.write(b"\0" * (off - f.tell()))
        f.write(_raw(a))


def read_arrays(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(meta, arrays) of an entry written by :func:`write_arrays`; the arrays are copy-on-write maps
    of the file (no read until used, writable without touching the file). Raises ValueError when
    the file is not such an entry, is truncated, or its arrays do not match the stored digest."""
    import xxhash

    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(len(ENTRY_MAGIC) + 8)
        if len(head) < len(ENTRY_MAGIC) + 8 or head[: len(ENTRY_MAGIC)] != ENTRY_MAGIC:
            raise ValueError("not a narecon cache entry")
        version, n = (int(x) for x in np.frombuffer(head[len(ENTRY_MAGIC) :], dtype="<u4"))
        if version != _ENTRY_VERSION or n > min(_ENTRY_HEADER_MAX, size):
            raise ValueError(f"entry version {version} / header of {n} bytes not understood")
        doc = json.loads(f.read(n).decode())
    try:
        end, table, want = int(doc["end"]), list(doc["arrays"]), str(doc["digest"])
        table = [(str(name), np.dtype(dt), tuple(int(x) for x in shape), int(off)) for name, dt, shape, off in table]
    except (KeyError, TypeError, ValueError) as e:  # a damaged header of the right length
        raise ValueError(f"entry header not understood ({type(e).__name__}: {e})") from e
    if end != size:
        raise ValueError(f"{size} bytes, the header says {end} (truncated or appended)")
    arrays: dict[str, np.ndarray] = {}
    digest = xxhash.xxh3_128()
    for name, dtype, shape, off in table:
        dt = dtype.str
        if any(x < 0 for x in shape):
            raise ValueError(f"array {name!r} has a negative dimension {shape}")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if dtype.hasobject or off < 0 or off + nbytes > size:
            raise ValueError(f"array {name!r} ({dt}, {shape}) does not fit the file")
        a = np.memmap(path, dtype=dtype, mode="c", offset=off, shape=shape) if nbytes else np.zeros(shape, dtype)
        a = np.asarray(a)  # a plain ndarray view of the map
        digest.update(_raw(a))
        arrays[name] = a
    if digest.hexdigest() != want:
        raise ValueError("the arrays do not match the entry's digest (damaged)")
    meta = doc.get("meta")
    if not isinstance(meta, dict):
        raise ValueError("entry header has no meta mapping")
    return meta, arrays


def touch(entry: Path) -> None:
    """Mark a cache entry as just used (least recently used entries are evicted first)."""
    try:
        os.utime(entry)
    except OSError:
        pass


def _store(entry: Path, w: np.ndarray) -> str | None:
    """Write ``w`` atomically and bound the directory; returns None or why it was not stored.

    Only finite, non-negative weights are stored (checked here, once), so a load need not check them."""
    w = np.ascontiguousarray(w, dtype=np.float64)
    if not (np.isfinite(w).all() and (w >= 0).all()):
        return "weights not finite and non-negative"
    return store_entry(entry, w.nbytes, lambda f: write_arrays(f, {}, {"dcf": w}), "density weights", legacy_suffix=_LEGACY_SUFFIX)


def entries(d: Path | None = None, suffix: str = _SUFFIX) -> list[Path]:
    """Cache entries (files ending in ``suffix``) of ``d`` (default: the DCF cache), least recently used first."""
    d = cache_dir() if d is None else d
    if d is None or not d.is_dir():
        return []
    files = [p for p in d.iterdir() if p.suffix == suffix and p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: p.stat().st_mtime)


def _evict(d: Path, bound: int, keep: Path | None = None, suffix: str = _SUFFIX) -> None:
    files = entries(d, suffix)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if total <= bound:
            break
        if keep is not None and p == keep:
            continue
        total -= p.stat().st_size
        p.unlink(missing_ok=True)


def info(d: Path | None | str = "dcf", suffix: str = _SUFFIX) -> dict[str, Any]:
    """Directory, entry count, total size and bound of a cache directory (JSON-ready; default the DCF cache)."""
    d = cache_dir() if d == "dcf" else d
    files = entries(d, suffix) if d is not None else []
    return {
        "directory": None if d is None else str(d),
        "enabled": d is not None,
        "entries": len(files),
        "size_bytes": int(sum(p.stat().st_size for p in files)),
        "max_bytes": max_bytes(),
    }


def clear(d: Path | None | str = "dcf", suffix: str = _SUFFIX) -> int:
    """Remove every entry of a cache directory (default the DCF cache); returns how many were removed."""
    legacy = d == "dcf" and suffix == _SUFFIX  # the DCF cache's own: also its entries of earlier versions
    d = cache_dir() if d == "dcf" else d
    files = entries(d, suffix) if d is not None else []
    if legacy and d is not None:
        files += entries(d, _LEGACY_SUFFIX)
    for p in files:
        p.unlink(missing_ok=True)
    return len(files)
