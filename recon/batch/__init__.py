"""Batch reconstruction over a Dask cluster (``narecon batch``).

* :mod:`recon.batch.manifest`: the manifest CSV (one scan per row), validated up front.
* :mod:`recon.batch.engine`: one task per scan, completion markers, skip/redo, failure isolation,
  summary CSV.
* :mod:`recon.batch.cluster`: local cluster, existing scheduler, SLURM/PBS via dask-jobqueue,
  dask-cuda.
* :mod:`recon.batch.cache`: per-process reuse of trajectory, density weights and NUFFT plans.

Dask is imported only when a batch runs (extra ``dist``).
"""

from recon.batch.manifest import ScanSpec, load_global_config, read_manifest

__all__ = ["ScanSpec", "read_manifest", "load_global_config"]
