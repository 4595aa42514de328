"""narecon: Siemens 23Na MRI raw data to calibrated tissue sodium concentration (TSC) maps.

Stages (one subpackage each, data flows down): ``io`` (twix/ISMRMRD readers -> Acquisition),
``trajectory`` (TPI and radial designs, density compensation, trajectory files), ``nufft``
(NUFFT operator with CPU and GPU backends), ``b0`` (dual-echo field map and off-resonance
correction), ``calibrate`` (tube fit, TSC in mM), ``analysis`` (ROIs, study statistics),
``sim`` (digital phantom and acquisition simulator), ``batch`` (Dask) and ``cli``.

In memory: ``recon.reconstruct(path_or_acquisition, options) -> ReconResult`` (arrays, nothing
written); ``recon.write_run(result, out_dir)`` writes the files of ``narecon run`` atomically.

Conventions (units, signs, grid) are those of DESIGN.md: k-space in cycles/m, times in s,
frequencies in Hz, lengths in m in the API, TSC in mM.
"""

from __future__ import annotations

__version__ = "0.1.0"

from recon.errors import NareconError  # noqa: E402

__all__ = ["NareconError", "__version__", "reconstruct", "write_run", "RunOptions", "ReconResult", "Plans"]

_LAZY = {
    "reconstruct": "recon.pipeline",
    "ReconResult": "recon.pipeline",
    "RunOptions": "recon.options",
    "write_run": "recon.outputs",
    "Plans": "recon.plans",
}


def __getattr__(name: str):
    """``recon.reconstruct`` and friends, imported on first use (``import recon`` stays light)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recon' has no attribute {name!r}")
