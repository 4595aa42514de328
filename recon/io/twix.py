"""Siemens twix (.dat) reader: VB, VD/VE and XA files to an :class:`~recon.io.acquisition.Acquisition`.

twixtools (0.24) does the parsing that is hard to get right: the protocol header
(``twixprot.parse_twix_hdr``, loaded on its own so that the read path does not import the
``twixtools`` package, whose ``__init__`` imports matplotlib, tqdm and scipy), and it defines the
measurement data header layout (``mdh_def``) and the block rules (``Mdb``) that this reader
follows field for field (a test checks the offsets against twixtools' structs and the result
bit for bit against the ``Mdb`` walk). The loop over the data blocks (mdbs) is our own: twixtools'
loop does not stop at the end of the file (a truncated file yields thousands of empty 0-channel
mdbs up to the length claimed by the raid header) and never advances on a block whose computed
DMA length is 0 (a VB block with 0 channels, or a corrupt SYNCDATA length), which would hang on
corrupt files. One pass over the block headers (``struct`` on a read-only map of the file)
finds the blocks; the header fields of all kept blocks are then read through one structured
dtype and the samples gathered by one fancy index. The walk:

* walks the blocks of the **last** measurement of a multi-RAID file,
* stops at ACQEND, at the end of the file (a readout that the file cuts is dropped and the
  truncation reported with counts) and at the first block whose header is impossible
  (0 channels, DMA length shorter than its own header),
* reports complete readouts that lie past the measurement length declared in the raid header
  (they are not read: the header is what the scanner wrote),
* skips SYNCDATA (PMU) blocks, keeps NOISEADJSCAN readouts separately as noise samples,
  keeps image scans (the rule of ``twixtools.mdh_def.is_image_scan``, as in BART), and drops
  image readouts whose sample or channel count differs from the most common one (counted,
  reported in ``header['dropped_adcs']``),
* refuses samples that are NaN, infinite or beyond :data:`MAX_RAW_MAGNITUDE` (corrupt data
  that would overflow later), naming the file.

Echo assignment: ``echo_from="eco"`` (default) takes the echo from the Eco counter and the
projection from the Lin counter; ``echo_from="order"`` takes echo ``k % n_echoes`` of the
k-th kept readout (for sequences that put several ADCs in one TR without setting Eco; the
projection is then ``k // n_echoes``). Either way the number of echoes is checked against
``lContrasts``/``alTE`` of the header, and a projection counter that repeats within an echo is
reported (warning and ``header['notes']``). Two or more files (one echo each, e.g. echo1.dat
echo2.dat) combine into one multi-echo acquisition.

Header values are converted to SI units (see :func:`header_values`).
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import mmap
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import InputError, RawDataError
from recon.io.acquisition import Acquisition

log = logging.getLogger("recon.io.twix")

#: names of the header buffers a twix measurement header may contain
_BUFFER_NAMES = {b"Config", b"Dicom", b"Meas", b"MeasYaps", b"Phoenix", b"Spice", b"Protocol"}

_VE_SCAN_HDR = 192
_VE_CHAN_HDR = 32
_VB_HDR = 128


# --------------------------------------------------------------------------- small helpers
@contextlib.contextmanager
def _quiet():
    """Silence twixtools' prints (it reports warnings on stdout)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf


def _get(d: Any, *keys, default=None):
    """Nested lookup in twixtools' parsed header; list entries that are ``[]`` count as missing."""
    for k in keys:
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            return default
    if isinstance(d, list) and len(d) == 0:
        return default
    if isinstance(d, dict) and len(d) == 0:
        return default
    return d


def _num(v, default=math.nan) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x


def _list_entries(v) -> dict[int, Any]:
    """twixtools turns sparse ASCCONV arrays into lists with ``[]`` holes: return {index: value}."""
    if v is None:
        return {}
    if not isinstance(v, list):
        v = [v]
    return {i: x for i, x in enumerate(v) if not (isinstance(x, (list, dict)) and len(x) == 0)}


def _software_format(ve: bool, software: str) -> str:
    if not ve:
        return "VB"
    return "XA" if "XA" in (software or "").upper() else "VD/VE"


