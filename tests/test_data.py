"""MNIST loading: the range, the real data, and the error when the files are missing."""

import pytest
import torch

from ddpm_core import DDPMError, load_mnist
from ddpm_core.utils.images import to_uint8
from tests.helpers import needs_mnist


@needs_mnist
def test_mnist_is_scaled_to_minus_one_one_with_the_published_labels():
    images, labels = load_mnist(train=True, subset=10)
    assert images.shape == (10, 1, 28, 28) and images.dtype == torch.float32
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert labels.tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    test_images, test_labels = load_mnist(train=False)
    assert test_images.shape == (10_000, 1, 28, 28)
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_mnist
def test_to_uint8_recovers_the_original_pixels():
    images, _ = load_mnist(train=False, subset=5)
    from torchvision.datasets import MNIST

    from ddpm_core.training.data import data_root

    raw = MNIST(root=str(data_root()), train=False).data[:5]
    assert torch.equal(to_uint8(images)[:, 0], raw)


def test_missing_mnist_names_the_files_the_folder_and_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_DATA_DIR", str(tmp_path))
    with pytest.raises(DDPMError) as info:
        load_mnist(download=False)
    message = str(info.value)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte", str(tmp_path / "MNIST" / "raw"), "DDPM_DATA_DIR"):
        assert name in message
    assert "\n" not in message


def test_a_failed_download_gives_the_same_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://example, got:\nno network")

    monkeypatch.setattr(tv_mnist.MNIST, "download", offline)
    with pytest.raises(DDPMError, match=r"could not be downloaded \(RuntimeError: Error downloading .*DDPM_DATA_DIR"):
        load_mnist(root=tmp_path)
