"""Ctrl-C during training and sampling: exit status 130, one line saying what was saved, and how to go on."""

import signal
import subprocess
from pathlib import Path

import pytest

from ddpm_core.training.resume import load_resume_state
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
