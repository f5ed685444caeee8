"""MNIST as tensors in [-1, 1], read through torchvision.

The data root comes from the environment variable ``DDPM_DATA_DIR`` (default
``data/``). torchvision expects the four uncompressed IDX files in
``<root>/MNIST/raw/``; where they are missing it tries to download them, and
where that fails too we raise one clear error instead of torchvision's.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ddpm_core.errors import DDPMError

DATA_DIR_ENV = "DDPM_DATA_DIR"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def data_root() -> Path:
    """The folder that holds ``MNIST/raw/``: ``$DDPM_DATA_DIR``, else ``data/``."""
    return Path(os.environ.get(DATA_DIR_ENV, "data"))


def _missing_files(root: Path) -> list[str]:
    raw = root / "MNIST" / "raw"
    return [name for name in MNIST_FILES if not (raw / name).is_file()]


def _one_line(error: Exception, limit: int = 160) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _mnist_error(root: Path, missing: list[str], cause: str) -> DDPMError:
    raw = (root / "MNIST" / "raw").resolve()
    return DDPMError(
        f"MNIST was not found and could not be downloaded ({cause}). Expected the four files "
        f"{', '.join(MNIST_FILES)} in {raw} (missing: {', '.join(missing)}). Put a copy there, or point "
        f"the environment variable {DATA_DIR_ENV} at a folder whose MNIST/raw/ holds them, for example "
        f"`export {DATA_DIR_ENV}=../shared/data`."
    )


def load_mnist(
    train: bool = True,
    root: str | Path | None = None,
    subset: int | None = None,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    """Load MNIST images as float32 (N, 1, 28, 28) in [-1, 1] and labels as int64 (N,).

    Args:
        train: the 60,000 training images if True, else the 10,000 test images.
        root: the data root; defaults to ``data_root()``.
        subset: keep only the first ``subset`` images (in the dataset's order).
        download: let torchvision try to download missing files.
    """
    from torchvision.datasets import MNIST

    root = Path(root) if root is not None else data_root()
    if subset is not None and subset < 1:
        raise DDPMError(f"subset must be a positive number of images, got {subset}.")
    missing = _missing_files(root)
    if missing and not download:
        raise _mnist_error(root, missing, "downloading was turned off")
    try:
        dataset = MNIST(root=str(root), train=train, download=bool(missing))
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise _mnist_error(root, _missing_files(root), _one_line(error)) from None
    images = dataset.data
    labels = dataset.targets
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    # uint8 {0..255} -> float {-1..1}: the data range the forward process assumes (Ho et al. 2020, sec. 3.3).
    images = images.unsqueeze(1).float() / 127.5 - 1.0
    return images, labels.long()


def to_uint8(images: Tensor) -> Tensor:
    """Map images in [-1, 1] (clipped) to uint8 {0..255}, shape preserved."""
    return ((images.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
