"""Dask clusters for ``narecon batch``: local (default), an existing scheduler, SLURM/PBS.

* ``local``: a :class:`distributed.LocalCluster` of worker *processes* with one task thread each
  and a memory limit per worker, started and stopped with the batch. CPU cores are split among
  the workers (each worker's NUFFT threads are pinned to its share of the cores). With
  ``device="gpu"`` and dask-cuda installed, a :class:`dask_cuda.LocalCUDACluster` runs one
  worker per visible GPU instead.
* ``tcp://HOST:PORT`` (or any other scheme Dask knows): the existing scheduler is used as is;
  its workers and their settings are the cluster owner's.
* ``slurm`` / ``pbs``: :mod:`dask_jobqueue` submits ``workers`` jobs; queue, account, walltime,
  cores and memory come from the Dask configuration (``~/.config/dask/jobqueue.yaml``, see
  docs/batch.md); ``gpus_per_worker`` K adds the GPU request (SLURM ``--gres=gpu:K``, PBS
  ``ngpus=K``) and, where dask-cuda is installed, runs ``dask cuda worker`` so that each GPU of
  a job is one worker.

Security: the local cluster speaks TLS with a per-run temporary certificate
(:meth:`distributed.security.Security.temporary`, held in memory only): a client without that
certificate (another local process) cannot connect and so cannot run code on the workers.
SLURM/PBS clusters use TLS too, with temporary certificates that dask-jobqueue writes to its
``shared_temp_directory`` (default: the current directory; it must be readable by the jobs and
by nobody else), or the certificate files of ``--tls-ca-file/--tls-cert/--tls-key``; those files
are also how narecon connects to an existing ``tls://`` scheduler. A ``tcp://`` scheduler is
unauthenticated (a warning says so). Dashboards are off unless ``dashboard`` is given.

Dask is imported lazily: ``import recon`` never needs it, and asking for a cluster without it
raises :class:`~recon.errors.BackendUnavailableError` saying what to install.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
from collections.abc import Iterator
from typing import Any

from recon.errors import BackendUnavailableError, ConfigError

log = logging.getLogger("recon.batch")

_HINT = "install it with `pip install 'narecon[dist]'`"
LOCAL = "local"
JOBQUEUE = ("slurm", "pbs")
#: the command each job scheduler needs on PATH
SUBMIT_COMMAND = {"slurm": "sbatch", "pbs": "qsub"}
#: a local worker below this memory limit cannot even import narecon (it would be restarted for ever)
MIN_WORKER_MEMORY = 512 * 2**20
#: seconds a batch waits for a first worker of a cluster it started before failing its scans
WORKER_START_TIMEOUT_S = 120.0


def parse_memory_limit(value: str | float | None, minimum: float | None = MIN_WORKER_MEMORY) -> str | float | None:
    """Check ``--memory-limit``: ``auto``/None pass through, a size (``8GB``, ``512MiB``) becomes bytes.

    Raises ConfigError for anything else or for a size below ``minimum`` bytes."""
    from recon.limits import gib, parse_size

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto" if value is not None else None
    n = parse_size(value, "--memory-limit")
    if minimum is not None and n < minimum:
        raise ConfigError(
            f"--memory-limit {value} is below the {gib(minimum)} a worker needs to start (it would be restarted for ever)"
        )
    return int(n)


def make_security(tls_ca_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None):
    """A :class:`distributed.security.Security` from certificate files (None when none is given).

    ``tls_cert`` (PEM; may hold the key too) and ``tls_ca_file`` are required together; the same
    certificate serves the client, scheduler and workers; encryption is required."""
    if not (tls_ca_file or tls_cert or tls_key):
        return None
    if not (tls_ca_file and tls_cert):
        raise ConfigError("TLS needs --tls-ca-file and --tls-cert (and --tls-key unless the certificate holds the key)")
    for opt, path in (("--tls-ca-file", tls_ca_file), ("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"{opt}: file not found", path)
    from distributed.security import Security

    return Security(
        tls_ca_file=tls_ca_file,
        tls_client_cert=tls_cert,
        tls_client_key=tls_key,
        tls_scheduler_cert=tls_cert,
        tls_scheduler_key=tls_key,
        tls_worker_cert=tls_cert,
        tls_worker_key=tls_key,
        require_encryption=True,
    )


def _temporary_security():
    from distributed.security import Security

    try:
        return Security.temporary()
    except ImportError as e:
        raise BackendUnavailableError(f"the batch's TLS certificates need the cryptography package ({e}); {_HINT}") from e


def require_distributed():
    """Return the ``distributed`` module or raise BackendUnavailableError."""
    try:
        import distributed
    except ImportError as e:
        raise BackendUnavailableError(f"narecon batch needs Dask distributed ({e}); {_HINT}") from e
    return distributed


def has_dask_cuda() -> bool:
    try:
        import dask_cuda  # noqa: F401
    except Exception:
        return False
    return True


def cpu_count() -> int:
    """CPU cores this process may use (:func:`recon.util.available_cpus`)."""
    from recon.util import available_cpus

    return available_cpus()


def default_local_workers() -> int:
    """Default number of local CPU workers: one per 2 cores (at least 1, at most 8)."""
    return max(1, min(8, cpu_count() // 2))


def thread_env(threads: int) -> dict[str, str]:
    """Environment that limits the OpenMP/BLAS threads of one local worker process.

    ``NARECON_PIN_CPUS`` asks the batch task to pin its process to its own share of the cores
    (worker i gets cores i*t .. i*t+t-1), which is what the NUFFT's thread count follows.
    """
    t = str(max(1, int(threads)))
    return {
        "OMP_NUM_THREADS": t,
        "OPENBLAS_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
        "NUMBA_NUM_THREADS": t,
        "NARECON_PIN_CPUS": t,
    }


@dataclasses.dataclass
class BatchCluster:
    """A connected client, the resources each scan task asks for, and a description."""

    client: Any
    resources: dict[str, float] | None
    description: str
    #: seconds without any worker after which the batch fails its remaining scans (None: wait)
    worker_timeout_s: float | None = None


def jobqueue_kwargs(
    kind: str, gpus_per_worker: int = 0, memory: str | None = None, dask_cuda: bool | None = None
) -> dict[str, Any]:
    """Keyword arguments narecon gives ``SLURMCluster``/``PBSCluster`` (the rest comes from the Dask config).

    One Dask worker process per job with one task thread; with K GPUs per job the GPU request is
    added and, where dask-cuda is installed (``dask_cuda``), the worker command is
    ``python -m dask_cuda.cli worker`` (one worker per GPU of the job). Without dask-cuda, K must be 1.
    """
    if kind not in JOBQUEUE:
        raise ConfigError(f"scheduler must be one of {JOBQUEUE}, got {kind!r}")
    k = int(gpus_per_worker or 0)
    if k < 0:
        raise ConfigError(f"--gpus-per-worker must be >= 0, got {k}")
    dask_cuda = has_dask_cuda() if dask_cuda is None else dask_cuda
    kw: dict[str, Any] = {"processes": 1}
    import dask

    cores = dask.config.get(f"jobqueue.{kind}.cores", None)
    if cores is None:
        kw["cores"] = max(1, k) * 4  # the Dask config should set it; 4 cores per GPU otherwise
    mem_cfg = dask.config.get(f"jobqueue.{kind}.memory", None)
    if memory:
        kw["memory"] = memory
    elif mem_cfg is None:
        kw["memory"] = f"{max(1, k) * 32}GB"
    # the worker runs one scan at a time (resource "scan" = 1; tasks ask for 1): its threads
    # go to finufft/NumPy, not to parallel scans
    kw["worker_extra_args"] = ["--resources", "scan=1"]
    if k:
        if kind == "slurm":
            kw["job_extra_directives"] = [f"--gres=gpu:{k}"]
        else:
            ncpus = kw.get("cores") or cores
            mem = kw.get("memory") or mem_cfg
            kw["resource_spec"] = f"select=1:ncpus={ncpus}:ngpus={k}:mem={str(mem).replace(' ', '')}"
        if dask_cuda:
            kw["worker_command"] = "dask_cuda.cli worker"
        elif k > 1:
            raise ConfigError(
                f"--gpus-per-worker {k} needs dask-cuda (one worker per GPU); install dask-cuda or use --gpus-per-worker 1"
            )
    return kw


def _dashboard_kwargs(dashboard: str | None) -> dict[str, Any]:
    """LocalCluster keywords: a dashboard only at an address asked for.

    Without one, Dask's HTTP server (which always starts) gets a random loopback port and, through
    :data:`NO_HTTP_ROUTES`, no pages."""
    if dashboard:
        return {"dashboard_address": dashboard}
    return {"dashboard_address": None, "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}


#: Dask configuration without any HTTP route (Dask's HTTP server still binds a port; it serves nothing)
NO_HTTP_ROUTES = {"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []}


def _start_local(cls, **kw):
    """Start a local cluster; a cluster whose workers cannot start is one BackendUnavailableError."""
    try:
        return cls(**kw)
    except (RuntimeError, OSError, TimeoutError) as e:
        raise BackendUnavailableError(
            f"the local Dask cluster could not start its workers ({e}); check --memory-limit and --workers"
        ) from e


def _connect(distributed, cluster):
    """A client of ``cluster`` (with the cluster's security); the cluster is closed if connecting fails."""
    try:
        return distributed.Client(cluster, security=getattr(cluster, "security", None))
    except BaseException:
        cluster.close()
        raise


def _register_warm(client, device: str) -> None:
    """Register the warm-up plugin (:mod:`recon.batch.warm`); a failure is logged, never fatal."""
    from recon.batch.warm import WarmWorker

    try:
        client.register_plugin(WarmWorker(device), name=WarmWorker.name)
    except Exception as e:  # e.g. an existing scheduler whose workers run another narecon version
        log.warning("could not warm the batch workers (%s); their first scan imports the stages", e)


@contextlib.contextmanager
def open_client(
    scheduler: str = LOCAL,
    workers: int | None = None,
    gpus_per_worker: int = 0,
    memory_limit: str | float | None = "auto",
    device: str = "cpu",
    allowed_failures: int = 3,
    threads_per_worker: int | None = None,
    tls_ca_file: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    dashboard: str | None = None,
    warm: bool = False,
) -> Iterator[BatchCluster]:
    """A connected Dask client for the batch (:class:`BatchCluster`); a cluster it started is closed after.

    scheduler : ``local``, a scheduler address (``tcp://HOST:PORT``), ``slurm`` or ``pbs``.
    workers : local worker processes (default :func:`default_local_workers`, or one per GPU), or
        jobs submitted to SLURM/PBS (default 1). Ignored for an existing scheduler.
    gpus_per_worker : GPUs per SLURM/PBS job (0: CPU jobs); locally 0 or 1.
    memory_limit : per local worker (Dask syntax, e.g. ``"8GB"``; ``"auto"``: RAM / workers); for
        SLURM/PBS the memory per job.
    allowed_failures : how often a task may be on a worker that died (killed, out of memory)
        before it is declared failed (set on clusters this command starts).
    threads_per_worker : CPU threads of each local worker's NUFFT/NumPy (default: cores / workers).
    tls_ca_file, tls_cert, tls_key : certificate files (PEM) for SLURM/PBS and ``tls://`` schedulers;
        the local cluster uses a temporary certificate of its own unless these are given.
    dashboard : address to bind the scheduler's dashboard to (e.g. ``127.0.0.1:8787``); none by default.
    warm : register :class:`recon.batch.warm.WarmWorker` on the workers (imports and first-use costs
        paid when a worker starts, not in its first scan). Off by default: it makes the scans' timings
        comparable but not the batch faster (benchmarks/README.md, "Batch throughput": the first
        scan's extra time is the protocol's plans, and the warm-up lengthens the start by 4-5 s).
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if scheduler in JOBQUEUE:
        mem_checked = parse_memory_limit(memory_limit, minimum=None)
    else:
        mem_checked = parse_memory_limit(memory_limit)
    distributed = require_distributed()
    import dask

    security = make_security(tls_ca_file, tls_cert, tls_key)
    timeout_s: float | None = None
    cfg = {"distributed.scheduler.allowed-failures": int(allowed_failures), "distributed.worker.daemon": False}
    if not dashboard:  # no dashboard, no JSON/info/metrics/proxy pages either
        cfg.update(NO_HTTP_ROUTES)
    cluster = None
    resources = None
    with dask.config.set(cfg):
        if scheduler == LOCAL:
            if gpus_per_worker and int(gpus_per_worker) > 1:
                raise ConfigError("a local cluster runs one worker per GPU: --gpus-per-worker must be 0 or 1")
            if device == "gpu" and has_dask_cuda():
                from dask_cuda import LocalCUDACluster

                cluster = _start_local(
                    LocalCUDACluster,
                    n_workers=workers,
                    threads_per_worker=1,
                    memory_limit=mem_checked,
                    **_dashboard_kwargs(dashboard),
                    security=security or _temporary_security(),
                    protocol="tls",
                )
                desc = f"local dask-cuda cluster, {len(cluster.workers)} worker(s), one per GPU"
            else:
                n = workers or (1 if device == "gpu" else default_local_workers())
                if device == "gpu":
                    log.warning(
                        "dask-cuda is not installed: %d local worker(s) share the visible GPU(s) "
                        "(pip install dask-cuda for one worker per GPU)",
                        n,
                    )
                threads = threads_per_worker or max(1, cpu_count() // n)
                cluster = _start_local(
                    distributed.LocalCluster,
                    n_workers=n,
                    threads_per_worker=1,
                    processes=True,
                    memory_limit=mem_checked,
                    **_dashboard_kwargs(dashboard),
                    env=thread_env(threads),
                    host="127.0.0.1",
                    security=security or _temporary_security(),
                    protocol="tls://",
                )
                desc = f"local Dask cluster, {n} worker process(es), {threads} thread(s) each, memory limit {memory_limit}"
            client = _connect(distributed, cluster)
            timeout_s = WORKER_START_TIMEOUT_S
        elif scheduler in JOBQUEUE:
            try:
                import dask_jobqueue
            except ImportError as e:
                raise BackendUnavailableError(f"--scheduler {scheduler} needs dask-jobqueue ({e}); {_HINT}") from e
            if shutil.which(SUBMIT_COMMAND[scheduler]) is None:
                raise BackendUnavailableError(
                    f"--scheduler {scheduler} needs the {SUBMIT_COMMAND[scheduler]} command, which is not on PATH "
                    f"(run narecon batch on a {scheduler.upper()} login node)"
                )
            cls = dask_jobqueue.SLURMCluster if scheduler == "slurm" else dask_jobqueue.PBSCluster
            mem = memory_limit if isinstance(memory_limit, str) and memory_limit != "auto" else None
            kw = jobqueue_kwargs(scheduler, gpus_per_worker, mem)
            kw["security"] = security if security is not None else True  # True: temporary certificates
            kw["scheduler_options"] = {"dashboard_address": dashboard} if dashboard else {"dashboard": False}
            cluster = cls(**kw)
            log.info("%s job script:\n%s", scheduler.upper(), cluster.job_script())
            cluster.scale(jobs=workers or 1)
            client = _connect(distributed, cluster)
            resources = {"scan": 1}
            desc = f"{scheduler.upper()} cluster, {workers or 1} job(s), {gpus_per_worker or 0} GPU(s) per job"
        else:
            if "://" not in scheduler and ":" not in scheduler:
                raise ConfigError(
                    f"--scheduler must be local, slurm, pbs or a scheduler address (tcp://HOST:PORT), got {scheduler!r}"
                )
            if workers is not None:
                log.warning("--workers is ignored with an existing scheduler (%s)", scheduler)
            if scheduler.startswith("tls://") and security is None:
                raise ConfigError(f"{scheduler}: a TLS scheduler needs --tls-ca-file and --tls-cert (and --tls-key)")
            if not scheduler.startswith("tls://"):
                log.warning(
                    "the scheduler %s is not authenticated: anyone who can reach it can run code on its workers "
                    "(use a tls:// scheduler with --tls-ca-file/--tls-cert/--tls-key)",
                    scheduler,
                )
            try:
                client = distributed.Client(scheduler, timeout="30s", **({"security": security} if security else {}))
            except (OSError, TypeError, AssertionError) as e:
                raise BackendUnavailableError(f"cannot connect to the Dask scheduler {scheduler}: {e}") from e
            desc = f"Dask scheduler {scheduler}"
    log.info("%s", desc)
    try:
        if warm:
            _register_warm(client, device)
        yield BatchCluster(client, resources, desc, timeout_s)
    finally:
        try:
            client.close()
        finally:
            if cluster is not None:
                cluster.close()
