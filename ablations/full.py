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
import time
from pathlib import Path

from ablations.candidates import ROUND_TWO
from ablations.screen import train_and_describe

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

    from ddpm_core.evaluation import evaluate_checkpoint

    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    for name in args.only.split(","):
        folder = args.out / name
        entry = train_and_describe(name, ROUND_TWO[name], args.epochs, args.out)
        for key in ("model_config", "train_config"):  # the command spells them out
            entry.pop(key)
        previous = results.get(name, {})
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
