"""The one writer of a reconstruction: :func:`write_run` puts a :class:`~recon.pipeline.ReconResult` on disk.

Files (in DIR, written into a temporary sibling and renamed: nothing or everything):

* ``tsc_mM.nii.gz`` calibrated tissue sodium concentration in mM (float32; absent with
  ``calibration = none``);
* ``echo1.nii.gz``, ``echo2.nii.gz`` magnitude images of the (B0-corrected) echoes, in the
  unit chain's units (signal per unit concentration before calibration);
* ``b0_hz.nii.gz`` off-resonance field map in Hz at the imaged nucleus (zeros without one);
* ``mask.nii.gz`` object mask of echo 1 (1 inside; rule in :mod:`recon.calibrate.mask`); the TSC
  statistics outside it are in calibration.json (``background_outside_mask_mM``);
* ``ratio_csf.nii.gz`` TSC / mean TSC in the ratio region, when one is given;
* ``calibration.json`` fit, tubes, warnings, relaxation factors;
* ``regions.tsv`` with ``regions = FILE``: per label name, class, voxels, voxel-mean mM, regional mM
  through the system model, template recovery (:mod:`recon.calibrate.regions`);
* ``recon.h5`` complex echo images, field map, density weights, trajectory parameters,
  provenance (input sha256, options, versions, device, timings);
* ``qa.png`` mid slices of echoes, field map and TSC with the tube ROIs and the calibration line.

Speed (64^3 protocol): volumes are deflated only where that pays (:func:`compressible`: masks and
field maps; the noise-like echo and TSC images gain 5-7 % for 40 ms per MB, so their ``.nii.gz``
hold a stored gzip stream and recon.h5 keeps them unfiltered); the input hashes and the NIfTI
files are written on a helper thread while this thread draws qa.png and builds recon.h5.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.util import json_default, sha256_file

log = logging.getLogger("recon.outputs")

_PROBE_BLOCKS, _PROBE_BYTES = 16, 4096
COMPRESSIBLE_RATIO = 0.8
"""A volume is stored compressed when a level-1 deflate of an evenly spread sample of its bytes
(16 blocks of 4 KiB) shrinks it below this fraction; noise-like float images (echo magnitudes,
TSC, complex echoes: 0.93-0.95) are stored as they are, masks and field maps (0.02-0.3) deflated."""


def compressible(a: np.ndarray) -> bool:
    """Whether deflating ``a`` is worth its time (see :data:`COMPRESSIBLE_RATIO`); a probe of <= 64 KiB."""
    import zlib

    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if b.size <= _PROBE_BLOCKS * _PROBE_BYTES:
        sample = b.tobytes()
    else:
        starts = np.linspace(0, b.size - _PROBE_BYTES, _PROBE_BLOCKS).astype(np.intp)
        sample = b"".join(b[s : s + _PROBE_BYTES].tobytes() for s in starts)
    return len(zlib.compress(sample, 1)) < COMPRESSIBLE_RATIO * max(len(sample), 1)


H5_DEFLATE = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
"""recon.h5's deflate: level 1 after HDF5's byte shuffle (standard filters, readable by any HDF5).
On the Pipe-Menon weights of the 64^3 protocol the shuffle halves the time (0.33 s instead of 0.66 s)
and shrinks the dataset to 0.51 of its size instead of 0.71."""


def _h5_compression(a: np.ndarray) -> dict[str, Any]:
    """h5py ``create_dataset`` keywords: :data:`H5_DEFLATE` for compressible arrays, none otherwise."""
    return dict(H5_DEFLATE) if compressible(a) else {}


class _Done:
    """A finished job's stand-in (``result()``) for a value already known."""

    def __init__(self, value: Any) -> None:
        self._value = value

    def result(self) -> Any:
        return self._value


