"""Writing files without ever destroying one the package did not make.

The files a command makes (weights, resume states, samples, images, exported graphs, JSON
records) are written through ``atomic_write``: the bytes go to a hidden temporary file in the same
folder, named with the package's own prefix (``.ddpm_core-NAME.XXXX.tmp``), which is renamed onto
the final name only when it is complete. A run killed mid-write, or a disk that fills up, therefore
leaves the previous file intact, and a clean-up can tell the package's own leftovers from a user's
files by their name alone (``remove_own_temporaries``). The rename replaces a symbolic link itself,
never the file it points to. Two writes are made in place, on purpose: the run lock's file, which
is the lock itself (``ddpm_core.training.lock``), and a bug's edit of a source file, made in a
throwaway copy of the repository (``ddpm_core.book.bugs``).

Before any long work, a command checks its outputs with ``check_output_file``: the suffix, an
existing file or link (refused unless ``--force``, or unless the package recognises the file as
one of its own earlier outputs), and a real test write in the folder.

Files that belong together (an exported graph and its schedule) are written with ``write_files``:
every one goes to its temporary file first, and none is renamed until all are complete.

A file the package may have written is read back with ``read_small_file``, which refuses anything
but a regular file within a size bound before reading a byte (a FIFO would block the command
forever, a link to ``/dev/zero`` would feed it without end), and metadata read back goes through
``parse_json``, which bounds its size and nesting depth, so a hostile file is refused with a
message instead of exhausting memory or the stack.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpm_core.utils.errors import DDPMError, DiskFullError

VERSION = "0.1.0"  # the package's version, written into every file it makes (ddpm_core.__version__)

TMP_PREFIX = ".ddpm_core-"
TMP_SUFFIX = ".tmp"
MAX_JSON_BYTES = 4_000_000  # a checkpoint's metadata is a few kB; a loss history of 10,000 epochs fits easily
MAX_JSON_DEPTH = 32  # the deepest document the package writes nests 4 levels


def library_versions() -> dict[str, str]:
    """The versions that wrote a file: Python, torch, torchvision and this package."""
    import torch
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ddpm_core": VERSION,
    }


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def disk_full(path: Path, needed_bytes: int) -> DiskFullError:
    """The error for a file that did not fit: how much was needed, how much is free, and that nothing was lost."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.1f} MB are free on that disk"
    except OSError:
        free = "the free space could not be read"
    needed = f"about {needed_bytes / 1e6:.1f} MB were needed and " if needed_bytes else ""
    return DiskFullError(
        f"Not enough space to write {path}: {needed}{free}. The file already at that path (if any) is intact.",
        str(path),
        needed_bytes,
    )


def is_own_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file that ``atomic_write`` makes (and a killed write may leave)."""
    return path.name.startswith(TMP_PREFIX) and path.name.endswith(TMP_SUFFIX)


def remove_own_temporaries(folder: Path) -> list[Path]:
    """Delete the package's own temporary files in ``folder``; every other file stays.

    Only safe while nothing else writes into the folder (for a run folder: under its lock).
    """
    removed = []
    if folder.is_dir():
        for leftover in folder.iterdir():
            if is_own_temporary(leftover) and leftover.is_file() and not leftover.is_symlink():
                leftover.unlink()
                removed.append(leftover)
    return removed


def _stage(path: Path, write: Callable[[str], Any], needed_bytes: int) -> str:
    """Call ``write(tmp)`` on a new temporary file beside ``path``, flushed to disk with the permissions an
    ordinary ``open`` gives; the temporary's name. Nothing is left behind if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if needed_bytes and shutil.disk_usage(path.parent).free < needed_bytes:
        raise disk_full(path, needed_bytes)
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
    except BaseException as error:
        _discard(tmp)
        if isinstance(error, Exception):
            # torch.save reports a full disk as a RuntimeError of its own, so the free space decides too.
            no_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
            if no_space or (needed_bytes and shutil.disk_usage(path.parent).free < needed_bytes):
                raise disk_full(path, needed_bytes) from None
        raise
    return tmp


def _discard(tmp: str) -> None:
    if os.path.exists(tmp):
        os.remove(tmp)


