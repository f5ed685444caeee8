"""A small convolutional MNIST classifier: the judge of generated digits.

A LeNet-style network (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"): two 5x5 convolutions with max pooling, then two fully
connected layers. It reads images in the package's data range [-1, 1] and
returns logits for the ten digits. Its 128-dimensional penultimate layer,
``features(x)``, stands in for Inception-v3's pool features when
``metrics.frechet_distance`` compares generated and real digits, as the
"FID with an MNIST classifier" of the diffusion literature does.

The trained weights ship with the package as ``ddpm_core/weights/mnist_classifier.safetensors``
(package data, so ``pip install .`` brings them); a ``--classifier PATH`` argument or the
environment variable ``DDPM_CLASSIFIER`` names another file. Their
safetensors metadata holds one JSON document (key ``ddpm_core``) with the
training settings, the test accuracy, the wall time and the library versions.
Retrain with

    python -m ddpm_core.classifier --out ddpm_core/weights/mnist_classifier.safetensors --epochs 6

(about five minutes on two otherwise idle CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_core import arguments
from ddpm_core.checkpoint import (
    CLASSIFIER_FORMAT,
    WEIGHT_DTYPES,
    SafetensorsHeader,
    describe_file_type,
    describe_folder,
    read_safetensors_header,
)
from ddpm_core.data import load_mnist
from ddpm_core.device import device_description
from ddpm_core.errors import DDPMError
from ddpm_core.files import atomic_write, check_output_file, library_versions, parse_json
from ddpm_core.progress import EpochProgress

FORMAT = CLASSIFIER_FORMAT  # defined beside the checkpoints', which must tell the two apart
CLASSIFIER_ENV = "DDPM_CLASSIFIER"
DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "mnist_classifier.safetensors"  # package data
NUM_CLASSES = 10


class MNISTClassifier(nn.Module):
    """LeNet-style CNN: (B, 1, 28, 28) images in [-1, 1] -> (B, 10) logits."""

    num_features = 128  # width of the penultimate layer; torchmetrics' FID reads this attribute

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5, padding=2)
        self.fc1 = nn.Linear(32 * 7 * 7, self.num_features)
        self.fc2 = nn.Linear(self.num_features, NUM_CLASSES)
        self.dropout = nn.Dropout(dropout)
        self.metadata: dict[str, Any] = {}  # filled by load_classifier from the weights file

    def features(self, x: Tensor) -> Tensor:
        """The penultimate-layer activations, (B, 1, 28, 28) -> (B, 128)."""
        # Inputs outside the data range (an early x0_pred, an unclipped sample) are clipped to it,
        # as the sampler's final output would be.
        x = x.clamp(-1.0, 1.0)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 1, 28, 28) -> (B, 16, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 16, 14, 14) -> (B, 32, 7, 7)
        return F.relu(self.fc1(x.flatten(1)))  # (B, 32 * 7 * 7) -> (B, 128)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.features(x)))


@torch.no_grad()
def predict_logits(model: MNISTClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Logits (N, 10) for images (N, 1, 28, 28) in [-1, 1], in eval mode and in batches, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


@torch.no_grad()
def predict_features(model: MNISTClassifier, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Penultimate features (N, 128) for images (N, 1, 28, 28) in [-1, 1], in eval mode and in batches."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat(
        [model.features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )


def accuracy(model: MNISTClassifier, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """The fraction of ``images`` whose predicted digit equals ``labels``."""
    if len(images) != len(labels):
        raise DDPMError(f"accuracy needs one label per image, got {len(images)} images and {len(labels)} labels.")
    if len(images) == 0:
        raise DDPMError("accuracy needs at least one image.")
    predicted = predict_logits(model, images, batch_size).argmax(dim=1)
    return (predicted == labels.cpu()).float().mean().item()


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
    if epochs < 1:
        raise DDPMError(f"epochs must be a positive integer, got {epochs}.")
    if (images is None) != (labels is None):
        raise DDPMError("Pass both images and labels to train_classifier, or neither (to use MNIST's training set).")
    if images is None:
        images, labels = load_mnist(train=True)
    if len(images) != len(labels):
        raise DDPMError(f"train_classifier needs one label per image, got {len(images)} and {len(labels)}.")
    test_images, test_labels = load_mnist(train=False)

    torch.manual_seed(seed)  # the initial weights and dropout
    model = MNISTClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)  # the data order and the shifts

    started = time.perf_counter()
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
    wall_time_s = time.perf_counter() - started

    metadata = {
        "format": FORMAT,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "max_shift": max_shift,
        "train_images": len(images),
        "loss_history": [round(v, 5) for v in loss_history],
        "test_accuracy": accuracy(model, test_images, test_labels),
        "test_images": len(test_images),
        "wall_time_s": round(wall_time_s, 1),
        "device": device_description(torch.device("cpu")),
        "versions": library_versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(out_path), lambda tmp: save_file(tensors, tmp, metadata={"ddpm_core": json.dumps(metadata)}))
    return metadata


def _fresh_path(path: Path) -> Path:
    """``path`` if no file is there, else the first free ``<stem>_classifier[_N].safetensors`` beside it."""
    candidate, number = path, 1
    while candidate.exists():
        suffix = "_classifier" if number == 1 else f"_classifier_{number}"
        candidate = path.with_name(f"{path.stem}{suffix}.safetensors")
        number += 1
    return candidate


def _retrain_hint(path: Path) -> str:
    # Never a path that holds a file: following the hint must not replace anything.
    return f"`python -m ddpm_core.classifier --out {_fresh_path(path)}` (a few minutes on a CPU)"


def default_path() -> Path:
    """The classifier file: ``$DDPM_CLASSIFIER`` if set, else the packaged ``DEFAULT_PATH``."""
    return Path(os.environ.get(CLASSIFIER_ENV, DEFAULT_PATH))


def _classifier_file(path: Path) -> None:
    """Refuse a path that is not a regular file, looking at it with ``stat`` only (a FIFO is never opened)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        packaged = "" if path == DEFAULT_PATH else f" (the packaged copy is {DEFAULT_PATH})"
        why = "" if isinstance(error, (FileNotFoundError, NotADirectoryError)) else f" ({error.strerror})"
        raise DDPMError(
            f"No MNIST classifier at {path}{why}{packaged}: reinstall ddpm-core, pass --classifier PATH or set "
            f"{CLASSIFIER_ENV} to a copy, or train one with {_retrain_hint(path)}."
        ) from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        what = f"a folder, not a classifier file; {describe_folder(path)}"
    else:
        what = f"not a regular file ({describe_file_type(mode)}), so it was not opened"
    raise DDPMError(
        f"No MNIST classifier at {path}: it is {what}. Pass the classifier's .safetensors file (the packaged one is "
        f"{DEFAULT_PATH}), or train one with {_retrain_hint(path)}."
    )


