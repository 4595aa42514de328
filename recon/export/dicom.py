"""DICOM export for PACS: a classic MR Image Storage series per volume (one file per slice).

Geometry: the NIfTI affine maps voxel (i, j, k) to RAS+ mm; DICOM uses LPS. Slice k of the
series is the plane vol[:, :, k]; its pixel (row r, column c) is voxel (i = c, j = r, k), so
ImageOrientationPatient = (LPS direction of i, LPS direction of j), PixelSpacing = (spacing
of j, spacing of i), ImagePositionPatient = LPS of voxel (0, 0, k), slice spacing |axis k|.
Values are stored as unsigned 16-bit with RescaleSlope/Intercept; maps in mM also carry a
Real World Value Mapping (UCUM ``mmol/L``) so that viewers show and measure mM.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import OutputError

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_LPS = np.diag([-1.0, -1.0, 1.0])
_UCUM = {"mM": ("mmol/L", "millimole per liter"), "Hz": ("Hz", "hertz"), "arbitrary": ("1", "no units")}


def lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(LPS matrix 3x3 of the voxel axes in mm, LPS origin of voxel (0, 0, 0) in mm, voxel sizes) of a RAS affine."""
    a = np.asarray(affine, dtype=float)
    m = _LPS @ a[:3, :3]
    return m, _LPS @ a[:3, 3], np.linalg.norm(m, axis=0)


def _ds(v: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    s = f"{float(v):.10g}"
    return s if len(s) <= 16 else f"{float(v):.8e}"


def write_dicom_series(
    out_dir: str | os.PathLike,
    vol: np.ndarray,
    affine: np.ndarray,
    acq=None,
    description: str = "narecon",
    units: str = "arbitrary",
    series_number: int = 1,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    patient: dict[str, str] | None = None,
    echo_time_s: float | None = None,
) -> list[Path]:
    """Write ``vol`` (3D, real) as a classic MR single-frame series into ``out_dir``; return the files.

    ``units`` ``"mM"`` adds the Real World Value Mapping to mmol/L. Series written from one
    reconstruction should share ``study_uid`` and ``frame_of_reference_uid`` (generated when
    None; read them back from the first file). ``acq`` (optional) supplies TR, flip angle,
    field, frequency, nucleus and sequence; ``patient`` the PatientName/PatientID (default
    "anonymous": the raw data carry pseudonymous codes only).
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSeq
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    v = np.asarray(vol)
    if v.ndim != 3 or np.iscomplexobj(v):
        raise OutputError(f"DICOM export needs a real 3D volume, got shape {v.shape} dtype {v.dtype}", out_dir)
    v = np.nan_to_num(v.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m, origin, vox = lps_geometry(affine)
    row_dir = m[:, 0] / vox[0]  # along a row: increasing column index = i
    col_dir = m[:, 1] / vox[1]  # down a column: increasing row index = j
    lo, hi = float(v.min()), float(v.max())
    slope = (hi - lo) / 65535.0 if hi > lo else 1.0
    intercept = lo
    study_uid = study_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    series_uid = generate_uid()
    now = datetime.datetime.now()
    pat = {"PatientName": "anonymous", "PatientID": "anonymous"} | (patient or {})
    files = []
    nk = v.shape[2]
    for k in range(nk):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.Modality = "MR"
        ds.Manufacturer = "Siemens (reconstructed by narecon)"
        ds.PatientName = pat["PatientName"]
        ds.PatientID = pat["PatientID"]
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.SeriesNumber = int(series_number)
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = description[:64]
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ScanningSequence = "RM"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        if acq is not None:
            ds.RepetitionTime = _ds(acq.tr_s * 1e3)
            ds.FlipAngle = _ds(acq.flip_deg)
            ds.MagneticFieldStrength = _ds(acq.field_t)
            ds.ImagingFrequency = _ds(acq.frequency_hz * 1e-6)
            ds.ImagedNucleus = str(acq.nucleus)[:16]
            if (acq.geometry or {}).get("patient_position"):
                ds.PatientPosition = acq.geometry["patient_position"]
        te = echo_time_s if echo_time_s is not None else (acq.te_s[0] if acq is not None else None)
        if te is not None and np.isfinite(te):
            ds.EchoTime = _ds(te * 1e3)
        ds.ImagePositionPatient = [_ds(x) for x in origin + m[:, 2] * k]
        ds.ImageOrientationPatient = [_ds(x) for x in np.concatenate([row_dir, col_dir])]
        ds.PixelSpacing = [_ds(vox[1]), _ds(vox[0])]
        ds.SliceThickness = _ds(vox[2])
        ds.SpacingBetweenSlices = _ds(vox[2])
        ds.SliceLocation = _ds(float(np.dot(np.cross(row_dir, col_dir), origin + m[:, 2] * k)))
        plane = v[:, :, k].T  # (rows = j, columns = i)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "US" if units not in _UCUM or units == "arbitrary" else _UCUM[units][0][:16]
        stored = np.clip(np.round((plane - intercept) / slope), 0, 65535).astype(np.uint16)
        ds.WindowCenter = _ds(0.5 * (lo + hi))
        ds.WindowWidth = _ds(max(hi - lo, 1e-6))
        if units in _UCUM and units != "arbitrary":
            code, meaning = _UCUM[units]
            unit_item = Dataset()
            unit_item.CodeValue = code
            unit_item.CodingSchemeDesignator = "UCUM"
            unit_item.CodeMeaning = meaning
            rw = Dataset()
            rw.RealWorldValueFirstValueMapped = 0
            rw.RealWorldValueLastValueMapped = 65535
            rw.RealWorldValueSlope = float(slope)
            rw.RealWorldValueIntercept = float(intercept)
            rw.LUTExplanation = f"{description[:50]} in {units}"
            rw.LUTLabel = units[:16]
            rw.MeasurementUnitsCodeSequence = DSeq([unit_item])
            ds.RealWorldValueMappingSequence = DSeq([rw])
        ds.PixelData = stored.tobytes()
        f = out / f"{series_number:03d}_{k + 1:04d}.dcm"
        ds.save_as(f, enforce_file_format=True)
        files.append(f)
    return files


def read_series_geometry(files: list[str | os.PathLike]) -> dict[str, Any]:
    """Voxel -> RAS+ affine and the real-valued volume of a series written by :func:`write_dicom_series` (for checks)."""
    import pydicom

    dss = sorted((pydicom.dcmread(f) for f in files), key=lambda d: int(d.InstanceNumber))
    iop = np.asarray(dss[0].ImageOrientationPatient, dtype=float)
    ps = np.asarray(dss[0].PixelSpacing, dtype=float)
    p0 = np.asarray(dss[0].ImagePositionPatient, dtype=float)
    p1 = np.asarray(dss[1].ImagePositionPatient, dtype=float) if len(dss) > 1 else p0
    m = np.stack([iop[:3] * ps[1], iop[3:] * ps[0], p1 - p0], axis=1)
    aff = np.eye(4)
    aff[:3, :3] = _LPS @ m
    aff[:3, 3] = _LPS @ p0
    vol = np.stack([d.pixel_array.astype(float).T * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in dss], axis=2)
    return {"affine": aff, "volume": vol, "datasets": dss}
