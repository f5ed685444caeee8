"""What the package's smaller command lines and the repository's scripts share with ``python -m ddpm_core``.

Each ``main`` reads its flags with the argument types of ``ddpm_core.utils.arguments``, checks
everything it can before any long work (names, numbers, the files it will write) and raises
``DDPMError`` for what it cannot use. ``run_script`` runs such a ``main`` as the main command line
runs a command: an error is one line on stderr (``error: ...``) and the error's exit code, 2 for
unusable input, with no traceback; Ctrl-C is one line and status 130.

The ablations and tools keep their results in JSON files of one entry per run, written entry by
entry with ``files.store_entry`` (atomically: a killed run leaves every finished entry, and a
symbolic link at the path is replaced, never the file it points to). ``results_file`` checks such a
file before any work and returns the entries already in it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import MAX_JSON_BYTES, check_writable, parse_json, read_small_file

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
INTERRUPTED = "interrupted: every file written before is complete (each is written whole or not at all)"


def run_script(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None,
               interrupted: str = INTERRUPTED) -> int:
    """``main(argv)``'s exit status, with ``DDPMError`` and Ctrl-C turned into one line on stderr."""
    try:
        status = main(argv)
    except DDPMError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else status


def read_json_object(path: Path, what: str, remedy: str) -> dict[str, Any]:
    """The JSON object in the regular file ``path`` (or a link to one), read with a bound on its size;
    ``DDPMError`` naming ``what`` the file should be and the ``remedy`` otherwise (a FIFO is never read)."""
    try:
        value = parse_json(read_small_file(path, MAX_JSON_BYTES, what, follow_links=True))
    except DDPMError as error:
        raise DDPMError(f"{error} {remedy}") from None
    except ValueError as reason:
        raise DDPMError(f"{path} is not {what}: {reason}. {remedy}") from None
    if not isinstance(value, dict):
        raise DDPMError(f"{path} is not {what}: it holds a JSON {type(value).__name__}, not an object. {remedy}")
    return value


def results_file(path: Path, flag: str = "--results") -> dict[str, Any]:
    """The entries already in the JSON results file ``path`` (none when it is missing), after checking, before any
    work, that ``files.store_entry`` can add to it: a writable ``.json`` path whose content, if any, is an object."""
    check_writable(path, "results.json")
    if path.suffix.lower() != ".json":
        raise DDPMError(f"{flag} {path} should be a JSON file, such as results.json; nothing was written.")
    if not path.exists():
        return {}
    return read_json_object(path, "a results file (a JSON object of one entry per run)",
                            f"Nothing was written; choose another {flag} path, or move that file away.")
