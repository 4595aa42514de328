"""BIDS JSON sidecars: the keys of the BIDS specification (and dcm2niix) that apply to one image.

Units follow BIDS: times in s, angles in degrees, field in T, ImagingFrequency in MHz.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

IMAGE_KINDS = ("echo", "tsc", "fieldmap", "ratio", "image")


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


from recon.util import jsonable as _jsonable  # noqa: E402  (one JSON conversion for the project)


def bids_sidecar(
    acq,
    kind: str = "echo",
    echo: int | None = None,
    units: str | None = None,
    options: Any = None,
    description: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """BIDS sidecar dict for one reconstructed image of ``acq`` (an :class:`recon.io.Acquisition`).

    ``kind``: ``echo`` (magnitude of echo ``echo``, 0-based), ``tsc`` (mM), ``fieldmap`` (Hz,
    with EchoTime1/EchoTime2), ``ratio`` or ``image``. ``options``: the reconstruction options
    (dataclass or dict), stored under ``ReconstructionOptions``. Keys whose value is unknown
    (NaN, None) are left out rather than written wrong.
    """
    import recon

    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}")
    hdr = getattr(acq, "header", {}) or {}
    out: dict[str, Any] = {
        "Modality": "MR",
        "Manufacturer": "Siemens" if hdr.get("format") in ("VB", "VD/VE", "XA") else None,
        "SoftwareVersions": hdr.get("software"),
        "MagneticFieldStrength": round(float(acq.field_t), 4) if _finite(acq.field_t) else None,
        "ImagingFrequency": round(float(acq.frequency_hz) * 1e-6, 6) if _finite(acq.frequency_hz) else None,
        "ImagedNucleus": acq.nucleus,
        "ReceiveCoilName": hdr.get("coil"),
        "SequenceName": hdr.get("sequence"),
        "ProtocolName": hdr.get("protocol"),
        "MRAcquisitionType": "3D",
        "RepetitionTime": float(acq.tr_s) if _finite(acq.tr_s) else None,
        "FlipAngle": float(acq.flip_deg) if _finite(acq.flip_deg) else None,
        "DwellTime": float(acq.dwell_s) if _finite(acq.dwell_s) else None,
        "PatientPosition": (getattr(acq, "geometry", None) or {}).get("patient_position"),
        "ConversionSoftware": "narecon",
        "ConversionSoftwareVersion": recon.__version__,
        "RawDataFiles": [os.path.basename(str(s)) for s in getattr(acq, "sources", ())] or None,
    }
    tes = [float(t) for t in acq.te_s]
    if kind == "echo":
        e = 0 if echo is None else int(echo)
        if not 0 <= e < len(tes):
            raise ValueError(f"echo {e} outside 0..{len(tes) - 1}")
        out["EchoTime"] = tes[e] if _finite(tes[e]) else None
        out["EchoNumber"] = e + 1
        out["ImageType"] = ["DERIVED", "PRIMARY", "M"]
        out["Units"] = units or "arbitrary"
    elif kind == "fieldmap":
        if len(tes) >= 2 and _finite(tes[0]) and _finite(tes[1]):
            out["EchoTime1"], out["EchoTime2"] = tes[0], tes[1]
        out["Units"] = units or "Hz"
        out["ImageType"] = ["DERIVED", "SECONDARY", "FIELDMAP"]
    elif kind == "tsc":
        out["EchoTime"] = tes[0] if _finite(tes[0]) else None
        out["Units"] = units or "mM"
        out["ImageType"] = ["DERIVED", "SECONDARY", "TSC"]
    else:
        out["Units"] = units or "arbitrary"
        out["ImageType"] = ["DERIVED", "SECONDARY"]
    if description:
        out["SeriesDescription"] = description
    if options is not None:
        out["ReconstructionOptions"] = _jsonable(options)
    out.update(extra or {})
    return {k: v for k, v in out.items() if v is not None}


def write_sidecar(path: str | os.PathLike, sidecar: dict[str, Any]) -> None:
    """Write a sidecar dict as indented JSON (NaN and arrays made JSON-safe)."""
    with open(path, "w") as f:
        json.dump(_jsonable(sidecar), f, indent=2)
        f.write("\n")
