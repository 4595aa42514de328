"""Raw data input/output: Siemens twix (VB, VD/VE, XA), ISMRMRD HDF5, sequence profiles, coils.

Public API:

* :func:`read_raw` -- read one raw file (or one file per echo), dispatching on the format.
* :func:`read_twix`, :func:`write_twix` -- Siemens twix.
* :func:`read_ismrmrd`, :func:`write_ismrmrd` -- ISMRMRD HDF5.
* :func:`load_profile`, :func:`trajectory_params`, :func:`encode_params`,
  :func:`build_trajectory`, :func:`check_match` -- sequence profiles.
* :func:`nifti_affine` -- voxel to patient RAS+ mm.
* :class:`Acquisition` -- the container every reader returns.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from recon.errors import InputError, RawDataError
from recon.io.acquisition import Acquisition
from recon.io.geometry import default_geometry, nifti_affine
from recon.io.profile import build_trajectory, check_match, encode_params, load_profile, trajectory_params
from recon.io.twix import read_twix
from recon.io.twix_write import write_twix

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def raw_format(path: str | os.PathLike) -> str:
    """ "ismrmrd" for HDF5 files, "twix" otherwise (the twix reader validates the container)."""
    p = Path(path)
    if not p.exists():
        raise InputError("raw data file not found", p)
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", p) from e
    return "ismrmrd" if head == _HDF5_MAGIC else "twix"


def read_raw(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    echo_from: str = "eco",
    n_echoes: int | None = None,
    te_s: Sequence[float] | None = None,
    nucleus: str | None = None,
) -> Acquisition:
    """Read raw data: a twix .dat, several twix files (one per echo), or an ISMRMRD .h5 file.

    For ISMRMRD the trajectory, when the file carries one, is in ``acq.header['trajectory']``.
    ``nucleus`` overrides the file's nucleus (ISMRMRD has no nucleus field).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = list(paths)
    if not paths:
        raise InputError("no raw data file given")
    seen = [os.path.realpath(p) for p in paths]
    for i, rp in enumerate(seen):
        if rp in seen[:i]:
            raise InputError("the same raw file is given twice (give each echo file once)", paths[i])
    fmts = {raw_format(p) for p in paths}
    if fmts == {"ismrmrd"}:
        if len(paths) != 1:
            raise RawDataError("give one ISMRMRD file (it holds all echoes)", paths[1])
        from recon.io.ismrmrd_io import read_ismrmrd

        acq = read_ismrmrd(paths[0], nucleus=nucleus)
    elif fmts == {"twix"}:
        acq = read_twix(paths, echo_from=echo_from, n_echoes=n_echoes, te_s=te_s)
        if nucleus:
            acq.nucleus = nucleus
    else:
        raise RawDataError("cannot mix twix and ISMRMRD files", paths[0])
    return acq


def read_ismrmrd(path, nucleus=None):
    """See :func:`recon.io.ismrmrd_io.read_ismrmrd`."""
    from recon.io.ismrmrd_io import read_ismrmrd as _r

    return _r(path, nucleus=nucleus)


def write_ismrmrd(acq, path, traj=None, overwrite: bool = True):
    """See :func:`recon.io.ismrmrd_io.write_ismrmrd`."""
    from recon.io.ismrmrd_io import write_ismrmrd as _w

    return _w(acq, path, traj=traj, overwrite=overwrite)


__all__ = [
    "Acquisition",
    "read_raw",
    "raw_format",
    "read_twix",
    "write_twix",
    "read_ismrmrd",
    "write_ismrmrd",
    "load_profile",
    "trajectory_params",
    "encode_params",
    "build_trajectory",
    "check_match",
    "nifti_affine",
    "default_geometry",
]
