"""Batch safety: reserved ids, inputs inside scan folders, memory limits that cannot work, missing job schedulers,
workers that never start, and a local cluster that refuses clients without the run's TLS certificate."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from recon.batch import cluster  # noqa: E402
from recon.batch.engine import SUMMARY, check_batch_output, run_batch  # noqa: E402
from recon.batch.manifest import RESERVED_IDS, read_manifest  # noqa: E402
from recon.cli import main  # noqa: E402
from recon.errors import BackendUnavailableError, ConfigError, OutputError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(600)  # a cluster that hangs fails its test instead of the whole suite


def _manifest(tmp_path: Path, rows: str) -> Path:
    (tmp_path / "a.dat").write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text("id,raw\n" + rows)
    return m


def test_summary_name_is_reserved():
    assert SUMMARY.casefold() in RESERVED_IDS


@pytest.mark.parametrize("sid", ["batch_summary.csv", "BATCH_SUMMARY.CSV", "dask-worker-space"])
def test_reserved_manifest_id_refused(tmp_path, sid):
    with pytest.raises(ConfigError, match="name the batch writes itself"):
        read_manifest(_manifest(tmp_path, f"{sid},a.dat\n"))


def test_scan_folder_containing_its_input_refused(tmp_path):
    out = tmp_path / "out"
    (out / "A").mkdir(parents=True)
    (out / "A" / "raw.dat").write_bytes(b"raw")
    m = tmp_path / "m.csv"
    m.write_text("id,raw\nA,out/A/raw.dat\n")
    specs = read_manifest(m)
    with pytest.raises(OutputError, match="contains the input"):
        check_batch_output(out, specs)
    with pytest.raises(OutputError, match="contains the input"):
        run_batch(specs, out, client=None)  # refused before the client is used
    assert (out / "A" / "raw.dat").read_bytes() == b"raw"


def test_batch_out_parent_missing_or_a_file(tmp_path):
    specs = read_manifest(_manifest(tmp_path, "A,a.dat\n"))
    with pytest.raises(OutputError, match="parent folder does not exist"):
        check_batch_output(tmp_path / "no" / "out", specs)
    with pytest.raises(OutputError, match="is a file"):
        check_batch_output(tmp_path / "a.dat", specs)


@pytest.mark.parametrize("value,msg", [("abc", "must be a size"), ("1MB", "below"), ("-5GB", "size"), ("0", "positive")])
def test_bad_memory_limit_is_one_line_before_any_cluster(tmp_path, capsys, monkeypatch, value, msg):
    def no_cluster():
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(cluster, "require_distributed", no_cluster)
    m = _manifest(tmp_path, "A,a.dat\n")
    rc = main(["batch", str(m), "--out", str(tmp_path / "o"), f"--memory-limit={value}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and msg in err[0] and "--memory-limit" in err[0], err


def test_memory_limit_parsing():
    assert cluster.parse_memory_limit("auto") == "auto"
    assert cluster.parse_memory_limit(None) is None
    assert cluster.parse_memory_limit("2GB") == 2_000_000_000
    assert cluster.parse_memory_limit("1GiB") == 2**30


@pytest.mark.parametrize("kind,command", [("slurm", "sbatch"), ("pbs", "qsub")])
def test_missing_job_scheduler_command_is_one_line(tmp_path, kind, command):
    pytest.importorskip("dask_jobqueue")
    m = _manifest(tmp_path, "A,a.dat\n")
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    p = subprocess.run(
        [sys.executable, "-m", "recon", "batch", str(m), "--out", str(tmp_path / "o"), "--scheduler", kind],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and command in lines[0] and "not on PATH" in lines[0], p.stderr
    assert not (tmp_path / "o").exists()


def test_no_worker_fails_the_scans_with_a_reason(tmp_path):
    """A cluster whose workers never come up: the scans fail with the reason instead of waiting for ever."""
    import distributed

    specs = read_manifest(_manifest(tmp_path, "A,a.dat\nB,a.dat\n"))
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc, distributed.Client(lc) as c:
        report = run_batch(specs, tmp_path / "out", c, worker_timeout_s=2.0, progress=False)
    assert [r["status"] for r in report.rows] == ["failed", "failed"]
    assert all("no Dask worker was running" in r["error"] for r in report.rows)
    assert "no Dask worker" in report.summary_csv.read_text()


# ----------------------------------------------------------------------------- security


def test_tls_options_validated(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    with pytest.raises(ConfigError, match="--tls-ca-file and --tls-cert"):
        cluster.make_security(tls_cert=str(cert))
    with pytest.raises(ConfigError, match="file not found"):
        cluster.make_security(tls_ca_file=str(tmp_path / "missing.pem"), tls_cert=str(cert))
    assert cluster.make_security() is None
    with pytest.raises(ConfigError, match="TLS scheduler needs"):
        with cluster.open_client("tls://127.0.0.1:1"):
            pass


def _raw_tls_probe(address: str) -> str:
    """Connect with TLS but without a client certificate, send a Dask-like frame; 'accepted' if bytes come back."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            s.sendall(b"\x00" * 64)
            data = s.recv(16)
            return "accepted" if data else "closed"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"refused: {type(e).__name__}"


