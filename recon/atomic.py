"""Atomic outputs: write to a temporary sibling, rename into place only on success.

No partial output is ever left behind: if the block raises (or the process dies), the
temporary file or directory is removed (or, after a kill, left under a hidden ``.tmp-``
name that a later run cleans up), and the destination is untouched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from recon.errors import OutputError

_TMP_PREFIX = ".narecon-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(is_dir: bool) -> int:
    """Mode a plain open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    return (0o777 if is_dir else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds."""
    dest = Path(path)
    if dest.exists() and not overwrite:
        raise OutputError("exists (use --force to overwrite)", dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=dest.name, dir=parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write here: {e.strerror}", dest) from e
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _default_mode(False))
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    With ``overwrite`` an existing ``path`` is replaced (after the new one is complete);
    without it an existing non-empty ``path`` is an :class:`OutputError`.
    """
    dest = Path(path)
    if dest.exists() and not overwrite and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputError("output directory exists and is not empty (use --force to overwrite)", dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX + dest.name + "-", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot create output directory: {e.strerror}", dest) from e
    try:
        yield tmp
        os.chmod(tmp, _default_mode(True))
        if dest.exists():
            old = parent / (_TMP_PREFIX + dest.name + "-old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_output(
    path: str | os.PathLike, *, force: bool = False, inputs: Sequence[str | os.PathLike] = (), kind: str = "dir"
) -> None:
    """Refuse, before any work, an output that cannot or must not be written (OutputError).

    ``kind="dir"``: exists and is not empty without ``force``; ``kind="file"``: exists without
    ``force``; either: the parent is missing, a file or not writable; the output is, or
    contains, one of ``inputs`` (never replaced, even with ``force``).
    """
    dest = Path(path)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        raise OutputError("the parent folder does not exist", dest)
    if not parent.is_dir():
        raise OutputError("the parent is not a folder", dest)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("cannot write into the parent folder", parent)
    real = os.path.realpath(dest)
    for p in inputs:
        rp = os.path.realpath(p)
        if rp == real or rp.startswith(real.rstrip(os.sep) + os.sep):
            raise OutputError(f"the output would replace an input ({p}); choose another output", dest)
    if dest.exists() or dest.is_symlink():
        if kind == "dir" and dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
            return
        if not force:
            what = "output directory exists and is not empty" if kind == "dir" else "output file exists"
            raise OutputError(f"{what} (use --force to overwrite)", dest)
