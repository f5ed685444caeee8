"""Training the MNIST judge: Adam with cosine decay and small random shifts, and its command line.

    python -m ddpm_core.measure.train_classifier --out PATH --epochs 6

writes the weights and their metadata (about five minutes on two otherwise idle CPU cores). The
network itself, and how the package loads it, are in ``ddpm_core.measure.classifier``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_core.measure.classifier import DEFAULT_PATH, FORMAT, MNISTClassifier, accuracy
from ddpm_core.training.data import load_mnist
from ddpm_core.utils.arguments import positive_int, seed_int
from ddpm_core.utils.device import device_description
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import atomic_write, check_output_file, library_versions
from ddpm_core.utils.progress import EpochProgress


def _shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate every image by its own random whole-pixel offset in [-max_shift, max_shift], background filled."""
    b, _, h, w = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).float()
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 2.0 * shifts[:, 0] / w  # one pixel is 2/W in grid_sample's [-1, 1] coordinates
    theta[:, 1, 2] = 2.0 * shifts[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # grid_sample pads with 0; shifting to [0, 2] first makes the padding the background value -1.
    return F.grid_sample(x + 1.0, grid, mode="nearest", padding_mode="zeros", align_corners=False) - 1.0


def train_classifier(
    out_path: str | Path,
    epochs: int = 6,
    seed: int = 0,
    progress: bool = True,
    images: Tensor | None = None,
    labels: Tensor | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    max_shift: int = 2,
) -> dict[str, Any]:
    """Train ``MNISTClassifier`` with Adam and write its weights and metadata to ``out_path``.

    The learning rate follows a cosine decay from ``lr`` to 0 over all steps
    (Loshchilov & Hutter 2017), and every training image is shifted by up to
    ``max_shift`` pixels, a light augmentation that makes the judge tolerant of
    generated digits a little off centre.

    Args:
        out_path: the ``.safetensors`` file to write (atomically; an existing file is replaced).
        epochs: passes over the training set.
        seed: sets the initial weights, the data order, the shifts and dropout.
        progress: show a tqdm progress bar per epoch.
        images, labels: training data, (N, 1, 28, 28) in [-1, 1] and (N,); default: MNIST's 60,000 training images.
        batch_size: images per step.
        lr: the peak Adam learning rate.
        max_shift: largest translation of the augmentation, in pixels; 0 turns it off.

    Returns:
        The metadata written into the file (settings, test accuracy on MNIST's 10,000 test images, wall time, ...).
    """
    images, labels = _training_set(epochs, images, labels)
    test_images, test_labels = load_mnist(train=False)
    torch.manual_seed(seed)  # the initial weights and dropout
    model = MNISTClassifier()
    started = time.perf_counter()
    loss_history = _fit(model, images, labels, epochs, seed, batch_size, lr, max_shift, progress)
    settings = {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "max_shift": max_shift}
    metadata = {
        "format": FORMAT,
        **settings,
        "train_images": len(images),
        "loss_history": [round(v, 5) for v in loss_history],
        "test_accuracy": accuracy(model, test_images, test_labels),
        "test_images": len(test_images),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "device": device_description(torch.device("cpu")),
        "versions": library_versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(out_path), lambda tmp: save_file(tensors, tmp, metadata={"ddpm_core": json.dumps(metadata)}))
    return metadata


def _training_set(epochs: int, images: Tensor | None, labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """The images and labels to train on (MNIST's training set when neither is given), after the checks."""
    if epochs < 1:
        raise DDPMError(f"epochs must be a positive integer, got {epochs}.")
    if (images is None) != (labels is None):
        raise DDPMError("Pass both images and labels to train_classifier, or neither (to use MNIST's training set).")
    if images is None:
        images, labels = load_mnist(train=True)
    if len(images) != len(labels):
        raise DDPMError(f"train_classifier needs one label per image, got {len(images)} and {len(labels)}.")
    return images, labels


def _fit(model: MNISTClassifier, images: Tensor, labels: Tensor, epochs: int, seed: int, batch_size: int,
         lr: float, max_shift: int, progress: bool) -> list[float]:
    """Train ``model`` in place: Adam at ``lr`` with cosine decay to 0, shuffled batches, each image shifted
    by up to ``max_shift`` pixels. Returns the mean loss of each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)  # the data order and the shifts
    loss_history = []
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        epoch_progress = EpochProgress(steps_per_epoch, f"classifier epoch {epoch}/{epochs}", progress)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            x, y = images[index], labels[index]
            if max_shift > 0:
                x = _shift(x, max_shift, generator)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_progress.add(loss.item(), len(y))
        epoch_progress.close()
        loss_history.append(epoch_progress.mean)
        if progress:
            tqdm.write(f"classifier epoch {epoch}/{epochs}: mean loss {loss_history[-1]:.4f}")
    return loss_history


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_core.measure.train_classifier --out PATH --epochs N``: train the judge, print its accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_core.measure.train_classifier",
        description="Train the MNIST classifier used to score samples.",
    )
    parser.add_argument("--out", type=Path, required=True, help=f"weights file to write (the book's: {DEFAULT_PATH})")
    parser.add_argument("--epochs", type=positive_int, default=6,
                        help="passes over the training set (default 6)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed for weights, data order and shifts (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing file at --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        check_output_file(args.out, (".safetensors",), force=args.force, what="classifier weights")
        metadata = train_classifier(args.out, epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
    except DDPMError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.out}; run the same command again to train.", file=sys.stderr)
        return 130
    print(
        f"wrote {args.out}: test accuracy {metadata['test_accuracy']:.4f} on {metadata['test_images']} images, "
        f"{metadata['wall_time_s']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
