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


def check_output_dir(out_dir: str | os.PathLike, *, force: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, an output folder that cannot or must not be written.

    Exists and is not empty without ``force``; is a file; its parent is missing, a file or not
    writable; it is, or contains, one of ``inputs`` (never replaced, even with ``force``).
    """
    from recon.atomic import check_output

    check_output(out_dir, force=force, inputs=inputs)


def write_run(result: Any, out_dir: str | os.PathLike, *, force: bool = False, qa: bool = True) -> dict[str, float]:
    """Write ``result`` into ``out_dir`` atomically; returns the writer's timings (s)."""
    from recon.atomic import atomic_dir
    from recon.export.nifti import save_nifti
    from recon.log import StageTimer

    timer = StageTimer()
    out_dir = Path(out_dir)
    acq = result.acquisition
    affine = result.affine
    cal_dict = result.calibration_dict()
    with atomic_dir(out_dir, overwrite=force) as tmp, timer.stage("write outputs"):

        def nii(name: str, vol: np.ndarray, desc: str) -> None:  # qform = sform = scanner (code 1), as dcm2niix
            save_nifti(tmp / name, vol, affine, desc)

        if result.tsc_mM is not None:
            nii("tsc_mM.nii.gz", result.tsc_mM, "narecon TSC mM")
        for e in range(result.echoes.shape[0]):
            nii(f"echo{e + 1}.nii.gz", np.abs(result.echoes[e]), f"narecon echo {e + 1} magnitude TE {acq.te_s[e] * 1e3:.3f} ms")
        nii("b0_hz.nii.gz", result.fieldmap_hz, f"narecon B0 Hz ({acq.nucleus})")
        if result.mask is not None:
            nii("mask.nii.gz", result.mask.astype(np.float32), "narecon object mask (recon.calibrate.mask rule)")
        if result.ratio is not None:
            nii("ratio_csf.nii.gz", result.ratio, "narecon TSC ratio to reference region")
        (tmp / "calibration.json").write_text(json.dumps(cal_dict, indent=2, default=json_default))
        if getattr(result, "regions", None) is not None:  # regional TSC (recon.calibrate.regions)
            (tmp / "regions.tsv").write_text(result.regions.to_tsv())
        from recon.export.run_outputs import export_run  # BIDS sidecars; DICOM / ISMRMRD images if asked

        export_run(tmp, result)
        prov = dict(result.provenance)
        prov["inputs"] = [{"path": os.path.abspath(p), "sha256": sha256_file(p), "bytes": os.path.getsize(p)} for p in acq.sources]
        prov["timings_s"] = dict(result.timings_s)
        write_h5(tmp / "recon.h5", result, prov, cal_dict)
        if qa:
            from recon.calibrate import qa_figure

            cal = result.calibration
            qa_figure(
                tmp / "qa.png",
                list(result.echoes),
                tsc=result.tsc_mM,
                b0_hz=result.fieldmap_hz,
                tubes=cal.tubes if cal is not None else None,
                fit=cal.result.fit if cal is not None and cal.result.tubes else None,
                affine=affine,
                mask=result.mask,
                background=result.background,
                title=f"narecon {Path(acq.sources[0]).name if acq.sources else 'acquisition'}: "
                f"{result.b0_method} B0 correction, {cal_dict['method']}",
            )
    return dict(timer.timings)


def write_h5(path: str | os.PathLike, result: Any, provenance: dict[str, Any], cal_dict: dict[str, Any]) -> None:
    """recon.h5: complex echoes, field map, density weights, affine, trajectory parameters, provenance.

    Built in memory and written with plain file I/O (:func:`recon.atomic.hdf5_in_memory`): a full disk is an
    OutputError, never an HDF5 crash."""
    from recon.atomic import hdf5_in_memory

    traj = result.trajectory
    with hdf5_in_memory(path) as f:
        f.attrs["format"] = "narecon-recon"
        f.attrs["format_version"] = 1
        f.create_dataset("echoes", data=np.asarray(result.echoes, dtype=np.complex64), compression="gzip")
        f["echoes"].attrs["axes"] = "echo, x, y, z (image axes follow kx, ky, kz)"
        f["echoes"].attrs["te_s"] = np.asarray(result.acquisition.te_s, dtype=np.float64)
        f["echoes"].attrs["units"] = "signal (unit chain: a uniform object of value c reconstructs to c)"
        f.create_dataset("b0_hz", data=np.asarray(result.fieldmap_hz, dtype=np.float32), compression="gzip")
        f["b0_hz"].attrs["units"] = "Hz"
        f.create_dataset("dcf", data=np.asarray(result.dcf, dtype=np.float32), compression="gzip", compression_opts=1)
        f["dcf"].attrs["units"] = "1/m^3"
        f.create_dataset("affine", data=result.affine)
        f["affine"].attrs["units"] = "voxel index -> scanner RAS+ mm"
        if result.tsc_mM is not None:
            f.create_dataset("tsc_mM", data=np.asarray(result.tsc_mM, dtype=np.float32), compression="gzip")
            f["tsc_mM"].attrs["units"] = "mM"
        g = f.create_group("trajectory")
        g.attrs["fov_m"] = np.asarray(traj.fov_m)
        g.attrs["matrix"] = np.asarray(traj.matrix)
        g.attrs["dwell_s"] = traj.dwell_s
        g.attrs["gamma_hz_per_t"] = traj.gamma_hz_per_t
        g.attrs["params"] = json.dumps(traj.params, default=json_default)
        f.attrs["provenance"] = json.dumps(provenance, default=json_default)
        f.attrs["calibration"] = json.dumps(cal_dict, default=json_default)
