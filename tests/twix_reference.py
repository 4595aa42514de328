"""The previous twix reader (twixtools' ``Mdb`` objects, one per data block), kept as a test peer.

:func:`read_one_reference` is the block walk that ``recon.io.twix`` used before it was
vectorised: every block parsed by ``twixtools.mdb.Mdb`` (ctypes structs) and its samples read
by ``Mdb.data``. The vectorised reader must agree with it bit for bit, on valid and on damaged
files (tests/test_io_twix_vectorised.py).
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np

from recon.errors import InputError, RawDataError
from recon.io.twix import _VB_HDR, _VE_CHAN_HDR, _VE_SCAN_HDR, _check_container, _quiet, header_values


def _walk_mdbs(fid, ve: bool, start: int, end: int, size: int, path: Path) -> tuple[list, dict]:
    """Walk the data blocks from ``start``; return (mdbs, stats). See the module docstring."""
    import twixtools.mdb
    from twixtools import mdh_def

    hsize = _VE_SCAN_HDR if ve else _VB_HDR
    mdbs: list = []
    stats = {"n_syncdata": 0, "acqend": False, "truncated": False, "corrupt_at": None, "stop_reason": ""}
    pos = start
    while pos + hsize <= end:
        fid.seek(pos)
        # the block's own length from its header, checked against the file size before twixtools reads it
        h = (mdh_def.Scan_header if ve else mdh_def.VB17_header).from_buffer_copy(fid.read(hsize))
        special = mdh_def.is_flag_set(h, "ACQEND") or mdh_def.is_flag_set(h, "SYNCDATA")
        need = int(h.UsedChannels) * ((_VE_CHAN_HDR if ve else _VB_HDR) + 8 * int(h.SamplesInScan)) + (hsize if ve else 0)
        if not special and pos + need > size:
            stats["truncated"] = True
            stats["stop_reason"] = f"file ends inside the readout at byte {pos} ({pos + need - size} bytes missing)"
            break
        fid.seek(pos)
        try:
            with _quiet():
                m = twixtools.mdb.Mdb(fid, ve)
        except Exception as e:  # noqa: BLE001 - any parse failure ends the walk here
            stats["corrupt_at"], stats["stop_reason"] = pos, f"unreadable block header ({e})"
            break
        if m.is_flag_set("ACQEND"):
            stats["acqend"] = True
            break
        dl = int(m.dma_len)
        if m.is_flag_set("SYNCDATA"):
            if dl < hsize:
                stats["corrupt_at"], stats["stop_reason"] = pos, f"SYNCDATA block of impossible length {dl}"
                break
            stats["n_syncdata"] += 1
            pos += dl
            continue
        if m.mdh.UsedChannels == 0 or m.mdh.SamplesInScan == 0 or dl < hsize:
            stats["corrupt_at"] = pos
            stats["stop_reason"] = f"block with {m.mdh.UsedChannels} channels x {m.mdh.SamplesInScan} samples at byte {pos}"
            break
        if pos + dl > size:
            stats["truncated"] = True
            stats["stop_reason"] = f"file ends inside the readout at byte {pos} ({pos + dl - size} bytes missing)"
            break
        mdbs.append(m)
        pos += dl
    else:
        if not stats["acqend"]:
            stats["truncated"] = pos < end or end >= size
            stats["stop_reason"] = "no ACQEND block at the end of the measurement"
    return mdbs, stats


def read_one_reference(path: Path) -> dict[str, Any]:
    """Parse one file: header values, image readouts (as arrays) and noise readouts."""
    import twixtools

    if not path.exists():
        raise InputError("raw data file not found", path)
    if path.is_dir():
        raise InputError("is a directory, expected a raw data file", path)
    size = path.stat().st_size
    ve, meas_off, meas_end = _check_container(path, size)
    try:
        with _quiet() as msg:
            tw = twixtools.read_twix(
                str(path),
                include_scans=[-1],
                parse_data=False,
                parse_pmu=False,
                parse_geometry=False,
                verbose=False,
            )
        meas = tw[-1]
        hdr = meas["hdr"]
    except Exception as e:  # noqa: BLE001 - twixtools raises anything on corrupt headers
        raise RawDataError(f"cannot parse the twix protocol header ({type(e).__name__}: {e})", path) from e
    for line in msg.getvalue().splitlines():
        if line.strip():
            (lambda *a: None)("twixtools: %s", line.strip())
    if not isinstance(hdr, dict) or not hdr.get("MeasYaps"):
        raise RawDataError("twix header has no MeasYaps (ASCCONV) protocol: corrupt or foreign file", path)
    try:
        hv = header_values(hdr, ve)
    except Exception as e:  # noqa: BLE001 - a corrupt header can hold values of any type
        raise RawDataError(f"corrupt twix protocol header ({type(e).__name__}: {e})", path) from e
    hdr_len = int(meas["hdr_str"].size)
    with open(path, "rb") as fid:
        mdbs, stats = _walk_mdbs(fid, ve, meas_off + hdr_len, meas_end, size, path)
        noise_m = [m for m in mdbs if m.is_flag_set("NOISEADJSCAN")]
        img = [m for m in mdbs if m.is_image_scan()]
        n_other = len(mdbs) - len(noise_m) - len(img)
        if not img:
            why = f"; reading stopped: {stats['stop_reason']}" if stats["stop_reason"] else ""
            raise RawDataError(f"no imaging readouts found ({len(mdbs)} data blocks{why})", path)
        shapes = collections.Counter((int(m.mdh.UsedChannels), int(m.mdh.SamplesInScan)) for m in img)
        (n_cha, n_col), _ = shapes.most_common(1)[0]
        keep = [m for m in img if (m.mdh.UsedChannels, m.mdh.SamplesInScan) == (n_cha, n_col)]
        dropped = {f"{c}x{s}": n for (c, s), n in shapes.items() if (c, s) != (n_cha, n_col)}
        data = np.empty((len(keep), n_cha, n_col), np.complex64)
        try:
            for i, m in enumerate(keep):
                data[i] = m.data
            noise = [np.asarray(m.data) for m in noise_m if m.mdh.UsedChannels == n_cha]
        except Exception as e:  # noqa: BLE001 - the walk validated sizes; anything else is corruption
            raise RawDataError(f"cannot read readout data ({type(e).__name__}: {e})", path) from e
        eco = np.array([m.mdh.Counter.Eco for m in keep], dtype=np.int64)
        lin = np.array([m.mdh.Counter.Lin for m in keep], dtype=np.int64)
    noise_arr = np.concatenate(noise, axis=1).astype(np.complex64) if noise else None
    n_dropped = sum(dropped.values())
    if n_dropped:
        (lambda *a: None)(
            "%s: dropped %d readout(s) whose channels x samples differ from the %d x %d imaging readouts (%s)",
            path,
            n_dropped,
            n_cha,
            n_col,
            ", ".join(f"{n} of {k}" for k, n in sorted(dropped.items())),
        )
    if stats["truncated"] or stats["corrupt_at"] is not None:
        (lambda *a: None)(
            "%s: %s; kept the %d complete imaging readouts before that point",
            path,
            stats["stop_reason"],
            len(keep),
        )
    return dict(
        path=path,
        ve=ve,
        hv=hv,
        data=data,
        eco=eco,
        lin=lin,
        noise=noise_arr,
        n_noise_scans=len(noise_m),
        n_other=n_other,
        dropped=dropped,
        n_dropped=n_dropped,
        stats=stats,
        n_cha=n_cha,
        n_col=n_col,
    )
