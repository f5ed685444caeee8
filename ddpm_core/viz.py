"""Pictures of images: grids of samples and the per-timestep frames of a trajectory.

The sliders that play those frames are in ``ddpm_core.slider``; the helpers the chapters
use around them (quick mode, source listings, cached results) are in ``ddpm_core.book``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddpm_core.data import to_uint8
from ddpm_core.errors import DDPMError

if TYPE_CHECKING:
    from ddpm_core.seeds import Trajectory


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """Tile (N, 1, H, W) images in [-1, 1] into one uint8 (H', W') array, ``nrow`` images per row."""
    from torchvision.utils import make_grid as tv_make_grid

    images = (images.clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1], as make_grid draws
    grid = tv_make_grid(images, nrow=nrow, padding=padding, pad_value=1.0)
    return to_uint8(grid[0] * 2 - 1)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> None:
    """Save images in [-1, 1] as a PNG grid, each pixel drawn ``scale`` x ``scale``, atomically."""
    from PIL import Image

    from ddpm_core.files import atomic_write

    grid = make_grid(images, nrow=nrow)
    image = Image.fromarray(grid.numpy(), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    # An uncompressed grey image bounds the PNG's size, for the full-disk check.
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"), needed_bytes=image.width * image.height + 4096)


def _sample_indices(num_samples: int, samples: int | Sequence[int] | None) -> list[int]:
    if samples is None:
        return list(range(num_samples))
    indices = list(range(samples)) if isinstance(samples, int) else [int(i) for i in samples]
    if not indices or min(indices) < 0 or max(indices) >= num_samples:
        raise DDPMError(
            f"samples must pick at least one of the trajectory's {num_samples} samples: a count from 1 to "
            f"{num_samples}, or indices in 0..{num_samples - 1}; got {samples!r}."
        )
    return indices


def trajectory_grids(
    trajectory: Trajectory, samples: int | Sequence[int] | None = None, columns: int | None = None
) -> tuple[Tensor, Tensor]:
    """The pictures a trajectory slider shows: one grid per captured timestep, of x_t and of predicted x_0.

    A frame is ``make_grid`` of the chosen samples, ``columns`` per row (default: up to 4): a pixel
    is ``round((clamp(x, -1, 1) + 1) * 127.5)`` as in ``ddpm_core.data.to_uint8``, and a 2-pixel
    white border separates the samples.

    Args:
        trajectory: a trajectory returned by ``ddpm_core.sampling.sample``.
        samples: which samples to show: all (None), the first ``samples`` (an int), or these indices.
        columns: samples per row of a grid.

    Returns:
        Two uint8 tensors (K, H', W'), for x_t and for predicted x_0; frame k is at ``trajectory.timesteps[k]``.
    """
    indices = _sample_indices(trajectory.xt.shape[1], samples)
    columns = min(len(indices), 4) if columns is None else columns
    if columns < 1:
        raise DDPMError(f"columns must be a positive integer, got {columns}.")
    xt = torch.stack([make_grid(frame[indices], nrow=columns) for frame in trajectory.xt])
    x0_pred = torch.stack([make_grid(frame[indices], nrow=columns) for frame in trajectory.x0_pred])
    return xt, x0_pred


def png_bytes(grid: Tensor, scale: int = 1) -> bytes:
    """A uint8 (H, W) grid as PNG bytes, each pixel drawn ``scale`` x ``scale``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(grid.numpy()), mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
