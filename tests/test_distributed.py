"""Data-parallel training: two Gloo processes on the CPU train as one process does, resume across
process counts, refuse a batch they cannot split, and stop cleanly when a process dies.

The processes are started with torch.multiprocessing and the environment torchrun would set; the
command-line test starts the real torchrun.
"""

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ddpm_core.training.checkpoint import load_checkpoint
from ddpm_core.training.loop import train
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.training.resume import load_resume_state
from ddpm_core.utils.errors import DDPMError
from tests.helpers import REPO, TINY_CONFIG, needs_mnist

CONFIG = TrainConfig(epochs=2, batch_size=16, lr=1e-4, num_steps=50, beta_start=1e-3, beta_end=0.2,
                     warmup_steps=2, ema_decay=0.9)
STEPS = 8  # 64 images in batches of 16, for 2 epochs
# Not bit for bit: two processes add their halves of the gradient in an all-reduce, one process sums the
# whole batch in one backward pass, so float32 rounds differently (about 1e-7 relative; the losses agree to
# that). Adam then divides each update by the root of its running squared gradient, so a weight whose
# gradient is nearly zero moves by up to lr per step whichever sign its rounding noise takes. Hence:
# nearly all weights agree to float precision, and none differs by more than STEPS * lr.
BULK = 1e-5  # the 99th percentile of |difference|
WORST = STEPS * CONFIG.lr


def images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, config: TrainConfig, resume: bool, die_at: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    if die_at and rank == 1:  # a process that dies in the middle of the second epoch
        import ddpm_core.training.loop as training

        step = training.train_step
        calls = []

        def dying_step(*args, **kwargs):
            calls.append(1)
            if len(calls) == die_at:
                os._exit(3)
            return step(*args, **kwargs)

        training.train_step = dying_step
    try:
        train(out, config, TINY_CONFIG, resume=resume, device="cpu", images=images(), progress=False)
    except DDPMError as error:
        (Path(out) / f"error_rank{rank}.txt").write_text(str(error))
        raise SystemExit(2) from None


def run_processes(out, config=CONFIG, resume=False, die_at=0, world=2) -> list[int]:
    """Start ``world`` processes as torchrun would and wait for all of them; returns their exit codes."""
    port, spawn = free_port(), mp.get_context("spawn")
    processes = [spawn.Process(target=_worker, args=(rank, world, port, str(out), config, resume, die_at))
                 for rank in range(world)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    codes = [process.exitcode for process in processes]
    assert die_at or codes == [0] * world, codes
    return codes


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model.state_dict()


def differences(a, b) -> torch.Tensor:
    return torch.cat([(a[k] - b[k]).abs().flatten() for k in a])


def assert_same_training(a, b) -> None:
    gaps = differences(a, b)
    assert torch.quantile(gaps, 0.99).item() < BULK and gaps.max().item() < WORST, (gaps.max(), gaps.quantile(0.99))


@pytest.mark.slow
def test_two_processes_train_to_the_weights_of_one(tmp_path):
    run_processes(tmp_path / "ddp")
    train(tmp_path / "one", CONFIG, TINY_CONFIG, device="cpu", images=images(), progress=False, noise_shards=2)
    assert_same_training(weights(tmp_path / "ddp"), weights(tmp_path / "one"))
    assert load_checkpoint(tmp_path / "ddp").metadata["loss_history"] == pytest.approx(
        load_checkpoint(tmp_path / "one").metadata["loss_history"], rel=1e-6)
    ddp, one = (load_resume_state(tmp_path / d / "resume.pt") for d in ("ddp", "one"))
    assert ddp["noise_shards"] == one["noise_shards"] == 2
    assert all(torch.equal(a, b) for a, b in zip(ddp["generators"], one["generators"], strict=True))
    # the noise shards matter: one process drawing a single stream trains to other weights
    train(tmp_path / "plain", CONFIG, TINY_CONFIG, device="cpu", images=images(), progress=False)
    other = differences(weights(tmp_path / "ddp"), weights(tmp_path / "plain"))
    assert torch.quantile(other, 0.99).item() > 10 * BULK


@pytest.mark.slow
def test_a_run_started_on_two_processes_resumes_on_one(tmp_path):
    one_epoch = dataclasses.replace(CONFIG, epochs=1, lr_decay="constant")  # constant: resumable with more epochs
    two_epochs = dataclasses.replace(CONFIG, lr_decay="constant")
    run_processes(tmp_path / "run", one_epoch)
    train(tmp_path / "run", two_epochs, TINY_CONFIG, resume=True, device="cpu", images=images(), progress=False)
    run_processes(tmp_path / "straight", two_epochs)
    assert_same_training(weights(tmp_path / "run"), weights(tmp_path / "straight"))


def test_a_batch_the_processes_cannot_split_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(DDPMError, match="batch of 16 images cannot be split equally over 3 processes"):
        train(tmp_path / "run", CONFIG, TINY_CONFIG, device="cpu", images=images(), progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.slow
def test_a_process_that_dies_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    codes = run_processes(out, die_at=6)  # 4 steps per epoch: rank 1 dies at step 2 of epoch 2
    assert codes == [2, 3], codes  # rank 0 stops with the package's error code, rank 1 died with its own
    message = (out / "error_rank0.txt").read_text()
    assert "Process 0 of 2 lost contact with the others" in message
    assert "its last checkpoint (epoch 1)" in message and "--resume" in message
    assert load_checkpoint(out).metadata["epoch"] == 1  # loadable, and the finished epoch's


@pytest.mark.slow
@needs_mnist
def test_torchrun_trains_from_the_command_line_and_sample_reads_its_checkpoint(tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    out = tmp_path / "ddp"
    command = [torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "ddpm_core", "train",
               "--epochs", "1", "--subset", "256", "--batch-size", "32", "--out", str(out), "--no-progress"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 1 epochs") == 1  # rank 0 alone reports
    assert "x 2 processes (DDP)" in done.stdout
    grid = tmp_path / "grid.npy"
    sampled = subprocess.run([sys.executable, "-m", "ddpm_core", "sample", "--checkpoint", str(out), "--sampler",
                              "ddim", "--steps", "5", "--num-samples", "4", "--out", str(grid), "--no-progress"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sampled.returncode == 0, sampled.stderr
    odd = subprocess.run(command[:-5] + ["--batch-size", "33", "--out", str(tmp_path / "odd"), "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert odd.returncode != 0 and "cannot be split equally over 2 processes" in odd.stderr


def test_bf16_precision_trains_with_an_fp32_loss_and_is_recorded(tmp_path):
    config = dataclasses.replace(CONFIG, epochs=1, precision="bf16")
    result = train(tmp_path / "bf16", config, TINY_CONFIG, device="cpu", images=images(), progress=False)
    assert all(torch.isfinite(torch.tensor(result.loss_history)))
    assert load_checkpoint(tmp_path / "bf16").metadata["train_config"]["precision"] == "bf16"
    with pytest.raises(DDPMError, match="precision must be one of"):
        dataclasses.replace(CONFIG, precision="fp16").validate()
