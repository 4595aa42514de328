"""Fuzz test of ``narecon run``: damaged raw files and trajectory files end in the project's error or a valid result.

Every case must end in exactly one of:
* exit 2, one line ``narecon: error: ...`` naming a file, no traceback, no output folder, no temporary left;
* exit 0 with a complete output folder whose images are finite.
An exception of any other type fails the test (it is a crash). The default suite runs ~40 targeted damages
of a small simulated scan (16^3, 66 projections); ``-m slow`` adds a seeded random sweep run as subprocesses
(so that a segmentation fault or a hang would show).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main

REPO = Path(__file__).resolve().parents[1]
MEAS_OFFSET = 10240  # VD/VE multi-RAID header size; the measurement header follows
MDH, CHH = 192, 32  # scan header and channel header sizes (VD/VE)
OUT_FILES = ("echo1.nii.gz", "echo2.nii.gz", "b0_hz.nii.gz", "calibration.json", "recon.h5")
RUN_ARGS = ["--calibration", "none", "--no-qa"]
#: narecon's own log lines (warnings about what was read) may precede the error line; nothing else may
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (WARNING|INFO) ")


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> dict:
    """A small simulated dual-echo TPI scan (twix VE) and its trajectory file."""
    d = tmp_path_factory.mktemp("fuzz")
    rc = main(
        [
            "-q",
            "simulate",
            "--out",
            str(d / "sim"),
            "--matrix",
            "16",
            "--traj-undersampling",
            "4",
            "--snr",
            "50",
            "--seed",
            "1",
            "--threads",
            "1",
        ]
    )
    assert rc == 0
    raw = d / "sim" / "raw.dat"
    from recon.io import build_trajectory, read_raw
    from recon.trajectory import write_trajectory

    traj = build_trajectory(read_raw([str(raw)]))
    write_trajectory(traj, d / "traj.h5")
    return {"raw": raw, "bytes": raw.read_bytes(), "traj": d / "traj.h5", "dir": d}


def scan_offsets(b: bytes) -> list[int]:
    """Offsets of the scan headers of the (single) measurement, ACQEND last."""
    hdr_len = struct.unpack_from("<I", b, MEAS_OFFSET)[0]
    off, out = MEAS_OFFSET + hdr_len, []
    while off + MDH <= len(b):
        out.append(off)
        dma = struct.unpack_from("<I", b, off)[0] & 0x1FFFFFF
        mask = struct.unpack_from("<Q", b, off + 40)[0]
        if mask & 1 or dma == 0:  # ACQEND
            break
        off += dma
    return out


def _put(b: bytes, off: int, fmt: str, value) -> bytes:
    a = bytearray(b)
    struct.pack_into(fmt, a, off, value)
    return bytes(a)


def _text(b: bytes, pattern: bytes, new: bytes) -> bytes:
    """Replace every match of ``pattern`` (same length) in the protocol text."""
    found = re.findall(pattern, b)
    assert found and all(len(f) == len(new) for f in found), (pattern, found)
    return re.sub(pattern, new, b)


def _image_scans(b: bytes) -> list[int]:
    offs = scan_offsets(b)[:-1]
    return [o for o in offs if not (struct.unpack_from("<Q", b, o + 40)[0] >> 25) & 1]  # NOISEADJSCAN bit 25


def _sample_offset(b: bytes, scan_no: int = 3, sample: int = 5) -> int:
    return _image_scans(b)[scan_no] + MDH + CHH + 8 * sample


def raw_mutations(b: bytes) -> dict[str, bytes]:
    n = len(b)
    scans = scan_offsets(b)
    img = _image_scans(b)
    first, mid = img[0], img[len(img) // 2]
    rng = np.random.default_rng(7)
    m: dict[str, bytes] = {
        # truncations
        "empty": b"",
        "trunc-7": b[:7],
        "trunc-raid-header": b[:5000],
        "trunc-meas-header": b[: MEAS_OFFSET + 100],
        "trunc-first-scan": b[: scans[0] + 100],
        "trunc-mid-scan": b[: mid + 300],
        "trunc-half": b[: n // 2],
        "trunc-before-acqend": b[: scans[-1]],
        "trunc-last-byte": b[:-1],
        # container headers
        "nmeas-1000": _put(b, 4, "<I", 1000),
        "meas-offset-past-eof": _put(b, 16, "<Q", n * 10),
        "meas-len-huge": _put(b, 24, "<Q", 1 << 60),
        "hdr-len-0": _put(b, MEAS_OFFSET, "<I", 0),
        "hdr-len-huge": _put(b, MEAS_OFFSET, "<I", 0xFFFFFFF0),
        "hdr-nbufs-huge": _put(b, MEAS_OFFSET + 4, "<I", 100000),
        # protocol text (same length, so the container stays consistent)
        "dwell-0": _text(b, rb"alDwellTime\[0\]\t = \t10000", b"alDwellTime[0]\t = \t    0"),
        "dwell-negative": _text(b, rb"alDwellTime\[0\]\t = \t10000", b"alDwellTime[0]\t = \t-1000"),
        "contrasts-9": _text(b, rb"lContrasts\t = \t2", b"lContrasts\t = \t9"),
        "te-0": _text(b, rb"alTE\[0\]\t = \t300", b"alTE[0]\t = \t  0"),
        "nucleus-1H": _text(b, rb'tNucleus\t = \t"23Na"', b'tNucleus\t = \t"1H"  '),
        "twist-nan": _text(b, rb"adFree\[0\]\t = \t0.3", b"adFree[0]\t =  nan"),
        "resolution-0": _text(b, rb"adFree\[6\]\t = \t14.0", b"adFree[6]\t = \t 0.0"),
        "resolution-tiny": _text(b, rb"adFree\[6\]\t = \t14.0", b"adFree[6]\t = \t0.01"),
        "fov-huge": _text(b, rb"adFree\[5\]\t = \t224.0", b"adFree[5]\t = \t99999"),
        "frequency-0": _text(b, rb"lFrequency\t = \t78834000", b"lFrequency\t = \t       0"),
        # mdh fields of image scans
        "samples-0": _put(b, first + 48, "<H", 0),
        "samples-65535": _put(b, mid + 48, "<H", 65535),
        "channels-0": _put(b, first + 50, "<H", 0),
        "channels-64": _put(b, mid + 50, "<H", 64),
        "lin-65535": _put(b, mid + 52, "<H", 65535),
        "eco-7": _put(b, mid + 52 + 8, "<H", 7),
        "acqend-early": _put(b, img[10] + 40, "<Q", 1),
        "dma-0": _put(b, mid, "<I", 0),
        "dma-huge": _put(b, mid, "<I", 0x1FFFFFF),
        "channel-id-9": _put(b, mid + MDH + 24, "<H", 9),
        # sample values
        "sample-nan": _put(b, _sample_offset(b), "<f", float("nan")),
        "sample-inf": _put(b, _sample_offset(b), "<f", float("inf")),
        "sample-1e36": _put(b, _sample_offset(b), "<f", 1e36),
    }
    a = bytearray(b)
    for pos in rng.integers(MEAS_OFFSET, n, 40):
        a[pos] ^= 0xFF
    m["flip-40-bytes"] = bytes(a)
    return m


def traj_mutations(scan: dict, d: Path) -> dict[str, Path]:
    import h5py

    good = scan["traj"]
    data = good.read_bytes()
    out: dict[str, Path] = {}

    def variant(name: str, edit) -> None:
        p = d / f"traj-{name}.h5"
        p.write_bytes(data)
        with h5py.File(p, "a") as f:
            edit(f)
        out[name] = p

    def set_k(f, fn):
        k = f["k"][()]
        del f["k"]
        f.create_dataset("k", data=fn(k))

    def set_t(f, fn):
        t = f["t"][()]
        del f["t"]
        f.create_dataset("t", data=fn(t))

    variant("good", lambda f: None)
    (d / "traj-truncated.h5").write_bytes(data[: len(data) // 2])
    out["truncated"] = d / "traj-truncated.h5"
    (d / "traj-not-hdf5.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    out["not-hdf5"] = d / "traj-not-hdf5.h5"
    variant("k-nan", lambda f: set_k(f, lambda k: np.where(np.arange(k.size).reshape(k.shape) == 7, np.nan, k)))
    variant("k-zero", lambda f: set_k(f, np.zeros_like))
    variant("k-scaled-1e-3", lambda f: set_k(f, lambda k: k * 1e-3))
    variant("k-short", lambda f: set_k(f, lambda k: k[:, :-1]))
    variant("t-negative", lambda f: set_t(f, lambda t: t - 1.0))
    variant("matrix-10000", lambda f: f.attrs.__setitem__("matrix", np.array([10000] * 3)))
    variant("fov-0", lambda f: f.attrs.__setitem__("fov_m", np.array([0.0] * 3)))
    variant("gamma-nan", lambda f: f.attrs.__setitem__("gamma_hz_per_t", float("nan")))

    def soft_link(f):
        if "solid_angle" in f:
            del f["solid_angle"]
        f["solid_angle"] = h5py.SoftLink("/t")

    variant("solid-angle-soft-link", soft_link)
    variant("dwell-missing", lambda f: f.attrs.__delitem__("dwell_s"))
    return out


def check_run(argv: list[str], out: Path) -> tuple[int, str]:
    """Run ``narecon run`` in-process; assert the contract; returns (exit code, stderr line or '')."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    err, so = io.StringIO(), io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # printed warnings are checked in the subprocess sweep
        with redirect_stderr(err), redirect_stdout(so):
            rc = main(["-q", "run", *argv, "--out", str(out), *RUN_ARGS])
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(".narecon-tmp")]
    assert not leftovers, leftovers
    if rc == 0:
        assert all((out / f).is_file() for f in OUT_FILES), sorted(p.name for p in out.iterdir())
        import nibabel as nib

        assert np.all(np.isfinite(np.asarray(nib.load(out / "echo1.nii.gz").dataobj)))
        return rc, ""
    assert rc == 2, (rc, err.getvalue())
    assert lines and lines[-1].startswith("narecon: error:"), err.getvalue()
    assert len(lines) == 1, err.getvalue()
    assert not out.exists(), "partial output folder"
    return rc, lines[-1]


