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
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ddpm_core.training import distributed
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.errors import DDPMError

F = TypeVar("F", bound=Callable[..., Any])


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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise _unusable_folder(self.out_dir, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise DDPMError(
                f"{self.out_dir} is in use: {who} is training into it. Two runs in one folder would mix their "
                f"files, so this one stopped without writing anything. Wait for that run to finish (or stop it), "
                f"or choose another --out folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            # The file stays: removing it could let a third run lock a new file while a second waits on the old.
            os.ftruncate(self._fd, 0)
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
