"""Pictures of images: grids of samples and the per-timestep frames of a trajectory.

The sliders that play those frames are in ``ddpm_core.book.slider``; the helpers the chapters
use around them (quick mode, source listings, cached results) are in ``ddpm_core.book.chapter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.images import make_grid

if TYPE_CHECKING:
    from ddpm_core.diffusion.seeds import Trajectory


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
    is ``round((clamp(x, -1, 1) + 1) * 127.5)`` as in ``ddpm_core.utils.images.to_uint8``, and a 2-pixel
    white border separates the samples.

    Args:
        trajectory: a trajectory returned by ``ddpm_core.diffusion.sampling.sample``.
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
