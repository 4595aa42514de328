"""Outputs for other tools: NIfTI codes (nibabel), BIDS sidecars, DICOM read back by pydicom, ISMRMRD images.

Truths: nibabel's reading of the header; the DICOM standard's pixel -> patient formula
(PS3.3 C.7.6.2.1.1) applied to what pydicom reads, against the NIfTI affine mapped RAS -> LPS;
ismrmrd's own reader.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from recon.io import Acquisition
from recon.io.geometry import nifti_affine, prs_from_normal


@pytest.fixture
def acq():
    data = np.zeros((2, 1, 4, 8), np.complex64)
    geom = {
        "position_m": np.array([0.012, -0.031, 0.047]),
        "rotation": prs_from_normal([0.3, 0.9, 0.2], 0.4),
        "patient_position": "HFS",
    }
    return Acquisition(
        data, (0.3e-3, 2.32e-3), 0.174, 90.0, 10e-6, "23Na", 78.6e6, 6.98, fov_m=(0.224,) * 3, matrix=(16, 12, 10),
        geometry=geom, header={"format": "VD/VE", "software": "syngo MR E11", "sequence": "na_tpi", "protocol": "tpi"},
        sources=("scan.dat",),
    )  # fmt: skip


@pytest.fixture
def affine(acq):
    return nifti_affine(acq.geometry, (0.224, 0.21, 0.2), (16, 12, 10))


def test_save_nifti_scanner_codes(tmp_path, affine):
    import nibabel as nib

    from recon.export.nifti import save_nifti

    vol = np.random.default_rng(0).random((16, 12, 10)).astype(np.float32)
    save_nifti(tmp_path / "v.nii.gz", vol, affine, "narecon test")
    img = nib.load(tmp_path / "v.nii.gz")
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_sform(), affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(img.dataobj), vol)
    assert img.header["descrip"].item().decode() == "narecon test"
    assert img.header.get_xyzt_units() == ("mm", "sec")


def test_bids_sidecar_keys(tmp_path, acq):
    from recon.export.bids import bids_sidecar, write_sidecar

    s = bids_sidecar(acq, "echo", echo=1, options={"b0": "fs-cpr", "matrix": None})
    assert s["EchoTime"] == pytest.approx(2.32e-3) and s["EchoNumber"] == 2
    assert s["RepetitionTime"] == pytest.approx(0.174) and s["FlipAngle"] == 90.0
    assert s["MagneticFieldStrength"] == pytest.approx(6.98) and s["ImagingFrequency"] == pytest.approx(78.6)
    assert s["ImagedNucleus"] == "23Na" and s["Units"] == "arbitrary" and s["Manufacturer"] == "Siemens"
    assert s["ConversionSoftware"] == "narecon" and s["ConversionSoftwareVersion"]
    assert s["ReconstructionOptions"] == {"b0": "fs-cpr", "matrix": None}
    t = bids_sidecar(acq, "tsc")
    assert t["Units"] == "mM"
    f = bids_sidecar(acq, "fieldmap")
    assert (f["EchoTime1"], f["EchoTime2"], f["Units"]) == (0.3e-3, 2.32e-3, "Hz")
    # unknown values (Pulseq dummies read as NaN) are left out, not written as NaN
    acq.te_s = (float("nan"), 2e-3)
    assert "EchoTime" not in bids_sidecar(acq, "echo", echo=0)
    write_sidecar(tmp_path / "s.json", s)
    assert json.loads((tmp_path / "s.json").read_text())["EchoNumber"] == 2
    with pytest.raises(ValueError):
        bids_sidecar(acq, "echo", echo=5)


def _dicom_patient_lps(ds, i, j):
    """PS3.3 C.7.6.2.1.1: P = S + X * dc * i + Y * dr * j for column i, row j."""
    s = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(x) for x in ds.PixelSpacing)  # row spacing, column spacing
    return s + iop[:3] * dc * i + iop[3:] * dr * j


@pytest.mark.parametrize("units", ["mM", "arbitrary"])
def test_dicom_geometry_and_values(tmp_path, acq, affine, units):
    pydicom = pytest.importorskip("pydicom")
    from recon.export.dicom import write_dicom_series

    rng = np.random.default_rng(1)
    vol = rng.uniform(0, 140, size=(16, 12, 10))
    files = write_dicom_series(tmp_path / "s", vol, affine, acq=acq, description="TSC", units=units, series_number=3)
    assert len(files) == 10
    lps = np.diag([-1.0, -1.0, 1.0])
    for k in (0, 4, 9):
        ds = pydicom.dcmread(files[k])
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and ds.Modality == "MR"
        assert (ds.Rows, ds.Columns) == (12, 16) and ds.ImagedNucleus == "23Na"
        for i, j in ((0, 0), (15, 0), (0, 11), (7, 5)):
            want = lps @ (affine[:3, :3] @ [i, j, k] + affine[:3, 3])
            np.testing.assert_allclose(_dicom_patient_lps(ds, i, j), want, atol=1e-3)
        # values: stored * slope + intercept (pixel (row j, column i) = voxel (i, j, k))
        real = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(real, vol[:, :, k].T, atol=float(ds.RescaleSlope))
        if units == "mM":
            rw = ds.RealWorldValueMappingSequence[0]
            assert rw.MeasurementUnitsCodeSequence[0].CodeValue == "mmol/L"
            real_rw = ds.pixel_array.astype(float) * rw.RealWorldValueSlope + rw.RealWorldValueIntercept
            np.testing.assert_allclose(real_rw, vol[:, :, k].T, atol=float(ds.RescaleSlope))
        else:
            assert "RealWorldValueMappingSequence" not in ds
    d0, d1 = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    assert d0.SeriesInstanceUID == d1.SeriesInstanceUID and d0.SOPInstanceUID != d1.SOPInstanceUID
    assert float(d0.EchoTime) == pytest.approx(0.3) and float(d0.RepetitionTime) == pytest.approx(174)


def test_dicom_refuses_complex(tmp_path, affine):
    from recon.errors import OutputError
    from recon.export.dicom import write_dicom_series

    with pytest.raises(OutputError, match="real 3D"):
        write_dicom_series(tmp_path, np.zeros((4, 4, 4), complex), affine)


def test_ismrmrd_images_roundtrip(tmp_path, acq, affine):
    import ismrmrd

    from recon.export.ismrmrd_images import write_ismrmrd_images

    rng = np.random.default_rng(2)
    tsc = rng.random((16, 12, 10)).astype(np.float32)
    echo = (rng.random((16, 12, 10)) + 1j * rng.random((16, 12, 10))).astype(np.complex64)
    names = write_ismrmrd_images(tmp_path / "img.h5", {"tsc": tsc, "echo1": echo}, affine, acq=acq)
    assert names == ["tsc", "echo1"]
    lps = np.diag([-1.0, -1.0, 1.0])
    with ismrmrd.Dataset(str(tmp_path / "img.h5"), "dataset", create_if_needed=False) as d:
        im = d.read_image("tsc", 0)
        np.testing.assert_array_equal(im.data[0].transpose(2, 1, 0), tsc)
        assert tuple(im.matrix_size) == (16, 12, 10)
        m = lps @ affine[:3, :3]
        np.testing.assert_allclose(im.read_dir, m[:, 0] / np.linalg.norm(m[:, 0]), atol=1e-6)
        np.testing.assert_allclose(im.slice_dir, m[:, 2] / np.linalg.norm(m[:, 2]), atol=1e-6)
        centre = lps @ (affine[:3, :3] @ ((np.array([16, 12, 10]) - 1) / 2) + affine[:3, 3])
        np.testing.assert_allclose(im.position, centre, atol=1e-3)
        np.testing.assert_allclose(im.field_of_view, [224, 210, 200], atol=1e-3)
        ie = d.read_image("echo1", 0)
        np.testing.assert_array_equal(ie.data[0].transpose(2, 1, 0), echo)
    from recon.errors import OutputError

    with pytest.raises(OutputError, match="exists"):
        write_ismrmrd_images(tmp_path / "img.h5", {"tsc": tsc}, affine)
