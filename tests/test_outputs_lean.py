"""The lean writer (recon.outputs.write_run): stored or deflated volumes by a compressibility probe,
helper-thread jobs that never leave a partial output, recon.h5 contents equal to the result."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest


def _affine():
    th = math.radians(10.0)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[math.cos(th), -math.sin(th), 0], [math.sin(th), math.cos(th), 0], [0, 0, 1]]) @ np.diag(
        [-4.0, -4.0, 4.0]
    )
    aff[:3, 3] = [50.0, -20.0, 10.0]
    return aff


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    import recon
    from recon.cli import main

    d = tmp_path_factory.mktemp("sim")
    argv = ["-q", "simulate", "--out", str(d / "sim"), "--matrix", "16", "--traj-undersampling", "4", "--snr", "50"]
    assert main([*argv, "--seed", "2", "--threads", "1"]) == 0
    return recon.reconstruct(str(d / "sim" / "raw.dat"), {"calibration": "none"})


def test_nifti_stored_gzip_round_trip(tmp_path):
    import gzip

    import nibabel as nib

    from recon.export.nifti import save_nifti
    from recon.outputs import compressible

    rng = np.random.default_rng(0)
    noise = rng.standard_normal((16, 17, 18)).astype(np.float32)
    mask = np.zeros((16, 17, 18), np.float32)
    mask[4:9, 3:12, 5:7] = 1
    assert not compressible(noise) and compressible(mask)
    aff = _affine()
    for name, v, level in (("n.nii.gz", noise, 0), ("m.nii.gz", mask, 1)):
        save_nifti(tmp_path / name, v, aff, "d", compresslevel=level)
        gzip.decompress((tmp_path / name).read_bytes())  # a valid gzip stream
        img = nib.load(tmp_path / name)
        assert np.array_equal(np.asarray(img.dataobj), v)
        assert np.allclose(img.affine, aff) and int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    assert (tmp_path / "n.nii.gz").stat().st_size > noise.nbytes  # stored, not deflated
    assert (tmp_path / "m.nii.gz").stat().st_size < mask.nbytes / 10


def test_recon_h5_holds_the_result(result, tmp_path):
    import h5py

    from recon.outputs import write_run

    write_run(result, tmp_path / "out")
    with h5py.File(tmp_path / "out" / "recon.h5", "r") as f:
        assert np.array_equal(f["echoes"][()], np.asarray(result.echoes, np.complex64))
        assert np.array_equal(f["b0_hz"][()], np.asarray(result.fieldmap_hz, np.float32))
        assert np.array_equal(f["dcf"][()], np.asarray(result.dcf, np.float32))
        assert f["dcf"].compression == "gzip"  # smooth weights: deflated
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"echo1.nii.gz", "echo2.nii.gz", "b0_hz.nii.gz", "mask.nii.gz", "recon.h5", "qa.png"} <= names
    assert {"echo1.json", "echo2.json", "b0_hz.json"} <= names  # sidecars see the NIfTIs of the helper thread


def test_a_failing_helper_job_leaves_nothing(result, tmp_path, monkeypatch):
    """A NIfTI written on the helper thread fails (disk full): one OutputError, no output, no temporary folder."""
    import recon.export.nifti as nifti
    from recon.errors import OutputError
    from recon.outputs import write_run

    def full(path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(nifti, "save_nifti", full)
    with pytest.raises(OutputError, match="No space left"):
        write_run(result, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".narecon-tmp")]
