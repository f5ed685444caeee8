"""Full 15-epoch runs of the best screened candidates, scored as chapter 7 scores the book's model.

Each candidate of round two (``ablations/candidates.py``) is trained for the reference run's 15 epochs with
``python -m ddpm_core train`` and sampled from its raw weights with seeds 0 to 999: DDPM-1000 (the
comparison that decides whether the book adopts it), DDIM-50 with eta 0 and DPM-Solver++(2M) in 20 steps
(the fast samplers). Results go to a JSON file, one entry per run, with the exact command.

    python -m ablations.full --only v --out runs/full2 --results ablations/full_round2.json

A run whose folder already holds 15 epochs is not trained again, and a score already in the file is kept.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from ablations.candidates import ROUND_TWO, recipe_of, train_command, train_flags
from ablations.screen import _parameters, _trained_epochs

SAMPLERS = {  # name in the results: (sampler, steps)
    "ddpm1000": ("ddpm", 1000),
    "ddim50": ("ddim", 50),
    "dpm20": ("dpm", 20),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", required=True, help="comma-separated candidate names of round two")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("runs/full2"))
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    args = parser.parse_args(argv)

    from ddpm_core.checkpoint import read_metadata
    from ddpm_core.evaluation import evaluate_checkpoint

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name in args.only.split(","):
        folder = args.out / name
        if _trained_epochs(folder) < args.epochs:
            command = [sys.executable, "-m", "ddpm_core", "train", "--epochs", str(args.epochs), "--out",
                       str(folder), "--seed", "0", "--no-progress", *train_flags(ROUND_TWO[name]["recipe"])]
            resume = ["--resume"] if (folder / "resume.pt").is_file() else []
            print(f"[{time.strftime('%H:%M:%S')}] training {name}: {shlex.join(command[1:])}", flush=True)
            subprocess.run(command + resume, check=True)
        meta = read_metadata(folder / "model.safetensors")
        previous = results.get(name, {})
        entry = {
            "command": train_command(recipe_of(meta["train_config"], meta["model_config"]), args.epochs,
                                     f"{args.out}/{name}"),
            "what": ROUND_TWO[name]["what"],
            "epochs": args.epochs,
            "loss_history": meta["loss_history"],
            "wall_time_s": meta["wall_time_s"],
            "parameters": _parameters(meta["model_config"]),
        }
        for key, (sampler, steps) in SAMPLERS.items():
            if key in previous and previous[key].get("num_samples") == args.num_samples:
                entry[key] = previous[key]
                continue
            print(f"[{time.strftime('%H:%M:%S')}] scoring {name} with {key}", flush=True)
            scored = evaluate_checkpoint(folder / "model.safetensors", num_samples=args.num_samples, seed=0,
                                         sampler=sampler, steps=steps, progress=False)
            scored["class_counts"] = [int(c) for c in scored["class_counts"]]
            entry[key] = scored
            print(f"  Frechet {scored['frechet_distance']:.2f}  confident {scored['confident_fraction']:.3f}",
                  flush=True)
        results[name] = entry
        args.results.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
