"""ISMRMRD image export (``ismrmrd.Image`` records in an HDF5 file) for Gadgetron users.

Each volume becomes one 3D image in the group ``/dataset/<name>``: data (1, z, y, x) with
x along ``read_dir``, y along ``phase_dir``, z along ``slice_dir`` (unit vectors in the
patient coordinate system, LPS), ``position`` the LPS centre of the voxel block in mm and
``field_of_view`` its extent in mm (ISMRMRD's conventions).
"""

from __future__ import annotations

import os

import numpy as np

from recon.errors import OutputError

_LPS = np.diag([-1.0, -1.0, 1.0])
IMTYPE_MAGNITUDE, IMTYPE_PHASE, IMTYPE_REAL, IMTYPE_IMAG, IMTYPE_COMPLEX = 1, 2, 3, 4, 5


def write_ismrmrd_images(
    path: str | os.PathLike,
    volumes: dict[str, np.ndarray],
    affine: np.ndarray,
    acq=None,
    overwrite: bool = False,
) -> list[str]:
    """Write each named 3D volume (real or complex) as an ``ismrmrd.Image`` into ``path``; return the group names.

    ``affine`` maps voxel (i, j, k) to RAS+ mm (as the NIfTI files). ``acq`` (optional) adds
    the XML header's nucleus-free essentials (field, TR, TE) as image meta attributes.
    """
    import ismrmrd

    p = os.fspath(path)
    if os.path.exists(p):
        if not overwrite:
            raise OutputError("exists (use --force to overwrite)", p)
        os.remove(p)
    a = np.asarray(affine, dtype=float)
    m = _LPS @ a[:3, :3]
    vox = np.linalg.norm(m, axis=0)
    dirs = m / vox
    names = []
    with ismrmrd.Dataset(p, "dataset", create_if_needed=True) as d:
        for idx, (name, vol) in enumerate(volumes.items()):
            v = np.asarray(vol)
            if v.ndim != 3:
                raise OutputError(f"image {name!r} must be 3D, got shape {v.shape}", p)
            cplx = np.iscomplexobj(v)
            arr = np.ascontiguousarray(v.transpose(2, 1, 0).astype(np.complex64 if cplx else np.float32))
            img = ismrmrd.Image.from_array(arr, transpose=False)
            n = np.asarray(v.shape, dtype=float)
            centre = _LPS @ (a[:3, :3] @ ((n - 1) / 2) + a[:3, 3])
            img.position[:] = centre.astype(np.float32)
            img.read_dir[:] = dirs[:, 0].astype(np.float32)
            img.phase_dir[:] = dirs[:, 1].astype(np.float32)
            img.slice_dir[:] = dirs[:, 2].astype(np.float32)
            img.field_of_view[:] = (n * vox).astype(np.float32)
            img.image_type = IMTYPE_COMPLEX if cplx else IMTYPE_MAGNITUDE
            img.image_series_index = idx
            img.image_index = 0
            meta = ismrmrd.Meta({"narecon_name": name})
            if acq is not None:
                meta["nucleus"] = str(acq.nucleus)
                meta["field_t"] = str(acq.field_t)
                meta["te_s"] = " ".join(str(t) for t in acq.te_s)
            img.attribute_string = meta.serialize()
            d.append_image(name, img)
            names.append(name)
    return names
