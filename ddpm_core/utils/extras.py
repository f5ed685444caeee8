"""The optional dependencies: which extra of ``pyproject.toml`` brings each, and the command that installs it.

The package runs on its required dependencies alone; two commands need more:

    evaluate (the Frechet distance)   torchmetrics           the "book" extra
    export (the ONNX graph)           onnx, onnxruntime      the "export" extra

A command calls ``require`` for what it needs before any work, so that a missing module stops it at
once, with the command that installs it where the user is: inside a checkout of the repository (a
``pyproject.toml`` naming ``ddpm-core`` beside the package) an editable install of that checkout,
elsewhere the package from the index; with the ``pip`` of the Python that runs the package.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import sys
from pathlib import Path

from ddpm_core.utils.errors import DDPMError

# The module each optional dependency is imported as, its distribution's name and the extra that brings it.
OPTIONAL = {
    "torchmetrics.image.fid": ("torchmetrics", "book"),
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
}
DISTRIBUTION = "ddpm-core"
CHECKOUT = Path(__file__).resolve().parents[2]  # the repository's root when the package runs from a checkout


def is_checkout(root: Path) -> bool:
    """Whether ``root`` holds the ``pyproject.toml`` of this package (a clone, installed editable or not)."""
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return re.search(rf'^name\s*=\s*"{DISTRIBUTION}"\s*$', text, flags=re.MULTILINE) is not None


def _quoted(text: str) -> str:
    # Double quotes keep a shell from reading the brackets of an extra as a pattern.
    return f'"{text}"' if not re.search(r'["$`\\]', text) else "'" + text.replace("'", "'\\''") + "'"


def _pip() -> str:
    """``pip`` when the first one on PATH belongs to this Python, else this Python's own ``-m pip``."""
    python = Path(sys.executable)
    found = shutil.which("pip")
    if found is not None and Path(found).parent == python.parent:
        return "pip"
    try:
        shown = os.path.relpath(python)
    except ValueError:  # another drive, on Windows
        shown = str(python)
    if shown.startswith(".."):
        shown = str(python)
    elif os.sep not in shown:
        shown = os.path.join(".", shown)
    return f"{_quoted(shown) if ' ' in shown else shown} -m pip"


def install_command(extra: str, root: Path | None = None) -> str:
    """The command that installs ``extra`` for this Python: ``pip install -e ".[extra]"`` in the root of the
    checkout ``root`` (default: the one around the package, if any), the checkout's path from anywhere else,
    ``pip install "ddpm-core[extra]"`` outside a checkout."""
    root = CHECKOUT if root is None else root
    if not is_checkout(root):
        return f"{_pip()} install {_quoted(f'{DISTRIBUTION}[{extra}]')}"
    try:
        here = Path.cwd().resolve() == root
    except OSError:  # the current folder was deleted
        here = False
    return f"{_pip()} install -e {_quoted(f'.[{extra}]' if here else f'{root}[{extra}]')}"


def missing(modules: tuple[str, ...]) -> dict[str, str]:
    """The modules of ``modules`` that cannot be imported, each with why when the reason is not its absence."""
    absent = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:  # a module set to None in sys.modules raises ImportError too
            distribution = OPTIONAL[module][0]
            broken = error.name is not None and error.name.split(".")[0] != distribution
            absent[distribution] = f" (it is installed but cannot be imported: {error})" if broken else ""
    return absent


def require(modules: tuple[str, ...], needed_for: str) -> None:
    """Refuse, before any work, to go on without the optional ``modules`` (keys of ``OPTIONAL``)."""
    absent = missing(modules)
    if not absent:
        return
    extras = sorted({OPTIONAL[module][1] for module in modules if OPTIONAL[module][0] in absent})
    names = " and ".join(f"{name}{why}" for name, why in absent.items())
    commands = " and ".join(f"`{install_command(extra)}`" for extra in extras)
    several = len(absent) > 1
    raise DDPMError(
        f"{needed_for} needs {names}, {'optional dependencies' if several else 'an optional dependency'} of "
        f"{DISTRIBUTION} that {'are' if several else 'is'} not installed here; nothing was done. Install "
        f"{'them' if several else 'it'} with {commands}, then run the same command again."
    )
