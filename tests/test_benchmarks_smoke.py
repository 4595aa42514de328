"""Every benchmark script runs end to end on a tiny case, so none of them can rot unnoticed.

Each runs in a fresh interpreter with its own small configuration, writes only into a temporary
folder, and must exit 0 and print its result; the repository is left untouched. These are not
timings (no assert on time): the numbers of record come from the full runs in benchmarks/README.md.
"""

from __future__ import annotations

import subprocess
import sys
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


def test_every_benchmark_script_has_a_smoke_case():
    scripts = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    assert scripts == set(CASES), f"benchmarks without a smoke case: {sorted(scripts - set(CASES))}"


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_on_a_tiny_case(script, tmp_path):
    before = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout
    args = [a.format(tmp=tmp_path) for a in CASES[script]]
    r = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"{script} printed nothing"
    after = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=REPO).stdout
    assert after == before, f"{script} wrote into the repository:\n{after}"
