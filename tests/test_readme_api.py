"""The README's building-block example gives unit-chain values (not 1/voxel volume times them),
and .ci/run runs the README's first command as a smoke step."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_gridding_example_reconstructs_the_object():
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "gridding(op, y" in b)
    # the same code at a coarser grid (fast): 16^3 at 14 mm, cube indices scaled accordingly
    code = block.replace("res_m=0.0035", "res_m=0.014").replace("image[24:40, 24:40, 24:40]", "image[5:11, 5:11, 5:11]")
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    x = np.abs(ns["x"])
    assert x.shape == (16, 16, 16)
    centre = x[7:9, 7:9, 7:9].mean()
    assert 85 < centre < 115  # ~ the cube's value 100, not 100 / voxel volume


def test_ci_runs_the_readme_first_command_before_the_tests():
    ci = (ROOT / ".ci" / "run").read_text()
    first = re.search(r"```bash\n(pip install \. && narecon run (\S+) --out \S+)\n```", README)
    assert first, "README's first command changed: update .ci/run's smoke step"
    assert "python3 -m venv" in ci and "pip install -q ." in ci and f'narecon run "$OLDPWD/{first.group(2)}"' in ci
    assert ci.index("narecon run") < ci.index("python -m pytest -q")
    assert "-eq 5" in ci


def test_docs_carry_no_developer_paths():
    bad = []
    for f in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "docs").rglob("*.py")]:
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if re.search(r"(?<![\w.])/(work|root|home)/", line):
                bad.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, bad


def test_conventions_are_in_the_repository():
    conv = (ROOT / "docs" / "conventions.md").read_text()
    for key in ("cycles per metre", "floor(N/2)", "RAS+", "value c reconstructs to c", "gamma_hz_per_t"):
        assert key in conv
    assert "](docs/conventions.md)" in README and "../shared/DESIGN.md" not in README
