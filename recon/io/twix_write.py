"""Write an :class:`Acquisition` as a Siemens twix file (VD/VE container or VB layout).

Used for synthetic raw data (the project's sample files, tests). The header is a plausible
minimal Siemens protocol: ASCCONV (MeasYaps) with nucleus, frequency, TEs (lContrasts, alTE),
TR, flip angle, dwell time, FOV, slab position and orientation, sKSpace, and the sequence's
free parameters (``sWipMemBlock`` on VE, ``sWiPMemBlock`` on VB: ``alFree``/``adFree`` from
``acq.header['wip_long'/'wip_double']``), plus the XProtocol values readers look for
(Dicom SoftwareVersions, lFrequency, flMagneticFieldStrength; Meas tPatientPosition,
ResonantNucleus; Config chronSliceIndices).

Data blocks: the noise samples (``acq.noise``) as NOISEADJSCAN readouts first, then one ADC
per projection and echo (Lin = ``projection_index``, Eco = echo, echoes of one projection in
consecutive ADCs), then ACQEND. The VD/VE file is written by ``twixtools.write_twix``; VB
files are written by hand here (twixtools cannot write VB: notes/twix.md section 2), with the
128-byte VB17 mdh repeated before every channel.

Times are stored as Siemens does: TE/TR in integer microseconds and the dwell time in integer
nanoseconds, so values that are not whole microseconds/nanoseconds are rounded (a warning says
so); doubles are written with 17 significant digits and read back exactly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import struct
from typing import Any

import numpy as np

from recon.atomic import atomic_file
from recon.errors import InputError, OutputError
from recon.io.acquisition import Acquisition

log = logging.getLogger("recon.io.twix_write")

_NOISE_CHUNK = 4096  # samples per noise-adjust ADC (SamplesInScan is a uint16)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "0x1" if v else "0x0"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    s = str(v)
    if s.startswith('"') or s.startswith("0x"):
        return s
    return f'"{s}"'


def _us(x: float, what: str) -> int:
    v = round(float(x) * 1e6)
    if not math.isclose(v * 1e-6, float(x), rel_tol=1e-9, abs_tol=1e-12):
        log.warning("%s %.9g s rounded to %d us for the twix header", what, x, v)
    return int(v)


def _ns(x: float, what: str) -> int:
    v = round(float(x) * 1e9)
    if not math.isclose(v * 1e-9, float(x), rel_tol=1e-9, abs_tol=1e-15):
        log.warning("%s %.9g s rounded to %d ns for the twix header", what, x, v)
    return int(v)


def protocol_yaps(acq: Acquisition, layout: str = "VE", extra_yaps: dict | None = None) -> dict[str, Any]:
    """The ASCCONV entries (dotted keys -> values) that :func:`write_twix` writes for ``acq``."""
    from recon.io.geometry import default_geometry, inplane_rotation

    h = acq.header or {}
    y: dict[str, Any] = {}
    y["tSequenceFileName"] = h.get("sequence") or "%CustomerSeq%\\narecon_tpi"
    y["tProtocolName"] = h.get("protocol") or "narecon_synthetic"
    y["lContrasts"] = acq.n_echoes
    for i, te in enumerate(acq.te_s):
        y[f"alTE[{i}]"] = _us(te, f"TE[{i}]")
    y["alTR[0]"] = _us(acq.tr_s, "TR")
    y["adFlipAngleDegree[0]"] = float(acq.flip_deg)
    y["lAverages"] = 1
    for i in range(acq.n_echoes):
        y[f"sRXSPEC.alDwellTime[{i}]"] = _ns(acq.dwell_s, "dwell time")
    y["sTXSPEC.asNucleusInfo[0].tNucleus"] = acq.nucleus
    y["sTXSPEC.asNucleusInfo[0].lFrequency"] = int(round(acq.frequency_hz))
    y["sRXSPEC.asNucleusInfo[0].tNucleus"] = acq.nucleus
    y["sProtConsistencyInfo.flNominalB0"] = float(acq.field_t)
    mat = acq.matrix or (64, 64, 64)
    y["sKSpace.lBaseResolution"] = int(mat[0])
    y["sKSpace.lPhaseEncodingLines"] = int(mat[1])
    y["sKSpace.lPartitions"] = int(mat[2])
    y["sKSpace.ucDimension"] = "0x4"
    y["sKSpace.lRadialViews"] = acq.n_projections
    y["sSliceArray.lSize"] = 1
    fov = acq.fov_m or (0.224, 0.224, 0.224)
    for k, v in zip(("dReadoutFOV", "dPhaseFOV", "dThickness"), fov):
        y[f"sSliceArray.asSlice[0].{k}"] = float(v) * 1e3
    g = acq.geometry or default_geometry()
    pos = np.asarray(g.get("position_m", np.zeros(3)), float) * 1e3
    normal, rot = inplane_rotation(np.asarray(g.get("rotation", np.eye(3)), float))
    for k, v in zip(("dSag", "dCor", "dTra"), pos):
        if v != 0:
            y[f"sSliceArray.asSlice[0].sPosition.{k}"] = float(v)
    for k, v in zip(("dSag", "dCor", "dTra"), normal):
        if v != 0:
            y[f"sSliceArray.asSlice[0].sNormal.{k}"] = float(v)
    if rot != 0:
        y["sSliceArray.asSlice[0].dInPlaneRot"] = float(rot)
    wip = "sWiPMemBlock" if layout.upper() == "VB" else "sWipMemBlock"
    for i, v in sorted((h.get("wip_long") or {}).items()):
        y[f"{wip}.alFree[{int(i)}]"] = int(v)
    for i, v in sorted((h.get("wip_double") or {}).items()):
        y[f"{wip}.adFree[{int(i)}]"] = float(v)
    y.update(extra_yaps or {})
    return y


def _hdr_str(yaps: dict, software: str, acq: Acquisition, patient_position: str, min_len: int) -> np.ndarray:
    asc = "\n".join(
        ["### ASCCONV BEGIN object=MrProtDataImpl@MrProtocolData version=51130001 ###"]
        + [f"{k}\t = \t{_fmt(v)}" for k, v in yaps.items()]
        + ["### ASCCONV END ###", ""]
    )
    dicom = (
        "<XProtocol> \n{\n"
        f'  <ParamString."SoftwareVersions">  {{ "{software}"  }}\n'
        f'  <ParamLong."lFrequency">  {{ {int(round(acq.frequency_hz))}  }}\n'
        f'  <ParamDouble."flMagneticFieldStrength">  {{ <Precision> 6  {acq.field_t!r}  }}\n'
        "}\n"
    )
    meas = (
        "<XProtocol> \n{\n"
        f'  <ParamString."tPatientPosition">  {{ "{patient_position}"  }}\n'
        f'  <ParamString."ResonantNucleus">  {{ "{acq.nucleus}"  }}\n'
        "}\n" + asc
    )
    config = '<XProtocol> \n{\n  <ParamString."chronSliceIndices">  { "0 -1"  }\n}\n'
    bufs = {
        "Config": config,
        "Dicom": dicom,
        "Meas": meas,
        "MeasYaps": asc,
        "Phoenix": asc,
        "Spice": "<XProtocol> \n{\n}\n",
    }
    body = b"".join(
        n.encode() + b"\0" + struct.pack("<I", len(t.encode("latin1")) + 1) + t.encode("latin1") + b"\0" for n, t in bufs.items()
    )
    hdr_len = max(min_len, (8 + len(body) + 31) // 32 * 32)
    blob = struct.pack("<II", hdr_len, len(bufs)) + body
    return np.frombuffer(blob + b"\0" * (hdr_len - len(blob)), dtype="S1").copy()


def slice_quaternion(rotation) -> np.ndarray:
    """Scalar-first quaternion that Siemens stores in each mdh (``SliceData.Quaternion``).

    Its rotation matrix has the columns (phase, -readout, slice) in patient coordinates, as
    measured on the real files in shared/data/twix (twixtools' ``quat_to_rotmat`` of their
    quaternions against the header's sNormal/dInPlaneRot); ``rotation`` has the columns
    (readout, phase, slice). Shepperd's method.
    """
    r = np.asarray(rotation, dtype=np.float64)
    m = np.stack([r[:, 1], -r[:, 0], r[:, 2]], axis=1)
    tr = np.trace(m)
    if tr > 0:
        w = np.sqrt(1.0 + tr) * 2
        q = [0.25 * w, (m[2, 1] - m[1, 2]) / w, (m[0, 2] - m[2, 0]) / w, (m[1, 0] - m[0, 1]) / w]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        w = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / w, 0.25 * w, (m[0, 1] + m[1, 0]) / w, (m[0, 2] + m[2, 0]) / w]
    elif m[1, 1] > m[2, 2]:
        w = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / w, (m[0, 1] + m[1, 0]) / w, 0.25 * w, (m[1, 2] + m[2, 1]) / w]
    else:
        w = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / w, (m[0, 2] + m[2, 0]) / w, (m[1, 2] + m[2, 1]) / w, 0.25 * w]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def _slice_data(acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """(position in mm (sag, cor, tra), quaternion) for the mdh SliceData of every ADC."""
    from recon.io.geometry import default_geometry

    g = acq.geometry or default_geometry()
    pos = np.asarray(g.get("position_m", np.zeros(3)), dtype=np.float64) * 1e3
    return pos, slice_quaternion(g.get("rotation", np.eye(3)))


def _set_slice_data(h, pos, quat) -> None:
    h.SliceData.SlicePos.Sag, h.SliceData.SlicePos.Cor, h.SliceData.SlicePos.Tra = (float(v) for v in pos)
    for i in range(4):
        h.SliceData.Quaternion[i] = float(quat[i])


def _adc_list(acq: Acquisition):
    """(data (n_cha, n_col) complex64, counters dict, flags tuple) per ADC, in file order."""
    out = []
    if acq.noise is not None and np.size(acq.noise):
        noise = np.asarray(acq.noise, np.complex64)
        if noise.ndim != 2 or noise.shape[0] != acq.n_coils:
            raise InputError(f"noise must be (n_coils={acq.n_coils}, n_samples), got {noise.shape}")
        for s in range(0, noise.shape[1], _NOISE_CHUNK):
            out.append((noise[:, s : s + _NOISE_CHUNK], {}, ("NOISEADJSCAN",)))
    pidx = np.asarray(acq.projection_index)
    if pidx.size and (pidx.min() < 0 or pidx.max() > 65535):
        raise InputError("projection indices must lie in 0..65535 to fit the Lin counter")
    if acq.n_samples > 65535:
        raise InputError(f"{acq.n_samples} samples per readout do not fit SamplesInScan (max 65535)")
    data = np.asarray(acq.data, np.complex64)
    n_adc = acq.n_projections * acq.n_echoes
    k = 0
    for p in range(acq.n_projections):
        for e in range(acq.n_echoes):
            k += 1
            flags = ["ONLINE"] + (["LASTSCANINMEAS"] if k == n_adc else [])
            out.append((data[e, :, p, :], {"Lin": int(pidx[e, p]), "Eco": e}, tuple(flags)))
    return out


def write_twix(
    acq: Acquisition,
    path: str | os.PathLike,
    layout: str = "VE",
    extra_yaps: dict | None = None,
    overwrite: bool = True,
) -> None:
    """Write ``acq`` as a twix file.

    Parameters
    ----------
    acq : the acquisition (data (echo, coil, projection, sample) complex64 are stored exactly).
    path : output .dat file (written atomically).
    layout : ``"VE"`` (VD/VE multi-RAID container, software "syngo MR E11") or ``"VB"``
        (single measurement, "syngo MR B17", ``sWiPMemBlock``).
    extra_yaps : additional or overriding ASCCONV entries, e.g. ``{"alTI[0]": 1000}``.
    overwrite : replace an existing file (default) or raise :class:`OutputError`.
    """
    layout = layout.upper()
    if layout not in ("VE", "VB"):
        raise InputError(f"layout must be 'VE' or 'VB', got {layout!r}")
    software = str((acq.header or {}).get("software") or "")
    is_vb_sw = software.upper().split()[-1].startswith("B") if software.split() else False
    if not software or is_vb_sw != (layout == "VB"):
        software = "syngo MR B17" if layout == "VB" else "syngo MR E11"
    ppos = (acq.geometry or {}).get("patient_position") or "HFS"
    yaps = protocol_yaps(acq, layout, extra_yaps)
    hdr = _hdr_str(yaps, software, acq, ppos, min_len=10240 if layout == "VB" else 32)
    adcs = _adc_list(acq)
    sd = _slice_data(acq)
    with atomic_file(path, overwrite=overwrite) as tmp:
        if layout == "VE":
            _write_ve(hdr, adcs, tmp, sd)
        else:
            _write_vb(hdr, adcs, tmp, sd)


def _write_ve(hdr: np.ndarray, adcs, tmp, slice_data) -> None:
    import twixtools
    from twixtools.mdb import Mdb_local

    mdbs = []
    for scan, (data, ctr, flags) in enumerate(adcs, 1):
        m = Mdb_local(np.ascontiguousarray(data, np.complex64))
        m.mdh.ScanCounter = scan
        _set_slice_data(m.mdh, *slice_data)
        for k, v in ctr.items():
            setattr(m.mdh.Counter, k, v)
        for fl in flags:
            m.add_flag(fl)
        mdbs.append(m)
    acqend = Mdb_local()
    acqend.add_flag("ACQEND")
    acqend.mdh.ScanCounter = len(adcs) + 1
    mdbs.append(acqend)
    os.unlink(tmp)  # twixtools opens with 'xb'
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            twixtools.write_twix([{"hdr_str": hdr, "mdb": mdbs}], str(tmp), version_is_ve=True)
    except OSError as e:
        raise OutputError(f"cannot write twix file: {e}", tmp) from e


def _write_vb(hdr: np.ndarray, adcs, tmp, slice_data) -> None:
    from twixtools import mdh_def

    with open(tmp, "wb") as f:
        f.write(hdr.tobytes())
        for scan, (data, ctr, flags) in enumerate(adcs, 1):
            data = np.ascontiguousarray(data, np.complex64)
            n_cha, n_col = data.shape
            for ch in range(n_cha):
                h = mdh_def.VB17_header()
                mdh_def.set_dma_len(h, n_cha * (128 + 8 * n_col))
                h.ScanCounter, h.SamplesInScan, h.UsedChannels, h.ChannelId = scan, n_col, n_cha, ch
                _set_slice_data(h, *slice_data)
                for k, v in ctr.items():
                    setattr(h.Counter, k, v)
                for fl in flags:
                    mdh_def.add_flag(h, fl)
                f.write(bytes(h))
                f.write(data[ch].tobytes())
        h = mdh_def.VB17_header()
        h.SamplesInScan, h.UsedChannels, h.ScanCounter = 16, 1, len(adcs) + 1
        mdh_def.set_dma_len(h, 128 + 128)
        mdh_def.add_flag(h, "ACQEND")
        f.write(bytes(h) + b"\0" * 128)
