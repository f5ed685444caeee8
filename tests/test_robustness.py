"""What a careless or hostile command line meets: a clear paragraph and an exit status, never a traceback or lost work.

Exit status 2 for unusable input, 1 for a model that produces NaN or inf, 130 for Ctrl-C. Where a
mistake could cost data, the files' hashes are compared before and after.
"""

import errno
import fractions
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ddpm_core import TrainConfig, train
from ddpm_core.checkpoint import load_resume_state
from ddpm_core.lock import RunLock
from tests.helpers import (
    CLASSIFIER,
    DDPM,
    REPO,
    TINY_CONFIG,
    TINY_FLAGS,
    assert_clean_failure,
    child_env,
    digest,
    folder_hashes,
    needs_mnist,
    rewrite,
    run_cli,
    stored_metadata,
    wait_for,
)

# Data loss -----------------------------------------------------------------------------------------------------


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


def test_the_classifier_command_does_not_overwrite_an_existing_file(run_copy, capsys):
    from ddpm_core.classifier import main as classifier_main

    target = run_copy / "model.safetensors"
    before = digest(target)
    code = classifier_main(["--out", str(target), "--epochs", "1", "--no-progress"])
    assert_clean_failure(code, "".join(capsys.readouterr()), 2, "already exists", "nothing was overwritten",
                         "--force")
    assert digest(target) == before


def test_a_wrong_classifier_file_hints_at_a_new_path_only(run_copy, capsys):
    checkpoint = run_copy / "model.safetensors"
    before = digest(checkpoint)
    code, output = run_cli(["evaluate", "--checkpoint", str(run_copy), "--classifier", str(checkpoint),
                            "--num-samples", "2", "--sampler", "ddim", "--steps", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, "not an MNIST classifier", "python -m ddpm_core.classifier --out ")
    hinted = Path(output.split("python -m ddpm_core.classifier --out ")[1].split("`")[0])
    assert not hinted.exists() and hinted != checkpoint
    assert digest(checkpoint) == before


# Crashes -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [float("nan"), 1e15], ids=["nan-weights", "weights-times-1e15"])
@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_non_finite_samples_stop_with_status_1_and_write_nothing(command, scale, tiny_run, tmp_path, capsys):
    broken = rewrite(tiny_run / "model.safetensors", tmp_path / "broken.safetensors", scale=scale)
    out = tmp_path / "grid.png"
    argv = [command, "--checkpoint", str(broken), "--num-samples", "4", "--sampler", "ddim", "--steps", "3",
            "--no-progress"] + (["--out", str(out)] if command == "sample" else [])
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 1, str(broken), "non-finite values", "nothing was written")
    assert not out.exists()


def test_a_huge_network_in_the_metadata_is_refused_before_any_allocation(tiny_run, tmp_path, capsys):
    metadata = stored_metadata(tiny_run / "model.safetensors")
    metadata["model_config"]["channels"] = [65536, 65536, 65536]
    huge = rewrite(tiny_run / "model.safetensors", tmp_path / "huge.safetensors", metadata)
    started = time.monotonic()
    code, output = run_cli(["sample", "--checkpoint", str(huge), "--out", str(tmp_path / "g.png"), "--sampler", "ddim",
                            "--steps", "2", "--num-samples", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(huge), "architecture it names is refused", "1024")
    assert time.monotonic() - started < 30


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--num-samples", "1000000000"], ["from 1 to 100,000", "different --seed values"]),
        (["evaluate", "--num-samples", "1000000000"], ["from 1 to 100,000", "different --seed values"]),
        (["sample", "--seed", str(2**64)], ["expected a seed from 0 to 4294967295"]),
        (["evaluate", "--seed", "-1"], ["expected a seed from 0 to 4294967295"]),
        (["train", "--seed", str(2**64)], ["expected a seed from 0 to 4294967295"]),
        (["train", "--lr", "inf"], ["--lr", "not a finite number"]),
        (["train", "--lr", "nan"], ["--lr", "not a finite number"]),
        (["train", "--min-snr-gamma", "inf"], ["--min-snr-gamma", "not a finite number"]),
        (["train", "--grad-clip", "nan"], ["--grad-clip", "not a finite number"]),
        (["train", "--ema-decay", "nan"], ["--ema-decay", "not a finite number"]),
        (["sample", "--noise-scale", "nan"], ["--noise-scale", "not a finite number"]),
        (["sample", "--sampler", "ddim", "--eta", "nan"], ["--eta", "not a finite number"]),
    ],
)
def test_out_of_range_numbers_are_refused_at_parse_time(argv, words, tmp_path, capsys):
    if argv[0] in ("sample", "evaluate"):
        argv = [*argv, "--checkpoint", str(tmp_path)] + (["--out", str(tmp_path / "g.png")] if argv[0] == "sample"
                                                         else [])
    else:
        argv = [*argv, "--out", str(tmp_path / "run")]
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, *words)
    assert not (tmp_path / "run").exists()


