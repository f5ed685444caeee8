"""Ctrl-C during training and sampling: exit status 130, one line saying what was saved, and how to go on;
SIGTERM during training (``kill``, a batch system's time limit) the same, with exit status 143."""

import re
import shlex
import signal
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest

from ddpm_core.app.train_command import interrupted
from ddpm_core.training.resume import load_resume_state
from ddpm_core.training.run_folder import RunFolder
from tests.helpers import (
    DDPM,
    REPO,
    TINY_FLAGS,
    assert_clean_failure,
    child_env,
    needs_mnist,
    wait_for,
)


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


@pytest.mark.slow
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


@pytest.mark.slow
@needs_mnist  # evaluate reads MNIST before it samples
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


@pytest.mark.slow
@needs_mnist
@pytest.mark.timeout(600)
@pytest.mark.parametrize("when", ["before-the-first-epoch", "after-an-epoch"])
def test_sigterm_during_train_says_what_was_saved_and_its_advice_works(when, tmp_path):
    out, err = tmp_path / "run", tmp_path / "stderr.txt"
    subset = "2048" if when == "before-the-first-epoch" else "256"  # long epochs / short epochs
    argv = ["train", "--out", str(out), "--subset", subset, *TINY_FLAGS]  # no --epochs: the recipe's 15
    with open(err, "w") as stderr:
        process = subprocess.Popen([*DDPM, *argv], cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        marker = out / (".lock" if when == "before-the-first-epoch" else "resume.pt")
        wait_for(lambda: (marker.is_file() and marker.stat().st_size > 0) or process.poll() is not None,
                 what=str(marker))
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        process.kill()
        process.wait()
    output = err.read_text().replace("\r", "\n")
    assert_clean_failure(code, output, 143)
    assert output.count("stopped by SIGTERM") == 1 and _last_line(output).startswith("stopped by SIGTERM"), output
    if when == "before-the-first-epoch":
        saved = 0
        assert "nothing was saved in" in output and "--resume" not in output, output
        assert RunFolder(out).run_files() == []  # a first checkpoint cut short was removed
    else:
        saved = load_resume_state(out / "resume.pt")["epoch"]
        assert f"epoch {saved} of 15 is saved in {out}" in output and "--resume`" in output, output
    # The command it recommends goes on (here for one epoch more than is saved, not the recipe's 15).
    command = shlex.split(re.search(r"`python -m ddpm_core ([^`]*)`", output).group(1))
    done = subprocess.run([*DDPM, *command, "--epochs", str(saved + 1)], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_resume_state(out / "resume.pt")["epoch"] == saved + 1


@pytest.mark.timeout(60)
def test_the_line_on_ctrl_c_or_sigterm_names_the_recipes_epochs_when_epochs_was_not_given(run_copy):
    args = Namespace(command="train", out=run_copy, recipe="book")  # argparse leaves out a flag not given
    argv = ["train", "--out", str(run_copy)]
    for what in ("interrupted", "stopped by SIGTERM"):
        message = interrupted(args, argv, what)
        assert message.startswith(f"{what}: epoch 1 of 15 is saved in {run_copy}"), message
        assert message.endswith(f"continue with `python -m ddpm_core train --out {run_copy} --resume`"), message
