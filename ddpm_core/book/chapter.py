"""Helpers for the book's chapters: quick mode, source listings, checked claims, small plots, Colab.

The chapters (``book/*.ipynb``) import these instead of defining their own:

- ``chapter_setup``: what every chapter's set-up cell needs, once: the repository's paths and
  checkpoints, the figures' resolution, and whether this is the tests' quick run
  (``Chapter.quick``); ``Chapter.full_size_claims`` names the claims that rest on the book's
  full sample sizes;
- ``quick_mode`` and ``output_dir``: the switch between the full run that produced the stored
  outputs and the quick run of the tests, which writes only into a scratch folder;
- ``show_source``: the real source of a package function, so a listing cannot drift from the
  code (``tests/test_book.py`` compares every stored listing with today's source);
- ``check``: a claim of the text, stated as a condition that prints a ✓ line or stops the chapter;
- ``show_grid`` and ``correlation``: a grid of digits on a matplotlib axis, and the mean
  correlation of two batches of images;
- ``training_time``: the one measured time of the book's 15-epoch training, which every page
  quotes (``book/results/training_time.json``, written by ``benchmarks.training_time``);
- ``colab_cell`` and ``colab_setup``: the first cell of every chapter, which on Colab clones
  the book's repository (``repository.url`` in ``_config.yml``) and installs it.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from ddpm_core.book.checkout import REPO  # the repository: the package and book/ side by side
from ddpm_core.utils.files import atomic_write
from ddpm_core.utils.images import make_grid

if TYPE_CHECKING:
    import matplotlib.axes
    from IPython.display import Code

QUICK_ENV = "DDPM_QUICK"
SCRATCH_ENV = "DDPM_SCRATCH"
COLAB_CLONE = "/content/ddpm-book"  # where the Colab cell clones the repository
TRAINING_TIME = REPO / "book" / "results" / "training_time.json"
# The committed checkpoints, relative to the repository (the sample sets store them in this form).
BOOK_MODEL = "book/checkpoints/ddpm_mnist.safetensors"  # chapter 4's run: the book's model
REFERENCE_MODEL = "book/checkpoints/reference_recipe.safetensors"  # the reference run's recipe (chapter 7)
CONDITIONAL_MODEL = "book/checkpoints/ddpm_mnist_conditional.safetensors"  # chapter 9's class-conditional model


def quick_mode() -> bool:
    """True when ``$DDPM_QUICK`` is set to a true value: the book's chapters then shrink data,
    epochs and samples so that the tests can run them in minutes."""
    return os.environ.get(QUICK_ENV, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Chapter:
    """What a chapter's set-up cell gives the cells below it."""

    quick: bool  # the tests' quick run: smaller measurements, artefacts in the scratch folder
    repo: Path  # the repository
    model: Path  # the book's model, trained in chapter 4
    reference_model: Path  # the same network trained with the reference run's recipe
    conditional_model: Path  # the class-conditional model of chapter 9

    def full_size_claims(self, *claims: str) -> None:
        """Name the claims of this chapter that rest on the book's full sample sizes.

        ``check`` lists them, instead of holding them, in the tests' quick run, whose few
        samples cannot bear them. A chapter calls this from its hidden set-up cell, so that
        its visible checks read as the claims they are.
        """
        _FULL_SIZE_CLAIMS.update(claims)


_FULL_SIZE_CLAIMS: set[str] = set()  # claims held only at the book's full sample sizes


def chapter_setup(dpi: int = 100) -> Chapter:
    """The set-up every chapter repeats: its paths, its mode and matplotlib's resolution (``dpi``), and the CPU's
    allocator set to keep freed memory, as the samplers of the chapters run faster with it (``keep_freed_memory``)."""
    import matplotlib.pyplot as plt

    from ddpm_core.utils.device import keep_freed_memory

    plt.rcParams["figure.dpi"] = dpi
    keep_freed_memory()
    return Chapter(quick=quick_mode(), repo=REPO, model=REPO / BOOK_MODEL, reference_model=REPO / REFERENCE_MODEL,
                   conditional_model=REPO / CONDITIONAL_MODEL)