# Ordinary mistakes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_the_classifier_passed_as_checkpoint_is_named(command, tmp_path, capsys):
    argv = [command, "--checkpoint", str(CLASSIFIER), "--no-progress"]
    argv += ["--out", str(tmp_path / "g.png")] if command == "sample" else []
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, "is the MNIST classifier", "not a diffusion model", "--classifier")


def _metadata_variants(metadata: dict) -> dict[str, tuple[str, list[str]]]:
    """name -> (raw JSON text, key words of the message)."""
    def with_config(**changes):
        return json.dumps({**metadata, "model_config": {**metadata["model_config"], **changes}})

    lacking = {k: v for k, v in metadata.items() if k != "model_config"}
    misspelt = {**metadata["model_config"]}
    misspelt["chanels"] = misspelt.pop("channels")
    return {
        "not-json": ("{'format': 1", ["not valid JSON"]),
        "a-list": ("[1, 2, 3]", ["JSON list, not an object"]),
        "no-model-config": (json.dumps(lacking), ["model_config is missing"]),
        "extra-key": (with_config(depth=3), ["unknown keys ['depth']"]),
        "misspelt-key": (json.dumps({**metadata, "model_config": misspelt}), ["unknown keys ['chanels']"]),
        "wrong-type": (with_config(channels="8,8,16"), ["model_config['channels'] must be a list"]),
        "bool-for-int": (with_config(num_groups=True), ["model_config['num_groups'] must be a whole number"]),
        "schedule-type": (json.dumps({**metadata, "schedule": {"num_steps": "20"}}), ["num_steps must be"]),
        "unknown-format": (json.dumps({**metadata, "format": "ddpm_core/99"}), ["'ddpm_core/99'", "does not know"]),
    }


