"""Every kernels/*.cu compiles with nvcc for sm_80 (A100) and sm_90 (H100): checked without a GPU."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from recon.nufft.cupy_backend import kernel_dir

NVCC = shutil.which("nvcc")
SOURCES = sorted(kernel_dir().glob("*.cu"))


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: CUDA compile test not run")
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_cu_compiles_for_sm80_and_sm90(src, tmp_path):
    out = tmp_path / (src.stem + ".fatbin")
    cmd = [
        NVCC,
        "-std=c++17",
        "-fatbin",
        "-I",
        str(kernel_dir()),
        "-gencode",
        "arch=compute_80,code=sm_80",
        "-gencode",
        "arch=compute_90,code=sm_90",
        str(src),
        "-o",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    assert out.stat().st_size > 0
    # both architectures are in the fat binary (cuobjdump when present, else the embedded arch names)
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", str(out)], capture_output=True, text=True).stdout
    else:
        listing = out.read_bytes().decode("latin-1")
    assert "sm_80" in listing and "sm_90" in listing


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: CUDA compile test not run")
def test_rawmodule_translation_unit_compiles(tmp_path):
    """The one source CuPy's RawModule compiles (all kernels together) builds, with every kernel name."""
    from recon.nufft.cupy_backend import NVRTC_OPTIONS, kernel_sources, rawmodule_code

    src = tmp_path / "narecon_all.cu"
    src.write_text(rawmodule_code(kernel_sources()))
    out = tmp_path / "all.ptx"
    cmd = [
        NVCC,
        *NVRTC_OPTIONS,
        "-ptx",
        "-arch=compute_80",
        "-I",
        str(kernel_dir()),
        str(src),
        "-o",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
    ptx = out.read_text()
    for name in ("spread_gm", "spread_sm", "interp", "pad_deapod", "crop_deapod"):
        for sfx in ("f32", "f64"):
            assert f".entry {name}_{sfx}(" in ptx