def check_output_dir(out_dir: str | os.PathLike, *, force: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output folder that cannot or must not be written.

    Exists and is not empty without ``force``; is a file; its parent is missing, a file or not
    writable; it is, or contains, one of ``inputs`` (never replaced, even with ``force``).
    """
    from recon.atomic import check_output

    check_output(out_dir, force=force, inputs=inputs)


def write_run(result: Any, out_dir: str | os.PathLike, *, force: bool = False, qa: bool = True) -> dict[str, float]:
    """Write ``result`` into ``out_dir`` atomically; returns the writer's timings (s).

    Hashing the inputs (hashlib), deflating the NIfTI volumes (zlib) and writing recon.h5 (HDF5's
    deflate) release the GIL, so they run on one helper thread while this thread draws qa.png.
    Every helper job is finished before the temporary folder is renamed or removed.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    from recon.atomic import atomic_dir
    from recon.export.nifti import save_nifti
    from recon.log import StageTimer

    timer = StageTimer()
    out_dir = Path(out_dir)
    acq = result.acquisition
    affine = result.affine
    cal_dict = result.calibration_dict()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="narecon-write") as pool:
        with atomic_dir(out_dir, overwrite=force) as tmp, timer.stage("write outputs"):
            jobs = []
            try:
                known = getattr(result, "input_sha256", None)
                if known is not None and len(known) == len(acq.sources):  # hashed while the reconstruction ran
                    hashes = [_Done(h) for h in known]
                else:
                    hashes = [pool.submit(sha256_file, p) for p in acq.sources]
                    jobs += hashes

                def nii(name: str, vol: np.ndarray, desc: str) -> None:  # qform = sform = scanner (code 1), as dcm2niix
                    v = np.asarray(vol, dtype=np.float32)
                    jobs.append(pool.submit(save_nifti, tmp / name, v, affine, desc, compresslevel=1 if compressible(v) else 0))

                if result.tsc_mM is not None:
                    nii("tsc_mM.nii.gz", result.tsc_mM, "narecon TSC mM")
                for e in range(result.echoes.shape[0]):
                    te = acq.te_s[e] * 1e3
                    nii(f"echo{e + 1}.nii.gz", np.abs(result.echoes[e]), f"narecon echo {e + 1} magnitude TE {te:.3f} ms")
                nii("b0_hz.nii.gz", result.fieldmap_hz, f"narecon B0 Hz ({acq.nucleus})")
                if result.mask is not None:
                    nii("mask.nii.gz", result.mask.astype(np.float32), "narecon object mask (recon.calibrate.mask rule)")
                if result.ratio is not None:
                    nii("ratio_csf.nii.gz", result.ratio, "narecon TSC ratio to reference region")
                if getattr(result, "receive", None) is not None:
                    nii("receive_map.nii.gz", result.receive.map, "narecon relative receive profile (divided out)")
                (tmp / "calibration.json").write_text(json.dumps(cal_dict, indent=2, default=json_default))
                if getattr(result, "regions", None) is not None:  # regional TSC (recon.calibrate.regions)
                    (tmp / "regions.tsv").write_text(result.regions.to_tsv())

                def h5() -> None:  # on the helper thread after the hashes (FIFO, one worker): HDF5's deflate releases the GIL
                    prov = dict(result.provenance)
                    prov["inputs"] = [
                        {"path": os.path.abspath(p), "sha256": h.result(), "bytes": os.path.getsize(p)}
                        for p, h in zip(acq.sources, hashes)
                    ]
                    prov["timings_s"] = dict(result.timings_s)
                    write_h5(tmp / "recon.h5", result, prov, cal_dict)

                jobs.append(pool.submit(h5))
                if qa:
                    _write_qa(tmp / "qa.png", result, cal_dict)
                for job in jobs:
                    job.result()  # the NIfTIs exist before their sidecars; an error re-raises here
                from recon.export.run_outputs import export_run  # BIDS sidecars; DICOM / ISMRMRD images if asked

                export_run(tmp, result)
            finally:
                wait(jobs)  # never leave a helper writing into a folder that is being removed
    return dict(timer.timings)


def _write_qa(path: Path, result: Any, cal_dict: dict[str, Any]) -> None:
    """qa.png of ``result`` (:func:`recon.calibrate.qa_figure`)."""
    from recon.calibrate import qa_figure

    acq = result.acquisition
    cal = result.calibration
    qa_figure(
        path,
        list(result.echoes),
        tsc=result.tsc_mM,
        b0_hz=result.fieldmap_hz,
        tubes=cal.tubes if cal is not None else None,
        fit=cal.result.fit if cal is not None and cal.result.tubes else None,
        affine=result.affine,
        mask=result.mask,
        background=result.background,
        title=f"narecon {Path(acq.sources[0]).name if acq.sources else 'acquisition'}: "
        f"{result.b0_method} B0 correction, {cal_dict['method']}",
    )


def write_h5(path: str | os.PathLike, result: Any, provenance: dict[str, Any], cal_dict: dict[str, Any]) -> None:
    """recon.h5: complex echoes, field map, density weights, affine, trajectory parameters, provenance.

    Built in memory and written with plain file I/O (:func:`recon.atomic.hdf5_in_memory`): a full disk is an
    OutputError, never an HDF5 crash."""
    from recon.atomic import hdf5_in_memory

    traj = result.trajectory
    with hdf5_in_memory(path) as f:
        f.attrs["format"] = "narecon-recon"
        f.attrs["format_version"] = 1
        echoes = np.asarray(result.echoes, dtype=np.complex64)
        f.create_dataset("echoes", data=echoes, **_h5_compression(echoes))
        f["echoes"].attrs["axes"] = "echo, x, y, z (image axes follow kx, ky, kz)"
        f["echoes"].attrs["te_s"] = np.asarray(result.acquisition.te_s, dtype=np.float64)
        f["echoes"].attrs["units"] = "signal (unit chain: a uniform object of value c reconstructs to c)"
        b0 = np.asarray(result.fieldmap_hz, dtype=np.float32)
        f.create_dataset("b0_hz", data=b0, **_h5_compression(b0))
        f["b0_hz"].attrs["units"] = "Hz"
        f.create_dataset("dcf", data=np.asarray(result.dcf, dtype=np.float32), **H5_DEFLATE)
        f["dcf"].attrs["units"] = "1/m^3"
        f.create_dataset("affine", data=result.affine)
        f["affine"].attrs["units"] = "voxel index -> scanner RAS+ mm"
        if result.tsc_mM is not None:
            tsc = np.asarray(result.tsc_mM, dtype=np.float32)
            f.create_dataset("tsc_mM", data=tsc, **_h5_compression(tsc))
            f["tsc_mM"].attrs["units"] = "mM"
        g = f.create_group("trajectory")
        g.attrs["fov_m"] = np.asarray(traj.fov_m)
        g.attrs["matrix"] = np.asarray(traj.matrix)
        g.attrs["dwell_s"] = traj.dwell_s
        g.attrs["gamma_hz_per_t"] = traj.gamma_hz_per_t
        g.attrs["params"] = json.dumps(traj.params, default=json_default)
        f.attrs["provenance"] = json.dumps(provenance, default=json_default)
        f.attrs["calibration"] = json.dumps(cal_dict, default=json_default)
