"""What :func:`recon.outputs.write_run` adds for other tools: sidecars, DICOM series, ISMRMRD images.

Called with the temporary output folder of a run (so these files are written atomically with
the rest):

* a BIDS JSON sidecar next to every NIfTI (``echo1.json``, ``tsc_mM.json``, ``b0_hz.json``,
  ``ratio_csf.json``), always;
* ``dicom/echo1/``, ``dicom/echo2/``, ``dicom/tsc_mM/``: classic MR series of one study and one
  frame of reference (TSC with a Real World Value Mapping to mmol/L), with ``options.dicom``;
* ``images.h5``: ``ismrmrd.Image`` records (complex echoes, field map, TSC), with
  ``options.ismrmrd_images``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from recon.export.bids import bids_sidecar, write_sidecar


def export_run(out: str | os.PathLike, result: Any) -> list[str]:
    """Write sidecars (and DICOM / ISMRMRD images when the result's options ask) into ``out``; return the new names."""
    out = Path(out)
    acq, opts = result.acquisition, result.options
    optd = opts.to_dict() if hasattr(opts, "to_dict") else dict(opts or {})
    written: list[str] = []

    def side(name: str, **kw) -> None:
        if (out / f"{name}.nii.gz").exists():
            write_sidecar(out / f"{name}.json", bids_sidecar(acq, options=optd, **kw))
            written.append(f"{name}.json")

    n_echoes = int(np.asarray(result.echoes).shape[0])
    for e in range(n_echoes):
        side(f"echo{e + 1}", kind="echo", echo=e, description=f"narecon echo {e + 1} magnitude")
    side("tsc_mM", kind="tsc", description="narecon TSC")
    side("b0_hz", kind="fieldmap", description=f"narecon B0 field map ({result.b0_method} correction)")
    side("ratio_csf", kind="ratio", units="ratio", description="narecon TSC ratio to reference region")

    if optd.get("dicom"):
        from pydicom.uid import generate_uid

        from recon.export.dicom import write_dicom_series

        study, frame = generate_uid(), generate_uid()
        for e in range(n_echoes):
            write_dicom_series(
                out / "dicom" / f"echo{e + 1}",
                np.abs(result.echoes[e]),
                result.affine,
                acq,
                description=f"narecon echo {e + 1}",
                series_number=e + 1,
                study_uid=study,
                frame_of_reference_uid=frame,
                echo_time_s=acq.te_s[e],
            )
            written.append(f"dicom/echo{e + 1}")
        if result.tsc_mM is not None:
            write_dicom_series(
                out / "dicom" / "tsc_mM",
                result.tsc_mM,
                result.affine,
                acq,
                description="narecon TSC mM",
                units="mM",
                series_number=100,
                study_uid=study,
                frame_of_reference_uid=frame,
            )
            written.append("dicom/tsc_mM")
    if optd.get("ismrmrd_images"):
        from recon.export.ismrmrd_images import write_ismrmrd_images

        vols = {f"echo{e + 1}": result.echoes[e] for e in range(n_echoes)}
        vols["b0_hz"] = result.fieldmap_hz
        if result.tsc_mM is not None:
            vols["tsc_mM"] = result.tsc_mM
        write_ismrmrd_images(out / "images.h5", vols, result.affine, acq)
        written.append("images.h5")
    return written
