"""Digital sodium phantom and acquisition simulator (ground truth for tests and benchmarks).

Public API: :class:`HeadPhantom` (analytic head with tubes, B0, receive sensitivity),
:func:`simulate` (time-segmented forward model on a fine grid -> :class:`SimResult` with an
:class:`~recon.io.acquisition.Acquisition` and a :class:`SimTruth`), :func:`write_simulation`
(raw.dat / raw.h5 plus truth NIfTIs and truth.json), and the relaxation helpers.
"""

from recon.sim.output import design_params, write_simulation
from recon.sim.phantom import (
    DEFAULT_COMPARTMENTS,
    Compartment,
    HeadPhantom,
    Tube,
    biexp_decay,
    default_tubes,
    grid_points,
    t1_saturation,
)
from recon.sim.simulate import SimResult, SimTruth, choose_bin_width, simulate

__all__ = [
    "HeadPhantom",
    "Compartment",
    "Tube",
    "DEFAULT_COMPARTMENTS",
    "default_tubes",
    "grid_points",
    "t1_saturation",
    "biexp_decay",
    "simulate",
    "SimResult",
    "SimTruth",
    "choose_bin_width",
    "write_simulation",
    "design_params",
]
