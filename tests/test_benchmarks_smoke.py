"""Every benchmark script runs end to end on a tiny case, so none of them can rot unnoticed.

Each runs in a fresh interpreter with its own small configuration, writes only into a temporary
folder, and must exit 0 and print its result; the repository is left untouched. These are not
timings (no assert on time): the numbers of record come from the full runs in benchmarks/README.md.

The scripts run two at a time, each with one BLAS/OpenMP thread (``SMOKE_JOBS``), started together
the first time a case is asked for: on two cores that halves the wall time of the smoke cases
(~135 s one after the other, each with every thread). The repository's ``git status`` is compared
once before and once after all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CASES = {
    "finufft_upsampfac.py": [
        "--quick", "--matrix", "16", "--eps", "1e-3", "--upsampfac", "2.0", "--repeats", "1", "--out", "{tmp}/u.json",
    ],
    "b0_bench.py": ["--cost", "--matrix", "16", "--readouts", "5", "--rounds", "1", "--methods", "tb-cpr"],
    "iterative_bench.py": ["--matrix", "32", "--iters", "1", "--lamdas", "0.1", "--out", "{tmp}/it.json"],
    "nufft_cpu.py": ["--quick", "--repeats", "1", "--no-memory", "--impl", "narecon", "finufft-default", "--out", "{tmp}/n.json"],
    "gpu_nufft.py": ["--sizes", "32", "--impl", "finufft", "cuda-host-gm", "--repeats", "1", "--out", "{tmp}/g.json"],
    "run_floor.py": ["--matrix", "24", "--rounds", "1", "--no-memory", "--work", "{tmp}/rf", "--results", "{tmp}/res"],
    "run_128.py": [
        "measure", "--matrix", "24", "--simulate", "--rounds", "1", "--no-memory", "--work", "{tmp}/w", "--results", "{tmp}/res",
    ],
    "run_before_after.py": [str(REPO), str(REPO), "--raw", str(REPO / "data_samples" / "raw.dat"), "--rounds", "1"],
    "stage_memory.py": [str(REPO / "data_samples" / "raw.dat"), "--options", '{{"qa": false}}'],
    "batch.py": [
        "--scans", "2", "--distinct", "1", "--matrix", "24", "--configs", "loop", "batch-1w",
        "--out", "{tmp}/b.json", "--work", "{tmp}/bw",
    ],
    "validation_iterative_s6.py": ["--demo", "--out-dir", "{tmp}"],
    "sample_accuracy.py": ["--variants", "readme", "--out", "{tmp}/s.json"],
    "validation_iterative_s6_diag.py": ["--table-only", str(REPO / "benchmarks" / "validation_iterative_s6_diag_0.json")],
}  # fmt: skip


SMOKE_JOBS = 2
"""Scripts run at once; each gets one thread (``OMP_NUM_THREADS`` and the BLAS equivalents)."""

_ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")}


def _status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory):
    """The CompletedProcess (by name) of every script whose case this session runs, and the repository's git
    status before and after all of them."""
    env = {**os.environ, **_ONE_THREAD}
    wanted = {
        it.callspec.params["script"]
        for it in request.session.items
        if getattr(it, "originalname", None) == "test_benchmark_runs_on_a_tiny_case"
    }

    def one(script):
        tmp = tmp_path_factory.mktemp(script.replace(".py", ""))
        args = [a.format(tmp=tmp) for a in CASES[script]]
        cmd = [sys.executable, str(REPO / "benchmarks" / script), *args]
        return script, subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=600, env=env)

    before = _status()
    with ThreadPoolExecutor(SMOKE_JOBS) as pool:  # the slowest first, so that the pair finishes together
        runs = dict(pool.map(one, sorted(wanted, key=lambda sc: (-SLOW_FIRST.get(sc, 0), sc))))
    return runs, before, _status()


SLOW_FIRST = {"run_floor.py": 5, "gpu_nufft.py": 4, "batch.py": 3, "iterative_bench.py": 2, "run_before_after.py": 1}
"""Order of start (larger first): the cases measured slowest (~15-25 s each)."""


def test_every_benchmark_script_has_a_smoke_case():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts == set(CASES), f"benchmarks without a smoke case: {sorted(scripts - set(CASES))}"


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_on_a_tiny_case(script, smoke_runs):
    runs, before, after = smoke_runs
    r = runs[script]
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{script} printed nothing"
    assert after == before, f"a benchmark script ({', '.join(sorted(runs))}) wrote into the repository:\n{after}"