def atomic_write(path: str | Path, write: Callable[[str], Any], needed_bytes: int = 0) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The file gets the permissions an ordinary ``open`` would give it (0666 less the umask).
    ``needed_bytes`` (an estimate of the file's size) turns a full disk into ``DiskFullError``,
    checked before writing and again if the write fails; the file already at ``path`` is intact then.
    """
    write_files({Path(path): (write, needed_bytes)})


def write_files(files: dict[Path, tuple[Callable[[str], Any], int]]) -> None:
    """Write several files that belong together: ``files`` maps each path to ``(write, needed_bytes)``, as
    ``atomic_write`` takes them. Every file is written to its temporary first; only when all are complete
    are they renamed into place, so a full disk or Ctrl-C leaves every file already there intact."""
    staged: dict[Path, str] = {}
    try:
        for path, (write, needed_bytes) in files.items():
            staged[path] = _stage(path, write, needed_bytes)
        for path, tmp in staged.items():
            os.replace(tmp, path)  # replaces a symbolic link itself, never its target
    except BaseException:
        for tmp in staged.values():
            _discard(tmp)
        raise


def store_entry(path: str | Path, key: str, value: Any, order: list[str] | None = None) -> None:
    """Set ``key`` of the JSON object in ``path`` (created if missing) to ``value``, keeping the other keys,
    listed in ``order`` when given (keys it does not name last), and write it atomically."""
    path = Path(path)
    entries: Any = {}
    if path.exists():  # a dangling link is replaced like a missing file
        stored = read_small_file(path, MAX_JSON_BYTES, "the results file", follow_links=True)
        try:
            entries = parse_json(stored)
            if not isinstance(entries, dict):
                raise ValueError("it holds no JSON object")
        except ValueError as error:
            raise DDPMError(f"Cannot add {key!r} to {path}: {error}. Nothing was written; move that file "
                            f"away.") from None
    entries[key] = value
    if order is not None:
        entries = {k: entries[k] for k in sorted(entries, key=lambda k: order.index(k) if k in order else len(order))}
    text = json.dumps(entries, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed_bytes=len(data))


def check_free_space(path: Path, needed_bytes: int, flag: str = "--out") -> None:
    """Refuse, before any work, an output of about ``needed_bytes`` on a disk with less free space than that."""
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:  # the folders still to be made are on its disk
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself still turns a full disk into DiskFullError
    if free < needed_bytes:
        raise DiskFullError(
            f"Not enough space for {path}: about {needed_bytes / 1e6:.1f} MB are needed and {free / 1e6:.1f} MB "
            f"are free on that disk; nothing was done. Free some space, or choose a {flag} path on another disk.",
            str(path),
            needed_bytes,
        )


def check_writable(path: Path, example: str = "samples.png") -> None:
    """Refuse an output file path that is a folder or lies in a place that cannot be written, before any work."""
    if str(path) in ("", "."):
        raise DDPMError(f"The output path is empty; pass a file name such as {example}.")
    if path.is_dir():
        raise DDPMError(f"The output {path} is a folder; pass a file name inside it, such as {path / example}.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DDPMError(f"Cannot write {path}: {ancestor} is a file, not a folder. Choose another output path.")
    try:  # a real write: permission bits say nothing for root or on a read-only mount
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise DDPMError(
            f"Cannot write {path}: {ancestor} is not writable ({error.strerror}). Choose another output path."
        ) from None
    if path.exists() and not path.is_file():
        raise DDPMError(f"Cannot write {path}: something other than a file is there. Choose another output path.")


def check_output_file(
    path: Path,
    suffixes: tuple[str, ...],
    force: bool,
    what: str,
    is_own: Callable[[Path], bool] | None = None,
    flag: str = "--out",
    example: str | None = None,
) -> None:
    """Refuse an output path before any work: a wrong suffix, a symbolic link, or an existing file.

    An existing file (or link) is replaced only with ``force``, or when ``is_own(path)`` recognises it
    as an earlier output of the same command. Then ``path`` must be writable.
    """
    example = example or f"output{suffixes[0]}"
    if str(path) in ("", "."):
        raise DDPMError(f"{flag} is empty; pass a file name such as {example}.")
    if path.is_dir() and not path.is_symlink():
        raise DDPMError(f"The output {path} is a folder; pass a file name inside it, such as {path / example}.")
    if path.suffix.lower() not in suffixes:
        raise DDPMError(
            f"Unknown output extension {path.suffix!r} for {path}: the {what} file should end in "
            f"{' or '.join(suffixes)}, for example {example}."
        )
    if path.is_symlink() and not force:
        raise DDPMError(
            f"{path} is a symbolic link (to {os.readlink(path)}); nothing was written, and the file it points to "
            f"was not touched. Choose another {flag} path, or pass --force to replace the link itself (never "
            f"the file it points to) with the new {what} file."
        )
    if path.is_file() and not path.is_symlink() and not force and not (is_own is not None and is_own(path)):
        raise DDPMError(
            f"{path} already exists; nothing was overwritten. Choose a new {flag} path, or pass --force to "
            f"replace that file."
        )
    check_writable(path, example)


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text, found without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for text from a file: ``ValueError`` (with a short reason) if it is too large, too deep or bad."""
    if len(text) > max_bytes:
        raise ValueError(f"it is {len(text):,} bytes long, more than the {max_bytes:,} allowed")
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = _depth(text)
    if depth > max_depth:
        raise ValueError(f"it nests {depth:,} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise ValueError(f"it is not valid JSON ({str(error)[:120]})") from None


_FILE_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO (a named pipe)",
               stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def _check_small_regular(path: Path, info: os.stat_result, max_bytes: int, what: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        target = f" to {os.readlink(path)}" if stat.S_ISLNK(info.st_mode) else ""
        raise DDPMError(f"Cannot read {what} {path}: it is {kind}{target}, not a regular file, so it was not read.")
    if info.st_size > max_bytes:
        raise DDPMError(f"Cannot read {what} {path}: it is {info.st_size:,} bytes long, more than the {max_bytes:,} "
                        f"such a file can have, so it was not read.")


def read_small_file(path: str | Path, max_bytes: int, what: str, *, follow_links: bool = False) -> bytes:
    """The bytes of the regular file ``path``, of at most ``max_bytes``; ``DDPMError`` naming ``what`` (such as
    "the seeds file") for anything else.

    The path is looked at first, then opened without waiting for a writer (``O_NONBLOCK``) and, unless
    ``follow_links``, without following a symbolic link (``O_NOFOLLOW``), and checked again on the open
    file: a FIFO, a device, a folder or a link is refused without a byte read, and a file that grows while
    it is read is cut off.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        _check_small_regular(path, os.stat(path) if follow_links else os.lstat(path), max_bytes, what)
        with os.fdopen(os.open(path, flags), "rb") as file:
            _check_small_regular(path, os.fstat(file.fileno()), max_bytes, what)  # the file that was opened
            data = file.read(max_bytes + 1)
    except OSError as error:
        raise DDPMError(f"Cannot read {what} {path} ({error.strerror}).") from None
    if len(data) > max_bytes:
        raise DDPMError(f"Cannot read {what} {path}: it grew past {max_bytes:,} bytes while it was read.")
    return data
