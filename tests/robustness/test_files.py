"""Files the package writes: atomically, and with the permissions an ordinary write would give them."""

import os

import torch

from ddpm_core import TrainConfig, train
from tests.helpers import (
    TINY_CONFIG,
)


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG,
              images=torch.rand(32, 1, 28, 28) * 2 - 1, device="cpu", progress=False)
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "resume.pt", "epochs/epoch_001.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name
