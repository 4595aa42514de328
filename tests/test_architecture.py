"""Issue 14: one in-memory reconstruction, one option schema, plans passed down, layers that do not import upwards."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recon.errors import ConfigError
from recon.options import RunOptions, load_config, markdown_table

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data_samples" / "raw.dat"


# ---------------------------------------------------------------- in memory == on disk
@pytest.fixture(scope="module")
def sample_pair(tmp_path_factory):
    import recon

    out = tmp_path_factory.mktemp("arch") / "out"
    res = recon.reconstruct(str(SAMPLE))
    rc = subprocess.run(
        [sys.executable, "-m", "recon", "-q", "run", str(SAMPLE), "--out", str(out), "--no-qa"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert rc.returncode == 0, rc.stderr
    return res, out


def test_reconstruct_in_memory_equals_narecon_run(sample_pair):
    import h5py
    import nibabel as nib

    res, out = sample_pair
    assert res.echoes.shape == (2, 40, 40, 40) and np.iscomplexobj(res.echoes)
    np.testing.assert_allclose(nib.load(out / "tsc_mM.nii.gz").get_fdata(), res.tsc_mM, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nib.load(out / "echo1.nii.gz").get_fdata(), np.abs(res.echoes[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(nib.load(out / "b0_hz.nii.gz").get_fdata(), res.fieldmap_hz, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(nib.load(out / "tsc_mM.nii.gz").affine, res.affine, atol=1e-5)
    with h5py.File(out / "recon.h5") as f:
        np.testing.assert_allclose(f["echoes"][()], res.echoes, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(f["dcf"][()], res.dcf, rtol=1e-6)
        assert f["b0_hz"].attrs["units"] == "Hz"
        np.testing.assert_allclose(f["echoes"].attrs["te_s"], res.acquisition.te_s)
    import json

    cal = json.loads((out / "calibration.json").read_text())
    assert cal["fit"]["slope"] == pytest.approx(res.calibration_dict()["fit"]["slope"], rel=1e-6)


def test_reconstruct_takes_an_acquisition_and_a_trajectory(sample_pair):
    import recon
    from recon.io import build_trajectory, load_profile, read_raw

    res, _ = sample_pair
    acq = read_raw(str(SAMPLE))
    traj = build_trajectory(acq, load_profile(None))
    r2 = recon.reconstruct(acq, {"qa": False}, trajectory=traj)
    np.testing.assert_allclose(r2.echoes, res.echoes, rtol=1e-5, atol=1e-5)
    assert "ReconResult(" in repr(r2) and len(repr(r2)) < 300


def test_images_only_run_has_no_tsc():
    import recon

    r = recon.reconstruct(str(SAMPLE), {"calibration": "none", "b0": "none"})
    assert r.tsc_mM is None and r.calibration is None and r.b0_method == "none"
    assert not np.any(r.fieldmap_hz)  # --b0 none never estimates a field map
    assert r.calibration_dict()["method"] == "none"


# ---------------------------------------------------------------- one option schema
BAD_CONFIGS = [
    ('force = "no"', "force"),
    ('qa = "false"', "qa"),
    ('matrix = "abc"', "matrix"),
    ("matrix = [32, 32, 32]", "matrix"),
    ("matrix = 33.7", "matrix"),
    ("matrix = 100000", "matrix"),
    ('eps = "x"', "eps"),
    ("tube_mM = 5", "tube_mM"),
    ("tube_mM = [30, -60, 90]", "tube_mM"),
    ("traj = 123", "traj"),
    ('b0 = "magic"', "b0"),
    ("b0_segments = 100000", "b0_segments"),
    ("b0_refine = 1000", "b0_refine"),
    ("reference_spheres = [[1, 2, 3]]", "reference_spheres"),
    ("iter_lamda = nan", "iter_lamda"),
]


@pytest.mark.parametrize("line,key", BAD_CONFIGS)
def test_config_type_errors_are_one_config_error_naming_the_key(tmp_path, line, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[run]\n{line}\n")
    with pytest.raises(ConfigError, match=re.escape(repr(key))) as e:
        load_config(cfg)
    assert str(cfg) in str(e.value)


def test_config_typo_deletes_nothing(tmp_path):
    """``force = "no"`` used to be truthy and replaced the user's folder."""
    keep = tmp_path / "existing"
    keep.mkdir()
    (keep / "mine.txt").write_text("precious")
    cfg = tmp_path / "f.toml"
    cfg.write_text('[run]\nforce = "no"\n')
    rc = subprocess.run(
        [sys.executable, "-m", "recon", "run", str(SAMPLE), "--config", str(cfg), "--out", str(keep)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert rc.returncode == 2 and "Traceback" not in rc.stderr and "'force'" in rc.stderr
    assert (keep / "mine.txt").read_text() == "precious"


def test_cli_bad_value_is_one_line(tmp_path):
    rc = subprocess.run(
        [sys.executable, "-m", "recon", "run", str(SAMPLE), "--out", str(tmp_path / "o"), "--iter-lamda", "nan"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert rc.returncode == 2 and rc.stderr.strip().count("\n") == 0 and "iter_lamda" in rc.stderr
    assert not (tmp_path / "o").exists()


def test_choices_come_from_the_registries():
    from recon.b0 import CORRECTIONS
    from recon.options import fields
    from recon.trajectory import DCF_METHODS

    opt = {n: o for n, _, o in fields()}
    assert set(CORRECTIONS) <= set(opt["b0"].resolved_choices())
    assert set(DCF_METHODS) <= set(opt["dcf"].resolved_choices())
    CORRECTIONS["test-method"] = CORRECTIONS["none"]  # a newly registered method is a valid choice at once
    try:
        assert RunOptions.from_mapping({"b0": "test-method"}).b0 == "test-method"
    finally:
        del CORRECTIONS["test-method"]


def test_defaults_defined_once():
    import inspect

    from recon.calibrate.calibration import DEFAULT_TUBES_MM
    from recon.iterative import reconstruct_iterative
    from recon.nufft import NUFFT
    from recon.options import DEFAULT_EPS

    o = RunOptions()
    assert o.eps == DEFAULT_EPS
    assert NUFFT(np.zeros((4, 3)), (8, 8, 8), 0.2).eps == DEFAULT_EPS
    assert inspect.signature(reconstruct_iterative).parameters["lamda"].default == o.iter_lamda
    assert o.tube_mM == DEFAULT_TUBES_MM


def test_readme_option_table_is_the_schema():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"<!-- options:start -->\n(.*?)\n<!-- options:end -->", readme, re.S)
    assert m, "README.md lacks the generated option table (<!-- options:start --> ... <!-- options:end -->)"
    assert m.group(1).strip() == markdown_table().strip(), "README option table differs from recon.options: regenerate it"


# ---------------------------------------------------------------- layers
LAYER_RULES = {
    # package prefix: prefixes it must never import
    "recon.pipeline": ("recon.batch", "recon.cli", "recon.bench", "recon.validate"),
    "recon.outputs": ("recon.batch", "recon.cli", "recon.pipeline"),
    "recon.trajectory": ("recon.nufft.", "recon.b0", "recon.calibrate", "recon.pipeline", "recon.batch", "recon.cli"),
    "recon.nufft": ("recon.b0", "recon.calibrate", "recon.pipeline", "recon.batch", "recon.cli", "recon.iterative"),
    "recon.b0": (
        "recon.nufft.finufft_backend",
        "recon.nufft.cupy_backend",
        "recon.nufft.cufinufft_backend",
        "recon.calibrate",
        "recon.pipeline",
        "recon.batch",
        "recon.cli",
    ),
    "recon.io": ("recon.nufft", "recon.b0", "recon.calibrate", "recon.pipeline", "recon.batch", "recon.cli"),
    "recon.calibrate": ("recon.pipeline", "recon.batch", "recon.cli"),
    "recon.iterative": ("recon.pipeline", "recon.batch", "recon.cli", "recon.calibrate"),
    "recon.analysis": ("recon.pipeline", "recon.batch", "recon.cli"),
    "recon.sim": ("recon.pipeline", "recon.batch", "recon.cli", "recon.calibrate"),
    "recon.options": ("recon.pipeline", "recon.batch", "recon.cli", "recon.b0", "recon.calibrate"),
    "recon.plans": ("recon.pipeline", "recon.batch", "recon.cli"),
}


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (REPO / rel).with_suffix(".py").is_file() or (REPO / rel / "__init__.py").is_file()


def _imports(path: Path, modname: str) -> set[str]:
    """Every module a file imports, at module level or inside functions (``from x import y``: x, and x.y if a module)."""
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    pkg = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}"))
    return out


def _modules():
    for path in sorted((REPO / "recon").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def _violates(imp: str, forbidden: str) -> bool:
    if forbidden.endswith("."):  # a package's internals: its submodules, not the package itself
        return imp.startswith(forbidden)
    return imp == forbidden or imp.startswith(forbidden + ".")


def test_no_module_imports_a_layer_above():
    bad = set()
    for path, mod in _modules():
        for prefix, forbid in LAYER_RULES.items():
            if mod == prefix or mod.startswith(prefix + "."):
                bad.update(f"{mod} imports {imp}" for imp in _imports(path, mod) for f in forbid if _violates(imp, f))
    assert not bad, "\n".join(sorted(bad))


def test_import_walk_catches_a_violation(tmp_path):
    """The walker itself: a module that imports upwards is reported (the check can fail)."""
    p = tmp_path / "fake.py"
    p.write_text("def f():\n    from recon.batch.cache import CACHE\n")
    assert "recon.batch.cache" in _imports(p, "recon.pipeline")
    assert any(_violates(i, f) for i in _imports(p, "recon.pipeline") for f in LAYER_RULES["recon.pipeline"])
    assert not _violates("recon.nufft", "recon.nufft.") and _violates("recon.nufft.finufft_backend", "recon.nufft.")


def test_import_recon_is_light():
    """``import recon`` and building the whole CLI parser import no numpy and no stage (start-up, issue 20)."""
    code = (
        "import sys, recon, recon.cli; recon.cli.build_parser(); "
        "heavy = [m for m in ('numpy', 'scipy', 'matplotlib', 'dask', 'sigpy', 'cupy', 'recon.b0', 'recon.calibrate', "
        "'recon.nufft', 'recon.trajectory') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"importing recon and building the CLI pulled in {r.stdout.strip()}"


def test_benchmark_scripts_import_what_exists():
    """Every ``from recon... import name`` in benchmarks/ and scripts/ resolves (copies cannot drift silently)."""
    missing = []
    for path in sorted(list((REPO / "benchmarks").glob("*.py")) + list((REPO / "scripts").glob("*.py"))):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("recon"):
                try:
                    mod = importlib.import_module(node.module)
                except ImportError as e:
                    missing.append(f"{path.name}: {node.module} ({e})")
                    continue
                for a in node.names:
                    if not hasattr(mod, a.name):
                        try:
                            importlib.import_module(f"{node.module}.{a.name}")
                        except ImportError:
                            missing.append(f"{path.name}: {node.module}.{a.name}")
    assert not missing, "\n".join(missing)


def test_lazy_choices_resolve_on_use():
    """argparse choices of ``traj import`` resolve on use: a bad value is refused naming the valid ones."""
    from recon.options import LazyChoices

    ch = LazyChoices("recon.trajectory.importers:FORMATS")
    assert ch._values is None
    assert "bart" in ch and "bogus" not in ch and list(ch)[0] == "pulseq" and len(ch) == 5
    r = subprocess.run(
        [sys.executable, "-m", "recon", "traj", "import", "x.npy", "--format", "bogus", "--out", "never.h5"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 2 and "invalid choice: 'bogus'" in r.stderr and "'narecon'" in r.stderr
