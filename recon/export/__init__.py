"""Outputs people load elsewhere: NIfTI (scanner space), BIDS JSON sidecars, DICOM for PACS, ISMRMRD images.

* :func:`recon.export.nifti.save_nifti` -- NIfTI-1 with ``qform_code = sform_code = 1``
  (scanner RAS+ mm), as dcm2niix writes them.
* :func:`recon.export.bids.bids_sidecar` -- the BIDS keys that apply to one image (echo times,
  TR, flip angle, field, frequency, units, reconstruction options, software version).
* :func:`recon.export.dicom.write_dicom_series` -- a classic MR Image Storage series (one file
  per slice) with patient geometry from the NIfTI affine (RAS+ -> LPS) and, for maps in mM,
  a Real World Value Mapping to mmol/L.
* :func:`recon.export.ismrmrd_images.write_ismrmrd_images` -- ``ismrmrd.Image`` records in an
  HDF5 file for Gadgetron users.

Imports are lazy (pydicom, ismrmrd): ``import recon`` stays fast.
"""

from __future__ import annotations

__all__ = ["save_nifti", "bids_sidecar", "write_dicom_series", "write_ismrmrd_images"]


def __getattr__(name: str):
    if name == "save_nifti":
        from recon.export.nifti import save_nifti

        return save_nifti
    if name == "bids_sidecar":
        from recon.export.bids import bids_sidecar

        return bids_sidecar
    if name == "write_dicom_series":
        from recon.export.dicom import write_dicom_series

        return write_dicom_series
    if name == "write_ismrmrd_images":
        from recon.export.ismrmrd_images import write_ismrmrd_images

        return write_ismrmrd_images
    raise AttributeError(name)
