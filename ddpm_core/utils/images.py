"""Images as the package stores and shows them: 8-bit grey levels, grids, PNG files.

The one conversion from the data range [-1, 1] to grey levels, ``to_uint8``, lives here; the
sample sets, the PNG grids, the command line's ``.npy`` output and the live panel (which rounds
the same way in JavaScript) all use it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """Map images in [-1, 1] (clipped) to uint8 {0..255}, shape preserved."""
    return ((images.detach().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def from_uint8(pixels: np.ndarray | Tensor) -> Tensor:
    """The inverse of ``to_uint8`` on its levels: uint8 {0..255} to float32 in [-1, 1]."""
    return torch.as_tensor(np.asarray(pixels)).to(torch.float32) / 127.5 - 1


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """Tile (N, 1, H, W) images in [-1, 1] into one uint8 (H', W') array, ``nrow`` images per row."""
    from torchvision.utils import make_grid as tv_make_grid

    images = (images.clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1], as make_grid draws
    grid = tv_make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    return to_uint8(grid[0] * 2 - 1)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> None:
    """Save images in [-1, 1] as a PNG grid, each pixel drawn ``scale`` x ``scale``, atomically."""
    from PIL import Image

    from ddpm_core.utils.files import atomic_write

    grid = make_grid(images, nrow=nrow)
    image = Image.fromarray(grid.numpy(), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    # An uncompressed grey image bounds the PNG's size, for the full-disk check.
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"), needed_bytes=image.width * image.height + 4096)


def png_bytes(grid: Tensor, scale: int = 1) -> bytes:
    """A uint8 (H, W) grid as PNG bytes, each pixel drawn ``scale`` x ``scale``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(grid.numpy()), mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
