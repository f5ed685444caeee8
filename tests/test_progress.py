"""Progress bars: a live bar on a terminal, a few plain lines in a log, nothing with --no-progress."""

from __future__ import annotations

import io
import subprocess

import pytest
from tqdm import tqdm as std_tqdm

from ddpm_core.utils import progress
from ddpm_core.utils.progress import EpochProgress, LogProgress, progress_bar
from tests.helpers import DDPM, REPO, TINY_FLAGS, child_env, needs_mnist


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_writing_to_a_log_prints_a_plain_line_per_interval_and_a_last_one(monkeypatch, capsys):
    clock = iter(float(s) for s in range(0, 10_000, 10))  # each call is 10 s later
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    bar = LogProgress(total=100, desc="epoch 1/15", unit="step", interval_s=60.0)
    for _ in range(100):
        bar.update()
    bar.set_postfix(loss="0.0312")
    bar.close()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert 14 <= len(lines) <= 18  # 100 updates 10 s apart: one line a minute, not one per step
    assert all("\r" not in line for line in lines)
    assert lines[-1].startswith("epoch 1/15: 100/100 steps") and lines[-1].endswith("loss 0.0312")


def test_a_bar_shorter_than_the_interval_prints_nothing_in_a_log(capsys):
    bar = LogProgress(total=5, desc="sampling")
    for _ in range(5):
        bar.update()
    bar.close()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("stream", "kind"), [(io.StringIO(), LogProgress), (Terminal(), "tqdm")])
def test_the_bar_suits_its_stream(stream, kind, monkeypatch):
    monkeypatch.setattr(progress.sys, "stderr", stream)
    bar = progress_bar(10, "x")
    assert isinstance(bar, LogProgress) if kind is LogProgress else isinstance(bar, std_tqdm)
    bar.close()


def test_no_progress_silences_a_bar_in_a_log_too(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", log)
    epoch = EpochProgress(3, "epoch 1/1", enabled=False)
    for _ in range(3):
        epoch.add(0.5, 4)
    epoch.close()
    assert log.getvalue() == "" and epoch.mean == 0.5


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_mnist
def test_a_train_log_written_to_a_file_has_a_few_plain_lines_not_one_update_per_step(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as stderr:  # a file, not a terminal, as under nohup or in CI
        done = subprocess.run([*DDPM, "train", "--out", str(tmp_path / "run"), "--epochs", "3", "--subset", "512",
                               *TINY_FLAGS], cwd=REPO, env=child_env(), stdout=stderr, stderr=stderr, timeout=280)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text  # no carriage-return updates piled onto one line
    assert len(text.splitlines()) <= 3 + 10  # a line per epoch and a few more, not one per step (8 per epoch here)
