"""The option schema of a reconstruction: one definition for the API, the CLI, TOML and batch.

Every option of :func:`recon.reconstruct` is a field of :class:`RunOptions` whose metadata
(:class:`Opt`) gives its type, unit, choices, bounds and help. From this one schema come

* the ``narecon run`` / ``narecon batch`` command-line options (:func:`add_arguments`),
* the TOML ``[run]`` table and the batch manifest's per-scan config (:func:`load_config`,
  :meth:`RunOptions.from_mapping`: a value of the wrong type is one :class:`ConfigError`
  naming the key and the file, never a traceback or a silent coercion),
* the README's option table (:func:`markdown_table`, checked by a test).

Choices that name methods come from the registries (``recon.b0`` corrections,
``recon.trajectory.DCF_METHODS``, the NUFFT devices, the iterative models), resolved when they
are needed so that building the CLI does not import the stages.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from recon.errors import ConfigError

# ---- defaults that other modules share (defined once)
DEFAULT_TUBES_MM: tuple[float, ...] = (30.0, 60.0, 90.0, 120.0)
"""Concentrations (mM) of the calibration tubes of the clinical protocol (DESIGN.md)."""
DEFAULT_REFERENCE_MM = 145.0
"""Internal reference concentration (mM): CSF."""
DEFAULT_EPS = 1e-4
"""Default requested relative accuracy of the NUFFT (:class:`recon.nufft.NUFFT`) and of a run."""
DEFAULT_ITER_LAMDA = 0.1
"""Weight of the quadratic regularisers (tikhonov, gradient) of the iterative reconstruction,
relative to the unit-curvature data term (dimensionless)."""
DEFAULT_TV_LAMDA = 0.02
"""Weight of total variation, relative to the image scale (the 99.5th percentile of the warm
start's magnitude, :func:`recon.iterative.tv_scale`; dimensionless). Fixed on development cases
(seed 1000): benchmarks/validation.md, session 11."""


def default_lamda(regulariser: str) -> float:
    """The default regularisation weight (dimensionless) of an iterative regulariser."""
    return {"none": 0.0, "tv": DEFAULT_TV_LAMDA}.get(regulariser, DEFAULT_ITER_LAMDA)


def _registry(spec: str) -> Callable[[], tuple[str, ...]]:
    """Lazy choices: ``"module:ATTR"`` (a dict or tuple), optionally ``+extra,extra`` / ``-drop``."""

    def resolve() -> tuple[str, ...]:
        base, _, mods = spec.partition("|")
        out: list[str] = []
        for part in base.split(";"):
            if ":" in part:
                mod, attr = part.split(":")
                out.extend(str(x) for x in getattr(importlib.import_module(mod), attr))
            elif part:
                out.append(part)
        for m in mods.split(",") if mods else []:
            if m.startswith("-") and m[1:] in out:
                out.remove(m[1:])
        return tuple(dict.fromkeys(out))

    resolve.spec = spec  # type: ignore[attr-defined]
    return resolve


class LazyChoices(Sequence[str]):
    """argparse ``choices`` resolved on first use (a membership test, an error message or ``--help``).

    Building the parser then imports no stage module (and no numpy); give the argument a ``metavar``,
    since argparse otherwise lists the choices when the argument is added.
    """

    def __init__(self, spec: str) -> None:
        self._resolve = _registry(spec)
        self._values: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._values is None:
            self._values = self._resolve()
        return self._values

    def __contains__(self, value: object) -> bool:
        return value in self._get()

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __getitem__(self, i):  # type: ignore[override]
        return self._get()[i]


@dataclasses.dataclass(frozen=True)
class Opt:
    """Metadata of one option: kind, unit, choices, bounds, help, and how the CLI spells it."""

    kind: str  # str | path | int | float | bool | floats | spheres
    help: str
    unit: str = ""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    low: float | None = None
    high: float | None = None
    open_choice: str = ""  # a choice may also be this (e.g. "FILE": a path)
    cli: str | None = None  # flag name; default --name-with-dashes
    cli_action: str | None = None  # store_true | store_false
    cli_dest_flag: str | None = None  # e.g. --no-qa for qa
    nullable: bool = False

    def resolved_choices(self) -> tuple[str, ...] | None:
        if self.choices is None:
            return None
        return self.choices() if callable(self.choices) else tuple(self.choices)


def _o(default: Any, **meta: Any) -> Any:
    m = Opt(**meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"opt": m})
    return dataclasses.field(default=default, metadata={"opt": m})


_B0 = _registry("auto;recon.b0:CORRECTIONS;iterative")
_DCF = _registry("auto;recon.trajectory:DCF_METHODS")
_DEVICES = _registry("recon.nufft.operator:DEVICES")
_DECAY = _registry("recon.iterative:DECAY_MODELS")
_REGS = _registry("recon.iterative:REGULARISERS")
_WINDOWS = _registry("recon.window:WINDOWS")


@dataclasses.dataclass
class RunOptions:
    """Every option of a reconstruction (see the field metadata for unit, choices and help)."""

    traj: str | None = _o(
        None, kind="path", nullable=True, help="trajectory file (HDF5, DESIGN.md format) instead of the profile's"
    )
    profile: str | None = _o(
        None, kind="path", nullable=True, help="sequence profile TOML mapping header fields to the trajectory design"
    )
    device: str = _o("cpu", kind="str", choices=_DEVICES, help="compute device of the NUFFT")
    b0: str = _o(
        "auto", kind="str", choices=_B0, help="off-resonance correction; auto = tb-cpr when there are two echoes at different TEs"
    )
    b0_segments: int | None = _o(
        None, kind="int", low=1, high=256, nullable=True, help="time bins / frequency segments (default: the documented rule)"
    )
    b0_refine: int | None = _o(
        None,
        kind="int",
        low=0,
        high=5,
        nullable=True,
        help="field-map refinement passes from the corrected echoes (default 1 with b0 iterative, else 0)",
    )
    fieldmap: str | None = _o(
        None, kind="path", nullable=True, help="external field map NIfTI in Hz instead of the dual-echo estimate"
    )
    receive_reference: str | None = _o(
        None,
        kind="path",
        nullable=True,
        help="reference scan (raw) of the same object with a homogeneous receive coil: the array's receive profile is divided out",
    )
    fieldmap_nucleus: str = _o(
        "23Na", kind="str", choices=("23Na", "1H"), help="nucleus the external map was measured at (1H maps are scaled by 0.2645)"
    )
    recon: str = _o(
        "gridding",
        kind="str",
        choices=("gridding", "iterative"),
        help="gridding, or model-based with T2* decay (implied by b0 iterative)",
    )
    iter_decay: str = _o("two-pool", kind="str", choices=_DECAY, help="decay model of the iterative reconstruction")
    iter_regulariser: str = _o("gradient", kind="str", choices=_REGS, help="regulariser of the iterative reconstruction")
    iter_lamda: float | None = _o(
        None,
        kind="float",
        low=0.0,
        high=1e6,
        nullable=True,
        help=f"regularisation weight (default: {DEFAULT_ITER_LAMDA:g} of the unit-curvature data term for gradient and "
        f"tikhonov, {DEFAULT_TV_LAMDA:g} of the image scale for tv)",
    )
    iter_window: str = _o(
        "none", kind="str", choices=_WINDOWS, help="target point response of the iterative image: radial k-space window"
    )
    iter_max: int = _o(30, kind="int", low=1, high=1000, help="iterations of the iterative reconstruction")
    calibration: str = _o(
        "auto",
        kind="str",
        choices=("auto", "internal", "none"),
        open_choice="FILE",
        help="tubes found automatically, an internal reference, none (images only), or a tubes CSV file",
    )
    tube_mM: tuple = _o(
        DEFAULT_TUBES_MM,
        kind="floats",
        unit="mM",
        low=0.0,
        high=10000.0,
        cli="--tube-mM",
        help="tube concentrations for automatic detection (matched by rank)",
    )
    tube_values: str = _o(
        "model",
        kind="str",
        choices=("model", "erosion"),
        help="tube values from a fit through the point response (recon.calibrate.model), or eroded ROI means",
    )
    tube_edge_mm: float = _o(
        0.0,
        kind="float",
        unit="mm",
        low=0.0,
        high=10.0,
        help="Gaussian blur (SD) of the tube walls in the tube model: 0 for real tubes; simulated data: truth.json edge_mm",
    )
    tube_t1_ms: float | None = _o(
        None,
        kind="float",
        unit="ms",
        low=5.0,
        high=5000.0,
        nullable=True,
        cli="--tube-t1-ms",
        help="measured T1 of the calibration tubes (default: the saline prior, 55 ms) for the T1 factors of "
        "--relaxation and --regions; a region's own: t1_ms in the label sidecar",
    )
    reference_spheres: tuple = _o(
        (), kind="spheres", unit="mm", cli="--reference", help="internal reference sphere x,y,z,r in RAS mm (repeatable)"
    )
    reference_mM: float = _o(
        DEFAULT_REFERENCE_MM,
        kind="float",
        unit="mM",
        low=0.0,
        high=10000.0,
        cli="--reference-mM",
        help="internal reference concentration",
    )
    ratio_spheres: tuple = _o(
        (), kind="spheres", unit="mm", cli="--ratio-ref", help="reference region x,y,z,r in RAS mm of ratio_csf.nii.gz (repeatable)"
    )
    relaxation: str = _o(
        "none",
        kind="str",
        choices=("none", "tissue", "echo-ratio"),
        help="T1/T2* correction vs the tube model: one tissue factor, or a per-voxel tissue/fluid mix from the echo ratio",
    )
    signal: str = _o(
        "auto", kind="str", choices=("auto", "real", "magnitude-nf", "magnitude"), help="signal used by the calibration"
    )
    regions: str | None = _o(
        None,
        kind="path",
        nullable=True,
        help="label NIfTI (any grid; names from <file>.json/.tsv or truth.json beside it): regional TSC through "
        "the system model into regions.tsv (recon.calibrate.regions)",
    )
    regions_relaxation: str = _o(
        "echo-ratio",
        kind="str",
        choices=("echo-ratio", "prior"),
        help="readout decay of tissue regions: the class prior with its short-T2* fraction refined from the regional "
        "echo ratio (with an echo pair), or the prior as it is",
    )
    matrix: int | None = _o(
        None, kind="int", low=8, high=512, nullable=True, help="reconstruction matrix N (N^3; default: the protocol's)"
    )
    dcf: str = _o(
        "auto", kind="str", choices=_DCF, help="density compensation: auto = the file's, else analytic for TPI/radial, else pipe"
    )
    eps: float = _o(DEFAULT_EPS, kind="float", low=1e-12, high=1e-1, help="NUFFT relative accuracy")
    echo_from: str = _o(
        "eco", kind="str", choices=("eco", "order"), help="echo index from the Eco counter or the ADC order in each TR"
    )
    nucleus: str | None = _o(None, kind="str", nullable=True, help="nucleus for ISMRMRD files that do not name it")
    nucleus_check: str = _o("23Na", kind="str", help="refuse data of another nucleus than this one; off = accept any")
    max_memory_gb: float | None = _o(
        None,
        kind="float",
        unit="GiB",
        low=0.01,
        high=1e5,
        nullable=True,
        help="memory limit of the reconstruction (default: the 'memory' limit of recon.limits, 80 % of RAM or NARECON_LIMITS)",
    )
    skip_projections: int = _o(
        0, kind="int", low=0, high=10**7, help="leave out the readouts of the first N projections (steady state)"
    )
    drop_projections: str | None = _o(
        None, kind="str", nullable=True, help="projections to leave out: '3,7,10-12' or a file of such indices"
    )
    dicom: bool = _o(
        False, kind="bool", cli_action="store_true", help="also write DICOM series of the echoes and the TSC (mM) for PACS"
    )
    ismrmrd_images: bool = _o(
        False, kind="bool", cli_action="store_true", help="also write images.h5 with ismrmrd.Image records (Gadgetron)"
    )
    force: bool = _o(False, kind="bool", cli_action="store_true", help="replace an existing output directory")
    qa: bool = _o(True, kind="bool", cli_action="store_false", cli_dest_flag="--no-qa", help="write qa.png")

    # ---- construction and checks
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str | os.PathLike | None = None) -> RunOptions:
        """Options from a mapping (TOML table, manifest row), every value checked against the schema."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        vals = dict(values)
        if "expect_nucleus" in vals:  # the former name of nucleus_check
            v = vals.pop("expect_nucleus")
            vals.setdefault("nucleus_check", "off" if v == "any" else v)
        unknown = sorted(set(vals) - set(known))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; known: {sorted(known)}", source)
        out = {name: coerce(name, v, known[name].metadata["opt"], source) for name, v in vals.items()}
        opts = cls(**out)
        opts.validate(source)
        return opts

    def replace(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` (checked like a mapping)."""
        return RunOptions.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str | os.PathLike | None = None) -> None:
        """Check every value against its field's schema and the cross-field rules (ConfigError)."""
        for f in dataclasses.fields(self):
            coerce(f.name, getattr(self, f.name), f.metadata["opt"], source)
        if self.calibration not in ("auto", "internal", "none") and not os.path.isfile(self.calibration):
            raise ConfigError("calibration must be auto, internal, none or an existing tubes CSV file", self.calibration)
        if self.calibration == "internal" and not self.reference_spheres:
            raise ConfigError("internal calibration needs reference spheres (--reference x,y,z,r in mm)", source)
        if self.calibration == "auto" and len(self.tube_mM) < 2:
            raise ConfigError(f"tube_mM: at least two tube concentrations are needed, got {list(self.tube_mM)}", source)
        if self.regions is not None and self.calibration in ("internal", "none"):
            raise ConfigError("regions need a tube calibration (calibration auto or a tubes file)", self.regions)
        if self.receive_reference is not None and self.calibration == "none":
            raise ConfigError("receive_reference corrects the calibrated map: it needs a calibration", self.receive_reference)
        for name in ("traj", "profile", "fieldmap", "regions", "receive_reference"):
            p = getattr(self, name)
            if p is not None and not os.path.isfile(p):
                raise ConfigError(f"{name}: file not found", p)

    @property
    def nucleus_expected(self) -> str | None:
        """The nucleus the data must have, or None when the check is off."""
        return None if self.nucleus_check.lower() in ("off", "any", "none") else self.nucleus_check

    def __repr__(self) -> str:
        changed = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) != f.default}
        return "RunOptions(" + ", ".join(f"{k}={v!r}" for k, v in changed.items()) + ")"


def coerce(name: str, value: Any, opt: Opt, source: str | os.PathLike | None = None) -> Any:
    """``value`` as the type of option ``name``, or a ConfigError naming it (no silent coercion)."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"option {name!r}: {why}, got {value!r}", source)

    def bounded(x: float) -> None:
        if not math.isfinite(x):
            raise bad("must be a finite number")
        if opt.low is not None and x < opt.low or opt.high is not None and x > opt.high:
            raise bad(f"must be between {opt.low:g} and {opt.high:g}{' ' + opt.unit if opt.unit else ''}")

    if value is None:
        if opt.nullable:
            return None
        raise bad("must be set")
    k = opt.kind
    if k == "bool":
        if not isinstance(value, bool):
            raise bad("must be true or false (a TOML boolean, not a string)")
        return value
    if k in ("str", "path"):
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            raise bad("must be a non-empty string")
        choices = opt.resolved_choices()
        if choices is not None and value not in choices and not (opt.open_choice and k == "str" and os.path.isfile(value)):
            extra = f" or a {opt.open_choice}" if opt.open_choice else ""
            raise bad(f"must be one of {list(choices)}{extra}")
        return value
    if k == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise bad("must be an integer")
        bounded(value)
        return int(value)
    if k == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("must be a number")
        bounded(float(value))
        return float(value)
    if k == "floats":
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise bad("must be a list of numbers")
        out = []
        for x in value:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise bad("must be a list of numbers")
            bounded(float(x))
            out.append(float(x))
        return tuple(out)
    if k == "spheres":
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise bad("must be a list of [x_mm, y_mm, z_mm, radius_mm]")
        out = []
        for s in value:
            if isinstance(s, (str, bytes)) or not isinstance(s, Iterable):
                raise bad("each sphere is [x_mm, y_mm, z_mm, radius_mm]")
            s = tuple(s)
            if len(s) != 4 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in s):
                raise bad("each sphere is [x_mm, y_mm, z_mm, radius_mm]")
            if not all(math.isfinite(x) for x in s) or s[3] <= 0:
                raise bad("sphere coordinates must be finite and the radius positive")
            out.append(tuple(float(x) for x in s))
        return tuple(out)
    raise AssertionError(k)  # pragma: no cover


def fields() -> list[tuple[str, Any, Opt]]:
    """(name, default, metadata) of every option, in schema order."""
    return [(f.name, f.default, f.metadata["opt"]) for f in dataclasses.fields(RunOptions)]


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checked ``[run]`` table of a TOML config (keys = RunOptions field names)."""
    from recon.config import read_toml

    p = Path(path)
    cfg = read_toml(p, "config file")
    table = cfg.get("run", cfg)
    if not isinstance(table, dict):
        raise ConfigError("[run] must be a table", p)
    RunOptions.from_mapping(table, p)  # every key and value checked, with the file named
    vals = dict(table)
    if "expect_nucleus" in vals:
        v = vals.pop("expect_nucleus")
        vals.setdefault("nucleus_check", "off" if v == "any" else v)
    known = {f.name: f.metadata["opt"] for f in dataclasses.fields(RunOptions)}
    return {k: coerce(k, v, known[k], p) for k, v in vals.items()}


# ---- the command line, derived from the schema
def flag(name: str, opt: Opt) -> str:
    """The command-line flag of option ``name``."""
    if opt.cli_dest_flag:
        return opt.cli_dest_flag
    return opt.cli or "--" + name.replace("_", "-")


def _floats(s: str) -> tuple[float, ...]:
    import argparse

    try:
        return tuple(float(x) for x in s.split(",") if x.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from e


def _sphere(s: str) -> tuple[float, ...]:
    import argparse

    v = _floats(s)
    if len(v) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,z,radius in mm, got {s!r}")
    return v


def _help(name: str, default: Any, opt: Opt, with_choices: bool) -> str:
    h = opt.help
    if with_choices:
        ch = opt.resolved_choices()
        if ch:
            h += f"; one of {', '.join(ch)}" + (f" or a {opt.open_choice}" if opt.open_choice else "")
    if opt.unit:
        h += f" [{opt.unit}]"
    if default not in (None, (), False) and opt.kind != "bool":
        d = ",".join(f"{x:g}" for x in default) if isinstance(default, tuple) else default
        h += f" (default {d})"
    return h.replace("%", "%%")


def add_arguments(parser: Any, exclude: Iterable[str] = ()) -> None:
    """Add one command-line option per schema field (defaults None: unset options keep the schema's)."""
    import sys

    with_choices = any(a in ("-h", "--help") for a in sys.argv[1:])  # choices are resolved only for --help
    skip = set(exclude)
    for name, default, opt in fields():
        if name in skip:
            continue
        kw: dict[str, Any] = {"dest": name, "default": None, "help": _help(name, default, opt, with_choices)}
        if opt.kind == "bool":
            kw.update(action="store_const", const=opt.cli_action != "store_false")
        elif opt.kind == "int":
            kw["type"] = int
        elif opt.kind == "float":
            kw["type"] = float
        elif opt.kind == "floats":
            kw["type"] = _floats
        elif opt.kind == "spheres":
            kw.update(type=_sphere, action="append")
        parser.add_argument(flag(name, opt), **kw)


def from_args(args: Any, base: Mapping[str, Any] | None = None, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The options set on the command line, over ``base`` (e.g. a config file's table)."""
    values = dict(base or {})
    skip = set(exclude)
    for name, _default, opt in fields():
        if name in skip:
            continue
        v = getattr(args, name, None)
        if v is not None:
            values[name] = tuple(tuple(s) for s in v) if opt.kind == "spheres" else v
    return values


def markdown_table() -> str:
    """The README's option table, generated from the schema."""
    rows = ["| option | default | unit | meaning |", "|---|---|---|---|"]
    for name, default, opt in fields():
        ch = opt.resolved_choices()
        f = flag(name, opt)
        if ch:
            f += " " + "\\|".join(ch) + (f"\\|{opt.open_choice}" if opt.open_choice else "")
        elif opt.kind not in ("bool",):
            f += " " + (
                "FILE"
                if opt.kind == "path"
                else "X,Y,Z,R"
                if opt.kind == "spheres"
                else "LIST"
                if opt.kind == "floats"
                else "N"
                if opt.kind == "int"
                else "V"
            )
        if isinstance(default, tuple):
            d = ",".join(f"{x:g}" for x in default) if default else "–"
        elif default is None:
            d = "–"
        elif isinstance(default, bool):
            d = "on" if default else "off"
        else:
            d = f"{default:g}" if isinstance(default, float) else str(default)
        rows.append(f"| `{f}` | {d} | {opt.unit or ''} | {opt.help} |")
    return "\n".join(rows)
