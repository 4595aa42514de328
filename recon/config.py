"""TOML reading shared by every configuration file (run config, sequence profiles, variants).

One place turns a missing file, undecodable bytes or invalid TOML into a :class:`ConfigError`
that names the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from recon.errors import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


def parse_toml(text: str, source: str | os.PathLike) -> dict[str, Any]:
    """Parse TOML ``text``; ``source`` names it in the error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", source) from e


def read_toml(path: str | os.PathLike, what: str = "config file") -> dict[str, Any]:
    """Read a TOML file; ``what`` names the kind of file in the not-found error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found", p)
    try:
        text = p.read_text()
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"cannot read as text: {e}", p) from e
    return parse_toml(text, p)
