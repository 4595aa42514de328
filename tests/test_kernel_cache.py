"""Disk cache of the calibration's point-response kernel (recon.calibrate.kernel_cache).

Independent truth: a fresh build of the same kernel. The cached kernel must be identical; a
damaged entry is rebuilt; the key follows the content, T2*, grid, accuracy and code; the CLI
reports and clears it; a second SystemModel of the protocol reads it and makes the same templates.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from recon.calibrate import SystemModel
from recon.calibrate import kernel_cache as kc
from recon.trajectory import compute_dcf, tpi

N, FOV = 16, 0.224


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("NARECON_CACHE_DIR", str(d))
    monkeypatch.delenv("NARECON_CACHE_MAX_MB", raising=False)
    return d / "psf"


@pytest.fixture(scope="module")
def protocol():
    tr = tpi(fov_m=FOV, res_m=FOV / N, p=0.3, gmax_t_per_m=4e-3, dwell_s=1e-5)
    return tr, compute_dcf(tr, "analytic")


def _model(protocol, **kw):
    tr, dcf = protocol
    return SystemModel.from_trajectory(tr, dcf, (3e-4,), 0.1, 90.0, **kw)


def test_cached_kernel_equals_a_fresh_build(cache, protocol):
    a = _model(protocol)
    spec_a = a.kernel(0.05)
    assert kc.info()["entries"] == 1
    b = _model(protocol)
    calls = []
    b._build_kernel = lambda t2: calls.append(t2)  # a second model must not build
    spec_b = b.kernel(0.05)
    assert calls == [] and np.array_equal(spec_a, spec_b)
    fresh = _model(protocol)._build_kernel(0.05)  # the image; the spectrum is its FFT
    assert np.array_equal(b.kernel_image(0.05), fresh)
    ref = np.fft.fftn(np.fft.ifftshift(fresh))
    assert np.abs(spec_b - ref).max() <= 1e-5 * np.abs(ref).max()
    c = np.zeros(3)
    ta = a.template(c, np.array([0, 0, 1.0]), 2.5 * FOV / N, 0.05, 0.05)
    tb = b.template(c, np.array([0, 0, 1.0]), 2.5 * FOV / N, 0.05, 0.05)
    assert np.array_equal(ta, tb)
    win = ((4, 12), (4, 12), (2, 14))  # the windowed path uses the cached image of the kernel
    assert np.array_equal(
        a.template(c, np.array([0, 0, 1.0]), 2.5 * FOV / N, 0.05, 0.05, window=win),
        b.template(c, np.array([0, 0, 1.0]), 2.5 * FOV / N, 0.05, 0.05, window=win),
    )


def test_damaged_or_misfit_entry_is_rebuilt(cache, protocol):
    spec = _model(protocol).kernel(0.05)
    (entry,) = list(cache.glob("*" + kc.SUFFIX))
    entry.write_bytes(entry.read_bytes()[:1000])  # truncated
    assert np.array_equal(_model(protocol).kernel(0.05), spec)
    (entry,) = list(cache.glob("*" + kc.SUFFIX))
    from recon.trajectory.dcf_cache import read_arrays, write_arrays

    with open(entry, "wb") as f:  # a well-formed entry of the wrong box
        write_arrays(f, {}, {"image": np.zeros((4, 4, 4), np.complex64)})
    assert np.array_equal(_model(protocol).kernel(0.05), spec)
    assert read_arrays(entry)[1]["image"].shape == (2 * N,) * 3  # the misfit entry was replaced


def test_key_follows_content_t2star_grid_accuracy_and_code(protocol, monkeypatch):
    tr, dcf = protocol
    base = (tr.k, dcf, tr.t, (N,) * 3, (FOV,) * 3, 1e-3, 0.05)
    k0 = kc.kernel_key(*base)
    assert kc.kernel_key(*base) == k0
    k2 = tr.k.copy()
    k2[0, 0, 0] += 1e-9
    variants = [
        (k2,) + base[1:],
        (tr.k, dcf * 1.0001) + base[2:],
        base[:2] + (tr.t + 1e-9,) + base[3:],
        base[:3] + ((N + 2,) * 3,) + base[4:],
        base[:5] + (1e-4, 0.05),
        base[:6] + (0.04,),
    ]
    assert len({kc.kernel_key(*v) for v in variants} | {k0}) == len(variants) + 1
    monkeypatch.setattr(kc, "_CODE_DIGEST", "another model")
    assert kc.kernel_key(*base) != k0


def test_cache_off(monkeypatch, protocol):
    monkeypatch.setenv("NARECON_CACHE_DIR", "off")
    built = []
    _, how = kc.cached_kernel(lambda: "unused", (2 * N,) * 3, lambda: built.append(1) or np.zeros(1))
    assert how == "computed (cache off)" and built == [1]


def test_cli_cache_info_and_clear_cover_the_kernels(cache, protocol, capsys):
    from recon.cli import main

    _model(protocol).kernel(0.05)
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["psf"]["entries"] == 1 and info["psf"]["directory"] == str(cache)
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert kc.info()["entries"] == 0
