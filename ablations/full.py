"""Full 15-epoch runs of the best screened candidates, scored as chapter 7 scores the book's model.

Each candidate of round two (``ablations/candidates.py``) is trained for the reference run's 15 epochs with
``python -m ddpm_core train`` and sampled from its raw weights with seeds 0 to 999: DDPM-1000 (the
comparison that decides whether the book adopts it), DDIM-50 with eta 0 and DPM-Solver++(2M) in 20 steps
(the fast samplers). Results go to a JSON file, one entry per run, with the exact command.

    python -m ablations.full --only v --out runs/full2 --results ablations/full_round2.json
    python -m ablations.full --only zero --second-seed-set --out runs/full2 --results ablations/full_round2.json
    python -m ablations.full --only zero --train-seed 1 --out runs/full2 --results ablations/full_round2.json
    python -m ablations.full --only book --second-seed-set --results ablations/full_round2.json

``--second-seed-set`` also scores DDPM-1000 on seeds 1,000 to 1,999, which measures how far the distance
and the confident share move with the seeds alone. ``--train-seed`` trains the candidate again from another
initialisation and data order, into ``OUT/NAME_seedN`` (results under that name too), which measures how
far they move with the training run. ``book`` is the committed model, which chapter 7 scores on seeds 0 to 999 itself.

A run whose folder already holds 15 epochs is not trained again, and a score already in the file is kept.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ablations.candidates import ROUND_TWO, check_runs_folder, chosen, earlier, scored_samples
from ablations.screen import describe_run, train_and_describe
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import results_file

SAMPLERS = {  # name in the results: (sampler, its options)
    "ddpm1000": ("ddpm", {}),
    "ddim50": ("ddim", {"steps": 50, "eta": 0.0}),
    "dpm20": ("dpm", {"steps": 20}),
}
SECOND_SEED_SET = "ddpm1000_next_seeds"  # DDPM-1000 on seeds NUM_SAMPLES to 2 * NUM_SAMPLES - 1
BOOK_MODEL = Path("book/checkpoints/ddpm_mnist.safetensors")


def describe_book_model() -> dict:
    """The committed model as a run of its own, named ``book``: what ``make train`` trains."""
    from ddpm_core.training.checkpoint import read_metadata

    return describe_run(read_metadata(BOOK_MODEL), "the book's model: round one's winner, predicting eps",
                        "make train")


def main(argv: list[str] | None = None) -> int:
    from ddpm_core.utils.scripts import run_script

    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.full", description=__doc__.splitlines()[0])
    parser.add_argument("--only", required=True, help="comma-separated candidate names of round two, or book")
    parser.add_argument("--epochs", type=arguments.positive_int, default=15)
    parser.add_argument("--out", type=arguments.folder, default=Path("runs/full2"))
    parser.add_argument("--results", type=arguments.file_path, required=True)
    parser.add_argument("--num-samples", type=scored_samples, default=1000)
    parser.add_argument("--train-seed", type=arguments.seed_int, default=0,
                        help="training seed (default 0, the book's)")
    parser.add_argument("--second-seed-set", action="store_true",
                        help="also score DDPM-1000 on the next NUM_SAMPLES seeds")
    args = parser.parse_args(argv)
    candidates = chosen(args.only, list(ROUND_TWO))  # "book" among them: the committed model
    results = results_file(args.results)
    if "book" in candidates and not BOOK_MODEL.is_file():
        raise DDPMError(f"The book's model {BOOK_MODEL} is not there: run the script from the repository's top "
                        f"folder, where book/ is.")
    check_runs_folder(args.out, [name if args.train_seed == 0 else f"{name}_seed{args.train_seed}"
                                 for name in candidates if name != "book"])

    from ddpm_core.measure.evaluation import evaluate_checkpoint
    from ddpm_core.training.run_folder import RunFolder
    from ddpm_core.utils.files import store_entry

    samplers = {key: (sampler, options, 0) for key, (sampler, options) in SAMPLERS.items()}  # and the first seed
    if args.second_seed_set:
        samplers[SECOND_SEED_SET] = ("ddpm", {}, args.num_samples)
    for candidate in candidates:
        name = candidate if args.train_seed == 0 else f"{candidate}_seed{args.train_seed}"
        if candidate == "book":  # chapter 7 scores seeds 0 to 999 from its sample set
            weights, entry = BOOK_MODEL, describe_book_model()
            todo = {k: v for k, v in samplers.items() if k == SECOND_SEED_SET}
        else:
            weights = RunFolder(args.out / name).weights
            entry = train_and_describe(name, ROUND_TWO[candidate], args.epochs, args.out, args.train_seed)
            todo = samplers
        for key in ("model_config", "train_config"):  # the command spells them out
            entry.pop(key)
        previous = earlier(results, name)
        if SECOND_SEED_SET in previous and SECOND_SEED_SET not in todo:
            entry[SECOND_SEED_SET] = previous[SECOND_SEED_SET]  # scored by an earlier call
        for key, (sampler, options, seed) in todo.items():
            if earlier(previous, key).get("num_samples") == args.num_samples:
                entry[key] = previous[key]
                continue
            print(f"[{time.strftime('%H:%M:%S')}] scoring {name} with {key}", flush=True)
            scored = evaluate_checkpoint(weights, num_samples=args.num_samples, seed=seed,
                                         sampler=sampler, progress=False, **options)
            scored["class_counts"] = [int(c) for c in scored["class_counts"]]
            entry[key] = scored
            print(f"  Frechet {scored['frechet_distance']:.2f}  confident {scored['confident_fraction']:.3f}",
                  flush=True)
        store_entry(args.results, name, entry)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
