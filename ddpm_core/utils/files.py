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

Metadata read back from a file goes through ``parse_json``, which bounds its size and nesting
depth, so a hostile file is refused with a message instead of exhausting memory or the stack.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import platform
import shutil
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


def atomic_write(path: str | Path, write: Callable[[str], Any], needed_bytes: int = 0) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    The file gets the permissions an ordinary ``open`` would give it (0666 less the umask).
    ``needed_bytes`` (an estimate of the file's size) turns a full disk into ``DiskFullError``,
    checked before writing and again if the write fails; the file already at ``path`` is intact then.
    """
    path = Path(path)
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
        os.replace(tmp, path)  # replaces a symbolic link itself, never its target
    except BaseException as error:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, Exception):
            # torch.save reports a full disk as a RuntimeError of its own, so the free space decides too.
            no_space = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
            if no_space or (needed_bytes and shutil.disk_usage(path.parent).free < needed_bytes):
                raise disk_full(path, needed_bytes) from None
        raise


def store_entry(path: str | Path, key: str, value: Any, order: list[str] | None = None) -> None:
    """Set ``key`` of the JSON object in ``path`` (created if missing) to ``value``, keeping the other keys,
    listed in ``order`` when given (keys it does not name last), and write it atomically."""
    path = Path(path)
    entries = json.loads(path.read_text()) if path.exists() else {}
    entries[key] = value
    if order is not None:
        entries = {k: entries[k] for k in sorted(entries, key=lambda k: order.index(k) if k in order else len(order))}
    text = json.dumps(entries, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), needed_bytes=len(data))


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
