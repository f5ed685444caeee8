"""A small convolutional MNIST classifier: the judge of generated digits.

A LeNet-style network (LeCun et al. 1998, "Gradient-based learning applied to
document recognition"): two 5x5 convolutions with max pooling, then two fully
connected layers. It reads images in the package's data range [-1, 1] and
returns logits for the ten digits. Its 128-dimensional penultimate layer,
``features(x)``, stands in for Inception-v3's pool features when
``metrics.frechet_distance`` compares generated and real digits, as the
"FID with an MNIST classifier" of the diffusion literature does.

The trained weights ship with the package as ``ddpm_core/measure/weights/mnist_classifier.safetensors``
(package data, so ``pip install .`` brings them); a ``--classifier PATH`` argument or the
environment variable ``DDPM_CLASSIFIER`` names another file. Their
safetensors metadata holds one JSON document (key ``ddpm_core``) with the
training settings, the test accuracy, the wall time and the library versions.
Retrain with

    python -m ddpm_core.measure.train_classifier --out ddpm_core/measure/weights/mnist_classifier.safetensors --epochs 6

(about five minutes on two otherwise idle CPU cores).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from ddpm_core.training.checkpoint_metadata import CLASSIFIER_FORMAT
from ddpm_core.training.describe import describe_file_type, describe_folder
from ddpm_core.training.safetensors_guard import WEIGHT_DTYPES, SafetensorsHeader, read_safetensors_header
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import check_writable, parse_json

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


def _fresh_path(path: Path) -> Path:
    """Where to train a new classifier instead of ``path``: a free ``.safetensors`` name that
    ``train_classifier`` will write, beside ``path`` when that is a file's place in a writable folder,
    else in the current folder (or the home folder): never beside a device such as /dev/zero."""
    beside = path.name not in ("", "..") and not (os.path.lexists(path) and not path.is_file())  # a device, a FIFO
    if beside:
        try:
            check_writable(path.with_suffix(".safetensors"))
        except DDPMError:
            beside = False
    stem = path.stem
    if not beside:
        try:
            check_writable(Path(DEFAULT_PATH.name))
            folder = Path()
        except DDPMError:
            folder = Path.home()
        path, stem = folder / DEFAULT_PATH.name, DEFAULT_PATH.stem
    candidate, number = path.with_suffix(".safetensors"), 1
    while os.path.lexists(candidate):
        suffix = "_classifier" if number == 1 else f"_classifier_{number}"
        candidate = path.with_name(f"{stem}{suffix}.safetensors")
        number += 1
    return candidate


def _retrain_hint(path: Path) -> str:
    # Never a path that holds a file: following the hint must not replace anything.
    return f"`python -m ddpm_core.measure.train_classifier --out {_fresh_path(path)}` (a few minutes on a CPU)"


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
