"""Pictures for the book: image grids, source listings, trajectories and timestep sliders."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from torch import Tensor

from ddpm_core.data import to_uint8

QUICK_ENV = "DDPM_QUICK"
SCRATCH_ENV = "DDPM_SCRATCH"


def quick_mode() -> bool:
    """True when ``$DDPM_QUICK`` is set to a true value: the book's chapters then shrink data,
    epochs and samples so that the tests can run them in minutes."""
    return os.environ.get(QUICK_ENV, "").lower() in ("1", "true", "yes")


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


def show_source(obj: object):
    """Display the real source of a function or class from ``ddpm_core``, highlighted.

    The book shows code this way, never as a pasted copy, so text and code cannot drift apart.
    """
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """Tile (N, 1, H, W) images in [-1, 1] into one uint8 (H', W') array, ``nrow`` images per row."""
    from torchvision.utils import make_grid as tv_make_grid

    grid = tv_make_grid((images.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=padding, pad_value=1.0)
    return to_uint8(grid[0] * 2 - 1)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> None:
    """Save images in [-1, 1] as a PNG grid, each pixel drawn ``scale`` x ``scale``."""
    from PIL import Image

    grid = make_grid(images, nrow=nrow)
    image = Image.fromarray(grid.numpy(), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)
