"""Pictures for the book: image grids, trajectories and timestep sliders."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ddpm_core.data import to_uint8


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


__all__ = ["make_grid", "save_grid", "torch"]
