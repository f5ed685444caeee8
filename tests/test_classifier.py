"""The MNIST classifier that judges samples: its committed weights, its accuracy and its error messages."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ddpm_core.measure.classifier import (
    CLASSIFIER_ENV,
    MNISTClassifier,
    accuracy,
    default_path,
    load_classifier,
)
from ddpm_core.measure.train_classifier import train_classifier
from ddpm_core.training.data import load_mnist
from ddpm_core.utils.errors import DDPMError
from tests.helpers import needs_mnist


@pytest.fixture(scope="module")
def held_out_slice(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = mnist_test
    return images[:2000], labels[:2000]


@needs_mnist
def test_classifier_accuracy_on_fixed_test_slice(classifier, held_out_slice):
    images, labels = held_out_slice
    # The committed weights classify 99.05% of the first 2,000 test images correctly (99.26% of all 10,000).
    assert accuracy(classifier, images, labels) >= 0.985


def test_committed_classifier_metadata_records_a_test_accuracy_of_at_least_99_percent(classifier):
    assert classifier.metadata["format"] == "ddpm_core/classifier/1"
    assert classifier.metadata["test_images"] == 10_000
    assert classifier.metadata["test_accuracy"] >= 0.99


def test_classifier_returns_10_logits_and_128_features():
    model = MNISTClassifier().eval()
    x = torch.zeros(3, 1, 28, 28)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, model.num_features) == (3, 128)


def test_missing_classifier_file_error_names_the_path_and_how_to_retrain(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(DDPMError, match="No MNIST classifier at") as error:
        load_classifier(path)
    assert str(path) in str(error.value)
    assert "python -m ddpm_core.measure.train_classifier --out" in str(error.value)


def test_environment_variable_chooses_the_default_classifier_file(tmp_path, monkeypatch):
    monkeypatch.setenv(CLASSIFIER_ENV, str(tmp_path / "elsewhere.safetensors"))
    with pytest.raises(DDPMError, match="elsewhere.safetensors"):
        load_classifier()


def test_truncated_classifier_file_error_says_truncated_or_corrupt(tmp_path):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(default_path().read_bytes()[:5000])
    with pytest.raises(DDPMError, match="could not be read: it is truncated or corrupt"):
        load_classifier(path)


def test_garbage_classifier_file_error_says_truncated_or_corrupt(tmp_path):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"this is not a safetensors file")
    with pytest.raises(DDPMError, match="could not be read: it is truncated or corrupt"):
        load_classifier(path)


def test_safetensors_file_of_another_kind_is_refused_as_not_a_classifier(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"ddpm_core": json.dumps({"format": "ddpm_core/1"})})
    with pytest.raises(DDPMError, match="not an MNIST classifier"):
        load_classifier(path)


def test_classifier_file_with_wrong_layers_is_refused(tmp_path):
    path = tmp_path / "renamed.safetensors"
    tensors = {"extra." + k: v for k, v in MNISTClassifier().state_dict().items()}
    save_file(tensors, str(path), metadata={"ddpm_core": json.dumps({"format": "ddpm_core/classifier/1"})})
    with pytest.raises(DDPMError, match="do not fit MNISTClassifier"):
        load_classifier(path)


@pytest.mark.slow
@needs_mnist
def test_train_classifier_writes_a_file_that_loads_with_its_metadata(tmp_path):
    images, labels = load_mnist(train=True, subset=256, download=False)
    path = tmp_path / "clf.safetensors"
    metadata = train_classifier(path, epochs=1, seed=3, progress=False, images=images, labels=labels)
    loaded = load_classifier(path)
    assert loaded.metadata == metadata
    assert (metadata["epochs"], metadata["seed"], metadata["train_images"]) == (1, 3, 256)
    assert 0.0 <= metadata["test_accuracy"] <= 1.0
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file behind


def test_default_weights_ship_inside_the_package_not_the_repository():
    from pathlib import Path

    import ddpm_core
    from ddpm_core.measure.classifier import DEFAULT_PATH

    package = Path(ddpm_core.__file__).resolve().parent
    assert DEFAULT_PATH.is_relative_to(package) and DEFAULT_PATH.is_file()
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert "weights/*.safetensors" in pyproject.read_text()  # installed as package data