@pytest.fixture(scope="module")
def raw_cases(scan) -> dict[str, bytes]:
    return raw_mutations(scan["bytes"])


def test_control_run_is_valid(scan, tmp_path):
    assert check_run([str(scan["raw"])], tmp_path / "out")[0] == 0
    assert check_run([str(scan["raw"]), "--traj", str(scan["traj"])], tmp_path / "out2")[0] == 0


def _raw_names() -> list[str]:
    # the names of raw_mutations without building a scan (kept in sync by test_all_raw_cases_listed)
    return [
        "empty",
        "trunc-7",
        "trunc-raid-header",
        "trunc-meas-header",
        "trunc-first-scan",
        "trunc-mid-scan",
        "trunc-half",
        "trunc-before-acqend",
        "trunc-last-byte",
        "nmeas-1000",
        "meas-offset-past-eof",
        "meas-len-huge",
        "hdr-len-0",
        "hdr-len-huge",
        "hdr-nbufs-huge",
        "dwell-0",
        "dwell-negative",
        "contrasts-9",
        "te-0",
        "nucleus-1H",
        "twist-nan",
        "resolution-0",
        "resolution-tiny",
        "fov-huge",
        "frequency-0",
        "samples-0",
        "samples-65535",
        "channels-0",
        "channels-64",
        "lin-65535",
        "eco-7",
        "acqend-early",
        "dma-0",
        "dma-huge",
        "channel-id-9",
        "sample-nan",
        "sample-inf",
        "sample-1e36",
        "flip-40-bytes",
    ]


