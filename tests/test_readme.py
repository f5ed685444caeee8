"""The README's front door works as written: its command draws digits, its Python example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"the README should have one {language} block with {containing!r}"
    return found[0]


def run_in(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)


def assert_a_grid_of_digits(path: Path, count: int, per_row: int) -> None:
    grid = np.asarray(Image.open(path))
    rows = -(-count // per_row)
    assert grid.dtype == np.uint8 and grid.ndim == 2
    assert grid.shape[0] >= rows * 28 and grid.shape[1] >= per_row * 28
    assert 0.05 < (grid > 127).mean() < 0.6  # white strokes on black, not a blank or saturated image


@pytest.mark.slow
def test_the_readme_command_draws_32_digits_into_a_png(tmp_path):
    command = block("bash", "ddpm_core sample").strip()
    argv = command.split()
    argv[0] = sys.executable  # .venv/bin/python, whichever Python runs the tests
    argv = [a.replace("book/", f"{REPO}/book/", 1) if a.startswith("book/") else a for a in argv]
    done = run_in(tmp_path, argv)
    assert done.returncode == 0, done.stderr
    assert_a_grid_of_digits(tmp_path / "digits.png", 32, 8)


@pytest.mark.slow
def test_the_readme_python_example_loads_samples_and_saves(tmp_path):
    example = block("python", "load_checkpoint").replace('"book/', f'"{REPO}/book/')
    assert len([line for line in example.splitlines() if line.strip()]) <= 6
    done = run_in(tmp_path, [sys.executable, "-c", example])
    assert done.returncode == 0, done.stderr
    assert_a_grid_of_digits(tmp_path / "digits.png", 16, 8)
