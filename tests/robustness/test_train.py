"""`python -m ddpm_core train` and its run folder: it never destroys a file it did not make, and every piece of
advice it gives about the folder works when followed (the tests run the commands the messages recommend).

Each test runs the tiny network on 256 MNIST images, so an epoch takes a second or two.
"""

import errno
import fractions
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch

import ddpm_core.training.checkpoint
import ddpm_core.training.loop
from ddpm_core import TrainConfig, train
from ddpm_core.app.cli import _interrupted, main
from ddpm_core.diffusion.unet import UNet, UNetConfig
from ddpm_core.training.lock import RunLock
from ddpm_core.training.memory import MEMORY_MARGIN, MEMORY_OVERHEAD, activation_bytes_per_image
from ddpm_core.training.run_folder import RunFolder
from tests.helpers import (
    DDPM,
    REPO,
    TINY_CONFIG,
    TINY_FLAGS,
    assert_clean_failure,
    child_env,
    digest,
    folder_hashes,
    needs_mnist,
    run_cli,
    wait_for,
)

pytestmark = needs_mnist
FLAGS = ["--subset", "256", *TINY_FLAGS]


def train_argv(out: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(out), *FLAGS, *extra]


def _recommended(output: str) -> list[str]:
    """The command a message recommends (the one between backticks), as arguments of ``main``."""
    commands = re.findall(r"`(python -m ddpm_core train [^`]*)`", output)
    assert len(commands) == 1, output
    return shlex.split(commands[0])[3:]


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> Path:
    """A finished three-epoch run of the tiny network, made by the command line."""
    folder = tmp_path_factory.mktemp("three_epochs") / "run"
    assert main(train_argv(folder, "--epochs", "3")) == 0
    return folder


