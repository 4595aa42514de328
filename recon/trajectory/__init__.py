"""Trajectory stage: TPI and density-adapted radial designs, density compensation, files.

Public API: :class:`Trajectory`, :func:`tpi`, :func:`density_adapted_radial`,
:func:`compute_dcf` (methods ``analytic``, ``pipe``), :func:`read_trajectory`,
:func:`write_trajectory`, and the gyromagnetic constants.
"""

from recon.trajectory.base import GAMMA_BAR_1H_HZ_PER_T, GAMMA_BAR_23NA_HZ_PER_T, Trajectory
from recon.trajectory.dcf import DCF_METHODS, compute_dcf, register_dcf
from recon.trajectory.generators import GENERATORS, design_trajectory
from recon.trajectory.io import read_trajectory, write_trajectory
from recon.trajectory.radial import density_adapted_radial
from recon.trajectory.tpi import tpi, tpi_cones, tpi_gradient_t_per_m, tpi_readout_s

__all__ = [
    "Trajectory",
    "GAMMA_BAR_23NA_HZ_PER_T",
    "GAMMA_BAR_1H_HZ_PER_T",
    "tpi",
    "tpi_cones",
    "tpi_readout_s",
    "tpi_gradient_t_per_m",
    "density_adapted_radial",
    "design_trajectory",
    "GENERATORS",
    "compute_dcf",
    "register_dcf",
    "DCF_METHODS",
    "read_trajectory",
    "write_trajectory",
]