def test_all_raw_cases_listed(raw_cases):
    assert sorted(raw_cases) == sorted(_raw_names())


@pytest.mark.parametrize("name", _raw_names())
def test_damaged_raw_file(scan, raw_cases, tmp_path, name):
    path = tmp_path / "damaged.dat"
    path.write_bytes(raw_cases[name])
    rc, line = check_run([str(path)], tmp_path / "out")
    if rc == 2:
        assert str(path) in line, line  # the error names the file


TRAJ_NAMES = [
    "good",
    "truncated",
    "not-hdf5",
    "k-nan",
    "k-zero",
    "k-scaled-1e-3",
    "k-short",
    "t-negative",
    "matrix-10000",
    "fov-0",
    "gamma-nan",
    "solid-angle-soft-link",
    "dwell-missing",
]


@pytest.fixture(scope="module")
def traj_cases(scan) -> dict[str, Path]:
    return traj_mutations(scan, scan["dir"])


def test_all_traj_cases_listed(traj_cases):
    assert sorted(traj_cases) == sorted(TRAJ_NAMES)


@pytest.mark.parametrize("name", TRAJ_NAMES)
def test_damaged_trajectory_file(scan, traj_cases, tmp_path, name):
    rc, line = check_run([str(scan["raw"]), "--traj", str(traj_cases[name])], tmp_path / "out")
    if name == "good":
        assert rc == 0
    elif name in ("truncated", "not-hdf5", "k-nan", "k-short", "matrix-10000", "fov-0", "solid-angle-soft-link", "dwell-missing"):
        assert rc == 2 and str(traj_cases[name]) in line, line  # refused, naming the trajectory file


# ----------------------------------------------------------------------------- slow: random sweep in subprocesses


def _random_mutation(b: bytes, rng: np.random.Generator) -> bytes:
    n = len(b)
    kind = rng.integers(0, 4)
    if kind == 0:
        return b[: int(rng.integers(0, n))]
    a = bytearray(b)
    if kind == 1:  # headers: container and measurement header
        region = (0, min(n, MEAS_OFFSET + 4000))
    elif kind == 2:  # mdh fields of random scans
        offs = scan_offsets(b)
        for o in rng.choice(offs, size=min(5, len(offs)), replace=False):
            f = int(rng.integers(0, MDH))
            a[o + f] = int(rng.integers(0, 256))
        return bytes(a)
    else:
        region = (MEAS_OFFSET, n)
    for pos in rng.integers(region[0], region[1], int(rng.integers(1, 30))):
        a[pos] = int(rng.integers(0, 256))
    return bytes(a)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(60))
def test_random_damage_sweep(scan, tmp_path, seed):
    rng = np.random.default_rng(1000 + seed)
    path = tmp_path / "random.dat"
    path.write_bytes(_random_mutation(scan["bytes"], rng))
    out = tmp_path / "out"
    p = subprocess.run(
        [sys.executable, "-m", "recon", "-q", "run", str(path), "--out", str(out), *RUN_ARGS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [ln for ln in p.stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    assert p.returncode in (0, 2), (p.returncode, p.stderr[-3000:])  # no crash, no signal
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert not [q for q in tmp_path.iterdir() if q.name.startswith(".narecon-tmp")]
    if p.returncode == 0:
        assert all((out / f).is_file() for f in OUT_FILES)
    else:
        assert len(lines) == 1 and lines[0].startswith("narecon: error:"), p.stderr  # no Python warnings before it
        assert not out.exists()
