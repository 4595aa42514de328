"""Trajectory files (HDF5), the format of DESIGN.md.

Datasets: ``k`` (n_proj, n_samp, 3) float, cycles/m; ``t`` (n_samp,) or (n_proj, n_samp) float,
s from the first ADC sample; optional ``dcf`` (n_proj, n_samp) in 1/m^3; optional
``solid_angle`` (n_proj,) in sr; optional group ``gradients`` with the design waveforms.
Attributes: ``fov_m``, ``matrix``, ``gamma_hz_per_t``, ``dwell_s``, ``format`` =
"narecon-trajectory", ``format_version`` = 1, and the generator's parameters (``generator``,
``p``, ``gmax_t_per_m``, ... in SI units) when it was generated. Files written by other tools
with only ``k``, ``t`` and the four required attributes are read as well.
"""

from __future__ import annotations

import json
import os

import numpy as np

from recon.atomic import atomic_file, hdf5_in_memory
from recon.errors import InputError, TrajectoryError
from recon.trajectory.base import Trajectory

FORMAT = "narecon-trajectory"
FORMAT_VERSION = 1
_REQUIRED_ATTRS = ("fov_m", "matrix", "gamma_hz_per_t", "dwell_s")


def write_trajectory(traj: Trajectory, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write ``traj`` to an HDF5 trajectory file atomically (built in memory, then written: a full disk is one OutputError).

    ``k`` and ``dcf`` are stored uncompressed (fast to read on every run); the waveforms gzip-compressed.
    """
    with atomic_file(path, overwrite=overwrite) as tmp, hdf5_in_memory(tmp) as f:
        # k and dcf uncompressed and contiguous: the file is read on every run, and gzip (2.3x smaller
        # for k) costs 0.6 s of decompression per read at the 64^3 protocol against 0.03 s
        f.create_dataset("k", data=traj.k)
        f.create_dataset("t", data=traj.t)
        if traj.dcf is not None:
            f.create_dataset("dcf", data=traj.dcf)
        if traj.solid_angle is not None:
            f.create_dataset("solid_angle", data=traj.solid_angle)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["fov_m"] = np.asarray(traj.fov_m)
        f.attrs["matrix"] = np.asarray(traj.matrix)
        f.attrs["gamma_hz_per_t"] = traj.gamma_hz_per_t
        f.attrs["dwell_s"] = traj.dwell_s
        for key, val in traj.params.items():
            if key in _REQUIRED_ATTRS:
                continue
            if val is None:
                f.attrs[key] = "none"
            elif isinstance(val, (list, tuple, dict)):
                f.attrs[key] = json.dumps(val)
            else:
                f.attrs[key] = val
        if traj.waveforms is not None:
            g = f.create_group("gradients")
            g.attrs["raster_s"] = traj.waveforms["raster_s"]
            g.create_dataset("g_t_per_m", data=traj.waveforms["g_t_per_m"], compression="gzip")
            g.create_dataset("group", data=np.asarray(traj.waveforms["group"]))
            g.create_dataset("rotation_rad", data=np.asarray(traj.waveforms["rotation_rad"]))


def _attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, str):
        if v == "none":
            return None
        if v[:1] in "[{":
            try:
                return json.loads(v)
            except ValueError:
                return v
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


#: most elements an attribute may have (the generator's parameters are scalars or short lists)
_MAX_ATTR_ELEMENTS = 100_000


def _check_links_and_storage(f, path: str) -> None:
    """Refuse soft/external links, external storage and virtual datasets anywhere in the file.

    They let a trajectory file read other files (``/etc/passwd`` into ``solid_angle``)."""
    import h5py

    def walk(group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}{name}"
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise TrajectoryError(f"{where} is {kind}; links are not allowed in trajectory files", path)
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, where + "/")
            elif isinstance(obj, h5py.Dataset):
                if obj.external:
                    raise TrajectoryError(f"{where} uses external storage (data in another file); not allowed", path)
                if obj.is_virtual:
                    raise TrajectoryError(f"{where} is a virtual dataset (data in other files); not allowed", path)

    walk(f, "")


def _check_shapes(f, path: str) -> None:
    """Check the declared shapes and types of the datasets (before reading any) against each other and the limits."""
    from recon import limits

    def numeric(name: str):
        d = f[name]
        if not hasattr(d, "shape") or d.dtype.kind not in "fiu":
            raise TrajectoryError(f"{name} must be a numeric dataset, got {getattr(d, 'dtype', type(d).__name__)}", path)
        return d.shape

    k = numeric("k")
    if len(k) != 3 or k[2] != 3:
        raise TrajectoryError(f"k must have shape (n_proj, n_samp, 3), declared {k}", path)
    n_proj, n_samp = int(k[0]), int(k[1])
    limits.check_trajectory_shape(n_proj, n_samp, "declared k", path)
    t = numeric("t")
    if t not in ((n_samp,), (n_proj, n_samp)):
        raise TrajectoryError(f"t must have shape ({n_samp},) or ({n_proj}, {n_samp}), declared {t}", path)
    if "dcf" in f and numeric("dcf") != (n_proj, n_samp):
        raise TrajectoryError(f"dcf must have shape ({n_proj}, {n_samp}), declared {f['dcf'].shape}", path)
    if "solid_angle" in f and numeric("solid_angle") != (n_proj,):
        raise TrajectoryError(f"solid_angle must have shape ({n_proj},), declared {f['solid_angle'].shape}", path)
    per_point = 3 + (len(t) == 2) + ("dcf" in f)  # k, a 2-D t, dcf: float64 values per k-space point
    total = 8.0 * n_proj * n_samp * per_point + 8.0 * (n_proj + n_samp)
    if "gradients" in f:
        g = f["gradients"]
        for name in ("g_t_per_m", "group", "rotation_rad"):
            if name not in g or not hasattr(g[name], "shape") or g[name].dtype.kind not in "fiu":
                raise TrajectoryError(f"gradients/{name} is missing or not numeric", path)
        gw = g["g_t_per_m"].shape
        if len(gw) != 3 or gw[2] != 3:
            raise TrajectoryError(f"gradients/g_t_per_m must have shape (n_groups, n_raster, 3), declared {gw}", path)
        limits.check_trajectory_shape(int(gw[0]), int(gw[1]), "declared gradients/g_t_per_m", path)
        for name in ("group", "rotation_rad"):
            if g[name].size > 10 * max(n_proj, 1) * 3:
                raise TrajectoryError(f"gradients/{name} declares {g[name].size} values for {n_proj} projections", path)
        total += 8.0 * (gw[0] * gw[1] * 3 + g["group"].size + g["rotation_rad"].size)
    limits.check_bytes(total, f"reading the trajectory datasets (k {n_proj} x {n_samp} x 3, t, dcf)", path)
    for a in f.attrs:
        try:
            size = f.attrs.get_id(a).shape
        except (KeyError, OSError, TypeError):
            continue
        n = 1
        for s_ in size or ():
            n *= int(s_)
        if n > _MAX_ATTR_ELEMENTS:
            raise TrajectoryError(f"attribute {a!r} declares {n} elements (at most {_MAX_ATTR_ELEMENTS})", path)


def _check_matrix_fov(f, path: str) -> None:
    from recon import limits

    limits.check_matrix(f.attrs["matrix"], "matrix attribute", path)
    fov = np.asarray(f.attrs["fov_m"], dtype=np.float64).reshape(-1)
    if fov.size not in (1, 3) or not np.all(np.isfinite(fov)) or np.any(fov <= 0) or np.any(fov > 10):
        raise TrajectoryError(f"fov_m must be 1 or 3 positive finite lengths in m (at most 10 m), got {fov.tolist()}", path)


def _read_dataset(ds, path: str) -> np.ndarray:
    """The whole of dataset ``ds`` of the HDF5 file at ``path``.

    A contiguous, unfiltered numeric dataset (how :func:`write_trajectory` stores k, t and dcf) is
    mapped copy-on-write from its offset in the file, as nibabel maps uncompressed NIfTI images:
    no read until used and no copy (h5py's read of the 116 MB of k of the 64^3 protocol costs
    0.12-0.17 s). Writing to the array never touches the file; rewriting the file in place while a
    run uses it is not supported (narecon's own writers replace files atomically). Anything else
    is read through h5py. The shape was bounded by :func:`_check_shapes` before.
    """
    off = ds.id.get_offset() if ds.chunks is None and ds.compression is None and not ds.dtype.hasobject else None
    if off is None or ds.dtype.kind not in "fiu" or ds.size == 0:
        return ds[()]
    nbytes = int(ds.size) * ds.dtype.itemsize
    if int(off) + nbytes > os.path.getsize(path):
        raise TrajectoryError(f"dataset {ds.name} extends past the end of the file (truncated?)", path)
    return np.asarray(np.memmap(path, dtype=ds.dtype, mode="c", offset=int(off), shape=ds.shape))


def read_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read an HDF5 trajectory file; raises :class:`TrajectoryError` naming the file if invalid.

    Before any dataset is read, links, external storage and virtual datasets are refused and
    the declared shapes are checked against each other and :mod:`recon.limits` (so a small or
    compressed file cannot make narecon allocate more than its limits allow).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TrajectoryError("trajectory file not found", path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TrajectoryError(f"not an HDF5 trajectory file ({e})", path) from e
    with f:
        missing = [n for n in ("k", "t") if n not in f]
        missing += [a for a in _REQUIRED_ATTRS if a not in f.attrs]
        if missing:
            raise TrajectoryError(
                f"missing {', '.join(missing)} (need datasets k, t and attributes {', '.join(_REQUIRED_ATTRS)})", path
            )
        try:
            _check_links_and_storage(f, path)
            _check_shapes(f, path)
            _check_matrix_fov(f, path)
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise TrajectoryError(f"unreadable trajectory file: {e}", path) from e
        try:
            k = _read_dataset(f["k"], path)
            t = _read_dataset(f["t"], path)
            dcf = _read_dataset(f["dcf"], path) if "dcf" in f else None
            solid = f["solid_angle"][()] if "solid_angle" in f else None
            params = {a: _attr(f.attrs[a]) for a in f.attrs if a not in _REQUIRED_ATTRS + ("format", "format_version")}
            wf = None
            if "gradients" in f:
                g = f["gradients"]
                wf = {
                    "raster_s": float(g.attrs["raster_s"]),
                    "g_t_per_m": g["g_t_per_m"][()],
                    "group": g["group"][()],
                    "rotation_rad": g["rotation_rad"][()],
                }
            return Trajectory(
                k=k,
                t=t,
                fov_m=f.attrs["fov_m"],
                matrix=f.attrs["matrix"],
                dwell_s=float(f.attrs["dwell_s"]),
                gamma_hz_per_t=float(f.attrs["gamma_hz_per_t"]),
                dcf=dcf,
                params=params,
                solid_angle=solid,
                waveforms=wf,
            )
        except InputError as e:
            raise type(e)(e.message, path) from e
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise TrajectoryError(f"unreadable trajectory file: {e}", path) from e