# --------------------------------------------------------------------------- container checks
def _check_container(path: Path, size: int) -> tuple[bool, int, int]:
    """Validate the file container and return (is_ve, measurement offset, measurement end).

    Raises RawDataError for empty, foreign or truncated-header files.
    """
    if size == 0:
        raise RawDataError("empty file (0 bytes): not a Siemens twix raw data file", path)
    if size < 64:
        raise RawDataError(f"file of {size} bytes is too short to be a Siemens twix raw data file", path)
    with open(path, "rb") as f:
        first, second = struct.unpack("<II", f.read(8))
        ve = first < 10000 and second <= 64  # twixtools.helpers.idea_version_check
        if ve:
            if second < 1:
                raise RawDataError("VD/VE/XA multi-RAID header lists 0 measurements", path)
            f.seek(8)
            entries = []
            for _ in range(second):
                raw = f.read(152)
                if len(raw) < 152:
                    raise RawDataError("file ends inside the multi-RAID header (truncated)", path)
                _meas_id, _file_id, off, length = struct.unpack("<IIQQ", raw[:24])
                entries.append((off, length))
            off, length = entries[-1]
            if off < 8 or off >= size:
                if off >= size and off < 1 << 40:
                    raise RawDataError(
                        f"last measurement starts at byte {off} but the file has only {size} bytes (truncated)",
                        path,
                    )
                raise RawDataError("not a Siemens twix file (invalid multi-RAID measurement offset)", path)
            end = size if length == 0 else min(size, off + length)
        else:
            off, end = 0, size
        # every measurement header starts with: u32 header length, u32 buffer count, "Config\0"...
        f.seek(off)
        init = f.read(8 + 16)
        if len(init) < 24:
            raise RawDataError("file ends inside the measurement header (truncated)", path)
        hdr_len, n_buf = struct.unpack("<II", init[:8])
        name = init[8:].split(b"\0", 1)[0]
        if name not in _BUFFER_NAMES or not 1 <= n_buf <= 64:
            raise RawDataError("not a Siemens twix raw data file (no VB or VD/VE/XA measurement header found)", path)
        if off + hdr_len > size:
            raise RawDataError(f"measurement header claims {hdr_len} bytes but the file ends at {size} (truncated)", path)
    return ve, off, end


# --------------------------------------------------------------------------- header values
def header_values(hdr: dict, ve: bool) -> dict[str, Any]:
    """Typed header values in SI units from twixtools' parsed header (``twix[-1]['hdr']``).

    Keys: ``nucleus``, ``frequency_hz`` (Hz), ``field_t`` (T), ``te_s`` (list, s, the first
    ``lContrasts`` entries of alTE), ``tr_s`` (s), ``ti_s``, ``flip_deg``, ``dwell_s`` (s,
    alDwellTime[0]), ``dwell_per_echo_s``, ``n_contrasts``, ``fov_m`` (readout, phase, slice/slab
    in m), ``matrix``, ``software``, ``format``, ``protocol``, ``sequence``, ``wip_long``,
    ``wip_double`` ({index: value}), ``geometry`` (see :func:`recon.io.geometry.siemens_geometry`),
    ``kspace`` (sKSpace dict), ``coil``, ``readout_os``, ``averages``.
    """
    from recon.io.geometry import siemens_geometry

    y = hdr.get("MeasYaps", {}) or {}
    dicom = hdr.get("Dicom", {}) or {}
    meas = hdr.get("Meas", {}) or {}
    config = hdr.get("Config", {}) or {}
    out: dict[str, Any] = {}
    nuc = (
        _get(y, "sTXSPEC", "asNucleusInfo", 0, "tNucleus")
        or _get(y, "sRXSPEC", "asNucleusInfo", 0, "tNucleus")
        or _get(meas, "ResonantNucleus")
        or ""
    )
    out["nucleus"] = str(nuc).strip().strip('"')
    freq = _get(y, "sTXSPEC", "asNucleusInfo", 0, "lFrequency")
    if freq is None:
        freq = _get(dicom, "lFrequency")
    out["frequency_hz"] = _num(freq)
    b0 = _get(dicom, "flMagneticFieldStrength")
    if b0 is None:
        b0 = _get(y, "sProtConsistencyInfo", "flNominalB0")
    out["field_t"] = _num(b0)
    n_con = _get(y, "lContrasts")
    te = _list_entries(_get(y, "alTE"))
    n_con = int(n_con) if isinstance(n_con, (int, float)) and n_con >= 1 else (1 if te else 0)
    out["n_contrasts"] = n_con
    out["te_s"] = [_num(te.get(i)) * 1e-6 for i in range(n_con)]
    out["te_all_s"] = [_num(v) * 1e-6 for _, v in sorted(te.items())]
    out["tr_s"] = _num(_get(y, "alTR", 0)) * 1e-6
    ti = _get(y, "alTI", 0)
    out["ti_s"] = None if ti is None else _num(ti) * 1e-6
    out["flip_deg"] = _num(_get(y, "adFlipAngleDegree", 0))
    dw = _list_entries(_get(y, "sRXSPEC", "alDwellTime"))
    out["dwell_s"] = _num(dw.get(0)) * 1e-9
    out["dwell_per_echo_s"] = [_num(dw.get(i, dw.get(0))) * 1e-9 for i in range(max(n_con, 1))]
    sl = _get(y, "sSliceArray", "asSlice", 0) or {}
    fov = tuple(_num(sl.get(k)) * 1e-3 for k in ("dReadoutFOV", "dPhaseFOV", "dThickness"))
    out["fov_m"] = None if any(math.isnan(v) for v in fov) else fov
    ks = _get(y, "sKSpace") or {}
    out["kspace"] = {k: v for k, v in ks.items() if isinstance(v, (int, float, str))}
    base = ks.get("lBaseResolution")
    if isinstance(base, (int, float)) and base > 0:
        dim3 = ks.get("ucDimension") == 4
        out["matrix"] = (
            int(base),
            int(ks.get("lPhaseEncodingLines") or base),
            int(ks.get("lPartitions") or 1) if dim3 else 1,
        )
    else:
        out["matrix"] = None
    sw = _get(dicom, "SoftwareVersions") or _get(y, "sProtConsistencyInfo", "tBaselineString") or ""
    out["software"] = str(sw)
    out["baseline"] = str(_get(y, "sProtConsistencyInfo", "tBaselineString") or "")
    out["format"] = _software_format(ve, out["software"])
    out["protocol"] = str(_get(y, "tProtocolName") or "").strip('"')
    out["sequence"] = str(_get(y, "tSequenceFileName") or "").strip('"')
    wip = _get(y, "sWipMemBlock") or _get(y, "sWiPMemBlock") or {}
    out["wip_long"] = {i: int(v) for i, v in _list_entries(wip.get("alFree")).items() if isinstance(v, (int, float))}
    out["wip_double"] = {i: float(v) for i, v in _list_entries(wip.get("adFree")).items() if isinstance(v, (int, float))}
    if isinstance(wip.get("tFree"), str):
        out["wip_string"] = wip["tFree"]
    ppos = _get(meas, "tPatientPosition") or _get(config, "PatientPosition") or ""
    out["geometry"] = siemens_geometry(sl, patient_position=str(ppos)) if sl else None
    coil = _get(y, "sCoilSelectMeas", "aRxCoilSelectData", 0, "asList", 0, "sCoilElementID", "tCoilID") or _get(
        y, "asCoilSelectMeas", 0, "asList", 0, "sCoilElementID", "tCoilID"
    )
    out["coil"] = None if coil is None else str(coil).strip('"')
    out["readout_os"] = _num(_get(meas, "flReadoutOSFactor"), default=None)
    out["averages"] = _get(y, "lAverages")
    return out


