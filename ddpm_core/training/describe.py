"""Files and folders in words, for the messages that refuse them.

A refusal says what was found where a weights file was expected (a FIFO, a folder and what it
holds, a value cut short) and what to pass instead, so that a reader can act on it without looking
around first. Values from a hostile file can be megabytes long: they are shown cut short.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from ddpm_core.training.run_folder import WEIGHTS_FILE, RunFolder

PASS_A_CHECKPOINT = (f"Pass the {WEIGHTS_FILE} written by `python -m ddpm_core train --out DIR` (or the folder DIR "
                     f"itself).")


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a whole number of {value.bit_length():,} bits"
    try:
        text = repr(value)
    except ValueError:  # Python refuses to write out an int of 4,300 digits or more, also inside a container
        return f"a {type(value).__name__} holding a number too long to write out"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type: object, list, string, number, boolean or null."""
    names = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def describe_file_type(mode: int) -> str:
    """What a ``stat`` mode that is not a regular file or folder is, in words."""
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "not a file")


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A folder's first entries, for a message that says what is there instead of the expected file."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        return f"its contents could not be listed ({error.strerror})"
    if not names:
        return "it is empty"
    shown = []
    for name in names[:limit]:
        shown.append((name if name.isprintable() else ascii(name)) + ("/" if os.path.isdir(folder / name) else ""))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"it holds: {', '.join(shown)}{more}"


def what_to_pass_instead(folder: Path) -> str:
    """What to pass instead of a folder without a run's weights file: a weights file that is there."""
    try:
        weights = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
        epochs = RunFolder(folder).epoch_files()
    except OSError:
        weights, epochs = [], []
    if weights:
        return f"Pass one of its .safetensors files, such as {folder / weights[-1]}, or a training run's folder."
    if epochs:
        return f"Pass one of its epochs' files, such as {epochs[-1]}."
    return PASS_A_CHECKPOINT


def recovery(path: Path) -> str:
    """How to get a usable file instead of the weights file ``path``: another epoch of its run where there is one."""
    try:
        others = [p for p in RunFolder.holding(path).epoch_files() if p.name != path.name]
    except OSError:
        others = []
    if others:
        return f"Use another epoch's file from the same run (such as {others[-1]}) or train again."
    return "Restore the original file, or train again with `python -m ddpm_core train --out DIR`."