def _classifier_metadata(path: Path, header: SafetensorsHeader) -> dict[str, Any]:
    """The classifier file's metadata document, parsed with bounded size and depth; refused unless an object."""
    raw = header.metadata.get("ddpm_core", "{}")  # a file without it is refused below as not a classifier
    try:
        metadata = parse_json(raw)
    except ValueError as error:
        problem = str(error)
    else:
        if isinstance(metadata, dict):
            return metadata
        kind = {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(metadata))
        problem = f"it is a JSON {kind or 'null'}, not an object"
    raise DDPMError(
        f"The MNIST classifier {path} has unusable metadata ({problem}); the file was damaged or edited by hand. "
        f"Pass the classifier's .safetensors file (the packaged one is {DEFAULT_PATH}), or train a new one with "
        f"{_retrain_hint(path)}."
    )


def load_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> MNISTClassifier:
    """Load the trained classifier in eval mode; by default from ``default_path()``.

    The file's header is read and checked before a byte of weights is mapped: its metadata, and
    the names, shapes and sizes of its tensors, which must be exactly MNISTClassifier's. The
    file's metadata is available afterwards as ``model.metadata``.
    """
    path = Path(path) if path is not None else default_path()
    _classifier_file(path)
    try:
        header = read_safetensors_header(path)
    except (OSError, ValueError) as error:
        raise DDPMError(
            f"The MNIST classifier {path} could not be read: it is truncated or corrupt ({error}). "
            f"Restore the committed file, or train a new one with {_retrain_hint(path)}."
        ) from None
    metadata = _classifier_metadata(path, header)
    if metadata.get("format") != FORMAT:
        shown = repr(metadata.get("format"))
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise DDPMError(
            f"{path} is a safetensors file but not an MNIST classifier (its metadata format is "
            f"{shown}, expected {FORMAT!r}). Pass the classifier file, or train one with "
            f"{_retrain_hint(path)}."
        )
    with torch.device("meta"):  # shapes only
        expected = {k: tuple(v.shape) for k, v in MNISTClassifier().state_dict().items()}
    found = {k: entry.shape for k, entry in header.tensors.items()}
    floats = all(entry.dtype in WEIGHT_DTYPES for entry in header.tensors.values())
    if found != expected or not floats:
        # The names, sizes and dtypes are a hostile file's to choose: only a few, cut short, are shown.
        odd = sorted(set(found) ^ set(expected)) + sorted(k for k in set(found) & set(expected)
                                                          if found[k] != expected[k])
        odd += sorted(k for k, entry in header.tensors.items() if entry.dtype not in WEIGHT_DTYPES)
        raise DDPMError(
            f"The weights in {path} do not fit MNISTClassifier (different layer names, shapes or types: "
            f"{', '.join(repr(k[:60]) for k in odd[:5])}); the file was written by another version of the network "
            f"or is not a classifier. Train a new one with {_retrain_hint(path)}."
        )
    try:
        tensors = load_file(str(path))  # mapped only now: its size is that of MNISTClassifier's weights
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DDPMError(
            f"The MNIST classifier {path} could not be read: it is truncated or corrupt ({error}). "
            f"Restore the committed file, or train a new one with {_retrain_hint(path)}."
        ) from None
    model = MNISTClassifier()
    model.load_state_dict(tensors)
    model.metadata = metadata
    return model.to(device).eval()


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_core.classifier --out PATH --epochs N``: train the judge and print its test accuracy."""
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_core.classifier", description="Train the MNIST classifier used to score samples."
    )
    parser.add_argument("--out", type=Path, required=True, help=f"weights file to write (the book's: {DEFAULT_PATH})")
    parser.add_argument("--epochs", type=arguments.positive_int, default=6,
                        help="passes over the training set (default 6)")
    parser.add_argument("--seed", type=arguments.seed_int, default=0,
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