def output_dir(full_mode_dir: str | Path) -> Path:
    """Where a chapter writes its artefacts: ``full_mode_dir`` in full mode; in quick mode a
    scratch folder (``$DDPM_SCRATCH``, default ``scratch/``) so that a quick run never
    overwrites a committed checkpoint or figure."""
    if quick_mode():
        path = Path(os.environ.get(SCRATCH_ENV, "scratch")) / Path(full_mode_dir).name
    else:
        path = Path(full_mode_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def show_source(obj: object) -> Code:
    """Display the real source of a function or class from ``ddpm_core``, highlighted.

    The book shows code this way, never as a pasted copy, so text and code cannot drift apart.
    """
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def check(passed: bool, claim: str, detail: str = "") -> None:
    """State a claim the chapter makes and hold it to the numbers: print "✓ claim", or raise.

    The chapters check their prose with this, so that a broken formula in the package fails the
    chapter (and its test) instead of quietly changing a figure. A claim that rests on the
    book's sample sizes (``Chapter.full_size_claims``) is only listed, not held, in the tests'
    quick run, whose few samples cannot bear it.
    """
    shown = f"{claim} ({detail})" if detail else claim
    if claim in _FULL_SIZE_CLAIMS and quick_mode():
        print(textwrap.fill(f"- not held on a quick run's few samples: {shown}", width=88, subsequent_indent="  "))
        return
    if not passed:
        raise AssertionError(f"✗ {shown}: the numbers above no longer support this claim.")
    # wrapped to the width of the book's code cells, so the line never scrolls on the page
    print(textwrap.fill(f"✓ {shown}", width=88, subsequent_indent="  "))


def show_grid(
    images: Tensor, title: str, nrow: int = 8, ax: matplotlib.axes.Axes | None = None
) -> matplotlib.axes.Axes:
    """Draw images in [-1, 1] as a grid, ``nrow`` per row, on ``ax`` (default: a new figure sized to fit)."""
    import matplotlib.pyplot as plt

    if ax is None:
        ax = plt.subplots(figsize=(nrow * 0.9, len(images) / nrow * 0.9 + 0.4))[1]
    ax.imshow(make_grid(images, nrow=nrow), cmap="gray", vmin=0, vmax=255)
    ax.set_title(title)
    ax.axis("off")
    return ax


def training_time() -> dict[str, Any]:
    """The book's 15-epoch training time, measured once: ``estimated_minutes`` on ``machine`` with
    ``threads`` threads, and the ``method`` (a few hundred timed steps, extrapolated)."""
    import json

    return json.loads(TRAINING_TIME.read_text())


def correlation(a: Tensor, b: Tensor) -> float:
    """The Pearson correlation of each image in ``a`` with the same image in ``b``, averaged over the batch."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-12)).mean().item()


def repository_url(config_path: str | Path) -> str:
    """The book's repository address, ``repository.url`` of the Jupyter Book ``_config.yml``."""
    import yaml

    with open(config_path, encoding="utf-8") as f:
        return yaml.safe_load(f)["repository"]["url"]


def colab_cell(url: str) -> str:
    """The source of every chapter's first cell for the repository at ``url``.

    Run ``write_colab_cells`` after changing ``repository.url`` in ``_config.yml``;
    ``tests/test_book.py`` checks that the chapters agree with it.
    """
    return (
        "# On Colab: clone the book's repository and install it; elsewhere, do nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        "    # the address is repository.url in _config.yml\n"
        f'    REPOSITORY = "{url}"\n'
        f'    CLONE = "{COLAB_CLONE}"\n'
        '    subprocess.run(["git", "clone", "-q", REPOSITORY, CLONE], check=True)\n'
        "    sys.path.insert(0, CLONE)\n"
        "    from ddpm_core.book.chapter import colab_setup\n"
        "\n"
        "    colab_setup(CLONE)"
    )


def colab_setup(clone: str | Path) -> None:
    """On Colab, after the clone: install the book's requirements and work from its ``book/`` folder,
    as the chapters expect."""
    clone = Path(clone)
    requirements = str(clone / "requirements.txt")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", requirements], check=True)
    os.chdir(clone / "book")


def write_colab_cells(repo: str | Path) -> list[Path]:
    """Rewrite the first code cell of every chapter under ``repo/book`` from ``repo/_config.yml``.

    Returns the notebooks that changed. Stored outputs are kept (the cell has none).
    """
    import nbformat

    repo = Path(repo)
    source = colab_cell(repository_url(repo / "_config.yml"))
    changed = []
    for path in sorted((repo / "book").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if c.cell_type == "code")
        if cell.source != source:
            cell.source = source
            atomic_write(path, lambda tmp, nb=notebook: nbformat.write(nb, tmp))
            changed.append(path)
    return changed
