"""Safe outputs: checked before any work, written to a temporary sibling, renamed into place without replacing.

Guarantees (README "What is guaranteed"):

* :func:`check_output` is called by every command before it computes anything: an output that
  exists (without ``--force``), whose parent is missing or a file or not writable, that is the
  current directory, a mount point, or that contains or is one of the command's inputs, is an
  :class:`OutputError` at once. An input inside the output is refused even with ``--force``.
* :func:`atomic_dir` / :func:`atomic_file` write into a hidden temporary
  ``.narecon-tmp-<pid>@<host>@<name>-XXXX`` beside the destination and move it into place only
  when the block succeeds. The final move never replaces anything it was not asked to replace
  (``renameat2(RENAME_NOREPLACE)``, else link-then-unlink for files and mkdir-then-rename for
  folders): a second run that finishes into the same destination gets an :class:`OutputError`.
  With ``overwrite`` the old destination (folder, file or symbolic link: the link itself, never
  its target) is moved aside and removed after the new one is in place; nothing is left behind.
* Disk full (or any OS error while writing) is one :class:`OutputError`; the temporary is removed.
* A process killed while writing leaves its temporary; the next atomic write in the same parent
  removes the temporaries of processes of this host that no longer run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from recon.errors import OutputError

_TMP_PREFIX = ".narecon-tmp-"
_TMP_RE = re.compile(r"^\.narecon-tmp-(\d+)@([^@/]*)@")
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
#: OS errors that mean "cannot write here" rather than a bug
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EBUSY}


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname() or "host")[:64]


def _tmp_prefix(name: str) -> str:
    """Prefix of this process's temporaries for destination ``name`` (pid and host make them attributable)."""
    return f"{_TMP_PREFIX}{os.getpid()}@{_host()}@{name[:80]}-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(is_dir: bool) -> int:
    """Mode a plain open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def _remove(path: Path) -> None:
    """Remove a file, a symbolic link (not its target) or a folder tree; missing is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def clean_stale(parent: str | os.PathLike) -> int:
    """Remove ``.narecon-tmp-*`` temporaries in ``parent`` left by dead processes of this host.

    Temporaries of running processes, of other hosts (a shared file system) and of unknown
    (older) naming are kept. Returns the number removed; never raises.
    """
    removed = 0
    host = _host()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    for e in entries:
        m = _TMP_RE.match(e.name)
        if not m or m.group(2) != host or _pid_alive(int(m.group(1))):
            continue
        try:
            _remove(Path(e.path))
            removed += 1
        except OSError:
            pass
    return removed


# ---------------------------------------------------------------- no-replace rename