@pytest.mark.parametrize("variant", list(_metadata_variants({"model_config": {"channels": []}})))
def test_unusable_metadata_is_explained(variant, tiny_run, tmp_path, capsys):
    raw, words = _metadata_variants(stored_metadata(tiny_run / "model.safetensors"))[variant]
    bad = rewrite(tiny_run / "model.safetensors", tmp_path / "bad.safetensors", raw=raw)
    out = tmp_path / "g.png"
    code, output = run_cli(["sample", "--checkpoint", str(bad), "--out", str(out), "--sampler", "ddim", "--steps",
                            "2", "--num-samples", "2", "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(bad), *words)
    assert not out.exists()


def test_a_schedule_other_than_the_training_one_is_warned_about(tiny_run, tmp_path, capsys):
    metadata = stored_metadata(tiny_run / "model.safetensors")
    metadata["schedule"]["num_steps"] = 10
    edited = rewrite(tiny_run / "model.safetensors", tmp_path / "edited.safetensors", metadata)
    code, output = run_cli(["sample", "--checkpoint", str(edited), "--out", str(tmp_path / "g.npy"), "--sampler",
                            "ddim", "--steps", "2", "--num-samples", "2", "--no-progress"], capsys)
    assert code == 0 and "Traceback" not in output
    assert "warning: The schedule in" in output and "num_steps 10 (trained with 20)" in output


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


@pytest.mark.parametrize("where", ["a-folder", "under-a-file", "unwritable"])
def test_sample_output_that_cannot_be_written_is_refused_before_sampling(where, tiny_run, tmp_path, capsys):
    if where == "a-folder":
        out = tmp_path / "grid.png"
        out.mkdir()
        words = ["is a folder"]
    elif where == "under-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "grid.png"
        words = ["is a file, not a folder"]
    else:
        out, words = Path("/sys/grid.png"), ["not writable"]
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--out", str(out), "--no-progress"], capsys)
    assert_clean_failure(code, output, 2, str(out), *words)


@needs_mnist
def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    import ddpm_core.checkpoint

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--subset", "128", *TINY_FLAGS]
    assert run_cli([*argv, "--epochs", "1"], capsys)[0] == 0
    before = folder_hashes(out)

    def no_space(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # a part was written when the disk filled up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ddpm_core.checkpoint, "save_file", no_space)
    code, output = run_cli([*argv, "--epochs", "2", "--resume"], capsys)
    assert_clean_failure(code, output, 2, "disk is full", "MB were needed", "(epoch 1) is intact",
                         f"--out {out}", "--resume`")
    assert folder_hashes(out) == before
    assert not list(out.rglob(".*.tmp"))


# Ctrl-C --------------------------------------------------------------------------------------------------------


def _ctrl_c_enabled() -> None:
    """Run in the child before it starts: a shell starts background jobs with SIGINT ignored, children inherit
    that, and Python then never raises KeyboardInterrupt. The tests below need Ctrl-C to work wherever they run."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(process: subprocess.Popen, stderr_path: Path) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=120)
    return code, stderr_path.read_text().replace("\r", "\n")


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


@needs_mnist
@pytest.mark.parametrize("when", ["before-the-first-epoch", "after-an-epoch"])
def test_ctrl_c_during_train_says_what_was_saved_and_how_to_resume(when, tmp_path):
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    subset = "2048" if when == "before-the-first-epoch" else "256"  # long epochs / short epochs
    argv = ["train", "--out", str(out), "--subset", subset, "--epochs", "50", *TINY_FLAGS]
    with open(err, "w") as stderr:
        process = subprocess.Popen([*DDPM, *argv], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=_ctrl_c_enabled)
    try:
        marker = out / (".lock" if when == "before-the-first-epoch" else "resume.pt")
        wait_for(lambda: (marker.is_file() and marker.stat().st_size > 0) or process.poll() is not None,
                 what=str(marker))
        code, output = _interrupt(process, err)
    finally:
        process.kill()
        process.wait()
    assert_clean_failure(code, output, 130)
    assert output.count("interrupted") == 1 and _last_line(output).startswith("interrupted")
    if when == "before-the-first-epoch":
        assert "nothing was saved in" in output and not (out / "resume.pt").exists()
    else:
        epoch = load_resume_state(out / "resume.pt")["epoch"]
        assert f"epoch {epoch} of 50 is saved in {out}" in output
        assert f"continue with `python -m ddpm_core train --out {out}" in output and "--resume`" in output


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_ctrl_c_during_sampling_exits_130_with_one_line(command, slow_run, tmp_path):
    err, out = tmp_path / "stderr.txt", tmp_path / "grid.png"
    argv = [command, "--checkpoint", str(slow_run), "--num-samples", "64"]
    argv += ["--out", str(out)] if command == "sample" else []
    with open(err, "w") as stderr:
        process = subprocess.Popen([*DDPM, *argv], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=_ctrl_c_enabled)
    try:
        wait_for(lambda: "sampling" in err.read_text() or process.poll() is not None, what="the progress bar")
        code, output = _interrupt(process, err)
    finally:
        process.kill()
        process.wait()
    assert_clean_failure(code, output, 130, "nothing was written", "run the same command again")
    assert output.count("interrupted") == 1 and _last_line(output).startswith("interrupted")
    assert not out.exists()


# Weak or misleading messages -----------------------------------------------------------------------------------


def test_a_diverged_first_epoch_does_not_suggest_resume(tmp_path):
    from ddpm_core import DDPMError

    images = torch.full((32, 1, 28, 28), float("nan"))
    with pytest.raises(DDPMError) as info:
        train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG, images=images,
              device="cpu", progress=False)
    message = str(info.value)
    assert "Nothing was saved" in message and "lower learning rate" in message
    assert "continue with --resume" not in message


@pytest.mark.parametrize("command", ["sample", "evaluate"])
@pytest.mark.parametrize("flags", [["--steps", "5"], ["--eta", "0.5"]])
def test_ddim_options_without_the_ddim_sampler_are_refused(command, flags, tiny_run, tmp_path, capsys):
    argv = [command, "--checkpoint", str(tiny_run), *flags]
    argv += ["--out", str(tmp_path / "g.png")] if command == "sample" else []
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, f"{flags[0]} applies only to the DDIM sampler", "--sampler ddim")


def test_ema_on_a_run_without_ema_speaks_to_the_command_line(tiny_run, tmp_path, capsys):
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--ema", "--out", str(tmp_path / "g.png")],
                           capsys)
    assert_clean_failure(code, output, 2, "has no EMA weights", "Sample without --ema", "--ema-decay")


def _data_folder(tmp_path: Path, damage: bytes | None) -> Path:
    from ddpm_core.data import MNIST_FILES, data_root

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
    from ddpm_core.data import data_root

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


# Small things --------------------------------------------------------------------------------------------------


def test_leftover_temporary_files_are_removed_by_the_next_run(run_copy):
    leftovers = [run_copy / ".ddpm_core-resume.pt.k2j4h1.tmp",
                 run_copy / "epochs" / ".ddpm_core-epoch_002.safetensors.x8a.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    train(run_copy, TrainConfig(epochs=1, batch_size=32, num_steps=20, ema_decay=None), TINY_CONFIG, resume=True,
          images=torch.zeros(32, 1, 28, 28), device="cpu", progress=False)
    assert not any(path.exists() for path in leftovers)


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o002)
    try:
        train(tmp_path, TrainConfig(epochs=1, batch_size=32, num_steps=20), TINY_CONFIG,
              images=torch.rand(32, 1, 28, 28) * 2 - 1, device="cpu", progress=False)
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "resume.pt", "epochs/epoch_001.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o664, name
