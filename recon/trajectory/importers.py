"""Trajectories from the formats people have: Pulseq, BART, MRI-NUFFT/NSP, NumPy/text, narecon HDF5.

:func:`import_trajectory` dispatches on the extension (and the HDF5 signature) and returns a
:class:`~recon.trajectory.base.Trajectory` in the conventions of DESIGN.md (k in cycles/m,
shape (n_projections, n_samples, 3); t in s from the first ADC sample):

* ``.seq`` -- a Pulseq sequence: the k-space positions of the ADC samples from pypulseq's
  ``Sequence.calculate_kspace()`` (units 1/m; one projection per ADC event), dwell and FOV
  from the file. Sequences with several ADCs per repetition (echoes) give one projection per
  ADC unless ``echoes`` is set.
* ``.cfl``/``.hdr`` -- a BART trajectory (dims [3, samples, projections, ...], complex float,
  units cycles/FOV: needs the FOV).
* ``.bin`` -- an MRI-NUFFT/NeuroSpin gradient file (read by mri-nufft's ``read_trajectory``,
  header with dimension, FOV, matrix, gamma, ...; k in 1/m).
* ``.npy``, ``.txt``, ``.csv`` -- a plain array (n_proj, n_samp, 3) or (n_points, 3) with the
  number of samples given, in declared ``units`` (:data:`UNITS`).
* ``.h5`` -- narecon's own trajectory file (:func:`recon.trajectory.io.read_trajectory`).

Corrections applied after reading: a gradient delay per axis (:func:`apply_gradient_delay`),
skipping the first projections (steady state) and dropping listed projections
(:func:`select_projections`). :func:`drop_readouts` does the same on the raw data, which keeps
the trajectory whole (the pipeline picks k by each readout's projection index).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recon.errors import InputError, TrajectoryError
from recon.trajectory.base import GAMMA_BAR_1H_HZ_PER_T, Trajectory

UNITS = ("1/m", "1/cm", "1/mm", "rad/m", "cycles/fov", "grid", "normalized")
"""Accepted k units: cycles per m, cm, mm; radians per m; cycles per FOV (``grid``, BART's
convention: k * FOV); ``normalized`` (mri-nufft's convention: +-0.5 at the Nyquist radius
matrix / (2 FOV))."""

FORMATS = ("pulseq", "bart", "nsp", "array", "narecon")

_EXT_FORMAT = {
    ".seq": "pulseq",
    ".cfl": "bart",
    ".hdr": "bart",
    ".bin": "nsp",
    ".npy": "array",
    ".txt": "array",
    ".csv": "array",
    ".h5": "narecon",
    ".hdf5": "narecon",
}


def k_to_per_m(k: np.ndarray, units: str, fov_m=None, matrix=None) -> np.ndarray:
    """Convert k (..., 3) from ``units`` (:data:`UNITS`) to cycles/m; FOV (m) and matrix where needed."""
    k = np.asarray(k, dtype=np.float64)
    u = (units or "").strip().lower()
    if u == "1/m":
        return k
    if u == "1/cm":
        return k * 100.0
    if u == "1/mm":
        return k * 1000.0
    if u == "rad/m":
        return k / (2 * math.pi)
    if u in ("cycles/fov", "grid", "normalized"):
        if fov_m is None:
            raise TrajectoryError(f"k in {units} needs the FOV (--fov-mm) to convert to 1/m")
        fov = np.broadcast_to(np.asarray(fov_m, dtype=float), (3,))
        if u != "normalized":
            return k / fov
        if matrix is None:
            raise TrajectoryError("k in normalized units needs the matrix (--matrix) to convert to 1/m")
        return k * np.broadcast_to(np.asarray(matrix, dtype=float), (3,)) / fov
    raise TrajectoryError(f"unknown k units {units!r}; choose one of {', '.join(UNITS)}")


def detect_format(path: str | os.PathLike) -> str:
    """The trajectory format of ``path`` from its extension (HDF5 by its signature)."""
    p = Path(path)
    fmt = _EXT_FORMAT.get(p.suffix.lower())
    if fmt is None:
        try:
            with open(p, "rb") as f:
                if f.read(8) == b"\x89HDF\r\n\x1a\n":
                    return "narecon"
        except OSError:
            pass
        raise TrajectoryError(
            f"unknown trajectory format {p.suffix!r}: use .seq (Pulseq), .cfl/.hdr (BART), .bin (MRI-NUFFT), "
            ".npy/.txt/.csv (array with --units) or .h5 (narecon)",
            p,
        )
    return fmt


def _infer_matrix(k: np.ndarray, fov: np.ndarray) -> tuple:
    """Nominal matrix per axis: the number of grid lines where k sits on a 1/FOV grid (Cartesian),
    else the matrix whose Nyquist radius matrix / (2 FOV) is the largest |k| (at least 1)."""
    out = []
    for a in range(3):
        kg = k[..., a].reshape(-1) * fov[a]  # cycles/FOV
        vals = np.unique(np.round(kg, 2))
        if vals.size <= 4096 and (vals.size == 1 or np.all(np.abs(np.diff(vals) - 1.0) < 0.02)):
            out.append(int(vals.size))
        else:
            out.append(max(1, int(round(2 * np.abs(kg).max()))))
    return tuple(out)


def _finish(k, t, fov_m, matrix, dwell_s, gamma, params, path) -> Trajectory:
    fov = np.broadcast_to(np.asarray(fov_m, dtype=float), (3,))
    if matrix is None:
        matrix = _infer_matrix(k, fov)
    try:
        return Trajectory(k=k, t=t, fov_m=tuple(fov.tolist()), matrix=matrix, dwell_s=dwell_s, gamma_hz_per_t=gamma, params=params)
    except TrajectoryError as e:
        raise TrajectoryError(e.message, path) from e


# ------------------------------------------------------------------------------------ Pulseq
@functools.lru_cache(maxsize=4)
def _pulseq_kspace(path: str, mtime_ns: int, size: int):
    """(k_adc (3, n), t_adc (n,), [(samples, dwell) per ADC], definitions, gamma) of a .seq file, cached by path and mtime."""
    try:
        import pypulseq as pp
    except ImportError as e:  # pragma: no cover - dependency
        raise TrajectoryError(f"reading Pulseq files needs pypulseq ({e})", path) from e
    import warnings

    seq = pp.Sequence()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seq.read(path)
            k_adc, _, _, _, t_adc = seq.calculate_kspace()
    except Exception as e:  # pypulseq raises many kinds on a foreign file
        raise TrajectoryError(f"not a readable Pulseq sequence ({type(e).__name__}: {e})", path) from e
    adcs = []
    for i in seq.block_events:
        b = seq.get_block(i)
        if getattr(b, "adc", None) is not None:
            adcs.append((int(b.adc.num_samples), float(b.adc.dwell)))
    if not adcs:
        raise TrajectoryError("the sequence has no ADC events", path)
    shapes = set(adcs)
    if len(shapes) != 1:
        raise TrajectoryError(f"ADC events differ in samples/dwell: {sorted(shapes)}", path)
    k = np.asarray(k_adc, dtype=np.float64)
    t = np.asarray(t_adc, dtype=np.float64)
    k.setflags(write=False)
    t.setflags(write=False)
    defs = dict(getattr(seq, "definitions", {}) or {})
    return k, t, tuple(adcs), defs, getattr(seq.system, "gamma", None)


def read_pulseq(
    path: str | os.PathLike,
    fov_m=None,
    matrix=None,
    gamma_hz_per_t: float | None = None,
    echoes: int = 1,
    echo: int | None = None,
) -> Trajectory:
    """k of every ADC sample of a Pulseq ``.seq`` file (pypulseq ``calculate_kspace``), in 1/m.

    One projection per ADC event (all ADCs must have the same number of samples and dwell).
    ``echoes`` > 1: the ADCs are echo 0, 1, ... of each repetition in turn; ``echo`` picks
    one (default: all echoes must share their k, and echo 0's are returned).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise TrajectoryError("Pulseq file not found", path)
    st = os.stat(path)
    k_adc, t_adc, adcs, defs, sys_gamma = _pulseq_kspace(os.path.realpath(path), st.st_mtime_ns, st.st_size)
    n_samp, dwell = adcs[0]
    n_adc = len(adcs)
    k = np.asarray(k_adc, dtype=np.float64).T.reshape(n_adc, n_samp, 3)
    ta = np.asarray(t_adc, dtype=np.float64).reshape(n_adc, n_samp)
    t = ta - ta[:, :1]
    if np.allclose(t, t[0], atol=1e-9):
        t = t[0].copy()
    if echoes > 1:
        if n_adc % echoes:
            raise TrajectoryError(f"{n_adc} ADC events are not a multiple of {echoes} echoes", path)
        ke = k.reshape(n_adc // echoes, echoes, n_samp, 3)
        if echo is None:
            # echoes share k if they differ by < 1e-3 cycles/FOV (gradient-raster rounding does less)
            fov_chk = np.broadcast_to(np.asarray(fov_m if fov_m is not None else defs.get("FOV", 1.0)), (3,))
            spread = np.abs(ke - ke[:, :1]).max(axis=(0, 1, 2))
            spread = float((spread * fov_chk).max())
            if spread > 1e-3:
                raise TrajectoryError(
                    f"the {echoes} echoes have different k (up to {spread:.3g} cycles/FOV apart, e.g. a bipolar readout): "
                    "import one echo at a time (--echo E)",
                    path,
                )
            echo = 0
        if not 0 <= echo < echoes:
            raise TrajectoryError(f"echo {echo} outside 0..{echoes - 1}", path)
        k = ke[:, echo]
        if t.ndim == 2:
            t = t.reshape(n_adc // echoes, echoes, n_samp)[:, echo]
    if fov_m is None:
        fov = defs.get("FOV")
        if fov is None:
            raise TrajectoryError("the sequence defines no FOV: give fov_m (--fov-mm)", path)
        fov_m = np.asarray(fov, dtype=float)
    gamma = float(gamma_hz_per_t or sys_gamma or GAMMA_BAR_1H_HZ_PER_T)
    params = {"generator": "pulseq", "source": os.path.basename(path), "sequence_name": str(defs.get("Name", ""))}
    if echoes > 1:
        params.update(echoes=int(echoes), echo=int(echo))
    return _finish(k, t, fov_m, matrix, dwell, gamma, params, path)


# -------------------------------------------------------------------------------------- BART
def read_cfl(path: str | os.PathLike) -> np.ndarray:
    """A BART ``.cfl``/``.hdr`` pair (either name, or the base name) as a complex64 array (Fortran order)."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix.lower() in (".cfl", ".hdr") else p
    hdr, cfl = base.with_suffix(".hdr"), base.with_suffix(".cfl")
    if not hdr.is_file() or not cfl.is_file():
        raise TrajectoryError("BART files need both .hdr and .cfl", base)
    try:
        lines = [ln for ln in hdr.read_text().splitlines() if not ln.startswith("#")]
        dims = [int(x) for x in lines[0].split()]
    except (ValueError, IndexError, OSError) as e:
        raise TrajectoryError(f"unreadable BART header ({e})", hdr) from e
    a = np.fromfile(cfl, dtype=np.complex64)
    if a.size != int(np.prod(dims)):
        raise TrajectoryError(f"BART data hold {a.size} values, the header's dims {dims} need {int(np.prod(dims))}", cfl)
    while len(dims) > 1 and dims[-1] == 1:  # BART pads to 16 dimensions
        dims = dims[:-1]
    return a.reshape(dims, order="F")


def read_bart(
    path: str | os.PathLike,
    fov_m,
    dwell_s: float,
    matrix=None,
    gamma_hz_per_t: float = GAMMA_BAR_1H_HZ_PER_T,
    units: str = "cycles/fov",
) -> Trajectory:
    """A BART trajectory (dims [3, samples, projections, 1, ...]), k in cycles/FOV (BART's units)."""
    a = read_cfl(path)
    if a.shape[0] != 3:
        raise TrajectoryError(f"a BART trajectory has 3 coordinates in its first dimension, got dims {list(a.shape)}", path)
    a = a.reshape(a.shape + (1,) * (3 - a.ndim))
    rest = a.shape[3:]
    if int(np.prod(rest)) != 1:
        raise TrajectoryError(f"BART trajectory dims {list(a.shape)}: only [3, samples, projections] are read", path)
    k = np.transpose(a.real.reshape(a.shape[:3], order="F"), (2, 1, 0))
    if np.abs(a.imag).max() > 0:
        raise TrajectoryError("BART trajectory has non-zero imaginary parts", path)
    k = k_to_per_m(k, units, fov_m, matrix)
    t = np.arange(k.shape[1]) * float(dwell_s)
    return _finish(k, t, fov_m, matrix, dwell_s, gamma_hz_per_t, {"generator": "bart", "source": os.path.basename(path)}, path)


# --------------------------------------------------------------------------- MRI-NUFFT / NSP
def read_nsp(
    path: str | os.PathLike,
    dwell_s: float,
    gamma_hz_per_t: float | None = None,
    raster_s: float = 10e-6,
    fov_m=None,
    matrix=None,
    n_samples: int | None = None,
) -> Trajectory:
    """An MRI-NUFFT/NeuroSpin ``.bin`` gradient file, read by ``mrinufft.io.read_trajectory`` (k in 1/m).

    ``dwell_s`` is the ADC dwell (the file stores gradients on the ``raster_s`` raster);
    ``n_samples`` the ADC samples per shot (default: gradient samples x raster / dwell; a
    file written from n k-points holds n - 1 gradients); the file's FOV, matrix and gamma
    are used unless given.
    """
    try:
        from mrinufft.io import read_trajectory as _read
    except ImportError as e:
        raise TrajectoryError(f"reading MRI-NUFFT .bin files needs mri-nufft (pip install mri-nufft): {e}", path) from e
    import warnings

    kw = {"dwell_time": dwell_s * 1e3, "raster_time": raster_s * 1e3, "normalize_factor": None, "num_adc_samples": n_samples}
    if gamma_hz_per_t:
        kw["gamma"] = gamma_hz_per_t / 1e3
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            k, info = _read(os.fspath(path), **kw)
    except Exception as e:
        raise TrajectoryError(f"not a readable MRI-NUFFT trajectory file ({type(e).__name__}: {e})", path) from e
    k = np.asarray(k, dtype=np.float64)
    if k.shape[-1] == 2:
        k = np.concatenate([k, np.zeros(k.shape[:-1] + (1,))], axis=-1)
    dim = int(info.get("dimension", 3))
    if fov_m is None:
        if "FOV" not in info:
            raise TrajectoryError("the file (version < 4.1) has no FOV: give fov_m (--fov-mm)", path)
        fov_m = list(np.asarray(info["FOV"], dtype=float)) + [1.0] * (3 - dim)
    if matrix is None and "img_size" in info:
        matrix = list(np.asarray(info["img_size"], dtype=int)) + [1] * (3 - dim)
    gamma = gamma_hz_per_t or float(info.get("gamma", GAMMA_BAR_1H_HZ_PER_T / 1e3)) * 1e3
    t = np.arange(k.shape[1]) * float(dwell_s)
    params = {"generator": "mri-nufft", "source": os.path.basename(os.fspath(path)), "nsp_version": float(info.get("version", 0))}
    return _finish(k, t, fov_m, matrix, dwell_s, gamma, params, path)


# ------------------------------------------------------------------------------ plain arrays
def read_array(
    path: str | os.PathLike,
    units: str,
    dwell_s: float,
    fov_m,
    matrix=None,
    n_samples: int | None = None,
    gamma_hz_per_t: float = GAMMA_BAR_1H_HZ_PER_T,
) -> Trajectory:
    """k from ``.npy`` ((n_proj, n_samp, 3) or (n_points, 3)) or text (n_points rows of kx ky kz) in ``units``."""
    p = Path(path)
    if units is None:
        raise TrajectoryError(f"a plain array has no units: give them (--units {'|'.join(UNITS)})", p)
    try:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
        else:
            a = np.loadtxt(p, delimiter="," if p.suffix.lower() == ".csv" else None, ndmin=2)
    except (OSError, ValueError) as e:
        raise TrajectoryError(f"unreadable array ({e})", p) from e
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        if a.shape[1] != 3:
            raise TrajectoryError(f"need 3 columns kx ky kz, got shape {a.shape}", p)
        if not n_samples:
            raise TrajectoryError("a list of points needs the samples per projection (--samples)", p)
        if a.shape[0] % n_samples:
            raise TrajectoryError(f"{a.shape[0]} points are not a multiple of {n_samples} samples per projection", p)
        a = a.reshape(-1, n_samples, 3)
    if a.ndim != 3 or a.shape[-1] != 3:
        raise TrajectoryError(f"need shape (n_projections, n_samples, 3), got {a.shape}", p)
    k = k_to_per_m(a, units, fov_m, matrix)
    t = np.arange(k.shape[1]) * float(dwell_s)
    params = {"generator": "array", "source": p.name, "source_units": units}
    return _finish(k, t, fov_m, matrix, dwell_s, gamma_hz_per_t, params, p)


# ------------------------------------------------------------------------------ corrections
def apply_gradient_delay(traj: Trajectory, delay_s: float | Sequence[float]) -> Trajectory:
    """Trajectory with each axis' k delayed by ``delay_s`` (one value or per axis kx, ky, kz; s).

    A delay d means the gradient (hence k) arrives d later: k_a(t) becomes k_a(t - d), taken
    by cubic-spline interpolation along each readout (extrapolated by the end polynomials for
    the fraction of a dwell beyond the first and last samples). Negative = early.
    """
    from scipy.interpolate import CubicSpline

    d = np.broadcast_to(np.asarray(delay_s, dtype=float), (3,))
    if not np.all(np.isfinite(d)):
        raise TrajectoryError(f"gradient delay must be finite, got {delay_s}")
    if not np.any(d):
        return traj
    if traj.n_samples < 4:
        raise TrajectoryError("a gradient delay needs at least 4 samples per readout")
    k = traj.k.copy()
    t = traj.t
    for a in range(3):
        if d[a] == 0:
            continue
        if t.ndim == 1:
            k[:, :, a] = CubicSpline(t, traj.k[:, :, a], axis=1)(t - d[a])
        else:
            for p in range(traj.n_projections):
                k[p, :, a] = CubicSpline(t[p], traj.k[p, :, a])(t[p] - d[a])
    params = dict(traj.params)
    params["gradient_delay_s"] = [float(x) for x in d]
    return dataclasses.replace(traj, k=k, dcf=None, params=params, waveforms=None)


def _drop_set(drop, n: int, what: str) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    if drop is None:
        return keep
    idx = np.asarray(list(drop), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputError(f"projections to drop must be in 0..{n - 1} ({what}), got {idx.min()}..{idx.max()}")
    keep[idx] = False
    return keep


def select_projections(traj: Trajectory, skip: int = 0, drop: Sequence[int] | None = None) -> Trajectory:
    """Trajectory without its first ``skip`` projections (steady state) and without those listed in ``drop``."""
    if skip < 0 or skip >= traj.n_projections:
        raise InputError(f"skip must be in 0..{traj.n_projections - 1}, got {skip}")
    keep = _drop_set(drop, traj.n_projections, "trajectory")
    keep[:skip] = False
    if not keep.any():
        raise InputError("no projections left after skip/drop")
    out = traj.subset(np.flatnonzero(keep))
    out.params = dict(out.params, skipped_projections=int(skip), dropped_projections=int((~keep[skip:]).sum()))
    return out


def drop_readouts(acq, skip: int = 0, drop: Sequence[int] | None = None):
    """Acquisition without readouts of projections < ``skip`` or listed in ``drop`` (trajectory projection indices).

    The trajectory stays whole: later stages take k by ``acq.projection_index``.
    """
    pidx = np.asarray(acq.projection_index)
    n = int(pidx.max()) + 1
    keep_proj = _drop_set(drop, max(n, 1), "raw data")
    if skip < 0:
        raise InputError(f"skip must be >= 0, got {skip}")
    keep_proj[:skip] = False
    keep = keep_proj[pidx]  # (n_echoes, n_readouts)
    counts = keep.sum(axis=1)
    if np.any(counts != counts[0]):
        raise InputError("skip/drop leaves the echoes with different numbers of readouts")
    if counts[0] == 0:
        raise InputError("no readouts left after skip/drop")
    data = np.stack([acq.data[e][:, keep[e]] for e in range(acq.n_echoes)])
    new_pidx = np.stack([pidx[e][keep[e]] for e in range(acq.n_echoes)])
    header = dict(acq.header, skipped_projections=int(skip), dropped_readouts=int((~keep).sum()))
    return dataclasses.replace(acq, data=data, projection_index=new_pidx, header=header)


# ------------------------------------------------------------------------------- front door
def import_trajectory(
    path: str | os.PathLike,
    fmt: str | None = None,
    units: str | None = None,
    fov_m=None,
    matrix=None,
    dwell_s: float | None = None,
    gamma_hz_per_t: float | None = None,
    n_samples: int | None = None,
    echoes: int = 1,
    echo: int | None = None,
    gradient_delay_s: float | Sequence[float] | None = None,
    skip: int = 0,
    drop: Sequence[int] | None = None,
) -> Trajectory:
    """Read a trajectory in any supported format (:data:`FORMATS`, by extension unless ``fmt``) and correct it.

    ``units`` applies to arrays and BART files (default cycles/FOV for BART); ``fov_m`` (m) and
    ``matrix`` override or supply what the file lacks; ``dwell_s`` (s) is required for formats
    that do not store it (BART, arrays, MRI-NUFFT). Then the gradient delay is applied and
    the first ``skip`` and the ``drop`` projections removed.
    """
    p = Path(path)
    if not p.exists() and not (p.with_suffix(".cfl").exists() and fmt in (None, "bart")):
        raise TrajectoryError("trajectory file not found", p)
    fmt = fmt or detect_format(p)
    if fmt not in FORMATS:
        raise TrajectoryError(f"unknown trajectory format {fmt!r}; choose one of {', '.join(FORMATS)}", p)

    def need_dwell():
        if dwell_s is None:
            raise TrajectoryError(f"{fmt} trajectories do not store the ADC dwell time: give it (--dwell-us)", p)
        return float(dwell_s)

    if fmt == "pulseq":
        traj = read_pulseq(p, fov_m=fov_m, matrix=matrix, gamma_hz_per_t=gamma_hz_per_t, echoes=echoes, echo=echo)
    elif fmt == "bart":
        if fov_m is None and (units or "cycles/fov") in ("cycles/fov", "grid", "normalized"):
            raise TrajectoryError("BART trajectories are in cycles/FOV: give the FOV (--fov-mm)", p)
        traj = read_bart(p, fov_m, need_dwell(), matrix, gamma_hz_per_t or GAMMA_BAR_1H_HZ_PER_T, units or "cycles/fov")
    elif fmt == "nsp":
        traj = read_nsp(p, need_dwell(), gamma_hz_per_t, fov_m=fov_m, matrix=matrix, n_samples=n_samples)
    elif fmt == "array":
        if fov_m is None:
            raise TrajectoryError("a plain array needs the FOV (--fov-mm)", p)
        traj = read_array(p, units, need_dwell(), fov_m, matrix, n_samples, gamma_hz_per_t or GAMMA_BAR_1H_HZ_PER_T)
    else:
        from recon.trajectory.io import read_trajectory

        traj = read_trajectory(p)
    if gradient_delay_s is not None:
        traj = apply_gradient_delay(traj, gradient_delay_s)
    if skip or drop is not None:
        traj = select_projections(traj, skip=skip, drop=drop)
    return traj


def parse_index_list(spec: str | None) -> list[int] | None:
    """``"3,7,10-12"`` or a file of such items (one per line or comma-separated) -> [3, 7, 10, 11, 12]."""
    if spec is None:
        return None
    text = Path(spec).read_text() if os.path.isfile(spec) else spec
    out: list[int] = []
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        try:
            if "-" in item[1:]:
                a, b = item.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(item))
        except ValueError as e:
            raise InputError(f"projection list: {item!r} is not an index or a range a-b") from e
    return out


def trajectory_for_acquisition(path: str | os.PathLike, acq, **kw) -> Trajectory:
    """:func:`import_trajectory` for ``narecon run --traj``: what the file lacks comes from the raw data.

    narecon's HDF5 files are read as they are; for the other formats the dwell time, FOV,
    matrix and gamma of ``acq`` fill in what the file does not store (a Pulseq file keeps its
    own FOV and dwell; its ADCs per repetition are taken as ``acq``'s echoes). Keyword
    arguments (units, gradient_delay_s, skip, drop, ...) pass through.
    """
    fmt = kw.pop("fmt", None) or detect_format(path)
    if fmt == "narecon":
        return import_trajectory(path, fmt=fmt, **kw)
    from recon.io.profile import gamma_for

    fill = {"gamma_hz_per_t": gamma_for(acq.nucleus)}
    if fmt == "pulseq":
        fill["echoes"] = acq.n_echoes
    else:
        fill.update(dwell_s=acq.dwell_s, fov_m=acq.fov_m, matrix=acq.matrix, n_samples=acq.n_samples)
    for key, val in fill.items():
        if kw.get(key) in (None, 1) and val is not None:
            kw[key] = val
    return import_trajectory(path, fmt=fmt, **kw)
