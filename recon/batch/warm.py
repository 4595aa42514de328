"""Warm a batch worker before its first scan: import every stage a scan runs, make one tiny plan of each kind.

A fresh worker process pays, in its first scan, the imports of the reconstruction (SciPy,
scikit-image, finufft, matplotlib, nibabel, h5py, pydicom and narecon's stages: 2-4 s on the
2-core development machine) and first-use costs (finufft/FFTW and OpenMP start-up, matplotlib's
font loading). :func:`warm_worker` does all of that once, when the worker starts
(:class:`WarmWorker`, a Dask worker plugin; ``recon.batch.cluster.open_client(warm=True)``), so
that the scans' timings are comparable. It does not make a batch faster (measured in
benchmarks/README.md, "Batch throughput"): a persistent worker pays the imports once either way,
the first scan's extra time is the protocol's plans, and the warm-up lengthens the cluster start.

Protocol-dependent plans (the trajectory, its density weights, the NUFFT plans of the protocol)
cannot be made before the first scan says which protocol it is; they are cached per worker
(:mod:`recon.batch.cache`) from the first scan on.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time

log = logging.getLogger("recon.batch")

WARM_MODULES = (
    "recon.pipeline",
    "recon.outputs",
    "recon.io.twix",
    "recon.io.profile",
    "recon.io.coils",
    "recon.io.geometry",
    "recon.trajectory.tpi",
    "recon.trajectory.dcf",
    "recon.trajectory.dcf_cache",
    "recon.trajectory.importers",
    "recon.trajectory.units",
    "recon.nufft.finufft_backend",
    "recon.b0.correction",
    "recon.b0.fieldmap",
    "recon.iterative",
    "recon.calibrate.model",
    "recon.calibrate.mask",
    "recon.calibrate.tubes",
    "recon.calibrate.qa",
    "recon.export.run_outputs",
    "recon.export.nifti",
    "recon.export.bids",
    "scipy.ndimage",
    "skimage.restoration",
    "skimage.filters",
    "nibabel",
    "h5py",
    "pydicom",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
)
"""Modules a default ``narecon run`` imports (measured with ``sys.modules`` after one run); those
that are not installed are skipped (optional ones are imported by the stages only when needed)."""


def warm_worker(device: str = "cpu") -> dict[str, float]:
    """Import :data:`WARM_MODULES`, run one tiny NUFFT both ways and draw one text; returns timings (s).

    Never raises: a module that cannot be imported is the scan's error to report, not the worker's.
    """
    out: dict[str, float] = {}
    t = time.perf_counter()
    for name in WARM_MODULES:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    out["imports_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.suppress(Exception):
        import numpy as np

        from recon.nufft import NUFFT

        rng = np.random.default_rng(0)
        k = rng.uniform(-20.0, 20.0, (64, 3))  # cycles/m, inside an 8^3 grid over 0.2 m
        op = NUFFT(k, (8, 8, 8), 0.2, device=device)
        op.forward(op.adjoint(np.ones(64, dtype=np.complex64)))
    out["nufft_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with contextlib.suppress(Exception):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(1, 1), dpi=20)
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, "narecon", fontsize=8)
        fig.text(0.5, 0.2, "R", fontsize=7, fontweight="bold")
        fig.canvas.draw()  # loads the font manager's cache and the fonts the QA figure uses
    out["matplotlib_s"] = time.perf_counter() - t
    log.debug("worker warmed: %s", {k: round(v, 2) for k, v in out.items()})
    return out


try:  # the plugin base class; without Dask there is no batch (recon.batch.cluster says what to install)
    from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin
except ImportError:  # pragma: no cover - Dask is an optional dependency
    _WorkerPlugin = object


class WarmWorker(_WorkerPlugin):
    """Dask worker plugin: :func:`warm_worker` when a worker starts (and on workers already running
    when it is registered); the timings are kept as ``worker.narecon_warm``."""

    name = "narecon-warm"

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def setup(self, worker) -> None:
        worker.narecon_warm = warm_worker(self.device)
