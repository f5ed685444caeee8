"""The command line: a real train-then-sample round trip, and exit status 2 with a clear message on bad input."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core.app.cli import main
from tests.helpers import REPO, needs_mnist


@pytest.mark.slow
@needs_mnist
def test_train_then_sample_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "ddpm_core", "train", "--epochs", "1", "--subset", "256", "--out", str(run),
                    "--no-progress"], cwd=REPO, check=True, capture_output=True)
    assert (run / "model.safetensors").is_file()
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--num-samples", "4", "--seed", "1", "--out", str(grid),
                 "--no-progress"]) == 0
    assert Image.open(grid).size[0] > 56
    array_path = tmp_path / "samples.npy"
    assert main(["sample", "--checkpoint", str(run / "model.safetensors"), "--num-samples", "3", "--seed", "1",
                 "--out", str(array_path), "--no-progress"]) == 0
    array = np.load(array_path)
    assert array.shape == (3, 28, 28) and array.dtype == np.uint8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["train", "--batch-size", "-4"], "--batch-size: expected a batch size from 1 to 60,000, got -4"),
        (["train", "--device", "tpu"], "unknown device 'tpu'"),
        (["sample", "--checkpoint", "x", "--num-samples", "0", "--out", "a.png"],
         "expected a number of samples from 1 to 100,000, got 0"),
        (["train", "--ema-decay", "1.5"], "strictly between 0 and 1"),
    ],
)
def test_invalid_arguments_exit_with_status_2_and_say_why(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_output_extension_exits_with_status_2(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "grid.jpg")]) == 2
    assert "Unknown output extension '.jpg'" in capsys.readouterr().err


def test_a_missing_checkpoint_exits_with_status_2(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err
    assert "No checkpoint at" in err and "Traceback" not in err


@pytest.mark.slow
@needs_mnist
def test_evaluate_prints_the_metrics_table_for_a_tiny_run(tmp_path, capsys):
    from ddpm_core import TrainConfig, train
    from tests.helpers import TINY_CONFIG

    images = torch.rand(64, 1, 28, 28) * 2 - 1
    train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG, images=images, device="cpu",
          progress=False)
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--num-samples", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    for column in ("samples", "Frechet", "confident", "IS", "max/min", "NN median"):
        assert column in header
    assert row.startswith("DDPM-20 ") and " 6 " in row  # the ancestral sampler runs all T = 20 steps
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--num-samples", "4", "--sampler", "ddim",
                 "--steps", "5", "--no-progress"]) == 0
    assert "DDIM-5 eta=1" in capsys.readouterr().out  # the registry's DDIM, the one chapter 8 recommends


def test_ddim_sampling_from_the_command_line_writes_an_array(tmp_path):
    from ddpm_core import TrainConfig, train
    from tests.helpers import TINY_CONFIG

    images = torch.rand(32, 1, 28, 28) * 2 - 1
    train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG, images=images, device="cpu",
          progress=False)
    out = tmp_path / "ddim.npy"
    assert main(["sample", "--checkpoint", str(tmp_path), "--sampler", "ddim", "--steps", "4", "--eta", "0",
                 "--num-samples", "2", "--out", str(out), "--no-progress"]) == 0
    assert np.load(out).shape == (2, 28, 28)


def test_sample_with_ddim_and_no_eta_uses_the_books_eta_of_1(tmp_path, monkeypatch):
    import dataclasses

    from ddpm_core import TrainConfig, train
    from ddpm_core.diffusion.samplers import SAMPLERS
    from tests.helpers import TINY_CONFIG

    train(tmp_path, TrainConfig(epochs=1, batch_size=16, num_steps=20), TINY_CONFIG,
          images=torch.rand(16, 1, 28, 28) * 2 - 1, device="cpu", progress=False)
    calls = []

    def recording(model, schedule, num_samples, **options):
        calls.append(options)
        return torch.zeros(num_samples, 1, 28, 28), None

    monkeypatch.setitem(SAMPLERS, "ddim", dataclasses.replace(SAMPLERS["ddim"], run=recording))
    assert main(["sample", "--checkpoint", str(tmp_path), "--sampler", "ddim", "--steps", "50", "--num-samples", "2",
                 "--out", str(tmp_path / "ddim.npy"), "--no-progress"]) == 0
    assert calls[0]["steps"] == 50 and calls[0]["eta"] == 1.0


def test_eta_outside_zero_one_exits_with_status_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--checkpoint", "x", "--out", "a.png", "--sampler", "ddim", "--eta", "1.5"])
    assert info.value.code == 2
    assert "expected a number between 0 and 1, got 1.5" in capsys.readouterr().err
