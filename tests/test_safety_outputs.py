"""Safe outputs (recon.atomic): no-replace rename, inputs never inside outputs, --force leaves nothing, stale
temporaries of killed processes cleaned, disk full is one OutputError with nothing partial."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from recon import atomic
from recon.atomic import atomic_dir, atomic_file, check_output, clean_stale, hdf5_in_memory, rename_noreplace
from recon.errors import OutputError

REPO = Path(__file__).resolve().parents[1]


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".narecon-tmp"))


# ------------------------------------------------------------------ no-replace rename


@pytest.mark.parametrize("fallback", [False, True], ids=["renameat2", "fallback"])
@pytest.mark.parametrize("target", ["file", "dir", "dangling-link"])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, fallback, target):
    if fallback:
        monkeypatch.setattr(atomic, "_renameat2", None)
    for src_kind in ("file", "dir"):
        src = tmp_path / f"src-{src_kind}"
        src.mkdir() if src_kind == "dir" else src.write_text("new")
        dst = tmp_path / f"dst-{src_kind}"
        if target == "file":
            dst.write_text("old")
        elif target == "dir":
            dst.mkdir()
            (dst / "keep").write_text("old")
        else:
            dst.symlink_to(tmp_path / "nowhere")
        with pytest.raises(FileExistsError):
            rename_noreplace(src, dst)
        assert os.path.lexists(src)  # the source is still there, the target unchanged
        if target == "file":
            assert dst.read_text() == "old"
        elif target == "dir":
            assert (dst / "keep").read_text() == "old"
        else:
            assert dst.is_symlink()
        free = tmp_path / f"free-{src_kind}"
        rename_noreplace(src, free)
        assert not os.path.lexists(src) and os.path.lexists(free)


def test_renameat2_is_used_on_linux():
    if sys.platform != "linux":
        pytest.skip("renameat2 is Linux-only")
    assert atomic._renameat2 is not None


def test_concurrent_second_writer_gets_output_error(tmp_path):
    """Two runs into one --out: the one finishing second is refused, the first result stays."""
    dest = tmp_path / "out"
    with pytest.raises(OutputError, match="another process"):
        with atomic_dir(dest) as slow:
            (slow / "result").write_text("slow")
            with atomic_dir(dest) as fast:  # starts later, finishes first
                (fast / "result").write_text("fast")
    assert (dest / "result").read_text() == "fast"
    assert _leftovers(tmp_path) == []


def test_concurrent_file_writer_without_overwrite(tmp_path):
    dest = tmp_path / "t.h5"
    with pytest.raises(OutputError):
        with atomic_file(dest, overwrite=False) as a:
            a.write_text("a")
            with atomic_file(dest, overwrite=False) as b:
                b.write_text("b")
    assert dest.read_text() == "b" and _leftovers(tmp_path) == []


def test_empty_existing_dir_is_filled_but_not_a_refilled_one(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    with atomic_dir(dest) as d:
        (d / "x").write_text("1")
    assert (dest / "x").read_text() == "1"
    dest2 = tmp_path / "out2"
    dest2.mkdir()
    with pytest.raises(OutputError, match="another process"):
        with atomic_dir(dest2) as d:
            (d / "x").write_text("mine")
            (dest2 / "theirs").write_text("another run")  # filled while we were writing
    assert [p.name for p in dest2.iterdir()] == ["theirs"]
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ --force


@pytest.mark.parametrize("existing", ["dir", "file", "link-to-dir", "link-to-file", "dangling-link"])
def test_force_replaces_and_leaves_nothing(tmp_path, existing):
    dest = tmp_path / "out"
    target = tmp_path / "elsewhere"
    if existing == "dir":
        dest.mkdir()
        (dest / "old").write_text("old")
    elif existing == "file":
        dest.write_text("old")
    elif existing == "link-to-dir":
        target.mkdir()
        (target / "precious").write_text("keep")
        dest.symlink_to(target)
    elif existing == "link-to-file":
        target.write_text("keep")
        dest.symlink_to(target)
    else:
        dest.symlink_to(tmp_path / "nowhere")
    check_output(dest, force=True)
    with atomic_dir(dest, overwrite=True) as d:
        (d / "new").write_text("new")
    assert dest.is_dir() and not dest.is_symlink() and [p.name for p in dest.iterdir()] == ["new"]
    assert _leftovers(tmp_path) == []
    if existing == "link-to-dir":
        assert (target / "precious").read_text() == "keep"  # a link is replaced, never its target
    if existing == "link-to-file":
        assert target.read_text() == "keep"


@pytest.mark.parametrize("existing", ["file", "link-to-file", "dangling-link"])
def test_force_file_over_file_or_link(tmp_path, existing):
    dest = tmp_path / "t.h5"
    target = tmp_path / "target"
    if existing == "file":
        dest.write_text("old")
    elif existing == "link-to-file":
        target.write_text("keep")
        dest.symlink_to(target)
    else:
        dest.symlink_to(tmp_path / "nowhere")
    with atomic_file(dest, overwrite=True) as t:
        t.write_text("new")
    assert dest.read_text() == "new" and not dest.is_symlink()
    if existing == "link-to-file":
        assert target.read_text() == "keep"
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ preflight


def test_check_output_refusals(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(OutputError, match="parent folder does not exist"):
        check_output(tmp_path / "missing" / "t.h5", kind="file")
    with pytest.raises(OutputError, match="parent is not a folder"):
        check_output(tmp_path / "afile" / "sub")
    with pytest.raises(OutputError, match="not empty"):
        check_output(full)
    check_output(full, force=True)
    with pytest.raises(OutputError, match="exists"):
        check_output(tmp_path / "afile", kind="file")
    with pytest.raises(OutputError, match="is a folder"):
        check_output(full, kind="file", force=True)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError, match="dangling symbolic link"):
        check_output(dangling)
    monkeypatch.chdir(full)
    for cur in (".", "..", str(full)):
        with pytest.raises(OutputError, match="current directory"):
            check_output(cur, force=True)
    assert check_output(tmp_path / "new") == tmp_path / "new"


def test_check_output_mount_point():
    mounts = [p for p in ("/dev/shm", "/proc", "/sys", "/dev") if os.path.ismount(p)]
    if not mounts:
        pytest.skip("no mount point to test with")
    with pytest.raises(OutputError, match="mount point"):
        check_output(mounts[0], force=True)


def test_check_output_refuses_inputs_even_with_force(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    raw = proj / "raw.dat"
    raw.write_bytes(b"raw")
    deep = proj / "a" / "b"
    deep.mkdir(parents=True)
    tubes = deep / "tubes.csv"
    tubes.write_text("x")
    for out in (proj, proj / "a"):
        with pytest.raises(OutputError, match="contains the input"):
            check_output(out, force=True, inputs=[raw, None, tubes])
    with pytest.raises(OutputError, match="is the input"):
        check_output(raw, force=True, inputs=[raw], kind="file")
    link = tmp_path / "link.dat"
    link.symlink_to(raw)  # the same file under another name
    with pytest.raises(OutputError, match="is the input"):
        check_output(link, force=True, inputs=[raw], kind="file")
    hard = tmp_path / "hard.dat"
    os.link(raw, hard)
    with pytest.raises(OutputError, match="is the input"):
        check_output(hard, force=True, inputs=[raw], kind="file")
    check_output(tmp_path / "elsewhere", force=True, inputs=[raw, tubes])  # fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_check_output_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output(ro / "out")
    finally:
        ro.chmod(0o700)


# ------------------------------------------------------------------ killed processes


def test_kill_9_leaves_temporary_that_a_later_write_cleans(tmp_path):
    code = textwrap.dedent(f"""
        import os, signal
        from recon.atomic import atomic_dir
        with atomic_dir({str(tmp_path / "out")!r}) as d:
            for i in range(6):
                (d / f"f{{i}}").write_text("x")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO)
    assert p.returncode == -signal.SIGKILL
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".narecon-tmp-") and "@" in left[0]
    assert not (tmp_path / "out").exists()
    # a live process's temporary (ours) and another host's are kept
    mine = tmp_path / f"{atomic._tmp_prefix('x')}live"
    mine.mkdir()
    other = tmp_path / ".narecon-tmp-1@some-other-host@x-abc"
    other.mkdir()
    legacy = tmp_path / ".narecon-tmp-out-abc"
    legacy.mkdir()
    with atomic_dir(tmp_path / "out") as d:
        (d / "ok").write_text("1")
    assert sorted(_leftovers(tmp_path)) == sorted([mine.name, other.name, legacy.name])
    assert clean_stale(tmp_path) == 0


