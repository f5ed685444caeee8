"""Training: the loss falls, resumption is exact, and crashes never lose the last good checkpoint."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from ddpm_core import DDPMError, TrainConfig, load_checkpoint, read_metadata, train
from ddpm_core.training.checkpoint import save_weights
from ddpm_core.training.data import load_mnist
from tests.helpers import REPO, TINY_CONFIG, needs_mnist

# A constant learning rate, so that a 1-epoch run may be resumed up to 2 epochs (a cosine plan may not).
QUICK = TrainConfig(epochs=2, batch_size=32, seed=3, num_steps=100, lr_decay="constant")


def synthetic_images(n: int = 96, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 28, 28), generator=generator) * 2 - 1


@pytest.mark.slow
@needs_mnist
def test_loss_falls_on_a_small_mnist_subset(tmp_path):
    images, _ = load_mnist(train=True, subset=512)
    config = TrainConfig(epochs=3, batch_size=64, seed=0)
    result = train(tmp_path / "run", config, images=images, device="cpu", progress=False)
    assert len(result.loss_history) == 3
    assert result.loss_history[0] > 0.2
    assert result.loss_history[-1] < 0.75 * result.loss_history[0]


@pytest.mark.slow
def test_two_epochs_straight_equal_one_epoch_then_resume(tmp_path):
    images = synthetic_images()
    config = replace(QUICK, ema_decay=0.9, warmup_steps=0)
    straight = train(tmp_path / "straight", config, TINY_CONFIG, images=images, device="cpu", progress=False)
    train(tmp_path / "resumed", replace(config, epochs=1), TINY_CONFIG, images=images, device="cpu", progress=False)
    resumed = train(tmp_path / "resumed", config, TINY_CONFIG, resume=True, images=images, device="cpu", progress=False)
    assert resumed.loss_history == straight.loss_history
    for use_ema in (False, True):
        a = load_checkpoint(tmp_path / "straight", use_ema=use_ema).model.state_dict()
        b = load_checkpoint(tmp_path / "resumed", use_ema=use_ema).model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_cosine_run_interrupted_in_epoch_2_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import ddpm_core.training.loop as training

    images = synthetic_images()
    config = replace(QUICK, warmup_steps=2, lr_decay="cosine")  # 3 steps per epoch: warm-up, then decay
    straight = train(tmp_path / "straight", config, TINY_CONFIG, images=images, device="cpu", progress=False)
    calls, real_step = [], training.train_step

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(training, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", config, TINY_CONFIG, images=images, device="cpu", progress=False)
    monkeypatch.setattr(training, "train_step", real_step)
    assert read_metadata(tmp_path / "resumed")["epoch"] == 1
    resumed = train(tmp_path / "resumed", config, TINY_CONFIG, resume=True, images=images, device="cpu", progress=False)
    assert resumed.loss_history == straight.loss_history
    a = load_checkpoint(tmp_path / "straight").model.state_dict()
    b = load_checkpoint(tmp_path / "resumed").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_cosine_run_refuses_to_resume_with_another_number_of_epochs(tmp_path):
    config = replace(QUICK, epochs=1, lr_decay="cosine")
    train(tmp_path, config, TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(DDPMError, match="cosine planned for 1 epochs, so it resumes only with --epochs 1"):
        train(tmp_path, replace(config, epochs=3), TINY_CONFIG, resume=True, images=synthetic_images(), device="cpu")
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_every_epoch_writes_a_checkpoint_with_its_metadata(tmp_path):
    result = train(tmp_path, QUICK, TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    for epoch in (1, 2):
        metadata = read_metadata(tmp_path / "epochs" / f"epoch_{epoch:03d}.safetensors")
        assert metadata["epoch"] == epoch
        assert metadata["loss_history"] == result.loss_history[:epoch]
        assert metadata["seed"] == 3 and metadata["device"] and metadata["versions"]["torch"]
    assert read_metadata(tmp_path)["epoch"] == 2
    assert torch.load(tmp_path / "resume.pt", weights_only=True)["epoch"] == 2


def test_an_existing_run_is_never_overwritten_without_resume(tmp_path):
    train(tmp_path, replace(QUICK, epochs=1), TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(DDPMError, match="already holds a training run. Pass --resume"):
        train(tmp_path, QUICK, TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_resume_refuses_changed_settings(tmp_path):
    train(tmp_path, replace(QUICK, epochs=1), TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    with pytest.raises(DDPMError, match=r"other settings \(lr: 0.002 -> 0.001\)"):
        train(tmp_path, replace(QUICK, lr=1e-3), TINY_CONFIG, resume=True, images=synthetic_images(), device="cpu")


def test_resume_without_a_run_says_what_is_missing(tmp_path):
    with pytest.raises(DDPMError, match="Nothing to resume .* resume.pt is missing"):
        train(tmp_path, QUICK, TINY_CONFIG, resume=True, images=synthetic_images(), device="cpu")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    images = synthetic_images()
    train(tmp_path, replace(QUICK, epochs=1), TINY_CONFIG, images=images, device="cpu", progress=False)
    good = (tmp_path / "model.safetensors").read_bytes()
    poisoned = images.clone()
    poisoned[:, :, 0, 0] = float("nan")
    with pytest.raises(DDPMError, match=r"loss became nan at epoch 2, step 1\. The last good checkpoint .*epoch 1"):
        train(tmp_path, QUICK, TINY_CONFIG, resume=True, images=poisoned, device="cpu", progress=False)
    assert (tmp_path / "model.safetensors").read_bytes() == good
    assert load_checkpoint(tmp_path).metadata["epoch"] == 1


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    train(tmp_path, replace(QUICK, epochs=1), TINY_CONFIG, images=synthetic_images(), device="cpu", progress=False)
    loaded = load_checkpoint(tmp_path)

    def half_written(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr("ddpm_core.training.checkpoint.save_file", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tmp_path / "model.safetensors", loaded.model, {"epoch": 99})
    assert load_checkpoint(tmp_path).metadata["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
@needs_mnist
def test_a_killed_run_leaves_a_loadable_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ddpm_core", "train", "--epochs", "1000", "--subset", "128",
               "--batch-size", "64", "--out", str(out), "--no-progress", "--device", "cpu"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (out / "epochs" / "epoch_003.safetensors").exists():
            time.sleep(0.05)
        assert (out / "epochs" / "epoch_003.safetensors").exists(), "training did not reach epoch 3 in time"
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    # The kill may fall between the epoch file and model.safetensors: the latter is then one epoch behind.
    loaded = load_checkpoint(out)
    assert loaded.metadata["epoch"] >= 2
    state = torch.load(out / "resume.pt", weights_only=True)
    assert state["epoch"] >= 2


def test_derive_seed_gives_the_seeds_that_runs_have_always_drawn_from():
    from ddpm_core.training import distributed
    from ddpm_core.training.loop import _epoch_order
    from ddpm_core.training.run_seeds import derive_seed

    # The data order of epoch e: seed * 1,000,003 + e.
    assert [derive_seed(0, "data order", epoch) for epoch in (1, 2, 15)] == [1, 2, 15]
    assert derive_seed(3, "data order", 2) == 3_000_011
    expected = torch.randperm(96, generator=torch.Generator().manual_seed(3_000_011))
    assert torch.equal(_epoch_order(3, 2, 96), expected)
    # Noise shard j > 0: seed * 1,000,003 + 7,919 j; shard 0 draws from the run's seed, as one process does.
    assert [derive_seed(3, "noise shard", shard) for shard in (1, 2)] == [3_007_928, 3_015_847]
    assert [distributed.shard_seed(3, shard) for shard in range(3)] == [3, 3_007_928, 3_015_847]
    assert distributed.shard_seed(0, 1) == 7_919


def test_train_step_is_algorithm_1_on_one_batch():
    from ddpm_core.diffusion.objective import train_step
    from ddpm_core.diffusion.unet import UNet

    config = TrainConfig(num_steps=50, channels_last=False)
    schedule = config.schedule()
    torch.manual_seed(0)
    model = UNet(TINY_CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    x0 = synthetic_images(8)
    loss = train_step(model, schedule, optimizer, x0, torch.Generator().manual_seed(5))
    # Lines 3 and 4 of Algorithm 1: t, then eps, from the run's generator; line 5: the loss before the step.
    generator = torch.Generator().manual_seed(5)
    t = torch.randint(1, 51, (8,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    alpha_bar = torch.cumprod(1 - torch.linspace(config.beta_start, config.beta_end, 50), 0)[t - 1].view(-1, 1, 1, 1)
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    torch.manual_seed(0)
    with torch.no_grad():
        expected = ((UNet(TINY_CONFIG)(xt, t) - eps) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # one gradient step


def test_train_step_leaves_the_weights_alone_when_the_loss_is_not_finite():
    from ddpm_core.diffusion.objective import train_step
    from ddpm_core.diffusion.unet import UNet
    from ddpm_core.training.recipe import RecipeHooks

    config = TrainConfig(num_steps=50, channels_last=False, ema_decay=0.9)
    torch.manual_seed(0)
    model = UNet(TINY_CONFIG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: v.clone() for k, v in before.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    x0 = torch.full((4, 1, 28, 28), float("nan"))
    RecipeHooks(optimizer, model, config, total_steps=1, ema_state=ema)
    loss = train_step(model, config.schedule(), optimizer, x0, torch.Generator().manual_seed(0))
    assert not torch.isfinite(loss)
    assert all(torch.equal(before[k], v) and torch.equal(ema[k], v) for k, v in model.state_dict().items())


def test_the_ema_moves_a_share_one_minus_decay_towards_the_new_weights():
    from ddpm_core.diffusion.objective import train_step
    from ddpm_core.diffusion.unet import UNet
    from ddpm_core.training.recipe import RecipeHooks

    config = TrainConfig(num_steps=50, channels_last=False, ema_decay=0.9, ema_warmup=False)
    torch.manual_seed(0)
    model = UNet(TINY_CONFIG)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in ema.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    RecipeHooks(optimizer, model, config, total_steps=1, ema_state=ema)  # the EMA follows each optimiser step
    train_step(model, config.schedule(), optimizer, synthetic_images(8), torch.Generator().manual_seed(0))
    for name, new in model.state_dict().items():  # ema = decay * ema + (1 - decay) * weights
        torch.testing.assert_close(ema[name], 0.9 * before[name] + 0.1 * new, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
