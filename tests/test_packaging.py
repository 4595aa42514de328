"""Packaging: version defined once, no symbolic links in the tree (Windows checkouts), the
CUDA sources shipped as package data, current license metadata, sigpy a core dependency."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import recon

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_is_defined_once():
    proj = PYPROJECT["project"]
    assert "version" not in proj and "version" in proj["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "recon.__version__"}
    assert recon.__version__.count(".") >= 2


def test_no_symbolic_links_in_the_tree():
    links = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in (".git", "__pycache__", ".pytest_cache") and not d.startswith(".venv")]
        links += [os.path.join(dirpath, n) for n in dirnames + filenames if os.path.islink(os.path.join(dirpath, n))]
    assert not [p for p in links if not p.startswith(str(ROOT / "shared"))], links


def test_every_subpackage_is_listed_and_kernels_are_mapped():
    st = PYPROJECT["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "recon").rglob("__init__.py")}
    assert set(st["packages"]) == found | {"recon._kernels"}
    assert st["package-dir"] == {"recon._kernels": "kernels"} and (ROOT / "kernels" / "__init__.py").is_file()


def test_license_and_dependencies():
    proj = PYPROJECT["project"]
    assert isinstance(proj["license"], str)  # SPDX expression: the table form is deprecated
    assert any(d.startswith("sigpy") for d in proj["dependencies"])
    for extra, deps in proj["optional-dependencies"].items():
        assert not any(d.startswith("sigpy") for d in deps), extra  # core, not also an extra


@pytest.mark.slow
def test_wheel_ships_the_kernels(tmp_path):
    """Builds the wheel (isolated build: needs the package index) and looks inside."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    (whl,) = tmp_path.glob("narecon-*.whl")
    names = zipfile.ZipFile(whl).namelist()
    for f in ("deapod.cu", "interp.cu", "spread.cu", "selftest.cu", "narecon_nufft.cuh"):
        assert f"recon/_kernels/{f}" in names
    assert "recon/profiles/default.toml" in names and "recon/nufft/_hostcuda.h" in names
    meta = zipfile.ZipFile(whl).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert f"Version: {recon.__version__}" in meta and "License-Expression: MIT" in meta
