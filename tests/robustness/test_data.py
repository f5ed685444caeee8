"""MNIST that is missing or damaged: named with what is wrong and how to fix it, and the data folder left as it was."""

import os
from pathlib import Path

import pytest

from tests.helpers import (
    assert_clean_failure,
    needs_mnist,
    run_cli,
)


def _data_folder(tmp_path: Path, damage: bytes | None) -> Path:
    from ddpm_core.training.data import MNIST_FILES, data_root

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name).symlink_to((data_root() / "MNIST" / "raw" / name).resolve())
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte").write_bytes(damage)
    return tmp_path / "data"


@needs_mnist
@pytest.mark.parametrize("damage", ["truncated", "random-bytes"])
def test_a_damaged_mnist_file_is_named_with_what_is_wrong(damage, tmp_path, capsys, monkeypatch):
    from ddpm_core.training.data import data_root

    original = (data_root() / "MNIST" / "raw" / "train-images-idx3-ubyte").read_bytes()
    content = original[:100_000] if damage == "truncated" else os.urandom(100_000)
    monkeypatch.setenv("DDPM_DATA_DIR", str(_data_folder(tmp_path, content)))
    code, output = run_cli(["train", "--out", str(tmp_path / "run"), "--subset", "64", "--epochs", "1",
                            "--no-progress"], capsys)
    words = ["100,000 bytes, expected 47,040,016"] if damage == "truncated" else ["header reads", "expected ['0x803'"]
    assert_clean_failure(code, output, 2, "train-images-idx3-ubyte is damaged", "Replace it", *words)
    assert "(missing: )" not in output and "AssertionError" not in output


def test_an_empty_data_folder_is_left_empty_when_the_download_fails(tmp_path, capsys, monkeypatch):
    from torchvision.datasets import MNIST

    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("DDPM_DATA_DIR", str(empty))
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])  # refused at once: no network needed
    code, output = run_cli(["train", "--out", str(tmp_path / "run"), "--subset", "64", "--epochs", "1",
                            "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, "MNIST was not found and could not be downloaded", "DDPM_DATA_DIR")
    assert list(empty.iterdir()) == []
