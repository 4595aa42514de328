"""``narecon batch`` command line, cluster settings, and importing recon without Dask."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from recon.batch.cluster import jobqueue_kwargs
from recon.cli import main
from recon.errors import BackendUnavailableError, ConfigError


def test_recon_imports_without_dask():
    code = (
        "import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
        "import recon, recon.batch, recon.batch.engine, recon.batch.cluster, recon.cli\n"
        "recon.cli.build_parser()\n"
        "from recon.batch.cluster import open_client\n"
        "from recon.errors import BackendUnavailableError\n"
        "try:\n    open_client().__enter__()\nexcept BackendUnavailableError as e:\n    print('OK', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK") and "pip install 'narecon[dist]'" in r.stdout


def test_cli_bad_manifest_exit_2(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("id,raw\nA,missing.dat\n")
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("narecon: error: ") and "line 2 (id 'A'): raw file not found" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_cli_bad_scheduler_exit_2(tmp_path, capsys):
    (tmp_path / "a.dat").write_bytes(b"x")
    (tmp_path / "m.csv").write_text("id,raw\nA,a.dat\n")
    assert main(["batch", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"), "--scheduler", "kubernetes"]) == 2
    assert "--scheduler must be local, slurm, pbs" in capsys.readouterr().err


def test_cli_failed_scan_exit_1(tmp_path, capsys):
    """A foreign file fails (whatever stage rejects it); the command lists it and exits 1."""
    pytest.importorskip("distributed")
    (tmp_path / "foreign.dat").write_bytes(b"%PDF-1.4 not a twix file\n" * 100)
    (tmp_path / "m.csv").write_text("id,raw\nforeign,foreign.dat\n")
    out = tmp_path / "out"
    rc = main(["-q", "batch", str(tmp_path / "m.csv"), "--out", str(out), "--workers", "1", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "failed scans:" in cap.err and "  foreign: " in cap.err
    assert "1 scan(s): 0 done, 0 skipped, 1 failed" in cap.out
    with open(out / "batch_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["id"], r["status"]) for r in rows] == [("foreign", "failed")] and rows[0]["error"]
    assert not (out / "foreign").exists()


def test_jobqueue_settings_gpu():
    kw = jobqueue_kwargs("slurm", gpus_per_worker=2, memory="64GB", dask_cuda=True)
    assert kw["job_extra_directives"] == ["--gres=gpu:2"]
    assert kw["worker_command"] == "dask_cuda.cli worker" and kw["processes"] == 1
    assert kw["worker_extra_args"] == ["--resources", "scan=1"] and kw["memory"] == "64GB"
    pbs = jobqueue_kwargs("pbs", gpus_per_worker=1, memory="32GB", dask_cuda=False)
    assert "ngpus=1" in pbs["resource_spec"] and "mem=32GB" in pbs["resource_spec"]
    assert "worker_command" not in pbs
    with pytest.raises(ConfigError, match="needs dask-cuda"):
        jobqueue_kwargs("slurm", gpus_per_worker=2, dask_cuda=False)
    assert "job_extra_directives" not in jobqueue_kwargs("slurm", 0, dask_cuda=False)


def test_slurm_job_script_without_slurm():
    """The job script dask-jobqueue would submit (no SLURM needed to build it)."""
    dj = pytest.importorskip("dask_jobqueue")
    cluster = dj.SLURMCluster(
        **jobqueue_kwargs("slurm", gpus_per_worker=1, memory="16GB", dask_cuda=True),
        queue="gpu",
        account="na23",
        walltime="02:00:00",
    )
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script and "#SBATCH -A na23" in script
    assert "-m dask_cuda.cli worker" in script and "--resources scan=1" in script


def test_missing_jobqueue_or_dask(monkeypatch):
    from recon.batch import cluster

    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)
    with pytest.raises(BackendUnavailableError, match="dask-jobqueue"):
        with cluster.open_client("slurm"):
            pass
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(BackendUnavailableError, match=r"narecon\[dist\]"):
        with cluster.open_client("local"):
            pass
