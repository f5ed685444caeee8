"""Small models and data shared by the unit tests."""

import os
from pathlib import Path

import pytest
import torch

from ddpm_core import NoiseSchedule, UNet, UNetConfig

TINY_CONFIG = UNetConfig(channels=(8, 8, 16), time_freq_dim=8, time_embed_dim=16)
REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0) -> UNet:
    torch.manual_seed(seed)
    return UNet(TINY_CONFIG).eval()


def tiny_schedule(num_steps: int = 20) -> NoiseSchedule:
    return NoiseSchedule(num_steps=num_steps, beta_start=1e-3, beta_end=0.2)


def mnist_available() -> bool:
    root = Path(os.environ.get("DDPM_DATA_DIR", "data"))
    return (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


needs_mnist = pytest.mark.skipif(
    not mnist_available() and os.environ.get("CI") != "true",
    reason="MNIST not found: set DDPM_DATA_DIR to a folder holding MNIST/raw/ (CI always sets it)",
)
