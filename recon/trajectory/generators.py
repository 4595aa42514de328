"""The registry of trajectory designs: one place that turns a generator name and SI parameters into a trajectory.

Every caller that designs a trajectory from parameters (sequence profiles reading a header,
``narecon traj``, ``narecon simulate``, ``narecon bench-traj``) maps its own input (header
fields, mm on the command line, TOML keys) to the SI keyword arguments of the designs and calls
:func:`design_trajectory`; the dispatch and the per-design arguments live only here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recon.errors import InputError

GENERATORS: dict[str, Callable[..., Any]] = {}
"""Design functions by generator name (``tpi``, ``radial``)."""

_ONLY = {"radial": ("n_projections",)}  # keywords only some designs take


def _register() -> None:
    from recon.trajectory.radial import density_adapted_radial
    from recon.trajectory.tpi import tpi

    GENERATORS.setdefault("tpi", tpi)
    GENERATORS.setdefault("radial", density_adapted_radial)


def design_trajectory(generator: str, *, n_projections: int | None = None, **params: Any):
    """The trajectory of design ``generator`` with SI ``params`` (fov_m, res_m, p, gmax_t_per_m, readout_s,
    smax_t_per_m_per_s, dwell_s, grad_raster_s, undersampling, gamma_hz_per_t, ...).

    ``n_projections`` is used by designs that take it (radial) and ignored by those that derive it (TPI).
    """
    _register()
    if generator not in GENERATORS:
        raise InputError(f"unknown trajectory design {generator!r}; choose one of {sorted(GENERATORS)}")
    if "n_projections" in _ONLY.get(generator, ()):
        params["n_projections"] = n_projections
    return GENERATORS[generator](**params)
