"""MNIST as tensors in [-1, 1], read through torchvision.

The data root comes from the environment variable ``DDPM_DATA_DIR`` (default
``data/``). torchvision expects the four uncompressed IDX files in
``<root>/MNIST/raw/``; where they are missing it tries to download them, and
where that fails too we raise one clear error instead of torchvision's, and
remove the empty folders the attempt created. A file that is there but damaged
(truncated, or not an IDX file) is named, with its size and header, before
torchvision reads it.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

from torch import Tensor

from ddpm_core.utils.errors import DDPMError

DATA_DIR_ENV = "DDPM_DATA_DIR"
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The IDX header of each file: magic number (0x0803 images, 0x0801 labels), then the sizes of its dimensions.
IDX_SHAPES = {
    "train-images-idx3-ubyte": (0x0803, (60000, 28, 28)),
    "train-labels-idx1-ubyte": (0x0801, (60000,)),
    "t10k-images-idx3-ubyte": (0x0803, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": (0x0801, (10000,)),
}


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
    which = f" (missing: {', '.join(missing)})" if missing else ""
    return DDPMError(
        f"MNIST was not found and could not be downloaded ({cause}). Expected the four files "
        f"{', '.join(MNIST_FILES)} in {raw}{which}. Put a copy there, or point "
        f"the environment variable {DATA_DIR_ENV} at a folder whose MNIST/raw/ holds them, for example "
        f"`export {DATA_DIR_ENV}=../shared/data`."
    )


def check_idx_file(path: Path) -> None:
    """Refuse an MNIST file whose IDX header or size is not the one of the original file, naming both."""
    magic, dims = IDX_SHAPES[path.name]
    expected_size = 4 + 4 * len(dims) + math.prod(dims)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * len(dims))
    found = struct.unpack(f">{len(header) // 4}I", header[: len(header) // 4 * 4]) if header else ()
    if found == (magic, *dims) and size == expected_size:
        return
    if found[:1] != (magic,) or tuple(found[1:]) != dims:
        read = [hex(found[0]), *found[1:]] if found else "nothing"
        problem = f"its header reads {read}, expected {[hex(magic), *dims]}"
    else:
        problem = f"it has {size:,} bytes, expected {expected_size:,} (it is truncated or padded)"
    raise DDPMError(
        f"The MNIST file {path.resolve()} is damaged: {problem}. Replace it with a good copy (the uncompressed "
        f"IDX file of the same name), or delete it and run again to let torchvision download it."
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
    for name in MNIST_FILES:
        if name not in missing:
            check_idx_file(root / "MNIST" / "raw" / name)
    raw = (root / "MNIST" / "raw").absolute()
    created = [folder for folder in (raw, *raw.parents) if not folder.exists()][::-1]  # outermost first
    try:
        dataset = MNIST(root=str(root), train=train, download=bool(missing))
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ...
        missing = _missing_files(root)
        for folder in reversed(created):  # leave the data folder as it was found
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise _mnist_error(root, missing, _one_line(error)) from None
    images = dataset.data
    labels = dataset.targets
    if subset is not None:
        images, labels = images[:subset], labels[:subset]
    # uint8 {0..255} -> float {-1..1}: the data range the forward process assumes
    # (Ho et al. 2020, sec. 3.3)
    images = images.unsqueeze(1).float() / 127.5 - 1.0
    return images, labels.long()
