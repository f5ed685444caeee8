"""Short screening runs of the candidate recipes, each scored by the MNIST judge.

Every candidate is a real ``python -m ddpm_core train`` run on the 60,000 training
images, shortened to ``--epochs`` (the learning-rate schedule, if any, is compressed
to the same length), then sampled with DDIM-100 (eta 0) from its raw and its EMA
weights. Results go to a JSON file, one entry per run, with the exact command.

    python -m ablations.screen --epochs 2 --out runs/screen --results ablations/screen_2ep.json
    python -m ablations.screen --round 2 --epochs 2 --out runs/screen2 --results ablations/screen_round2.json

A run whose folder already holds ``epochs`` epochs is not trained again.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ablations.candidates import (
    CANDIDATES,
    ROUND_TWO,
    check_runs_folder,
    chosen,
    ddim_steps,
    earlier,
    recipe_of,
    scored_samples,
    train_command,
    train_flags,
)
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError


def _trained_epochs(folder: Path) -> int:
    from ddpm_core.training.checkpoint import read_metadata
    from ddpm_core.training.run_folder import RunFolder

    weights = RunFolder(folder).weights
    return int(read_metadata(weights)["epoch"]) if weights.is_file() else 0


def _parameters(model_config: dict) -> int:
    from ddpm_core.diffusion.schedule import NoiseSchedule
    from ddpm_core.diffusion.unet import UNetConfig, count_parameters
    from ddpm_core.diffusion.unet_variants import build_unet

    return count_parameters(build_unet(UNetConfig.from_dict(model_config), NoiseSchedule().alpha_bars))


def train_and_describe(name: str, candidate: dict, epochs: int, out: Path, seed: int = 0) -> dict:
    """Train ``candidate`` for ``epochs`` with training seed ``seed`` into ``out/name`` (resuming, or not at all
    if it is done), and describe the run from its checkpoint: the command that trains it with every setting
    spelled out, its losses, its wall time and its parameter count."""
    from ddpm_core.training.checkpoint import read_metadata
    from ddpm_core.training.run_folder import RunFolder

    folder = out / name
    if _trained_epochs(folder) < epochs:
        command = [sys.executable, "-m", "ddpm_core", "train", "--epochs", str(epochs), "--out", str(folder),
                   "--seed", str(seed), "--no-progress", *train_flags(candidate["recipe"])]
        resume = ["--resume"] if RunFolder(folder).resumable() else []
        print(f"[{time.strftime('%H:%M:%S')}] training {name}: {shlex.join(command[1:])}", flush=True)
        done = subprocess.run(command + resume)
        if done.returncode != 0:
            raise DDPMError(f"Training {name} stopped with exit status {done.returncode} (its message is above); "
                            f"the runs finished before it are kept.")
    meta = read_metadata(RunFolder(folder).weights)
    command = train_command(recipe_of(meta["train_config"], meta["model_config"]), epochs, f"{out}/{name}",
                            int(meta["seed"]))
    return describe_run(meta, candidate["what"], command)


def describe_run(meta: dict, what: str, command: str) -> dict:
    """A trained run as the results files hold it, from its checkpoint's metadata."""
    return {
        "command": command,
        "what": what,
        "epochs": int(meta["epoch"]),
        "loss_history": meta["loss_history"],
        "wall_time_s": meta["wall_time_s"],
        "model_config": meta["model_config"],
        "parameters": _parameters(meta["model_config"]),
        "train_config": meta["train_config"],
    }


def score(checkpoint: Path, use_ema: bool, num_samples: int, seed: int, sampler: str, steps: int) -> dict:
    """Score the weights file (or run folder) ``checkpoint`` as the screen scores every candidate."""
    from ddpm_core.measure.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, num_samples=num_samples, seed=seed, sampler=sampler, steps=steps,
                                 eta=0.0, use_ema=use_ema, progress=False)
    result["class_counts"] = [int(c) for c in result["class_counts"]]
    return result


def main(argv: list[str] | None = None) -> int:
    from ddpm_core.utils.scripts import run_script

    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    from ddpm_core.utils.files import store_entry
    from ddpm_core.utils.scripts import results_file

    parser = argparse.ArgumentParser(prog="python -m ablations.screen", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=arguments.positive_int, default=2)
    parser.add_argument("--out", type=arguments.folder, default=Path("runs/screen"))
    parser.add_argument("--results", type=arguments.file_path, required=True)
    parser.add_argument("--round", type=int, choices=(1, 2), default=1,
                        help="1: the recipes of round one; 2: the layouts and objectives of round two")
    parser.add_argument("--only", default=None, help="comma-separated candidate names (default: all)")
    parser.add_argument("--num-samples", type=scored_samples, default=500)
    parser.add_argument("--seed", type=arguments.seed_int, default=100_000,
                        help="first sampling seed (unrelated to the book's)")
    parser.add_argument("--steps", type=ddim_steps, default=100, help="DDIM steps for scoring")
    args = parser.parse_args(argv)

    candidates = CANDIDATES if args.round == 1 else ROUND_TWO
    names = chosen(args.only, list(candidates))
    results = results_file(args.results)
    check_runs_folder(args.out, names)
    for name in names:
        entry = train_and_describe(name, candidates[name], args.epochs, args.out)
        previous = earlier(results, name)
        for use_ema in (False, True):
            key = "ema" if use_ema else "raw"
            if previous.get("epochs") == args.epochs and key in previous:  # already scored
                entry[key] = previous[key]
                continue
            print(f"[{time.strftime('%H:%M:%S')}] scoring {name} ({key})", flush=True)
            entry[key] = score(args.out / name, use_ema, args.num_samples, args.seed, "ddim", args.steps)
            print(f"  Frechet {entry[key]['frechet_distance']:.2f}  confident {entry[key]['confident_fraction']:.3f}"
                  f"  class max/min {entry[key]['class_ratio']:.2f}", flush=True)
        store_entry(args.results, name, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
