"""Batch manifest: one scan per CSV row, validated up front.

Columns (header row required, names case-insensitive, order free):

* ``id`` (required): the scan's name; its outputs go to ``DIR/<id>/``. Letters, digits, ``.``,
  ``_``, ``-``; must start with a letter or digit; unique (case-insensitively).
* ``raw`` (required): raw file, or two files (one echo each) separated by ``;``.
* ``raw2``: the second file, as an alternative to ``a.dat;b.dat`` in ``raw``.
* ``traj``: trajectory file (HDF5) for this row (``--traj`` of ``narecon run``).
* ``profile``: sequence profile TOML for this row.
* ``tubes``: tubes CSV for the calibration of this row (``--calibration FILE``).
* ``config``: TOML with a ``[run]`` table; it overrides the global ``--config`` for this row.

Empty cells mean "not set"; relative paths are relative to the manifest's folder; lines whose
first cell starts with ``#`` and blank lines are ignored. Option precedence, lowest first: the
:class:`recon.options.RunOptions` defaults, the global config, the row's config, the row's
``traj``/``profile``/``tubes`` cells.

Every problem (unknown column, missing file, duplicate id, invalid config) is collected and
reported at once in one :class:`~recon.errors.ConfigError` that names the manifest and the
row (line number and id).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from pathlib import Path
from typing import Any

from recon.errors import ConfigError, NareconError

COLUMNS = ("id", "raw", "raw2", "traj", "profile", "tubes", "config")
REQUIRED = ("id", "raw")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: names the batch itself writes into DIR (compared case-insensitively; hidden names are refused by _ID_RE)
RESERVED_IDS = ("batch_summary.csv", "batch_summary.csv.tmp", "dask-worker-space", "dask-scratch-space")
#: RunOptions fields whose value is a file: their content is hashed, not their path.
FILE_OPTIONS = ("traj", "profile", "fieldmap", "calibration")


@dataclasses.dataclass(frozen=True)
class ScanSpec:
    """One manifest row, resolved.

    id : output folder name under the batch DIR.
    raw : absolute paths of the raw file(s) (1 or 2).
    options : keyword arguments of :class:`recon.options.RunOptions` (``force`` excluded;
        file-valued options as absolute paths).
    line : line number in the manifest (1 = header), for messages.
    """

    id: str
    raw: tuple[str, ...]
    options: dict[str, Any]
    line: int = 0

    def input_files(self) -> list[tuple[str, str]]:
        """(role, absolute path) of every file the result depends on: raw files, then file options."""
        out = [(f"raw{i + 1}", p) for i, p in enumerate(self.raw)]
        for name in FILE_OPTIONS:
            v = self.options.get(name)
            if name == "calibration" and v in (None, "auto", "internal", "none"):
                continue
            if v:
                out.append((name, str(v)))
        return out

    def run_options(self, force: bool = False):
        """The :class:`recon.options.RunOptions` of this scan."""
        from recon.options import RunOptions

        return RunOptions.from_mapping({**self.options, "force": force})


def _normalise(values: dict[str, Any]) -> dict[str, Any]:
    """TOML lists -> tuples as ``narecon run`` does (RunOptions stores tuples)."""
    out = dict(values)
    if "tube_mM" in out:
        out["tube_mM"] = tuple(float(x) for x in out["tube_mM"])
    for key in ("reference_spheres", "ratio_spheres"):
        if key in out:
            out[key] = tuple(tuple(float(v) for v in s) for s in out[key])
    return out


def _resolve_config_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """File-valued options in a config are relative to the config file's folder."""
    out = dict(values)
    for name in FILE_OPTIONS:
        v = out.get(name)
        if isinstance(v, str) and v and not (name == "calibration" and v in ("auto", "internal", "none")):
            out[name] = str((base / v).resolve()) if not os.path.isabs(v) else v
    return out


