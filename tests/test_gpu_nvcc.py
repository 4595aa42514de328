"""The CUDA kernels compile with nvcc for sm_80 (A100) and sm_90 (H100): checked without a GPU.

* every kernels/*.cu compiles on its own (front end to PTX: self-contained, no host code);
* the translation unit CuPy's RawModule builds from all of them compiles to SASS for sm_80 and
  sm_90 (ptxas checks registers and shared memory per architecture) and defines every kernel
  name the launch code asks for.
Skipped, with the reason, where nvcc is absent.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from recon.nufft.cupy_backend import (
    NVRTC_OPTIONS,
    SPECIALIZED_WIDTHS,
    WIDTH_KERNELS,
    kernel_dir,
    kernel_sources,
    rawmodule_code,
)

NVCC = shutil.which("nvcc")
SOURCES = sorted(kernel_dir().glob("*.cu"))
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH: CUDA compile test not run")


def _nvcc(args, what):
    cmd = [NVCC, *NVRTC_OPTIONS, "-I", str(kernel_dir()), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{what}: {' '.join(cmd)}\n{r.stderr}"


@needs_nvcc
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_each_cu_compiles_standalone(src, tmp_path):
    out = tmp_path / (src.stem + ".ptx")
    _nvcc(["-ptx", "-arch=compute_90", src, "-o", out], src.name)
    assert ".entry" in out.read_text()


@needs_nvcc
def test_all_kernels_compile_for_sm80_and_sm90(tmp_path):
    src = tmp_path / "narecon_all.cu"
    src.write_text(rawmodule_code(kernel_sources()))
    out = tmp_path / "all.fatbin"
    gencode = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
    _nvcc(["-fatbin", *gencode, src, "-o", out], "all kernels")
    cuobjdump = shutil.which("cuobjdump")
    if cuobjdump:
        listing = subprocess.run([cuobjdump, "--list-elf", str(out)], capture_output=True, text=True).stdout
    else:  # the architecture names are embedded in the fat binary
        listing = out.read_bytes().decode("latin-1")
    assert "sm_80" in listing and "sm_90" in listing
    symbols = out.read_bytes().decode("latin-1")
    for name in ("spread_gm", "spread_sm", "interp", "pad_deapod", "crop_deapod"):
        for sfx in ("f32", "f64"):
            widths = [f"_w{w}" for w in (0, *sorted(SPECIALIZED_WIDTHS))] if name in WIDTH_KERNELS else [""]
            for w in widths:
                assert f"{name}_{sfx}{w}\x00" in symbols, f"kernel {name}_{sfx}{w} missing"