# --------------------------------------------------------------------------- one file
#: the measurement data header fields the reader uses, at their byte offsets (twixtools.mdh_def
#: ``Scan_header`` for VD/VE/XA, ``VB17_header`` for VB; a test checks them against its ctypes structs)
_MDH_FIELDS = ("FlagsAndDMALength", "EvalInfoMask", "SamplesInScan", "UsedChannels", "Lin", "Eco")
_MDH_FMT = ("<u4", "<u8", "<u2", "<u2", "<u2", "<u2")
_VE_MDH = np.dtype({"names": _MDH_FIELDS, "formats": _MDH_FMT, "offsets": (0, 40, 48, 50, 52, 60), "itemsize": _VE_SCAN_HDR})
_VB_MDH = np.dtype({"names": _MDH_FIELDS, "formats": _MDH_FMT, "offsets": (0, 20, 28, 30, 32, 40), "itemsize": _VB_HDR})
_HEAD = struct.Struct("<I16xQHH")  # FlagsAndDMALength .. EvalInfoMask, SamplesInScan, UsedChannels (VB layout)
_HEAD_VE = struct.Struct("<I36xQHH")

# EvalInfoMask bits (twixtools.mdh_def.mask_id)
_ACQEND, _SYNCDATA, _PHASCOR, _PATREFSCAN, _PATREFANDIMASCAN, _NOISEADJSCAN = 1 << 0, 1 << 5, 1 << 21, 1 << 22, 1 << 23, 1 << 25
#: flags that disqualify an image scan (twixtools.mdh_def.is_image_scan): ACQEND, RTFEEDBACK,
#: HPFEEDBACK, SYNCDATA, REFPHASESTABSCAN, PHASESTABSCAN, PHASCOR, NOISEADJSCAN, noname60
_NOT_IMAGE = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 5) | (1 << 14) | (1 << 15) | (1 << 21) | (1 << 25) | (1 << 60)

#: raw samples beyond this magnitude are no ADC's output: a corrupt file (|x|^2 overflows float32 at 1.8e19)
MAX_RAW_MAGNITUDE = 1e18

_twixprot_module = None