def _libc_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _libc_renameat2() if os.name == "posix" else None


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with FileExistsError if ``dst`` exists (also a dangling link).

    Uses ``renameat2(RENAME_NOREPLACE)`` (Linux >= 3.15, glibc >= 2.28) where the file system
    supports it; else ``link`` + ``unlink`` for files and ``mkdir`` + ``rename`` for folders
    (the mkdir claims the name; rename then replaces only that empty folder).
    """
    s, d = os.fsencode(src), os.fsencode(dst)
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, s, _AT_FDCWD, d, _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), os.fsdecode(d))
    _rename_noreplace_fallback(s, d)


def _rename_noreplace_fallback(s: bytes, d: bytes) -> None:
    if os.path.isdir(s) and not os.path.islink(s):
        os.mkdir(d)  # FileExistsError if anything is there: the name is ours from now on
        try:
            os.rename(s, d)
        except OSError:
            with contextlib.suppress(OSError):
                os.rmdir(d)
            raise
        return
    os.link(s, d, follow_symlinks=False)  # FileExistsError if taken
    os.unlink(s)


# ---------------------------------------------------------------- preflight


def _is_within(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def check_output(
    out: str | os.PathLike,
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str = "dir",
) -> Path:
    """Refuse an unusable output location before any work; returns ``out`` as a Path.

    ``kind``: "dir" (an output folder written whole) or "file". Raises :class:`OutputError` when
    ``out`` exists and ``force`` is false (an empty folder is accepted for "dir"), is a folder
    where a file is wanted, is the current directory or one above it, is a mount point, when its
    parent is missing, not a folder or not writable, and, even with ``force``, when ``out`` is or
    (for "dir") contains one of ``inputs`` (None entries are ignored).
    """
    if kind not in ("dir", "file"):
        raise ValueError(f"kind must be 'dir' or 'file', got {kind!r}")
    dest = Path(out)
    if not str(out).strip():
        raise OutputError("empty output path")
    real = os.path.realpath(dest)
    lexists = os.path.lexists(dest)
    if lexists and dest.is_symlink() and not dest.exists():
        if not force:
            raise OutputError("exists as a dangling symbolic link (use --force to replace the link)", dest)
    elif lexists and kind == "dir" and _is_within(os.getcwd(), real):
        raise OutputError("is the current directory or a folder above it; write into a new folder", dest)
    elif lexists and os.path.ismount(dest):
        raise OutputError("is a mount point and cannot be replaced; write into a new folder inside it", dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    if not parent.exists():
        raise OutputError("the parent folder does not exist (create it first)", parent)
    if not parent.is_dir():
        raise OutputError("the parent is not a folder", parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError("the parent folder is not writable", parent)
    # inputs: the output must neither be nor contain one (refused with --force too)
    for inp in inputs:
        if inp is None:
            continue
        ireal = os.path.realpath(inp)
        same = ireal == real
        if not same and os.path.exists(inp) and os.path.exists(dest):
            with contextlib.suppress(OSError):
                same = os.path.samefile(inp, dest)
        inside = kind == "dir" and _is_within(ireal, real)
        if same or inside:
            what = "is" if same else "contains"
            raise OutputError(f"{what} the input {os.fspath(inp)}; choose another output (refused even with --force)", dest)
    if lexists and not (dest.is_symlink() and not dest.exists()):
        if kind == "file" and dest.is_dir():
            raise OutputError("is a folder, expected a file name", dest)
        if not force:
            if kind == "dir" and dest.is_dir() and not dest.is_symlink() and not any(dest.iterdir()):
                return dest
            what = "output directory exists and is not empty" if kind == "dir" and dest.is_dir() else "exists"
            raise OutputError(f"{what} (use --force to overwrite)", dest)
    return dest


# ---------------------------------------------------------------- atomic writers


def _write_error(e: OSError, dest: Path) -> OutputError:
    no = e.errno
    text = str(e)
    if no is None and ("errno = 28" in text or "No space left" in text):
        no = errno.ENOSPC
    why = os.strerror(no) if no else text
    return OutputError(f"could not write ({why}); nothing was written", dest)


def _is_write_error(e: BaseException) -> bool:
    if not isinstance(e, OSError) or isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError)):
        return False
    text = str(e)
    return e.errno in _WRITE_ERRNOS or "errno = 28" in text or "No space left" in text or "Can't write data" in text


def _place(tmp: Path, dest: Path, overwrite: bool) -> None:
    """Move the finished ``tmp`` to ``dest``; never replaces what was not asked to be replaced."""
    parent = dest.parent if str(dest.parent) else Path(".")
    if not os.path.lexists(dest):
        try:
            rename_noreplace(tmp, dest)
        except FileExistsError as e:
            raise OutputError("was created by another process while this one was writing; nothing was replaced", dest) from e
        return
    if not overwrite:
        if dest.is_dir() and not dest.is_symlink():
            try:
                os.rmdir(dest)  # only an empty folder; fails if another run filled it
            except OSError as e:
                raise OutputError(
                    "was filled by another process while this one was writing; nothing was replaced (use --force to overwrite)",
                    dest,
                ) from e
            try:
                rename_noreplace(tmp, dest)
            except FileExistsError as e:
                raise OutputError("was created by another process while this one was writing", dest) from e
            return
        raise OutputError("was created by another process while this one was writing; nothing was replaced", dest)
    old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name) + "old-", dir=parent))
    aside = old / "old"
    os.rename(dest, aside)  # a link is moved as a link; its target is untouched
    try:
        rename_noreplace(tmp, dest)
    except OSError as e:
        with contextlib.suppress(OSError):
            rename_noreplace(aside, dest)  # put the old one back
        shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, FileExistsError):
            raise OutputError("was re-created by another process while this one was writing", dest) from e
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` when the block succeeds.

    ``overwrite``: replace an existing ``path`` (a link is replaced, not its target). The parent
    folder is created when missing (commands refuse a missing parent earlier, in :func:`check_output`).
    """
    dest = Path(path)
    if os.path.lexists(dest) and not overwrite:
        raise OutputError("exists (use --force to overwrite)", dest)
    if dest.is_dir() and not dest.is_symlink():
        raise OutputError("is a folder, expected a file name", dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(parent)
        fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(dest.name), dir=parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(f"cannot write here: {e.strerror or e}", dest) from e
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            if os.path.lexists(tmp_path):
                os.chmod(tmp_path, _default_mode(False))
                _place(tmp_path, dest, overwrite)
        except OSError as e:
            if _is_write_error(e):
                raise _write_error(e, dest) from e
            raise
    finally:
        if os.path.lexists(tmp_path):
            _remove(tmp_path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it becomes ``path`` only if the block succeeds.

    With ``overwrite`` an existing ``path`` (folder, file or link) is replaced after the new one
    is complete; without it an existing ``path`` other than an empty folder is an
    :class:`OutputError`, also when another process creates it while this one writes.
    """
    dest = Path(path)
    if os.path.lexists(dest) and not overwrite and (not dest.is_dir() or dest.is_symlink() or any(dest.iterdir())):
        raise OutputError("output directory exists and is not empty (use --force to overwrite)", dest)
    parent = dest.parent if str(dest.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        clean_stale(parent)
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(dest.name), dir=parent))
    except OSError as e:
        raise OutputError(f"cannot create output directory: {e.strerror or e}", dest) from e
    try:
        try:
            yield tmp
            os.chmod(tmp, _default_mode(True))
            _place(tmp, dest, overwrite)
        except OSError as e:
            if _is_write_error(e):
                raise _write_error(e, dest) from e
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def hdf5_in_memory(path: str | os.PathLike) -> Iterator[object]:
    """Yield an in-memory ``h5py.File``; on success its image is written to ``path`` with plain Python I/O.

    HDF5 can crash the process when the disk fills while it writes (seen: segmentation faults
    under ENOSPC); building the file in memory (``driver="core"``, ``backing_store=False``) and
    writing the bytes with ``open().write`` turns a full disk into an ordinary OSError that the
    atomic writers report. Use inside :func:`atomic_file`/:func:`atomic_dir` on the temporary path.
    """
    import h5py

    f = h5py.File(f"narecon-mem-{id(path)}.h5", "w", driver="core", backing_store=False)
    try:
        yield f
        f.flush()
        image = f.id.get_file_image()
    finally:
        f.close()
    with open(path, "wb") as fh:
        fh.write(image)
        fh.flush()
        os.fsync(fh.fileno())