@pytest.fixture
def run3(three_epochs, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(three_epochs, copy)
    return copy


# 1. Temporary files ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_refused_run_deletes_no_temporary_file_not_even_its_own(run3, capsys):
    (run3 / ".notes.tmp").write_text("a user's notes")
    (run3 / ".ddpm_core-model.safetensors.k2j4.tmp").write_bytes(b"half a file")
    (run3 / "epochs" / ".ddpm_core-epoch_004.safetensors.x8a.tmp").write_bytes(b"half a file")
    before = folder_hashes(run3)
    code, output = run_cli(train_argv(run3, "--epochs", "3"), capsys)
    assert_clean_failure(code, output, 2, "already holds a training run", "Pass --resume", "nothing was overwritten")
    assert folder_hashes(run3) == before


def test_an_accepted_run_deletes_only_the_packages_own_temporaries(run3, capsys):
    notes = run3 / ".notes.tmp"
    notes.write_text("a user's notes")
    own = [run3 / ".ddpm_core-resume.pt.k2j4.tmp", run3 / "epochs" / ".ddpm_core-epoch_004.safetensors.x8a.tmp"]
    for path in own:
        path.write_bytes(b"half a file")
    kept = {name: value for name, value in folder_hashes(run3).items()
            if name.startswith("epochs/epoch_") or name == ".notes.tmp"}
    code, output = run_cli(train_argv(run3, "--epochs", "4", "--resume"), capsys)
    assert code == 0, output
    assert not any(path.exists() for path in own)
    assert {name: folder_hashes(run3)[name] for name in kept} == kept


def test_a_new_run_keeps_a_users_hidden_tmp_file(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("a user's notes")
    (out / "epochs").mkdir()  # a first checkpoint killed mid-write leaves only the package's own temporary
    (out / "epochs" / ".ddpm_core-epoch_001.safetensors.x8a.tmp").write_bytes(b"half a file")
    before = digest(out / ".notes.tmp")
    code, output = run_cli(train_argv(out, "--epochs", "1"), capsys)
    assert code == 0, output
    assert digest(out / ".notes.tmp") == before
    assert not (out / "epochs" / ".ddpm_core-epoch_001.safetensors.x8a.tmp").exists()


# 2. Another run's files ------------------------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_holding_another_runs_epochs(run3, tmp_path, capsys):
    (run3 / "model.safetensors").rename(tmp_path / "moved.safetensors")
    (run3 / "resume.pt").unlink()
    before = folder_hashes(run3)
    code, output = run_cli(train_argv(run3, "--epochs", "1"), capsys)
    assert_clean_failure(code, output, 2, str(run3), "epochs/ (3 files)", "resume.pt is missing",
                         "cannot be continued", "epoch_003.safetensors", "another --out folder",
                         "move those files out", "nothing was overwritten")
    assert folder_hashes(run3) == before
    # Its advice, followed: with the old epochs moved away, the same command starts a new run there.
    (run3 / "epochs").rename(tmp_path / "old_epochs")
    code, output = run_cli(train_argv(run3, "--epochs", "1"), capsys)
    assert code == 0, output
    assert sorted(p.name for p in (run3 / "epochs").iterdir()) == ["epoch_001.safetensors"]


# 3. Weights without resume.pt ------------------------------------------------------------------------------------


def _break_resume(folder: Path, how: str) -> None:
    (folder / "resume.pt").unlink()
    if how == "folder":
        (folder / "resume.pt").mkdir()
    elif how == "fifo":
        os.mkfifo(folder / "resume.pt")


@pytest.mark.slow
@pytest.mark.parametrize("resume", [False, True], ids=["new-run", "resume"])
@pytest.mark.parametrize("how", ["missing", "folder", "fifo"])
def test_weights_without_a_resume_state_get_the_same_true_answer_with_or_without_resume(how, resume, run_copy,
                                                                                       tmp_path, capsys):
    _break_resume(run_copy, how)
    before = folder_hashes(run_copy)
    argv = train_argv(run_copy, "--epochs", "2", *(["--resume"] if resume else []))
    if how == "fifo":  # in a child with a deadline: a process that opened the pipe would wait for a writer forever
        child = subprocess.run([*DDPM, *argv], cwd=REPO, env=child_env(), capture_output=True, text=True,
                               timeout=120)
        code, output = child.returncode, child.stdout + child.stderr
    else:
        code, output = run_cli(argv, capsys)
    problem = {"missing": "resume.pt is missing", "folder": "resume.pt is a folder",
               "fifo": "resume.pt is not a regular file"}[how]
    assert_clean_failure(code, output, 2, problem, "cannot be continued", "usable for sampling",
                         f"--checkpoint {run_copy / 'model.safetensors'}", "another --out folder",
                         "move those files out", "nothing was overwritten")
    assert "Pass --resume" not in output and "Drop --resume" not in output
    assert folder_hashes(run_copy) == before
    if how == "missing" and not resume:  # the weights are indeed usable for sampling
        code, output = run_cli(["sample", "--checkpoint", str(run_copy / "model.safetensors"), "--out",
                                str(tmp_path / "g.png"), "--num-samples", "2", "--no-progress"], capsys)
        assert code == 0, output


@pytest.mark.slow
def test_resume_into_a_folder_without_any_run_says_to_drop_resume_and_that_works(tmp_path, capsys):
    out = tmp_path / "run"
    code, output = run_cli(train_argv(out, "--epochs", "1", "--resume"), capsys)
    assert_clean_failure(code, output, 2, "Nothing to resume", "resume.pt is missing", "Drop --resume")
    code, output = run_cli(train_argv(out, "--epochs", "1"), capsys)
    assert code == 0, output


# 4. Disk full and Ctrl-C: the recommended command works ----------------------------------------------------------


def _disk_fills_after(monkeypatch, good_writes: int) -> None:
    real = ddpm_core.training.checkpoint.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) <= good_writes:
            return real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(b"\0" * 1000)  # a part was written when the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ddpm_core.training.checkpoint, "save_file", save_file)


@pytest.mark.slow
@pytest.mark.parametrize("good_writes", [0, 1], ids=["epoch-file", "model-file"])
def test_a_full_disk_before_the_first_checkpoint_recommends_a_command_that_works(good_writes, tmp_path, capsys,
                                                                                 monkeypatch):
    out = tmp_path / "run"
    _disk_fills_after(monkeypatch, good_writes)
    code, output = run_cli(train_argv(out, "--epochs", "2"), capsys)
    assert_clean_failure(code, output, 2, "disk is full", "nothing to continue", "start again with `")
    command = _recommended(output)
    assert "--resume" not in command
    assert RunFolder(out).run_files() == []  # the unfinished first checkpoint was the run's own: removed
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()
    code, output = run_cli(command, capsys)
    assert code == 0, output


@pytest.mark.slow
def test_a_full_disk_after_an_epoch_recommends_a_resume_that_works(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(train_argv(out, "--epochs", "1"), capsys)[0] == 0
    before = folder_hashes(out)
    _disk_fills_after(monkeypatch, 0)
    code, output = run_cli(train_argv(out, "--epochs", "2", "--resume"), capsys)
    assert_clean_failure(code, output, 2, "disk is full", "(epoch 1) is intact", "continue with `")
    assert folder_hashes(out) == before
    command = _recommended(output)
    assert command.count("--resume") == 1
    monkeypatch.undo()
    code, output = run_cli(command, capsys)
    assert code == 0, output


def test_ctrl_c_after_a_cut_short_first_checkpoint_says_to_move_its_files(tmp_path):
    out = tmp_path / "run"
    (out / "epochs").mkdir(parents=True)
    (out / "epochs" / "epoch_001.safetensors").write_bytes(b"weights")  # killed before resume.pt was written
    argv = train_argv(out, "--epochs", "2", "--resume")
    message = _interrupted(Namespace(command="train", out=out, epochs=2), argv)
    assert "epochs/ (1 file)" in message and "move those out of it" in message
    assert "--resume" not in message  # nothing can be resumed: the advice starts again


# 5. A subset larger than the data ------------------------------------------------------------------------------


def test_a_subset_larger_than_the_training_set_is_refused_with_its_size(tmp_path, capsys):
    out = tmp_path / "run"
    code, output = run_cli(["train", "--out", str(out), *TINY_FLAGS, "--subset", "100000", "--epochs", "1"], capsys)
    assert_clean_failure(code, output, 2, "--subset 100,000", "60,000", "--subset 60000 or less", "drop --subset")
    assert RunFolder(out).run_files() == []


@pytest.mark.slow
def test_the_subset_advice_works(tmp_path, capsys, monkeypatch):
    real = ddpm_core.training.loop.load_mnist

    def small_mnist(train=True, subset=None):  # a training set of 300 images: the advice is cheap to follow
        images, labels = real(train=train, subset=300)
        return images[:subset], labels[:subset]

    monkeypatch.setattr(ddpm_core.training.loop, "load_mnist", small_mnist)
    argv = ["train", "--out", str(tmp_path / "run"), *TINY_FLAGS, "--epochs", "1"]
    code, output = run_cli([*argv, "--subset", "1000"], capsys)
    assert_clean_failure(code, output, 2, "it holds 300", "--subset 300 or less")
    code, output = run_cli([*argv, "--subset", "300"], capsys)
    assert code == 0, output


# 6. Fewer epochs than the run has ------------------------------------------------------------------------------


@pytest.mark.slow
def test_resuming_with_fewer_epochs_than_the_run_has_is_refused(run3, capsys):
    before = folder_hashes(run3)
    code, output = run_cli(train_argv(run3, "--epochs", "2", "--resume"), capsys)
    assert_clean_failure(code, output, 2, "already has 3 epochs", "--epochs 2", "at least 3", "--epochs 4 or more")
    assert "epoch 3/2" not in output and "trained" not in output
    assert folder_hashes(run3) == before
    code, output = run_cli(train_argv(run3, "--epochs", "4", "--resume"), capsys)
    assert code == 0, output
    assert "trained 4 epochs" in output


# 7. Another architecture on --resume ---------------------------------------------------------------------------


@pytest.mark.slow
def test_a_conditional_run_resumed_without_conditional_says_add_conditional(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(train_argv(out, "--epochs", "1", "--conditional"), capsys)[0] == 0
    before = folder_hashes(out)
    code, output = run_cli(train_argv(out, "--epochs", "2", "--resume"), capsys)
    assert_clean_failure(code, output, 2, f"The run in {out}", "conditional network (10 classes)",
                         "add --conditional")
    assert "{" not in output  # no raw configuration dictionaries
    assert folder_hashes(out) == before
    code, output = run_cli(train_argv(out, "--epochs", "2", "--resume", "--conditional"), capsys)
    assert code == 0, output


def test_an_unconditional_run_resumed_with_conditional_says_drop_it(run3, capsys):
    code, output = run_cli(train_argv(run3, "--epochs", "4", "--resume", "--conditional"), capsys)
    assert_clean_failure(code, output, 2, "unconditional network", "drop --conditional")
    assert "{" not in output


@pytest.mark.slow
def test_other_architecture_fields_are_named_with_both_values_and_the_flag(run3, capsys):
    code, output = run_cli([*train_argv(run3, "--epochs", "4", "--resume"), "--channels", "8,8,8", "--attention", "7"],
                           capsys)
    assert_clean_failure(code, output, 2, "channels 8,8,16 in the run, 8,8,8 asked: pass --channels 8,8,16",
                         "attention none in the run, 7 asked: pass --attention none")
    assert "{" not in output
    code, output = run_cli([*train_argv(run3, "--epochs", "4", "--resume"), "--channels", "8,8,16", "--attention",
                            "none"], capsys)
    assert code == 0, output


# 8. A batch that does not fit in memory ------------------------------------------------------------------------


def _tiny_step_bytes(batch: int) -> int:
    """What the check estimates for a step of the tiny network, as TINY_FLAGS configure it."""
    config = TrainConfig()
    model = UNet(UNetConfig(channels=(8, 8, 16), time_embed_dim=16)).to(memory_format=torch.channels_last)
    per_image = MEMORY_MARGIN[config.precision] * activation_bytes_per_image(model, config.schedule(), config,
                                                                             (1, 28, 28))
    fixed = MEMORY_OVERHEAD + 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    return int(fixed + per_image * batch)


@pytest.mark.slow
def test_a_batch_that_does_not_fit_is_refused_with_a_batch_size_that_does(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ddpm_core.training.memory, "available_memory", lambda device: _tiny_step_bytes(100))
    out = tmp_path / "run"
    code, output = run_cli([*train_argv(out, "--epochs", "1"), "--batch-size", "256"], capsys)
    assert_clean_failure(code, output, 2, "--batch-size 256 needs about", "per image", "are free",
                         "Pass --batch-size 64 or less")
    assert RunFolder(out).run_files() == []
    code, output = run_cli([*train_argv(out, "--epochs", "1"), "--batch-size", "64"], capsys)  # with the same memory
    assert code == 0, output


@pytest.mark.slow
def test_a_batch_of_all_of_mnist_is_refused_before_any_allocation(tmp_path, capsys):
    if (ddpm_core.training.memory.available_memory(torch.device("cpu")) or 0) > 300e9:
        pytest.skip("this machine has the memory a 60,000-image batch of the default network needs")
    out = tmp_path / "run"
    code, output = run_cli(["train", "--out", str(out), "--batch-size", "60000", "--epochs", "1", "--device", "cpu",
                            "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, "--batch-size 60000 needs about", "GB of memory", "are free",
                         "Pass --batch-size")
    assert "alloc" not in output.lower()
    assert RunFolder(out).run_files() == []


# 9. The lock, an unusable resume state, an unusable --out, a full disk, a diverged run, leftovers -------------


@pytest.mark.slow
@needs_mnist
def test_a_second_run_into_a_locked_folder_exits_2_at_once_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    argv = [*DDPM, "train", "--out", str(out), "--subset", "256", "--epochs", "500", *TINY_FLAGS]
    first = subprocess.Popen(argv, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: (out / "resume.pt").is_file() or first.poll() is not None, what="the first epoch")
        assert first.poll() is None, first.stderr.read().decode()
        first.send_signal(signal.SIGSTOP)  # freeze it, so the folder's files hold still
        before = folder_hashes(out)
        started = time.monotonic()
        second = subprocess.run(argv, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=120)
        assert_clean_failure(second.returncode, second.stdout + second.stderr, 2, str(out), f"process {first.pid}",
                             "in use")
        assert time.monotonic() - started < 60  # it did not wait for the lock, nor train
        assert folder_hashes(out) == before
    finally:
        first.kill()  # SIGKILL: no clean-up code runs, only the kernel releases the lock
        first.wait()
    # No stale lock: the next run into the folder goes ahead (and clears any half-written temporary file).
    third = subprocess.run([*argv[:-len(TINY_FLAGS) - 2], "--epochs", "1", "--resume", *TINY_FLAGS], cwd=REPO,
                           env=child_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert not list(out.rglob(".*.tmp"))


def test_the_lock_names_its_holder_and_is_free_again_after_release(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(Exception, match=rf"{tmp_path} is in use: process {os.getpid()} is training"):
            RunLock(tmp_path).acquire()
    RunLock(tmp_path).acquire().release()


def _resume_variants(state_path: Path) -> dict[str, bytes]:
    good = state_path.read_bytes()
    state = torch.load(state_path, weights_only=True)
    variants = {"empty": b"", "truncated": good[: len(good) // 2], "garbage": os.urandom(4096)}
    for name, content in (("missing-keys", {k: v for k, v in state.items() if k != "optimizer"}),
                          ("not-weights-only", {**state, "epoch": fractions.Fraction(1, 3)})):
        path = state_path.with_name(name)
        torch.save(content, path)
        variants[name] = path.read_bytes()
        path.unlink()
    return variants


@needs_mnist
@pytest.mark.parametrize("variant", ["empty", "truncated", "garbage", "missing-keys", "not-weights-only"])
def test_an_unusable_resume_state_is_explained_and_left_alone(variant, run_copy, capsys):
    state_path = run_copy / "resume.pt"
    state_path.write_bytes(_resume_variants(state_path)[variant])
    before = folder_hashes(run_copy)
    code, output = run_cli(["train", "--out", str(run_copy), "--resume", "--epochs", "2", "--subset", "64",
                            "--no-progress"], capsys)
    words = {"empty": "empty", "truncated": "truncated or corrupt", "garbage": "truncated or corrupt",
             "missing-keys": "lacks optimizer", "not-weights-only": "objects other than tensors"}[variant]
    assert_clean_failure(code, output, 2, str(state_path), "cannot be used", words)
    assert "weights_only" not in output
    assert folder_hashes(run_copy) == before


def test_train_into_an_existing_file_is_refused_before_any_work(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    code, output = run_cli(["train", "--out", str(target), "--epochs", "1"], capsys)
    assert_clean_failure(code, output, 2, str(target), "existing file", "Nothing was written")
    assert target.read_text() == "keep me"


def test_train_into_an_unwritable_place_is_refused_before_any_work(capsys):
    place = Path("/sys/ddpm-core-run")  # sysfs refuses new folders even to root
    code, output = run_cli(["train", "--out", str(place), "--epochs", "1"], capsys)
    assert_clean_failure(code, output, 2, str(place), "not writable")


@pytest.mark.slow
@needs_mnist
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    import ddpm_core.training.checkpoint

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--subset", "128", *TINY_FLAGS]
    assert run_cli([*argv, "--epochs", "1"], capsys)[0] == 0
    before = folder_hashes(out)

    def no_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # a part was written when the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ddpm_core.training.checkpoint, "save_file", no_space)
    code, output = run_cli([*argv, "--epochs", "2", "--resume"], capsys)
    assert_clean_failure(code, output, 2, "disk is full", "MB were needed", "(epoch 1) is intact",
                         f"--out {out}", "--resume`")
    assert folder_hashes(out) == before
    assert not list(out.rglob(".*.tmp"))


def test_a_diverged_first_epoch_does_not_suggest_resume(tmp_path):
    from ddpm_core import DDPMError

    images = torch.full((32, 1, 28, 28), float("nan"))
    with pytest.raises(DDPMError) as info:
        train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG, images=images,
              device="cpu", progress=False)
    message = str(info.value)
    assert "Nothing was saved" in message and "lower learning rate" in message
    assert "continue with --resume" not in message


def test_leftover_temporary_files_are_removed_by_the_next_run(run_copy):
    leftovers = [run_copy / ".ddpm_core-resume.pt.k2j4h1.tmp",
                 run_copy / "epochs" / ".ddpm_core-epoch_002.safetensors.x8a.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    train(run_copy, TrainConfig(epochs=1, batch_size=32, num_steps=20, ema_decay=None), TINY_CONFIG, resume=True,
          images=torch.zeros(32, 1, 28, 28), device="cpu", progress=False)
    assert not any(path.exists() for path in leftovers)


# 10. Settings that pass parsing but would crash the run later --------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag, value, words", [
    ("--warmup-steps", "1" + "0" * 400, ["warmup_steps must be a whole number from 0 to 10,000,000,000",
                                         "(--warmup-steps)"]),
    ("--epochs", "1" + "0" * 30, ["epochs must be a whole number from 1 to 100,000", "(--epochs)"]),
    ("--subset", "1" + "0" * 30, ["subset must be a whole number from 1 to 10,000,000", "(--subset)"]),
])
def test_a_setting_that_would_overflow_or_never_end_is_refused_before_the_folder_is_made(flag, value, words,
                                                                                        tmp_path, capsys):
    out = tmp_path / "run"
    code, output = run_cli(train_argv(out, flag, value), capsys)
    assert_clean_failure(code, output, 2, *words)
    assert len(output.strip().splitlines()) == 1, output
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_warmup_within_the_bound_trains(tmp_path, capsys):
    out = tmp_path / "run"
    code, output = run_cli(train_argv(out, "--warmup-steps", "1" + "0" * 20, "--epochs", "1"), capsys)
    assert_clean_failure(code, output, 2, "from 0 to 10,000,000,000")
    code, output = run_cli(train_argv(out, "--warmup-steps", "10000000000", "--epochs", "1"), capsys)
    assert code == 0, output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("setting, value", [
    ("seed", 2**64), ("num_steps", 10**9), ("batch_size", 10**400), ("lr", float("inf")), ("epochs", 2.5),
    ("min_snr_gamma", float("nan")), ("grad_clip", 1e300), ("beta_end", "0.02"),
])
def test_settings_out_of_reach_of_the_command_line_are_checked_in_python_before_any_work(setting, value, tmp_path):
    from dataclasses import replace

    from ddpm_core import DDPMError

    config = replace(TrainConfig(epochs=1, batch_size=32, num_steps=20), **{setting: value})
    with pytest.raises(DDPMError, match=f"^{setting} must be"):
        train(tmp_path / "run", config, TINY_CONFIG, images=torch.zeros(32, 1, 28, 28), device="cpu", progress=False)
    assert RunFolder(tmp_path / "run").run_files() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("noise_shards", [0, -2, "many", True, 10**6])
def test_noise_shards_out_of_range_are_refused_before_any_work(noise_shards, tmp_path):
    from ddpm_core import DDPMError

    with pytest.raises(DDPMError, match="noise_shards must be a whole number from 1 to 4,096"):
        train(tmp_path / "run", TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG,
              images=torch.zeros(32, 1, 28, 28), device="cpu", progress=False, noise_shards=noise_shards)
    assert RunFolder(tmp_path / "run").run_files() == []


# 11. The remaining advice of the training layer, followed ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("way", ["add-conditional", "drop-p-uncond"])
def test_p_uncond_without_conditional_is_refused_and_its_advice_works(way, tmp_path, capsys):
    argv = train_argv(tmp_path / "run", "--epochs", "1", "--p-uncond", "0.2")
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, "Add --conditional, or drop --p-uncond")
    assert not (tmp_path / "run").exists()
    followed = [*argv, "--conditional"] if way == "add-conditional" else argv[:-2]
    code, output = run_cli(followed, capsys)
    assert code == 0, output


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_diverged_run_says_to_start_again_with_a_lower_rate_elsewhere_and_that_works(tmp_path, capsys):
    out = tmp_path / "run"
    unclipped = ["--grad-clip", "none", "--warmup-steps", "0", "--loss-weighting", "uniform", "--epochs", "2"]
    code, output = run_cli([*train_argv(out, *unclipped), "--lr", "10"], capsys)
    assert_clean_failure(code, output, 2, "the loss became nan", "lower learning rate (--lr) in another --out folder")
    before = folder_hashes(out)
    code, output = run_cli([*train_argv(tmp_path / "new", *unclipped), "--lr", "0.002"], capsys)
    assert code == 0, output
    assert folder_hashes(out) == before


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_resumed_batch_that_does_not_fit_says_to_start_a_new_run_with_one_that_does(run3, tmp_path, capsys,
                                                                                    monkeypatch):
    monkeypatch.setattr(ddpm_core.training.memory, "available_memory", lambda device: _tiny_step_bytes(40))
    code, output = run_cli(train_argv(run3, "--epochs", "4", "--resume"), capsys)
    assert_clean_failure(code, output, 2, "keeps the batch size it was started with",
                         "start a new run in another --out folder with --batch-size 32 or less")
    code, output = run_cli([*train_argv(tmp_path / "new", "--epochs", "1"), "--batch-size", "32"], capsys)
    assert code == 0, output