# ------------------------------------------------------------------ disk full


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_enospc_is_one_output_error_and_nothing_partial(tmp_path, kind):
    dest = tmp_path / "out"

    def fill(p: Path):
        (p / "a.nii.gz" if kind == "dir" else p).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cm = atomic_dir(dest) if kind == "dir" else atomic_file(dest)
    with pytest.raises(OutputError, match="No space left on device"):
        with cm as tmp:
            fill(tmp)
    assert not os.path.lexists(dest) and _leftovers(tmp_path) == []


def test_h5py_style_enospc_message_is_recognised(tmp_path):
    with pytest.raises(OutputError, match="No space left"):
        with atomic_file(tmp_path / "r.h5") as t:
            t.write_bytes(b"x")
            raise OSError("Can't write data (file write failed: ..., errno = 28, error message = 'No space left')")
    assert _leftovers(tmp_path) == []


def test_other_errors_keep_their_type(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_dir(tmp_path / "out"):
            raise ZeroDivisionError("bug")
    assert _leftovers(tmp_path) == [] and not (tmp_path / "out").exists()


def test_hdf5_in_memory_roundtrip(tmp_path):
    import h5py

    with atomic_file(tmp_path / "a.h5") as t, hdf5_in_memory(t) as f:
        f.create_dataset("x", data=np.arange(10.0), compression="gzip")
        f.attrs["u"] = "Hz"
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["x"][()].tolist() == list(range(10)) and f.attrs["u"] == "Hz"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not permitted)."""
    mnt = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_on_a_real_small_filesystem(tiny_fs):
    """A trajectory (HDF5) and a run-like folder larger than the file system: one OutputError each, in a
    subprocess so that a crash (segfault) would show as a non-zero signal exit, nothing left behind."""
    code = textwrap.dedent(f"""
        import numpy as np
        from recon.errors import OutputError
        from recon.atomic import atomic_dir, atomic_file, hdf5_in_memory
        from recon.trajectory import density_adapted_radial, write_trajectory
        traj = density_adapted_radial(fov_m=0.224, res_m=0.007, n_projections=3000)
        out = []
        try:
            write_trajectory(traj, {str(tiny_fs / "t.h5")!r})
        except OutputError as e:
            out.append("traj: " + str(e))
        try:
            with atomic_dir({str(tiny_fs / "run")!r}) as d:
                with hdf5_in_memory(d / "recon.h5") as f:
                    f.create_dataset("img", data=np.random.default_rng(0).random((64, 64, 64)))
        except OutputError as e:
            out.append("run: " + str(e))
        print("\\n".join(out))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and all("No space left on device" in ln for ln in lines), p.stdout
    assert "Traceback" not in p.stderr
    assert sorted(os.listdir(tiny_fs)) == []
