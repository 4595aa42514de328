"""Data loss through ``narecon run``: config typos, --force over inputs, odd --out targets, concurrent runs, a full disk.

Each refusal must come before any work, as one error line (exit 2), with the user's files untouched."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recon.cli import main

REPO = Path(__file__).resolve().parents[1]
RUN = ["--calibration", "none", "--no-qa"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sim")
    assert (
        main(
            [
                "-q",
                "simulate",
                "--out",
                str(d / "sim"),
                "--matrix",
                "16",
                "--traj-undersampling",
                "4",
                "--snr",
                "50",
                "--seed",
                "2",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    return d / "sim" / "raw.dat"


def _user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "existing"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    return d


def _run(argv, capsys) -> tuple[int, list[str]]:
    rc = main(["-q", "run", *argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return rc, err


@pytest.mark.parametrize(
    "toml,msg",
    [
        ('force = "no"', "force"),
        ('qa = "false"', "qa"),
        ('matrix = "abc"', "matrix"),
        ("matrix = [32, 32, 32]", "matrix"),
        ('eps = "x"', "eps"),
        ("tube_mM = 5", "tube_mM"),
        ("traj = 123", "traj"),
        ("matrix = 33.7", "matrix"),
        ("tube_mM = [30, -60, 90, 120]", "tube_mM"),
        ("b0_segments = 100000", "b0_segments"),
        ("b0_refine = 1000", "b0_refine"),
    ],
)
def test_config_typo_never_deletes_an_existing_output(raw, tmp_path, capsys, toml, msg):
    existing = _user_dir(tmp_path)
    cfg = tmp_path / "f.toml"
    cfg.write_text(f"[run]\n{toml}\n")
    rc, err = _run([str(raw), "--config", str(cfg), "--out", str(existing), *RUN], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("narecon: error:") and msg in err[0], err
    assert (existing / "thesis.tex").read_text() == "years of work" and len(list(existing.iterdir())) == 1


def test_iter_lamda_nan_is_a_config_error(raw, tmp_path, capsys):
    rc, err = _run([str(raw), "--b0", "iterative", "--iter-lamda", "nan", "--out", str(tmp_path / "o"), *RUN], capsys)
    assert rc == 2 and "iter_lamda" in err[-1] and not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["raw", "config", "fieldmap-dir"])
def test_force_never_deletes_an_input(raw, tmp_path, capsys, what):
    proj = tmp_path / "proj"
    proj.mkdir()
    copy = proj / "raw.dat"
    copy.write_bytes(raw.read_bytes())
    argv = [str(copy)]
    if what == "config":
        argv = [str(raw)]
        (proj / "cfg.toml").write_text("[run]\nqa = false\n")
        argv += ["--config", str(proj / "cfg.toml")]
    if what == "fieldmap-dir":
        argv = [str(raw), "--fieldmap", str(proj / "raw.dat")]  # any input inside the output
    rc, err = _run([*argv, "--out", str(proj), "--force", *RUN], capsys)
    assert rc == 2 and len(err) == 1 and "input" in err[0], err
    assert copy.read_bytes() == raw.read_bytes()


@pytest.mark.parametrize("target", ["dot", "dangling-link", "file-parent", "missing-parent", "mount"])
def test_odd_out_targets_are_one_clean_error(raw, tmp_path, capsys, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    out = {
        "dot": ".",
        "dangling-link": "dangling",
        "file-parent": "afile/sub",
        "missing-parent": "no/such/dir",
        "mount": next((p for p in ("/dev/shm", "/proc", "/sys") if os.path.ismount(p)), None),
    }[target]
    if out is None:
        pytest.skip("no mount point")
    if target == "dangling-link":
        os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    rc, err = _run([str(raw), "--out", out, "--force" if target in ("dot", "mount") else "--no-qa", *RUN], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("narecon: error:"), err
    assert (tmp_path / "afile").read_text() == "x"


def test_force_over_file_and_symlink_leaves_nothing_behind(raw, tmp_path, capsys):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep").write_text("keep")
    link = tmp_path / "out-link"
    link.symlink_to(target)
    f = tmp_path / "out-file"
    f.write_text("old")
    for out in (link, f):
        rc, err = _run([str(raw), "--out", str(out), "--force", *RUN], capsys)
        assert rc == 0, err
        assert out.is_dir() and not out.is_symlink() and (out / "recon.h5").is_file()
    assert (target / "keep").read_text() == "keep"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".narecon-tmp")]


def test_two_concurrent_runs_into_one_out(raw, tmp_path):
    """Both start before either finishes: exactly one result lands; the other is a clear OutputError."""
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "recon", "-q", "run", str(raw), "--out", str(out), *RUN],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    res = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in res)
    # the slower one is refused: at its final rename ("another process") or, if it started after the first had
    # finished, at its preflight ("exists"); it never replaces the other's result
    assert codes == [0, 2], res
    err = next(r[1] for r in res if r[2] == 2)
    assert "another process" in err or "exists" in err, err
    assert (out / "recon.h5").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".narecon-tmp")]


def test_disk_full_while_writing_is_one_error(raw, tmp_path, capsys, monkeypatch):
    import recon.outputs as outputs

    real = outputs.write_h5

    def full(path, *a, **kw):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(outputs, "write_h5", full)
    rc, err = _run([str(raw), "--out", str(tmp_path / "out"), *RUN], capsys)
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and "nothing was written" in err[0], err
    assert not (tmp_path / "out").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".narecon-tmp")]
    monkeypatch.setattr(outputs, "write_h5", real)


def test_disk_full_on_a_small_filesystem(raw, tmp_path):
    """A real 1 MiB tmpfs: the run's outputs do not fit; one error line, nothing left (subprocess: no segfault)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        p = subprocess.run(
            [sys.executable, "-m", "recon", "-q", "run", str(raw), "--out", str(mnt / "out"), *RUN],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
        assert len(lines) == 1 and "No space left on device" in lines[0], p.stderr
        assert os.listdir(mnt) == []
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_kill_9_during_run_then_next_run_cleans(raw, tmp_path):
    """A run killed while writing leaves only its hidden temporary; the next run in that folder removes it."""
    code = (
        "import os, signal, sys\n"
        "import recon.outputs as o\n"
        "real = o.write_h5\n"
        "def die(*a, **k):\n"
        "    real(*a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "o.write_h5 = die\n"
        "from recon.cli import main\n"
        f"main(['-q', 'run', {str(raw)!r}, '--out', {str(tmp_path / 'a')!r}, '--calibration', 'none', '--no-qa'])\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == -9, p.stderr
    left = [q.name for q in tmp_path.iterdir() if q.name.startswith(".narecon-tmp")]
    assert len(left) == 1 and not (tmp_path / "a").exists()
    assert main(["-q", "run", str(raw), "--out", str(tmp_path / "b"), *RUN]) == 0
    assert not [q.name for q in tmp_path.iterdir() if q.name.startswith(".narecon-tmp")]
