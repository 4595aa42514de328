"""Batch engine on a loopback local Dask cluster (2 workers) with a small injected task.

The injected ``fake_recon`` has reconstruct's signature and contract (atomic output dir,
NareconError for bad input) but its "image" is the SHA-256 of the raw bytes plus the options,
so the truth of every output is known independently of the engine. Raw files whose content
starts with ``FOREIGN`` fail like a foreign file; ``KILL`` makes the worker process die
(os._exit) in the middle of writing its outputs on the first attempt.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from recon.atomic import atomic_dir  # noqa: E402
from recon.batch.cluster import open_client  # noqa: E402
from recon.batch.engine import MARKER, SUMMARY, run_batch  # noqa: E402
from recon.batch.manifest import read_manifest  # noqa: E402
from recon.errors import RawDataError  # noqa: E402


def fake_recon(raw, out_dir, opts):
    """run()-like: result.json = sha256 of the raw bytes and the eps option."""
    out_dir = Path(out_dir)
    data = b"".join(Path(r).read_bytes() for r in raw)
    with open(Path(raw[0]).parent / "calls.log", "a") as f:
        f.write(f"{out_dir.name} {os.getpid()}\n")
    if data.startswith(b"FOREIGN"):
        raise RawDataError("not a Siemens twix file (no MrParcRaidFile header)", raw[0])
    if data.startswith(b"CRASH"):
        raise ZeroDivisionError("division by zero in a stage")
    with atomic_dir(out_dir, overwrite=opts.force) as tmp:
        (tmp / "echo1.nii.gz").write_bytes(b"partial image")
        if data.startswith(b"KILL"):
            flag = Path(raw[0]).with_suffix(".killed")
            if not flag.exists():
                flag.write_text(str(os.getpid()))
                os._exit(1)  # the worker dies mid-scan, its temporary dir half written
        (tmp / "result.json").write_text(json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "eps": opts.eps}))
    return {"out": str(out_dir), "total_s": 0.0}


def expected(raw_files, eps=1e-4):
    data = b"".join(Path(r).read_bytes() for r in raw_files)
    return {"sha256": hashlib.sha256(data).hexdigest(), "eps": eps}


@pytest.fixture(scope="module")
def client():
    with open_client("local", workers=2, threads_per_worker=1, memory_limit="1GB", warm=True) as bc:
        bc.client.wait_for_workers(2, timeout=60)
        yield bc.client


def make_study(tmp: Path, rows: dict[str, bytes], extra_cols: str = "") -> Path:
    for sid, content in rows.items():
        (tmp / f"{sid}.dat").write_bytes(content)
    lines = ["id,raw"] + [f"{sid},{sid}.dat" for sid in rows]
    m = tmp / "manifest.csv"
    m.write_text("\n".join(lines) + "\n")
    return m


def calls(tmp: Path) -> list[str]:
    p = tmp / "calls.log"
    return [ln.split()[0] for ln in p.read_text().splitlines()] if p.exists() else []


def summary_rows(out: Path) -> dict[str, dict]:
    with open(out / SUMMARY, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["id"]: r for r in rows}


def no_partial(out: Path) -> None:
    left = [p.name for p in out.rglob(".narecon-tmp-*")]
    assert left == [], f"partial outputs left: {left}"


def test_resume_skip_redo_and_failure_isolation(tmp_path, client):
    good = {f"P{i:02d}": f"scan {i} ".encode() * 50 for i in range(4)}
    m = make_study(tmp_path, {**good, "BAD": b"FOREIGN bytes", "BUG": b"CRASH"})
    out = tmp_path / "out"
    specs = read_manifest(m)
    rep = run_batch(specs, out, client, recon_fn=fake_recon, progress=False)

    assert [r["id"] for r in rep.rows] == [s.id for s in specs]  # manifest order
    st = {r["id"]: r["status"] for r in rep.rows}
    assert st == {**{k: "done" for k in good}, "BAD": "failed", "BUG": "failed"}
    for sid in good:
        got = json.loads((out / sid / "result.json").read_text())
        assert got == expected([tmp_path / f"{sid}.dat"])
        marker = json.loads((out / sid / MARKER).read_text())
        assert marker["fingerprint"]["inputs"][0]["sha256"] == hashlib.sha256(good[sid]).hexdigest()
    assert not (out / "BAD").exists() and not (out / "BUG").exists()
    rows = summary_rows(out)
    assert set(rows) == set(st)
    assert "not a Siemens twix file" in rows["BAD"]["error"] and "BAD.dat" in rows["BAD"]["error"]
    assert rows["BUG"]["error"].startswith("ZeroDivisionError")
    assert rows["P00"]["status"] == "done" and rows["P00"]["error"] == ""
    recorded = float(rows["P00"]["seconds"])  # the summary records a duration; its value is not checked
    assert recorded >= 0 and rows["P00"]["device"].startswith("cpu@")
    assert not rep.ok and len(rep.failed) == 2

    # rerun: complete scans skipped (never called again), failed ones retried
    n_calls = len(calls(tmp_path))
    rep2 = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    assert {r["id"]: r["status"] for r in rep2.rows} == st | {k: "skipped" for k in good}
    assert sorted(calls(tmp_path)[n_calls:]) == ["BAD", "BUG"]

    # change one input (same size, new content) and touch another without changing it
    (tmp_path / "P01.dat").write_bytes(good["P01"].replace(b"1", b"7"))
    p2 = tmp_path / "P02.dat"
    os.utime(p2, ns=(time.time_ns(), time.time_ns() + 10**9))
    n_calls = len(calls(tmp_path))
    rep3 = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    st3 = {r["id"]: r["status"] for r in rep3.rows}
    assert st3["P01"] == "done" and st3["P02"] == "skipped" and st3["P00"] == "skipped"
    assert "P01" in calls(tmp_path)[n_calls:] and "P02" not in calls(tmp_path)[n_calls:]
    assert json.loads((out / "P01" / "result.json").read_text()) == expected([tmp_path / "P01.dat"])
    no_partial(out)


def test_changed_options_redo_and_force(tmp_path, client):
    m = make_study(tmp_path, {"A": b"a" * 100, "B": b"b" * 100})
    out = tmp_path / "out"
    run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("[run]\neps = 1e-6\n")
    # a per-row config for B only: A is skipped, B redone with the new option
    m.write_text("id,raw,config\nA,A.dat,\nB,B.dat,cfg.toml\n")
    rep = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    assert {r["id"]: r["status"] for r in rep.rows} == {"A": "skipped", "B": "done"}
    assert json.loads((out / "B" / "result.json").read_text())["eps"] == 1e-6
    rep = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, force=True, progress=False)
    assert {r["id"]: r["status"] for r in rep.rows} == {"A": "done", "B": "done"}


def test_incomplete_output_is_redone_and_stale_tmp_cleaned(tmp_path, client):
    m = make_study(tmp_path, {"A": b"a" * 10})
    out = tmp_path / "out"
    (out / "A").mkdir(parents=True)
    (out / "A" / "echo1.nii.gz").write_bytes(b"left by a worker killed before its marker")
    (out / ".narecon-tmp-A-xyz").mkdir()
    (out / ".narecon-tmp-A-xyz" / "half").write_bytes(b"x")
    rep = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    assert rep.rows[0]["status"] == "done"
    assert json.loads((out / "A" / "result.json").read_text()) == expected([tmp_path / "A.dat"])
    assert not (out / "A" / "echo1.nii.gz").read_bytes().startswith(b"left")
    no_partial(out)


def test_worker_killed_mid_scan(tmp_path, client):
    rows = {f"S{i}": f"scan {i}".encode() * 20 for i in range(4)}
    rows["S1"] = b"KILL this worker once"
    m = make_study(tmp_path, rows)
    out = tmp_path / "out"
    rep = run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)
    assert rep.ok, rep.failed
    killed_pid = int((tmp_path / "S1.killed").read_text())
    runs = [ln.split() for ln in (tmp_path / "calls.log").read_text().splitlines() if ln.startswith("S1 ")]
    assert len(runs) == 2 and int(runs[0][1]) == killed_pid != int(runs[1][1])  # rerun in another process
    for sid in rows:
        assert json.loads((out / sid / "result.json").read_text()) == expected([tmp_path / f"{sid}.dat"])
        assert (out / sid / MARKER).is_file()
    no_partial(out)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted the dead worker


def test_second_batch_on_same_dir_refused(tmp_path, client):
    from recon.batch.engine import batch_lock
    from recon.errors import OutputError

    m = make_study(tmp_path, {"A": b"a"})
    out = tmp_path / "out"
    out.mkdir()
    with batch_lock(out), pytest.raises(OutputError, match="another narecon batch"):
        run_batch(read_manifest(m), out, client, recon_fn=fake_recon, progress=False)


def _worker_state(dask_worker=None):
    import sys

    return {
        "warm": getattr(dask_worker, "narecon_warm", None),
        "modules": [
            m for m in ("recon.pipeline", "recon.nufft.finufft_backend", "recon.calibrate.qa", "scipy.ndimage") if m in sys.modules
        ],
    }


def test_workers_are_warmed_before_their_first_scan(client):
    """open_client(warm=True) registers the warm-up plugin: every worker has imported the stages and timed it."""
    from recon.batch.warm import WarmWorker

    states = client.run(_worker_state)
    assert len(states) == 2
    for st in states.values():
        assert st["warm"] is not None and {"imports_s", "nufft_s", "matplotlib_s"} <= set(st["warm"])
        assert st["modules"] == ["recon.pipeline", "recon.nufft.finufft_backend", "recon.calibrate.qa", "scipy.ndimage"]
    assert WarmWorker.name in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
