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
from recon.errors import TrajectoryError
from recon.trajectory.base import Trajectory

FORMAT = "narecon-trajectory"
FORMAT_VERSION = 1
_REQUIRED_ATTRS = ("fov_m", "matrix", "gamma_hz_per_t", "dwell_s")


def write_trajectory(traj: Trajectory, path: str | os.PathLike, overwrite: bool = True) -> None:
    """Write ``traj`` to an HDF5 trajectory file atomically (built in memory, then written: a full disk is one OutputError)."""
    with atomic_file(path, overwrite=overwrite) as tmp, hdf5_in_memory(tmp) as f:
        f.create_dataset("k", data=traj.k, compression="gzip", compression_opts=4, shuffle=True)
        f.create_dataset("t", data=traj.t)
        if traj.dcf is not None:
            f.create_dataset("dcf", data=traj.dcf, compression="gzip", compression_opts=4, shuffle=True)
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


def read_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read an HDF5 trajectory file; raises :class:`TrajectoryError` naming the file if invalid."""
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
            k = f["k"][()]
            t = f["t"][()]
            dcf = f["dcf"][()] if "dcf" in f else None
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
        except TrajectoryError as e:
            raise TrajectoryError(e.message, path) from e
        except (KeyError, ValueError, TypeError, OSError) as e:
            raise TrajectoryError(f"unreadable trajectory file: {e}", path) from e
