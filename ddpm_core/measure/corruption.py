"""Real images damaged by a known amount, to see how far the metrics move for it.

``corrupt`` blurs or noises real digits; chapter 6 calibrates the Frechet distance and the
judge's scores on such copies before it reads them for generated samples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ddpm_core.measure.metrics import check_images
from ddpm_core.utils.errors import DDPMError

CORRUPTIONS = ("blur", "noise")


def corrupt(images: Tensor, kind: str, strength: float, seed: int = 0) -> Tensor:
    """A damaged copy of ``images``, to see how far the metrics move for a known amount of damage.

    Args:
        images: (N, 1, 28, 28) in [-1, 1].
        kind: "blur" (Gaussian blur, ``strength`` = its standard deviation in pixels) or
            "noise" (additive Gaussian noise with standard deviation ``strength``, clipped to [-1, 1]).
        strength: 0 returns an unchanged copy.
        seed: seeds the noise.
    """
    check_images(images, "images")
    if kind not in CORRUPTIONS:
        raise DDPMError(f"kind must be one of {CORRUPTIONS}, got {kind!r}.")
    if strength < 0:
        raise DDPMError(f"strength must be at least 0, got {strength}.")
    if strength == 0:
        return images.clone()
    if kind == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
        return (images + strength * noise.to(images.device)).clamp(-1.0, 1.0)
    radius = math.ceil(3 * strength)  # the kernel covers +-3 standard deviations
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / strength) ** 2)
    kernel = kernel / kernel.sum()
    # Separable blur, rows then columns; padding with the background value -1 keeps the borders dark.
    x = F.pad(images, (radius, radius, radius, radius), value=-1.0)
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))  # (N, 1, 28 + 2r, 28 + 2r) -> (N, 1, 28 + 2r, 28)
    return F.conv2d(x, kernel.view(1, 1, -1, 1))  # -> (N, 1, 28, 28)
