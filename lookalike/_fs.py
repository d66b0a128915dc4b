"""Safe file writes: a temporary name in the destination's folder, then an atomic rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import LookalikeError, display_path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, fsync, then rename.

    Raises:
        LookalikeError: the file cannot be written (disk full, file size limit, permission), in one line;
            the old file, if any, is untouched.
    """
    atomic_write_with(path, lambda fh: fh.write(data), durable=False)


def write_failure(path: str | os.PathLike[str], exc: OSError) -> LookalikeError:
    """One line for a failed write: the file and why (numpy's short writes carry no errno: a full disk)."""
    reason = exc.strerror or (f"the disk is full or the file is too large: {exc}" if "written" in str(exc) else exc)
    return LookalikeError(f"{display_path(path)}: cannot write ({reason})")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_dirs(path: str | os.PathLike[str]) -> None:
    """``mkdir -p``, failing in one line that names the part of the path at fault.

    Raises:
        LookalikeError: a part of the path is a file, the folder cannot be created there (permission,
            read-only or virtual file system such as ``/proc``), or the disk is full.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        return
    except OSError as exc:
        error = exc
    for part in [path, *path.parents]:
        if os.path.lexists(part):
            if part == path and not part.is_dir():
                raise LookalikeError(f"{display_path(path)}: is a file, not a folder") from None
            if not part.is_dir():
                raise LookalikeError(
                    f"{display_path(path)}: cannot create this folder: {display_path(part)} is a file, not a folder"
                ) from None
            raise LookalikeError(
                f"{display_path(path)}: cannot create this folder in {display_path(part)} ({error.strerror or error})"
            ) from None
    raise LookalikeError(f"{display_path(path)}: cannot create this folder ({error.strerror or error})") from None


def check_dir_creatable(path: str | os.PathLike[str]) -> None:
    """Fail now, in one line, when ``path`` cannot become a folder (see :func:`make_dirs`); leaves nothing
    behind: the folders made to find out are removed again."""
    path = Path(path)
    missing = []
    for part in [path, *path.parents]:
        if os.path.lexists(part):
            break
        missing.append(part)
    make_dirs(path)
    for part in missing:  # deepest first
        with contextlib.suppress(OSError):
            part.rmdir()


def make_temp_dir(final: Path) -> Path:
    """A temporary folder beside ``final`` (same file system, so it can be renamed into place), with the
    permissions a plain ``mkdir`` would give it.

    Raises:
        LookalikeError: the folder ``final`` would be in cannot be created or written (one line).
    """
    make_dirs(final.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.chmod(tmp, 0o777 & ~current_umask())
    except OSError as exc:
        raise LookalikeError(f"{display_path(final)}: cannot write there ({exc.strerror or exc})") from None
    return tmp


def atomic_write_with(path: str | os.PathLike[str], write: Callable[[BinaryIO], None], *, durable: bool = True) -> None:
    """Write a file through a temporary one in the same folder, fsync, then rename; ``write(file)`` streams
    the content (no second copy in memory).

    With ``durable`` the folder is fsynced after the rename too, so the new name survives a power loss
    before anything that refers to it is committed.
    """
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failure(path, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames, deletions) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- child processes
_LOCK_FDS: set[int] = set()  # descriptors holding flock()s that child processes must not keep alive


def hold_lock_fd(fd: int) -> None:
    """Remember a descriptor that holds an ``flock``: forked workers close their copy at start-up.

    A lock taken with ``flock`` belongs to the open file, which a forked child shares: a decoding
    worker that outlived its killed parent would otherwise keep the index locked.
    """
    _LOCK_FDS.add(fd)


def release_lock_fd(fd: int) -> None:
    """Forget a descriptor given to :func:`hold_lock_fd` (before closing it)."""
    _LOCK_FDS.discard(fd)


def worker_start(_worker_id: int = 0) -> None:
    """Run first in every forked worker process (a DataLoader's ``worker_init_fn``).

    Closes the worker's copies of the parent's lock descriptors, so the lock dies with the process that
    took it, and asks Linux to kill the worker when its parent dies (``PR_SET_PDEATHSIG``), so no worker
    outlives a ``kill -9`` of its parent.
    """
    for fd in list(_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    _die_with_parent()


def _die_with_parent() -> None:
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not glibc Linux: workers still stop when they notice the parent is gone
        return
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)