def _twixprot():
    """twixtools' protocol parser module, loaded without the ``twixtools`` package.

    ``import twixtools`` (any submodule runs the package ``__init__``) imports matplotlib.pyplot
    (``twixtools.pmu``), tqdm and scipy: 1-2 s. ``twixprot`` itself needs only ``re``, ``struct``
    and numpy, so it is loaded from its file under a private name.
    """
    global _twixprot_module
    if _twixprot_module is None:
        mod = sys.modules.get("twixtools.twixprot")
        if mod is None:
            import importlib.util

            spec = importlib.util.find_spec("twixtools")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("twixtools is not installed (pip install twixtools)")
            path = Path(next(iter(spec.submodule_search_locations))) / "twixprot.py"
            sub = importlib.util.spec_from_file_location("recon.io._twixtools_twixprot", path)
            mod = importlib.util.module_from_spec(sub)
            sub.loader.exec_module(mod)
        _twixprot_module = mod
    return _twixprot_module


def _walk_mdbs(buf, ve: bool, start: int, end: int, size: int) -> tuple[np.ndarray, dict]:
    """Walk the data blocks of ``buf`` (the whole file) from ``start``; return (block offsets, stats).

    One pass over the block headers with :mod:`struct` (the chain of lengths is sequential);
    the header fields of the kept blocks are then read at once through a structured dtype.
    See the module docstring for the stopping rules.
    """
    hsize = _VE_SCAN_HDR if ve else _VB_HDR
    head = _HEAD_VE if ve else _HEAD
    per_cha = _VE_CHAN_HDR if ve else _VB_HDR
    extra = hsize if ve else 0
    kept: list[int] = []
    stats = {"n_syncdata": 0, "acqend": False, "truncated": False, "corrupt_at": None, "stop_reason": ""}
    pos = start
    while pos + hsize <= end:
        flags_len, mask, ns, ch = head.unpack_from(buf, pos)
        need = ch * (per_cha + 8 * ns) + extra  # twixtools' dma_len of a readout block
        if mask & _ACQEND:
            stats["acqend"] = True
            break
        if mask & _SYNCDATA:
            dl = flags_len % (1 << 25)
            if dl < hsize:
                stats["corrupt_at"], stats["stop_reason"] = pos, f"SYNCDATA block of impossible length {dl}"
                break
            stats["n_syncdata"] += 1
            pos += dl
            continue
        if pos + need > size:
            stats["truncated"] = True
            stats["stop_reason"] = f"file ends inside the readout at byte {pos} ({pos + need - size} bytes missing)"
            break
        if ch == 0 or ns == 0 or need < hsize:
            stats["corrupt_at"] = pos
            stats["stop_reason"] = f"block with {ch} channels x {ns} samples at byte {pos}"
            break
        kept.append(pos)
        pos += need
    else:
        if not stats["acqend"]:
            stats["truncated"] = pos < end or end >= size
            stats["stop_reason"] = "no ACQEND block at the end of the measurement"
    stats["end_pos"] = pos
    return np.asarray(kept, dtype=np.int64), stats


def _headers(buf, offsets: np.ndarray, ve: bool) -> np.ndarray:
    """The mdh fields of the blocks at ``offsets`` (structured array, one record per block)."""
    dt = _VE_MDH if ve else _VB_MDH
    if len(offsets) == 0:
        return np.zeros(0, dt)
    step = np.diff(offsets)
    if len(offsets) > 1 and np.all(step == step[0]) and step[0] >= dt.itemsize:
        # evenly spaced blocks: one strided view
        arr = np.frombuffer(buf, dtype=np.uint8)
        view = np.lib.stride_tricks.as_strided(arr[offsets[0] :], shape=(len(offsets), dt.itemsize), strides=(step[0], 1))
        return np.ascontiguousarray(view).view(dt)[:, 0]
    raw = np.frombuffer(buf, dtype=np.uint8)
    rows = raw[offsets[:, None] + np.arange(dt.itemsize)]
    return rows.view(dt)[:, 0]


