"""The fast samplers on one model: DDIM and DPM-Solver++(2M) at several step counts, scored by the MNIST judge.

Every row samples the same seeds (0..N-1, as chapter 7 measures) from the same weights and is scored
like chapter 7's table: Fréchet distance to the test set and the judge-confident share. The goal of
the fast path is DDPM-1000's quality (chapter 7's row for the same model and seeds) in at most 50
network calls.

    python -m ablations.fast_samplers --results ablations/fast_samplers.json
    python -m ablations.fast_samplers --only dpm-20,ddim-50 --num-samples 200 --results /tmp/f.json

A row already in the results file for the same checkpoint and number of samples is not sampled again.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ablations.candidates import chosen, earlier, scored_samples
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError

ROWS = {  # name: (sampler, its options)
    "ddim-10": ("ddim", {"steps": 10, "eta": 0.0}),
    "ddim-20": ("ddim", {"steps": 20, "eta": 0.0}),
    "ddim-50": ("ddim", {"steps": 50, "eta": 0.0}),
    "ddim-100": ("ddim", {"steps": 100, "eta": 0.0}),
    "ddim-10-eta1": ("ddim", {"steps": 10, "eta": 1.0}),
    "ddim-20-eta1": ("ddim", {"steps": 20, "eta": 1.0}),
    "ddim-50-eta0.5": ("ddim", {"steps": 50, "eta": 0.5}),
    "ddim-50-eta1": ("ddim", {"steps": 50, "eta": 1.0}),
    "ddim-100-eta0.5": ("ddim", {"steps": 100, "eta": 0.5}),
    "ddim-100-eta1": ("ddim", {"steps": 100, "eta": 1.0}),
    "dpm-10": ("dpm", {"steps": 10}),
    "dpm-20": ("dpm", {"steps": 20}),
    "dpm-50": ("dpm", {"steps": 50}),
    "dpm-100": ("dpm", {"steps": 100}),
}


def main(argv: list[str] | None = None) -> int:
    from ddpm_core.utils.scripts import run_script

    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    from ddpm_core.measure.evaluation import evaluate_checkpoint
    from ddpm_core.utils.files import store_entry
    from ddpm_core.utils.scripts import results_file

    parser = argparse.ArgumentParser(prog="python -m ablations.fast_samplers", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=arguments.file_path,
                        default=Path("book/checkpoints/ddpm_mnist.safetensors"))
    parser.add_argument("--results", type=arguments.file_path, required=True)
    parser.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--num-samples", type=scored_samples, default=1000)
    args = parser.parse_args(argv)
    names = chosen(args.only, list(ROWS))
    results = results_file(args.results)
    if not args.checkpoint.exists():
        raise DDPMError(f"No checkpoint at {args.checkpoint}: pass a model.safetensors with --checkpoint, or run "
                        f"the script from the repository's top folder for the book's model.")

    for name in names:
        sampler, options = ROWS[name]
        previous = earlier(results, name)
        if previous.get("checkpoint") == str(args.checkpoint) and previous.get("num_samples") == args.num_samples:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
        row = evaluate_checkpoint(args.checkpoint, num_samples=args.num_samples, sampler=sampler, progress=False,
                                  **options)
        row = {"checkpoint": str(args.checkpoint), **{k: v for k, v in row.items() if not hasattr(v, "shape")}}
        row["class_counts"] = [int(c) for c in row.get("class_counts", [])]
        print(f"  Frechet {row['frechet_distance']:.2f}  confident {row['confident_fraction']:.3f}", flush=True)
        store_entry(args.results, name, row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
