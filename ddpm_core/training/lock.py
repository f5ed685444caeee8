"""One training run per output folder: an exclusive lock on ``<out>/.lock``.

The lock is an OS-level ``flock`` on a file inside the folder. The kernel
releases it when the holding process ends, however it ends (a crash, ``kill
-9``, a power-off of the container), so a killed run never leaves a stale
lock behind and the next run starts without any clean-up by hand. The file
holds the holder's process id, which a refused run reports.

Taking the lock is also the first write into the folder, so an output path
that is a file, or a folder that cannot be written, is reported before any
data is loaded or any step is trained. The lock removes nothing: the
training loop clears its own temporary files once it has accepted the run.

The lock only ever opens a file it made itself: it creates ``.lock`` with ``O_CREAT | O_EXCL |
O_NOFOLLOW``, and it reopens an existing ``.lock`` only when that is a plain file, with no other
link to it, that starts with the lock's own first line (``MARKER``). Anything else at that
path (a user's file, a symbolic or hard link, a FIFO, a device, a folder) is refused with a
message that names it, and is left exactly as it was.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ddpm_core.training import distributed
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.errors import DDPMError

F = TypeVar("F", bound=Callable[..., Any])
MARKER = b"ddpm_core run lock\n"  # the first line of every lock file this module writes
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def _unusable_folder(out_dir: Path, error: OSError) -> DDPMError:
    if out_dir.exists() and not out_dir.is_dir():
        reason = "it is an existing file, not a folder"
    elif isinstance(error, (NotADirectoryError, FileExistsError)):
        reason = "a part of that path is an existing file"
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason = "that place is not writable"
    else:
        reason = error.strerror or str(error)
    return DDPMError(
        f"Cannot train into {out_dir}: {reason}. Nothing was written. Choose a writable folder with --out "
        f"(it is created if missing)."
    )


def _create(path: Path) -> int:
    fd = os.open(path, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o666)
    os.pwrite(fd, MARKER, 0)
    return fd


def _foreign(path: Path) -> str | None:
    """Why the thing at ``path`` is not a lock file this module made, or None if it may be one."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "it vanished while the lock was taken; run the command again"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symbolic link"
    if stat.S_ISDIR(info.st_mode):
        return "it is a folder"
    if not stat.S_ISREG(info.st_mode):
        return "it is a pipe, socket or device, not a file"
    return None


def _foreign_descriptor(fd: int) -> str | None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        return "it is a pipe, socket or device, not a file"
    if info.st_nlink != 1:
        return f"it is a file with {info.st_nlink} hard links, so other names share its contents"
    if os.pread(fd, len(MARKER), 0) != MARKER:
        return "it is a file with other contents"
    return None


class RunLock:
    """An exclusive lock on a run folder, held from ``acquire`` until ``release`` or the process ends."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = RunFolder(self.out_dir).lock
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise ``DDPMError`` naming the folder and the process that holds it."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = self._open()
        except OSError as error:
            raise _unusable_folder(self.out_dir, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, len(MARKER)).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise DDPMError(
                f"{self.out_dir} is in use: {who} is training into it. Two runs in one folder would mix their "
                f"files, so this one stopped without writing anything. Wait for that run to finish (or stop it), "
                f"or choose another --out folder."
            ) from None
        self._fd = fd
        self._write(f"{os.getpid()}\n".encode())
        return self

    def _open(self) -> int:
        """A descriptor of the lock file: a new one, or the one an earlier run left; never anything else."""
        try:
            return _create(self.path)
        except FileExistsError:
            pass
        refusal = _foreign(self.path)
        if refusal is None:
            try:
                fd = os.open(self.path, _OPEN_FLAGS)
            except OSError as error:  # swapped for a link or removed since the look above
                refusal = error.strerror or str(error)
            else:
                refusal = _foreign_descriptor(fd)
                if refusal is None:
                    return fd
                os.close(fd)
        raise DDPMError(
            f"Cannot train into {self.out_dir}: {self.path} exists and is not a lock file of this package "
            f"({refusal}). The lock never changes a file it did not make, so nothing was written. Move or remove "
            f"{self.path}, or choose another --out folder."
        )

    def _write(self, holder: bytes) -> None:
        # Only ever called on the file this module made: its own first line, then the holder.
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, MARKER + holder, 0)

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it could let a third run lock a new file while a second waits on the old.
            self._write(b"")
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run_lock(function: F) -> F:
    """Run ``function(out_dir, ...)`` holding the lock on ``out_dir`` (under torchrun, rank 0 holds it for all)."""

    @functools.wraps(function)
    def locked(out_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        if not distributed.ranks_from_env().main:
            return function(out_dir, *args, **kwargs)
        with RunLock(out_dir):
            return function(out_dir, *args, **kwargs)

    return locked  # type: ignore[return-value]