def test_local_cluster_refuses_unauthenticated_clients():

    with cluster.open_client("local", workers=1, memory_limit="1GB", threads_per_worker=1) as bc:
        addr = bc.client.scheduler.address
        assert addr.startswith("tls://127.0.0.1:")
        assert bc.client.submit(pow, 2, 10).result() == 1024  # the batch's own client works
        port = bc.client.scheduler_info().get("services", {}).get("dashboard")
        if port:  # Dask's HTTP server always binds; without --dashboard it must serve nothing
            for page in ("health", "status", "info/main/workers.html", "json/identity.json", "metrics", "proxy/1/127.0.0.1/status"):
                assert _http_status(port, page) == 404, page
        # 1. a plain Dask client (no certificate), 2. one with a certificate of its own, 3. plain TCP.
        # Each try runs in its own interpreter: a refused distributed.Client is left half-built, and its
        # finaliser can deadlock a later Client's start in the same process (seen in a CI run).
        for how, target in (("plain", addr), ("foreign-cert", addr), ("plain", addr.replace("tls://", "tcp://"))):
            assert _foreign_client(target, how).startswith("refused"), (how, target)
        # 4. a raw TLS connection without a client certificate gets nothing back
        assert _raw_tls_probe(addr).startswith(("refused", "closed"))


_CLIENT_TRY = """
import os, sys
import distributed
from distributed.security import Security
kw = {"security": Security.temporary()} if sys.argv[2] == "foreign-cert" else {}
try:
    c = distributed.Client(sys.argv[1], timeout="4s", **kw)
    c.run(os.getpid)
except Exception as e:
    print("refused:", type(e).__name__, flush=True)
    os._exit(0)
print("accepted", flush=True)
os._exit(0)
"""


def _foreign_client(address: str, how: str) -> str:
    """Try to drive the scheduler from another process; 'refused: ...' or 'accepted'."""
    import subprocess
    import sys

    try:
        r = subprocess.run([sys.executable, "-c", _CLIENT_TRY, address, how], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "refused: timed out"
    return r.stdout.strip() or f"error: the probe printed nothing ({r.stderr.strip()[-200:]})"


def _http_status(port: int, page: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_dashboard_only_when_asked():
    with cluster.open_client("local", workers=1, memory_limit="1GB", dashboard="127.0.0.1:0") as bc:
        port = bc.client.scheduler_info()["services"]["dashboard"]
        assert _http_status(port, "health") == 200  # the HTTP routes are served when asked


def test_cluster_that_cannot_start_is_a_backend_error(monkeypatch):
    import distributed

    def broken(**kw):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(distributed, "LocalCluster", broken)
    with pytest.raises(BackendUnavailableError, match="could not start"):
        with cluster.open_client("local", workers=1, memory_limit="1GB"):
            pass
