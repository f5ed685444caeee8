"""Small models, data and command-line helpers shared by the unit tests."""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpm_core import NoiseSchedule, UNet, UNetConfig
from ddpm_core.app.cli import main
from ddpm_core.measure.classifier import DEFAULT_PATH as DEFAULT_CLASSIFIER

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


DDPM = [sys.executable, "-m", "ddpm_core"]
# A network small enough that an epoch of a few hundred images takes a second or two.
# A constant learning rate, so that runs may be resumed with more epochs than they were started with.
TINY_FLAGS = ["--channels", "8,8,16", "--time-embed-dim", "16", "--batch-size", "64", "--lr-decay", "constant",
              "--no-progress"]
CLASSIFIER = DEFAULT_CLASSIFIER


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hashes(folder: Path) -> dict[str, str]:
    """Every file's hash, the lock file left out (its content is the holder's process id)."""
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(folder)): digest(p) for p in files}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the command line in this process: (exit status, stdout + stderr)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def assert_clean_failure(code: int, output: str, expected_code: int, *words: str) -> None:
    assert code == expected_code, output
    assert "Traceback" not in output, output
    for word in words:
        assert word in output, f"{word!r} not in {output!r}"


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def wait_for(condition, timeout: float = 180.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def rewrite(source: Path, target: Path, metadata=None, raw: str | None = None, scale: float | None = None) -> Path:
    """Copy a weights file with other metadata (a dict, or ``raw`` text) or with its weights multiplied."""
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as f:
        stored = json.loads(f.metadata()["ddpm_core"])
    if scale is not None:
        tensors = {k: v * scale for k, v in tensors.items()}
    text = raw if raw is not None else json.dumps(metadata if metadata is not None else stored)
    save_file(tensors, str(target), metadata={"ddpm_core": text})
    return target


def stored_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["ddpm_core"])


