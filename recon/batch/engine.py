"""Batch engine: one Dask task per scan, resumable, failures isolated.

For every manifest row the driver decides:

* **skipped**: ``DIR/<id>/`` holds a completion marker (:data:`MARKER`, written last, after the
  outputs are in place) whose fingerprint equals the row's current one: the SHA-256 of every
  input file (raw files, trajectory, profile, tubes, field map), a hash of the run options
  (file-valued options count by content, not path) and the narecon version. To avoid re-reading
  large raw files, an input whose size and mtime equal the marker's record keeps the marker's
  SHA-256; any other input is hashed again (a touched but unchanged file is still skipped).
* otherwise the scan is submitted as one task; an existing ``DIR/<id>/`` (incomplete, or
  complete for other inputs/options) is replaced atomically when the new result is complete.

On a worker the task runs ``recon.pipeline.run`` (or an injected function with its
signature), with the worker's persistent plans (:mod:`recon.batch.cache`), then writes
the marker. Any error of a scan (a user error such as a truncated or foreign file, or an
unexpected exception) is returned as ``failed`` with its message; the other scans go on. A
worker process that dies mid-scan (killed, out of memory) is restarted by its nanny and the
scheduler reruns the task elsewhere, up to ``allowed_failures`` times. Outputs are written
through :func:`recon.atomic.atomic_dir`, so a killed scan leaves only a hidden
``.narecon-tmp-*`` folder, which the batch removes at its start and end (under a lock file
that keeps two batches out of the same DIR).

The driver shows a progress bar (tqdm, when stderr is a terminal) or one log line per scan
with the counts done/skipped/failed, and writes ``DIR/batch_summary.csv`` (id, status,
seconds, device, error) at the end.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from recon.batch.manifest import FILE_OPTIONS, ScanSpec
from recon.errors import NareconError, OutputError

log = logging.getLogger("recon.batch")

MARKER = ".narecon-complete.json"
SUMMARY = "batch_summary.csv"
LOCK = ".narecon-batch.lock"
TMP_PREFIX = ".narecon-tmp-"
SUMMARY_COLUMNS = ("id", "status", "seconds", "device", "error")

ReconFn = Callable[[list, Path, Any], Any]
"""``fn(raw_paths, out_dir, run_options) -> summary``: the signature of ``recon.pipeline.run``."""


# ----------------------------------------------------------------------------- fingerprints


from recon.util import sha256_file  # noqa: E402  (one definition; re-exported for callers)


def options_hash(options: dict[str, Any]) -> str:
    """SHA-256 of the run options as canonical JSON (file-valued options by name only, ``force`` left out)."""
    opts = {k: v for k, v in options.items() if k != "force"}
    for name in FILE_OPTIONS:
        v = opts.get(name)
        if v and not (name == "calibration" and v in ("auto", "internal")):
            opts[name] = "<file>"  # its content is in the inputs' sha256
    text = json.dumps(opts, sort_keys=True, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(spec: ScanSpec, previous: dict | None = None) -> dict[str, Any]:
    """Inputs (role, path, bytes, mtime_ns, sha256), options hash and narecon version of a scan.

    ``previous``: a marker's fingerprint; an input with the same role, size and mtime keeps its
    recorded sha256 instead of being read again.
    """
    from recon import __version__

    prev = {i["role"]: i for i in (previous or {}).get("inputs", [])}
    inputs = []
    for role, path in spec.input_files():
        st = os.stat(path)
        old = prev.get(role)
        if old and old.get("bytes") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns and old.get("sha256"):
            digest = old["sha256"]
        else:
            digest = sha256_file(path)
        inputs.append({"role": role, "path": path, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest})
    return {"inputs": inputs, "options_sha256": options_hash(spec.options), "narecon": __version__}


def same_result(a: dict | None, b: dict | None) -> bool:
    """True when two fingerprints describe the same result (input contents, options, version)."""
    if not a or not b:
        return False

    def key(f: dict) -> tuple:
        return ([(i["role"], i["sha256"]) for i in f.get("inputs", [])], f.get("options_sha256"), f.get("narecon"))

    return key(a) == key(b)


def read_marker(scan_dir: Path) -> dict | None:
    """The completion marker of ``scan_dir`` (None when absent or unreadable)."""
    try:
        return json.loads((Path(scan_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(scan_dir: Path, record: dict) -> None:
    """Write the completion marker atomically (the last file of a complete scan)."""
    from recon.atomic import atomic_file

    with atomic_file(Path(scan_dir) / MARKER) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))


# ----------------------------------------------------------------------------- worker side

_PINNED = False


def _pin_cpus() -> None:
    """Pin this worker process to its share of the cores (local clusters; see cluster.thread_env)."""
    global _PINNED
    if _PINNED:
        return
    _PINNED = True
    t = os.environ.get("NARECON_PIN_CPUS")
    if not t or not hasattr(os, "sched_setaffinity"):
        return
    try:
        from distributed import get_worker

        idx = int(get_worker().name)
    except Exception:
        return
    cpus = sorted(os.sched_getaffinity(0))
    n = max(1, int(t))
    share = [cpus[(idx * n + j) % len(cpus)] for j in range(n)]
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(share))


def describe_device(options: dict[str, Any]) -> str:
    """Where a scan ran, e.g. ``cpu@node12/worker-3`` or ``gpu0@node12/worker-0``."""
    host = socket.gethostname()
    try:
        from distributed import get_worker

        wname = f"/worker-{get_worker().name}"
    except Exception:
        wname = ""
    if options.get("device") == "gpu":
        vis = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        return f"gpu{vis}@{host}{wname}"
    return f"cpu@{host}{wname}"


def run_scan(payload: dict[str, Any], recon_fn: ReconFn | None = None) -> dict[str, Any]:
    """Reconstruct one scan (runs on a worker); returns its summary row.

    payload : ``id``, ``raw``, ``options``, ``scan_dir``, ``fingerprint``, ``plan_cache``.
    recon_fn : ``fn(raw_paths, out_dir, options) -> summary`` (default :func:`recon.pipeline.run` with the
        worker's persistent plans, :data:`recon.batch.cache.WORKER_PLANS`).
    Never raises for a scan's own errors: they come back as ``status: failed``.
    """
    _pin_cpus()
    t0 = time.perf_counter()
    sid = payload["id"]
    device = describe_device(payload["options"])
    scan_dir = Path(payload["scan_dir"])
    row = {"id": sid, "status": "failed", "seconds": 0.0, "device": device, "error": ""}
    try:
        from recon.options import RunOptions

        # the driver decided this scan is to be (re)done: replace whatever is there
        opts = RunOptions.from_mapping({**payload["options"], "force": scan_dir.exists()})
        if recon_fn is None:
            from recon.pipeline import run as run_pipeline
            from recon.plans import Plans

            known = known_digests(payload.get("fingerprint"))  # the driver hashed the raw files: not again
            if payload.get("plan_cache", True):
                from recon.batch.cache import WORKER_PLANS as plans
                from recon.batch.cache import remembered_digests

                with remembered_digests():  # the protocol's arrays are hashed once per worker, not per scan
                    result = run_pipeline(list(payload["raw"]), scan_dir, opts, plans=plans, known_sha256=known)
            else:
                result = run_pipeline(list(payload["raw"]), scan_dir, opts, plans=Plans(), known_sha256=known)
        else:
            result = recon_fn(list(payload["raw"]), scan_dir, opts)
        seconds = time.perf_counter() - t0
        write_marker(
            scan_dir,
            {
                "id": sid,
                "fingerprint": payload["fingerprint"],
                "seconds": round(seconds, 3),
                "device": device,
                "completed_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "summary": _brief(result),
            },
        )
        row.update(status="done", seconds=seconds)
    except NareconError as e:
        row.update(error=str(e), seconds=time.perf_counter() - t0)
    except Exception as e:  # a bug or a library error: recorded, the batch goes on
        log.error("scan %s failed:\n%s", sid, traceback.format_exc())
        row.update(error=f"{type(e).__name__}: {e}", seconds=time.perf_counter() - t0)
    return row


def known_digests(fp: dict | None) -> dict[str, tuple[int, int, str]]:
    """The fingerprint's input digests as :func:`recon.pipeline.hash_inputs` takes them: {abspath: (bytes, mtime_ns, sha256)}."""
    out = {}
    for i in (fp or {}).get("inputs", []):
        if i.get("sha256") and i.get("path") is not None:
            out[os.path.abspath(i["path"])] = (int(i["bytes"]), int(i["mtime_ns"]), str(i["sha256"]))
    return out


def _brief(result: Any) -> Any:
    if isinstance(result, dict):
        return {k: result[k] for k in ("out", "b0_method", "total_s") if k in result}
    return None


# ----------------------------------------------------------------------------- driver side


_TIMED_OUT: set = set()


def _completed(client: Any, futures: list, worker_timeout_s: float | None, poll_s: float = 2.0) -> Iterator[Any]:
    """Yield futures as they finish; when no worker has been up for ``worker_timeout_s`` the rest are
    yielded too, marked in ``_TIMED_OUT`` (the caller fails them with the reason)."""
    from distributed import as_completed, wait

    if worker_timeout_s is None:
        yield from as_completed(futures)
        return
    pending = set(futures)
    no_worker_since: float | None = None
    while pending:
        try:
            wait(list(pending), timeout=poll_s, return_when="FIRST_COMPLETED")
        except TimeoutError:
            pass
        for f in [f for f in pending if f.done()]:
            pending.discard(f)
            yield f
        if not pending:
            return
        try:
            n_workers = len(client.scheduler_info().get("workers", {}))
        except Exception:
            n_workers = 0
        now = time.monotonic()
        if n_workers:
            no_worker_since = None
        elif no_worker_since is None:
            no_worker_since = now
        elif now - no_worker_since > worker_timeout_s:
            for f in list(pending):
                _TIMED_OUT.add(f)
                f.cancel()
                yield f
            return


@dataclasses.dataclass
class BatchReport:
    """Rows (one per scan, manifest order) and counts of a finished batch."""

    rows: list[dict[str, Any]]
    wall_s: float
    summary_csv: Path

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failed


@contextlib.contextmanager
def batch_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``DIR/.narecon-batch.lock`` (one batch per DIR at a time)."""
    path = out_dir / LOCK
    try:
        f = open(path, "a+")
    except OSError as e:
        raise OutputError(f"cannot create the batch lock file: {e.strerror}", path) from e
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise OutputError("another narecon batch is writing into this directory", out_dir) from e
        yield
    finally:
        f.close()


def clean_stale(out_dir: Path) -> int:
    """Remove left-over ``.narecon-tmp-*`` files/folders of killed scans; returns how many."""
    n = 0
    for p in out_dir.glob(TMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            n += 1
    for p in out_dir.glob("*/" + TMP_PREFIX + "*"):  # a marker write cut short
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    if n:
        log.info("removed %d stale temporary output(s) of interrupted scans in %s", n, out_dir)
    return n


class _Progress:
    """tqdm bar on a terminal, else one log line per finished scan."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="scan", desc="narecon batch", file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, row: dict[str, Any]) -> None:
        self.counts[row["status"]] += 1
        n = sum(self.counts.values())
        c = self.counts
        if self.bar is not None:
            self.bar.set_postfix(done=c["done"], skipped=c["skipped"], failed=c["failed"], refresh=False)
            self.bar.update(1)
        if row["status"] == "failed":
            log.warning("[%d/%d] %s failed: %s", n, self.total, row["id"], row["error"])
        elif row["status"] == "done":
            log.info(
                "[%d/%d] %s done in %.1f s on %s (done %d, skipped %d, failed %d)",
                n,
                self.total,
                row["id"],
                row["seconds"],
                row["device"],
                c["done"],
                c["skipped"],
                c["failed"],
            )
        else:
            log.debug("[%d/%d] %s skipped (complete)", n, self.total, row["id"])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``batch_summary.csv``: id, status, seconds (this run, 3 decimals), device, error; atomically."""
    from recon.atomic import atomic_file

    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    **r,
                    "seconds": "" if r["seconds"] is None else f"{float(r['seconds']):.3f}",
                    "error": " ".join(str(r.get("error") or "").split()),
                }
            )


def check_batch_output(out_dir: str | os.PathLike, specs: Sequence[ScanSpec]) -> Path:
    """Refuse, before any cluster starts, a batch DIR that cannot work: its parent missing or not a folder,
    DIR a file, or a scan folder DIR/<id>/ that is or contains one of that scan's inputs (a redo would
    delete it). Returns DIR as a Path."""
    from recon.atomic import check_output
    from recon.batch.manifest import RESERVED_IDS

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError("the batch output is a file, not a folder", out)
    if not out.exists():
        check_output(out, kind="dir")  # the parent must exist and be writable
    problems = []
    for spec in specs:
        if spec.id.casefold() in RESERVED_IDS:
            problems.append(f"{spec.id}: a reserved name")
            continue
        if not out.exists():
            continue  # nothing can be inside a folder that does not exist yet
        try:
            check_output(out / spec.id, force=True, inputs=[p for _, p in spec.input_files()], kind="dir")
        except OutputError as e:
            problems.append(str(e))
    if problems:
        raise OutputError("refused before starting: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""), out)
    return out


def run_batch(
    specs: Sequence[ScanSpec],
    out_dir: str | os.PathLike,
    client: Any,
    *,
    recon_fn: ReconFn | None = None,
    force: bool = False,
    plan_cache: bool = True,
    resources: dict[str, float] | None = None,
    progress: bool = True,
    worker_timeout_s: float | None = None,
) -> BatchReport:
    """Run every scan of ``specs`` on the Dask ``client``; outputs in ``out_dir/<id>/``.

    recon_fn : ``reconstruct``-like function run per scan (default the full pipeline); must be
        picklable (a module-level function).
    force : redo every scan even when complete.
    plan_cache : reuse trajectory/density weights/NUFFT plans across scans of a worker.
    resources : Dask resources each task asks for (e.g. ``{"scan": 1}`` on jobqueue workers).
    worker_timeout_s : when the cluster has had no worker for this long (workers that cannot start,
        or die at once), the scans not finished fail with that reason instead of waiting for ever
        (None: wait, e.g. for SLURM jobs in a queue).
    Returns a :class:`BatchReport`; ``DIR/batch_summary.csv`` is written before it returns.
    """
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    t0 = time.perf_counter()
    out = check_batch_output(out_dir, specs)
    try:
        out.mkdir(exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the batch output directory: {e.strerror}", out) from e
    if not os.access(out, os.W_OK):
        raise OutputError("batch output directory is not writable", out)
    rows: dict[str, dict[str, Any]] = {}
    with batch_lock(out):
        clean_stale(out)
        bar = _Progress(len(specs), progress)
        futures = {}
        try:
            for spec in specs:
                scan_dir = out / spec.id
                marker = read_marker(scan_dir)
                prev = marker.get("fingerprint") if marker else None
                try:
                    fp = fingerprint(spec, prev)
                except OSError as e:
                    rows[spec.id] = {
                        "id": spec.id,
                        "status": "failed",
                        "seconds": 0.0,
                        "device": "",
                        "error": f"{e.filename}: cannot read input: {e.strerror}",
                    }
                    bar.update(rows[spec.id])
                    continue
                if not force and scan_dir.is_dir() and same_result(prev, fp):
                    rows[spec.id] = {
                        "id": spec.id,
                        "status": "skipped",
                        "seconds": None,
                        "device": marker.get("device", ""),
                        "error": "",
                    }
                    bar.update(rows[spec.id])
                    continue
                if scan_dir.exists():
                    why = (
                        ("--force" if same_result(prev, fp) else "inputs, options or version changed")
                        if prev
                        else "incomplete output"
                    )
                    log.info("%s: output exists, redoing it (%s)", spec.id, why)
                payload = {
                    "id": spec.id,
                    "raw": list(spec.raw),
                    "options": dict(spec.options),
                    "scan_dir": str(scan_dir),
                    "fingerprint": fp,
                    "plan_cache": plan_cache,
                }
                fut = client.submit(
                    run_scan, payload, recon_fn, key=f"narecon-scan-{spec.id}-{time.time_ns()}", pure=False, resources=resources
                )
                futures[fut] = spec.id
            n_skip = sum(r["status"] == "skipped" for r in rows.values())
            log.info(
                "%d scan(s) to reconstruct, %d complete already (skipped), %d failed before starting",
                len(futures),
                n_skip,
                len(rows) - n_skip,
            )
            for fut in _completed(client, list(futures), worker_timeout_s):
                sid = futures[fut]
                if fut in _TIMED_OUT:
                    _TIMED_OUT.discard(fut)
                    row = {
                        "id": sid,
                        "status": "failed",
                        "seconds": None,
                        "device": "",
                        "error": f"no Dask worker was running for {worker_timeout_s:g} s: the workers could not start "
                        "or keep dying (memory limit too low? see the worker log)",
                    }
                    rows[sid] = row
                    bar.update(row)
                    continue
                try:
                    row = fut.result()
                except KilledWorker as e:
                    row = {
                        "id": sid,
                        "status": "failed",
                        "seconds": None,
                        "device": "",
                        "error": f"the worker running this scan died repeatedly (killed, or over its memory limit): {e}",
                    }
                except FutureCancelledError as e:
                    row = {"id": sid, "status": "failed", "seconds": None, "device": "", "error": f"cancelled: {e}"}
                except Exception as e:  # e.g. the task could not be unpickled on the worker
                    row = {"id": sid, "status": "failed", "seconds": None, "device": "", "error": f"{type(e).__name__}: {e}"}
                rows[sid] = row
                bar.update(row)
        finally:
            bar.close()
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        clean_stale(out)
        ordered = [rows[s.id] for s in specs if s.id in rows]
        summary = out / SUMMARY
        write_summary(summary, ordered)
    report = BatchReport(ordered, time.perf_counter() - t0, summary)
    log.info(
        "batch finished in %.1f s: %d done, %d skipped, %d failed; summary %s",
        report.wall_s,
        report.count("done"),
        report.count("skipped"),
        report.count("failed"),
        summary,
    )
    return report
