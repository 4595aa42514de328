"""One exception family for everything narecon reports to users.

Every error a user can cause (bad file, bad option, mismatched trajectory, missing GPU
library) is a :class:`NareconError`. The CLI prints it as one line without a traceback and
exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class NareconError(Exception):
    """Base class of all narecon user-facing errors.

    Parameters
    ----------
    message : what is wrong, in words a user understands (with units where relevant).
    path : the file or directory concerned, if any; it is named in the message.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        self.path = None if path is None else os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path else message)


class InputError(NareconError):
    """Invalid input data or arguments (shapes, NaNs, out-of-range values)."""


class ConfigError(InputError):
    """Invalid configuration: TOML config, sequence profile, CLI option combination."""


class RawDataError(InputError):
    """A raw data file that is empty, truncated beyond use, foreign, corrupt or of the wrong nucleus."""


class TrajectoryError(InputError):
    """A trajectory that is invalid or does not match the data (samples, projections, units)."""


class BackendUnavailableError(NareconError):
    """A requested compute backend (GPU, CuPy, cuFINUFFT) is not installed or has no device."""


class CalibrationError(NareconError):
    """Calibration failed: too few tubes found, degenerate fit, missing reference region."""


class OutputError(NareconError):
    """An output location that exists (without --force) or cannot be written."""


__all__ = [
    "NareconError",
    "InputError",
    "ConfigError",
    "RawDataError",
    "TrajectoryError",
    "BackendUnavailableError",
    "CalibrationError",
    "OutputError",
]
