"""How long the book's 15-epoch training takes on this machine: a few hundred real steps, timed and extrapolated.

The book trains its model once (chapter 4): 15 epochs over MNIST's 60,000 training images in
batches of 128, which is 15 x 469 = 7,035 optimiser steps. Running all of them to learn how long
they take would cost the time it measures, so this script runs ``ddpm_core.training.loop.train`` itself,
with the book's recipe, for one epoch on the first ``--steps`` x 128 training images, and divides
its wall time by the steps taken. The estimate for 15 epochs is that time per step times 7,035. It
counts the loop's own costs (data order, the recipe's hooks, the EMA, the checkpoint after the
epoch) once per ``--steps`` steps where the full run pays them once per 469, so it errs, slightly,
on the slow side.

The result, with the machine, the thread count and the method, goes to one JSON file that the book
and the README read (``book/results/training_time.json``), so every page gives the same number.
Measure on an otherwise idle machine: another job on the same cores slows every step.

    python -m benchmarks.training_time                 # 300 steps, writes book/results/training_time.json
    python -m benchmarks.training_time --steps 20 --out /tmp/t.json   # a quick check that it runs

``--out`` is checked before any timing: a file there that is not an earlier estimate, or a symbolic
link, is replaced only with ``--force`` (and a link itself, never the file it points to).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from ddpm_core.training.data import load_mnist
from ddpm_core.training.loop import train
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.utils import arguments
from ddpm_core.utils.device import device_description, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import check_output_file, write_bytes
from ddpm_core.utils.scripts import read_json_object, run_script

TRAINING_IMAGES = 60_000
RESULT = Path("book/results/training_time.json")


def is_estimate(path: Path) -> bool:
    """Whether ``path`` holds an estimate that this script wrote (which it may replace without --force)."""
    try:
        return "seconds_per_step" in read_json_object(path, "an estimate", "")
    except DDPMError:
        return False


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_time", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=arguments.positive_int, default=300,
                        help="optimiser steps to time (default 300)")
    parser.add_argument("--device", type=arguments.device_name, default="cpu",
                        help="auto, cpu, cuda, cuda:N or mps (default: cpu)")
    parser.add_argument("--out", type=arguments.file_path, default=RESULT,
                        help=f"the JSON file to write (default {RESULT})")
    parser.add_argument("--force", action="store_true", help="replace a file at --out that is not an estimate")
    args = parser.parse_args(argv)
    check_output_file(args.out, (".json",), args.force, "training-time estimate", is_estimate, "--out",
                      "training_time.json")

    book = TrainConfig()
    device = resolve_device(args.device)
    images, labels = load_mnist(train=True)
    steps = min(args.steps, math.ceil(TRAINING_IMAGES / book.batch_size))
    config = TrainConfig(epochs=1, subset=steps * book.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        train(folder, config, device=device, images=images, labels=labels, progress=False)
        seconds = time.perf_counter() - started
    full_steps = book.epochs * math.ceil(TRAINING_IMAGES / book.batch_size)
    per_step = seconds / steps
    result = {
        "machine": device_description(device),
        "threads": torch.get_num_threads(),
        "measured_steps": steps,
        "measured_seconds": round(seconds, 1),
        "seconds_per_step": round(per_step, 4),
        "full_run_steps": full_steps,
        "estimated_minutes": round(per_step * full_steps / 60, 1),
        "method": f"one epoch of the book's recipe on {steps * book.batch_size:,} training images ({steps} steps), "
                  f"timed with its start-up and checkpoint, times {full_steps:,} / {steps}",
        "measured_on": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
    }
    write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    print(f"{steps} steps in {seconds:.1f} s on {result['machine']}: "
          f"{per_step * 1000:.0f} ms per step, so about {result['estimated_minutes']:.0f} minutes for the "
          f"{full_steps:,} steps of 15 epochs. Written to {args.out}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
