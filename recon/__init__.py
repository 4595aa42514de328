"""narecon: Siemens 23Na MRI raw data to calibrated tissue sodium concentration (TSC) maps.

Stages (one subpackage each, data flows down): ``io`` (twix/ISMRMRD readers -> Acquisition),
``trajectory`` (TPI and radial designs, density compensation, trajectory files), ``nufft``
(NUFFT operator with CPU and GPU backends), ``b0`` (dual-echo field map and off-resonance
correction), ``calibrate`` (tube fit, TSC in mM), ``analysis`` (ROIs, study statistics),
``sim`` (digital phantom and acquisition simulator), ``batch`` (Dask) and ``cli``.

Conventions (units, signs, grid) are those of DESIGN.md: k-space in cycles/m, times in s,
frequencies in Hz, lengths in m in the API, TSC in mM.
"""

from __future__ import annotations

__version__ = "0.1.0"

from recon.errors import NareconError  # noqa: E402

__all__ = ["NareconError", "__version__"]
