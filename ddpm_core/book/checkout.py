"""Whether the package runs from a checkout of its repository, which the book's own commands need.

The stored sample sets (``book/samples``), the short runs of the training bugs (``runs/bugs``) and the
scratch copies of the repository that hold a bug all live beside the package, in a clone of the
repository. A package installed into site-packages has no such folder around it: a command that
needs one refuses in one line before any work, instead of writing a ``runs/`` or ``book/`` folder
into site-packages or failing halfway through.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.extras import CHECKOUT as REPO  # the package's parent folder: the repository in a checkout

MARKERS = ("book", "pyproject.toml")  # what a checkout holds beside the package and site-packages does not


def checkout_problem(git: bool = False) -> str | None:
    """Why ``REPO`` is not a checkout of the repository (with ``git``: the top of a git work tree), or None."""
    missing = [name for name in MARKERS if not (REPO / name).exists()]
    if missing:
        return f"{REPO} has no {' and no '.join(missing)} beside the package"
    if not git:
        return None
    try:
        found = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, text=True,
                               timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"git could not be run in {REPO} ({error})"
    if found.returncode != 0:
        reason = (found.stderr.strip().splitlines() or [f"exit status {found.returncode}"])[-1]
        return f"git finds no checkout at {REPO} ({reason})"
    if Path(found.stdout.strip()).resolve() != REPO:
        return f"{REPO} lies inside the git checkout {found.stdout.strip()} without being its top"
    return None


def require_checkout(command: str, git: bool = False) -> None:
    """Refuse, before any work, to run ``command`` outside a checkout of the repository (with ``git``: a git one)."""
    problem = checkout_problem(git)
    if problem is not None:
        raise DDPMError(f"{command} needs a checkout of the repository, the book beside the package, but {problem}. "
                        f"Run it in a clone of the repository (git clone, then pip install -e . in the clone).")