def load_global_config(path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``[run]`` table of the global ``--config`` (file paths made absolute), or {}."""
    if not path:
        return {}
    from recon.options import load_config

    p = Path(path)
    vals = load_config(p)
    vals.pop("force", None)
    return _normalise(_resolve_config_paths(vals, p.resolve().parent))


def read_manifest(path: str | os.PathLike, base_options: dict[str, Any] | None = None) -> list[ScanSpec]:
    """Read and validate a manifest CSV; returns one :class:`ScanSpec` per row, in file order.

    ``base_options``: global options (e.g. :func:`load_global_config`) under every row.
    Raises :class:`ConfigError` naming the manifest and every bad row.
    """
    from recon.options import load_config

    mpath = Path(path)
    if not mpath.is_file():
        raise ConfigError("manifest file not found", mpath)
    try:
        text = mpath.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the manifest as UTF-8 text: {e}", mpath) from e
    base_dir = mpath.resolve().parent
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ConfigError("manifest is empty (need a header row: id,raw[,raw2,traj,profile,tubes,config])", mpath)
    rows = list(csv.reader(io.StringIO("\n".join(ln for _, ln in lines))))
    header = [h.strip().lower() for h in rows[0]]
    hdr_line = lines[0][0]
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise ConfigError(f"line {hdr_line}: unknown column(s) {unknown}; known: {list(COLUMNS)}", mpath)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"line {hdr_line}: missing required column(s) {missing}", mpath)
    dup_cols = sorted({h for h in header if header.count(h) > 1})
    if dup_cols:
        raise ConfigError(f"line {hdr_line}: repeated column(s) {dup_cols}", mpath)
    if len(rows) < 2:
        raise ConfigError("manifest lists no scans (only a header row)", mpath)

    base = dict(base_options or {})
    errors: list[str] = []
    specs: list[ScanSpec] = []
    seen: dict[str, int] = {}

    def file_cell(value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else (base_dir / p)

    for (line_no, _), cells in zip(lines[1:], rows[1:]):
        if len(cells) > len(header):
            errors.append(f"line {line_no}: {len(cells)} cells but {len(header)} columns")
            continue
        row = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}
        sid = row.get("id", "")
        where = f"line {line_no} (id {sid!r})" if sid else f"line {line_no}"
        errs: list[str] = []
        if not sid:
            errs.append("empty id")
        elif not _ID_RE.match(sid):
            errs.append("id must be letters, digits, '.', '_' or '-' and start with a letter or digit (it names the output folder)")
        elif sid.casefold() in RESERVED_IDS:
            errs.append(f"id {sid!r} is a name the batch writes itself ({', '.join(RESERVED_IDS)}); choose another")
        elif sid.casefold() in seen:
            errs.append(f"duplicate id (first on line {seen[sid.casefold()]})")
        else:
            seen[sid.casefold()] = line_no
        raws = [r.strip() for r in row.get("raw", "").split(";") if r.strip()]
        if row.get("raw2"):
            raws.append(row["raw2"])
        if not raws:
            errs.append("no raw file")
        elif len(raws) > 2:
            errs.append(f"{len(raws)} raw files; give one file, or two files with one echo each")
        raw_paths = []
        for r in raws:
            p = file_cell(r)
            if not p.is_file():
                errs.append(f"raw file not found: {p}")
            raw_paths.append(str(p.resolve()))
        values = dict(base)
        if row.get("config"):
            cp = file_cell(row["config"])
            try:
                cfg = load_config(cp)
                cfg.pop("force", None)
                values.update(_normalise(_resolve_config_paths(cfg, cp.resolve().parent)))
            except NareconError as e:
                errs.append(f"config: {e}")
        for col, opt in (("traj", "traj"), ("profile", "profile"), ("tubes", "calibration")):
            if row.get(col):
                p = file_cell(row[col])
                if not p.is_file():
                    errs.append(f"{col} file not found: {p}")
                values[opt] = str(p.resolve())
        for opt in ("traj", "profile", "fieldmap"):
            v = values.get(opt)
            if v and not os.path.isfile(v):
                msg = f"{opt} file not found: {v}"
                if msg not in " ".join(errs):
                    errs.append(msg)
        if not errs:
            try:
                from recon.options import RunOptions

                RunOptions.from_mapping(values)
            except NareconError as e:
                errs.append(str(e))
            except TypeError as e:  # an option of the wrong kind in a config
                errs.append(f"invalid options: {e}")
        if errs:
            errors.append(f"{where}: " + "; ".join(errs))
            continue
        specs.append(ScanSpec(id=sid, raw=tuple(raw_paths), options=values, line=line_no))
    if errors:
        shown = errors[:25] + ([f"... and {len(errors) - 25} more"] if len(errors) > 25 else [])
        raise ConfigError(f"{len(errors)} invalid row(s):\n  " + "\n  ".join(shown), mpath)
    return specs