def _gather(buf, offsets: np.ndarray, ve: bool, n_cha: int, n_col: int) -> np.ndarray:
    """Samples (n_blocks, n_cha, n_col) complex64 of the readout blocks at ``offsets`` (a copy)."""
    initial = _VE_SCAN_HDR if ve else 0
    inter = _VE_CHAN_HDR if ve else _VB_HDR
    stride = inter + 8 * n_col
    first = offsets + initial + inter  # byte offset of channel 0's first sample
    out = np.empty((len(offsets), n_cha, n_col), np.complex64)
    if len(offsets) == 0:
        return out
    base = int(first[0] % 8)
    if np.all(first % 8 == base) and stride % 8 == 0:
        # every sample on one 8-byte lattice: rows of a sliding window over a complex64 view
        c8 = np.frombuffer(buf, dtype=np.complex64, offset=base, count=(len(buf) - base) // 8)
        rows = np.lib.stride_tricks.sliding_window_view(c8, n_col)
        idx = (first - base) // 8
        starts = idx[:, None] + np.arange(n_cha) * (stride // 8)
        out = rows[starts]  # fancy indexing gathers the rows (np.take would copy the whole window first)
    else:  # pragma: no cover - Siemens blocks are 8-byte multiples; kept for odd header lengths
        dt = np.dtype([("skip", np.void, inter), ("data", np.complex64, n_col)])
        for i, off in enumerate(offsets.tolist()):
            out[i] = np.frombuffer(buf, dtype=dt, count=n_cha, offset=off + initial)["data"]
    return out


def _count_beyond(buf, ve: bool, pos: int, size: int) -> int:
    """Readout blocks that lie complete between ``pos`` and the end of the file."""
    offs, _ = _walk_mdbs(buf, ve, pos, size, size)
    if len(offs) == 0:
        return 0
    h = _headers(buf, offs, ve)
    return int(np.count_nonzero((h["EvalInfoMask"] & np.uint64(_NOT_IMAGE)) == 0))


def _read_header(path: Path, fid, meas_off: int) -> tuple[dict, int]:
    """Parse the protocol header of the measurement at ``meas_off``; return (header dict, its length)."""
    prot = _twixprot()
    fid.seek(meas_off)
    hdr_len = struct.unpack("<I", fid.read(4))[0]
    try:
        fid.seek(meas_off)
        with _quiet() as msg:
            hdr = prot.parse_twix_hdr(fid)
    except Exception as e:  # noqa: BLE001 - twixtools raises anything on corrupt headers
        raise RawDataError(f"cannot parse the twix protocol header ({type(e).__name__}: {e})", path) from e
    for line in msg.getvalue().splitlines():
        if line.strip():
            log.debug("twixtools: %s", line.strip())
    return hdr, hdr_len


def _read_one(path: Path, defer: bool = False) -> dict[str, Any]:
    """Parse one file: header values, image readouts (as arrays) and noise readouts.

    ``defer``: leave ``data`` None and put the readouts' block offsets in ``gather`` instead, so
    :func:`_assign_echoes` copies the samples once, straight into their (echo, coil, projection,
    sample) places (one copy of the data, not a file-order copy and then an echo-sorted one)."""
    if not path.exists():
        raise InputError("raw data file not found", path)
    if path.is_dir():
        raise InputError("is a directory, expected a raw data file", path)
    size = path.stat().st_size
    ve, meas_off, meas_end = _check_container(path, size)
    with open(path, "rb") as fid:
        hdr, hdr_len = _read_header(path, fid, meas_off)
        if not isinstance(hdr, dict) or not hdr.get("MeasYaps"):
            raise RawDataError("twix header has no MeasYaps (ASCCONV) protocol: corrupt or foreign file", path)
        try:
            hv = header_values(hdr, ve)
        except Exception as e:  # noqa: BLE001 - a corrupt header can hold values of any type
            raise RawDataError(f"corrupt twix protocol header ({type(e).__name__}: {e})", path) from e
        # read-only map of the file, released with its last view (not closed here: a view held by
        # an exception's traceback would make mmap.close() raise BufferError over the real error)
        buf = mmap.mmap(fid.fileno(), 0, access=mmap.ACCESS_READ)
    return _read_blocks(path, buf, ve, meas_off + hdr_len, meas_end, size, hv, defer)


def _read_blocks(path: Path, buf, ve: bool, start: int, end: int, size: int, hv: dict, defer: bool = False) -> dict[str, Any]:
    offsets, stats = _walk_mdbs(buf, ve, start, end, size)
    h = _headers(buf, offsets, ve)
    mask = h["EvalInfoMask"]
    is_noise = (mask & np.uint64(_NOISEADJSCAN)) != 0
    is_img = (mask & np.uint64(_NOT_IMAGE)) == 0
    is_img &= ~(((mask & np.uint64(_PATREFSCAN)) != 0) & ((mask & np.uint64(_PATREFANDIMASCAN)) == 0))
    n_noise = int(is_noise.sum())
    n_other = len(offsets) - n_noise - int(is_img.sum())
    if not is_img.any():
        why = f"; reading stopped: {stats['stop_reason']}" if stats["stop_reason"] else ""
        raise RawDataError(f"no imaging readouts found ({len(offsets)} data blocks{why})", path)
    ch, ns = h["UsedChannels"].astype(np.int64), h["SamplesInScan"].astype(np.int64)
    shapes = collections.Counter(zip(ch[is_img].tolist(), ns[is_img].tolist()))
    (n_cha, n_col), _ = shapes.most_common(1)[0]
    keep = is_img & (ch == n_cha) & (ns == n_col)
    dropped = {f"{c}x{s}": n for (c, s), n in shapes.items() if (c, s) != (n_cha, n_col)}
    kept = offsets[keep]
    data = None if defer else _gather(buf, kept, ve, n_cha, n_col)
    eco = h["Eco"][keep].astype(np.int64)
    lin = h["Lin"][keep].astype(np.int64)
    noise_sel = is_noise & (ch == n_cha)
    noise_arr = None
    if noise_sel.any():
        cols = np.unique(ns[noise_sel])
        parts = [_gather(buf, offsets[noise_sel & (ns == c)], ve, n_cha, int(c)) for c in cols.tolist()]
        if len(cols) == 1:
            noise_arr = np.ascontiguousarray(parts[0].transpose(1, 0, 2).reshape(n_cha, -1))
        else:  # readouts of different lengths: concatenate in file order
            order = np.flatnonzero(noise_sel)
            blocks = {int(c): iter(p) for c, p in zip(cols.tolist(), parts)}
            noise_arr = np.concatenate([next(blocks[int(ns[i])]) for i in order], axis=1)
    del h
    if data is not None:
        _check_magnitude(path, data)
    n_beyond = 0
    if (
        not stats["acqend"]
        and stats["corrupt_at"] is None
        and end < size
        and stats["end_pos"] + (_VE_SCAN_HDR if ve else _VB_HDR) > end
    ):
        n_beyond = _count_beyond(buf, ve, stats["end_pos"], size)
        if n_beyond:
            log.warning(
                "%s: %d readout(s) lie past the measurement length declared in the file header "
                "(bytes %d..%d of %d) and were not read",
                path,
                n_beyond,
                end,
                size,
                size,
            )
    n_dropped = sum(dropped.values())
    if n_dropped:
        log.warning(
            "%s: dropped %d readout(s) whose channels x samples differ from the %d x %d imaging readouts (%s)",
            path,
            n_dropped,
            n_cha,
            n_col,
            ", ".join(f"{n} of {k}" for k, n in sorted(dropped.items())),
        )
    if stats["truncated"] or stats["corrupt_at"] is not None:
        log.warning(
            "%s: %s; kept the %d complete imaging readouts before that point",
            path,
            stats["stop_reason"],
            len(kept),
        )
    stats.pop("end_pos", None)
    stats["n_beyond_declared_end"] = n_beyond
    return dict(
        path=path,
        ve=ve,
        hv=hv,
        data=data,
        gather=(buf, kept, ve, n_cha, n_col) if defer else None,
        eco=eco,
        lin=lin,
        noise=noise_arr,
        n_noise_scans=n_noise,
        n_other=n_other,
        dropped=dropped,
        n_dropped=n_dropped,
        stats=stats,
        n_cha=n_cha,
        n_col=n_col,
    )


def _check_magnitude(path: Path, data: np.ndarray) -> None:
    """Refuse samples that are NaN, infinite or beyond :data:`MAX_RAW_MAGNITUDE` (a corrupt file)."""
    if data.size == 0:
        return
    f = data.view(np.float32)
    peak = max(float(f.max()), -float(f.min()))  # no |x| temporary; a NaN makes f.max() NaN, which max() keeps
    if not peak <= MAX_RAW_MAGNITUDE:
        what = "NaN or infinite samples" if not np.isfinite(peak) else f"samples of magnitude {peak:.3g}"
        raise RawDataError(f"raw data contain {what} (no ADC gives more than {MAX_RAW_MAGNITUDE:g}): corrupt file", path)


def _assign_echoes(r: dict, echo_from: str, n_echoes: int | None) -> tuple[np.ndarray, np.ndarray, list]:
    """Return data (echo, coil, proj, sample), projection index (echo, proj) and notes."""
    path, data, eco, lin = r["path"], r.get("data"), r["eco"], r["lin"]
    n_con = r["hv"]["n_contrasts"]
    notes: list[str] = []
    if echo_from == "eco":
        found = sorted(set(eco.tolist()))
        n = n_echoes if n_echoes is not None else (max(found) + 1)
        if n_echoes is None and n_con and n != n_con:
            raise RawDataError(
                f"the Eco counter gives {n} echo(es) (values {found[:8]}) but the header lists "
                f"lContrasts = {n_con}"
                " echo time(s); read with echo_from='order' and n_echoes (CLI: --echo-from order --echoes N)"
                " if the sequence does not set the Eco counter",
                path,
            )
        extra = eco >= n
        if extra.any():
            notes.append(f"dropped {int(extra.sum())} readout(s) with Eco >= {n}")
            log.warning("%s: dropped %d readout(s) with Eco counter >= %d", path, int(extra.sum()), n)
        groups = [np.flatnonzero(eco == e) for e in range(n)]
        proj = lin
    elif echo_from == "order":
        n = n_echoes if n_echoes is not None else max(n_con, 1)
        k = np.arange(len(eco))
        groups = [k[e::n] for e in range(n)]
        proj = k // n
    else:
        raise InputError(f"echo_from must be 'eco' or 'order', got {echo_from!r}")
    counts = [len(g) for g in groups]
    m = min(counts)
    if m == 0:
        raise RawDataError(
            f"echo(es) {[e for e, c in enumerate(counts) if c == 0]} have no readouts (readouts per echo: {counts})",
            path,
        )
    if len(set(counts)) > 1:
        notes.append(f"unequal readouts per echo {counts}: kept the first {m} of each")
        log.warning("%s: unequal readouts per echo %s (truncated?): kept the first %d of each", path, counts, m)
    groups = [g[:m] for g in groups]
    for e, g in enumerate(groups):
        n_dup = len(g) - len(np.unique(proj[g]))
        if n_dup:
            notes.append(f"echo {e}: {n_dup} duplicated projection counter(s)")
            log.warning(
                "%s: echo %d has %d readout(s) whose projection counter (%s) repeats an earlier one "
                "(repeated or averaged readouts?): each is gridded at its own trajectory position",
                path,
                e,
                n_dup,
                "Lin" if echo_from == "eco" else "order",
            )
    pidx = np.stack([proj[g] for g in groups])
    if data is None:  # deferred (read_twix): gather the blocks in (echo, projection) order, one copy
        buf, offs, ve, n_cha, n_col = r["gather"]
        rows = _gather(buf, offs[np.concatenate(groups)], ve, n_cha, n_col)  # (echo x proj, coil, sample)
        _check_magnitude(path, rows)
        m = len(groups[0])
        out = rows.reshape(len(groups), m, n_cha, n_col)
        if n_cha == 1:
            return out.reshape(len(groups), 1, m, n_col), pidx, notes  # already (echo, coil, proj, sample)
        return np.ascontiguousarray(out.transpose(0, 2, 1, 3)), pidx, notes
    n_cha = data.shape[1]
    # one copy of the samples, straight into (echo, coil, proj, sample): no per-echo copies and stack
    out = np.empty((len(groups), n_cha, len(groups[0]), data.shape[2]), dtype=data.dtype)
    for e, g in enumerate(groups):
        if n_cha == 1:
            np.take(data[:, 0], g, axis=0, out=out[e, 0])
        else:
            out[e] = data[g].transpose(1, 0, 2)
    return out, pidx, notes


def _acquisition_from(
    r: dict, data: np.ndarray, pidx: np.ndarray, notes: list[str], te_override: Sequence[float] | None
) -> Acquisition:
    hv = r["hv"]
    n = data.shape[0]
    te = list(hv["te_s"])
    if te_override is not None:
        te = [float(t) for t in te_override]
        if len(te) != n:
            raise InputError(f"{len(te)} echo times given for {n} echoes")
    elif len(te) != n:
        src = hv["te_all_s"]
        if len(src) >= n and n > len(te):
            # more echoes than lContrasts: alTE may still list them
            te = src[:n]
        else:
            te = (te + [math.nan] * n)[:n]
        log.warning(
            "%s: the header lists %d echo time(s) (lContrasts) for %d echoes read; using %s s",
            r["path"],
            hv["n_contrasts"],
            n,
            te,
        )
        notes.append("echo times not all from lContrasts")
    header = {
        k: hv[k]
        for k in (
            "software",
            "baseline",
            "format",
            "protocol",
            "sequence",
            "wip_long",
            "wip_double",
            "kspace",
            "coil",
            "readout_os",
            "averages",
            "ti_s",
            "dwell_per_echo_s",
            "n_contrasts",
        )
    }
    if "wip_string" in hv:
        header["wip_string"] = hv["wip_string"]
    header.update(
        n_noise_scans=r["n_noise_scans"],
        dropped_adcs=r["n_dropped"],
        dropped_shapes=r["dropped"],
        n_syncdata=r["stats"]["n_syncdata"],
        n_other_scans=r["n_other"],
        truncated=bool(r["stats"]["truncated"]),
        corrupt_at=r["stats"]["corrupt_at"],
        notes=notes,
        readouts_per_echo=int(data.shape[2]),
    )
    dw = hv["dwell_per_echo_s"]
    if len(set(dw[:n])) > 1:
        log.warning("%s: dwell times differ between echoes %s s; using the first", r["path"], dw[:n])
    return Acquisition(
        data=data,
        te_s=tuple(te),
        tr_s=hv["tr_s"],
        flip_deg=hv["flip_deg"],
        dwell_s=hv["dwell_s"],
        nucleus=hv["nucleus"],
        frequency_hz=hv["frequency_hz"],
        field_t=hv["field_t"],
        projection_index=pidx,
        noise=r["noise"],
        fov_m=hv["fov_m"],
        matrix=hv["matrix"],
        geometry=hv["geometry"],
        header=header,
        sources=(str(r["path"]),),
    )


def read_twix(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    echo_from: str = "eco",
    n_echoes: int | None = None,
    te_s: Sequence[float] | None = None,
) -> Acquisition:
    """Read one Siemens twix file (or one file per echo) into an :class:`Acquisition`.

    Parameters
    ----------
    paths : a .dat file, or a list of files that each hold one echo (or several echoes; the
        echoes of all files are concatenated in the given order).
    echo_from : ``"eco"`` (echo from the Eco counter, projection from Lin) or ``"order"`` (echo
        = position of the ADC within each TR, projection = TR index).
    n_echoes : echoes per file; default: lContrasts of the header (``"order"``) or the Eco
        counters found (``"eco"``, which must then agree with lContrasts).
    te_s : echo times in s to use instead of the header's (e.g. Pulseq files carry dummies).

    Raises
    ------
    InputError : the file does not exist.
    RawDataError : empty, foreign, corrupt file, or no usable imaging readouts; mismatched files.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise InputError("no raw data file given")
    parts = []
    for p in paths:
        r = _read_one(p, defer=True)
        data, pidx, notes = _assign_echoes(r, echo_from, n_echoes)
        parts.append((r, data, pidx, notes))
    if len(parts) == 1:
        r, data, pidx, notes = parts[0]
        return _acquisition_from(r, data, pidx, notes, te_s)
    # several files: concatenate echoes
    accs = [_acquisition_from(r, d, pi, no, None) for r, d, pi, no in parts]
    first = accs[0]
    for a in accs[1:]:
        diffs = []
        if a.n_coils != first.n_coils:
            diffs.append(f"channels {first.n_coils} vs {a.n_coils}")
        if a.n_samples != first.n_samples:
            diffs.append(f"samples {first.n_samples} vs {a.n_samples}")
        if a.n_projections != first.n_projections:
            diffs.append(f"readouts per echo {first.n_projections} vs {a.n_projections}")
        if a.nucleus != first.nucleus:
            diffs.append(f"nucleus {first.nucleus} vs {a.nucleus}")
        if not math.isclose(a.dwell_s, first.dwell_s, rel_tol=1e-9, abs_tol=0) and not (
            math.isnan(a.dwell_s) and math.isnan(first.dwell_s)
        ):
            diffs.append(f"dwell {first.dwell_s} vs {a.dwell_s} s")
        if diffs:
            raise RawDataError(f"cannot combine with {first.sources[0]} as echoes: " + "; ".join(diffs), a.sources[0])
    te = [t for a in accs for t in a.te_s]
    if te_s is not None:
        te = [float(t) for t in te_s]
        if len(te) != sum(a.n_echoes for a in accs):
            raise InputError(f"{len(te)} echo times given for {sum(a.n_echoes for a in accs)} echoes")
    header = dict(first.header)
    header["files"] = [a.sources[0] for a in accs]
    header["n_noise_scans"] = sum(a.header["n_noise_scans"] for a in accs)
    header["dropped_adcs"] = sum(a.header["dropped_adcs"] for a in accs)
    header["truncated"] = any(a.header["truncated"] for a in accs)
    header["notes"] = [n for a in accs for n in a.header["notes"]]
    return Acquisition(
        data=np.concatenate([a.data for a in accs], axis=0),
        te_s=tuple(te),
        tr_s=first.tr_s,
        flip_deg=first.flip_deg,
        dwell_s=first.dwell_s,
        nucleus=first.nucleus,
        frequency_hz=first.frequency_hz,
        field_t=first.field_t,
        projection_index=np.concatenate([a.projection_index for a in accs], axis=0),
        noise=first.noise,
        fov_m=first.fov_m,
        matrix=first.matrix,
        geometry=first.geometry,
        header=header,
        sources=tuple(a.sources[0] for a in accs),
    )


def is_twix(path: str | os.PathLike) -> bool:
    """True if the file looks like a Siemens twix file (container check only)."""
    p = Path(path)
    try:
        _check_container(p, p.stat().st_size)
    except (OSError, RawDataError):
        return False
    return True
