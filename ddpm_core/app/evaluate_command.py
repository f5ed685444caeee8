"""``python -m ddpm_core evaluate``: sample from a checkpoint and print the quality metrics.

The sampling is ``ddpm_core.measure.evaluation.evaluate_checkpoint``'s, with the sampler and its
options from ``ddpm_core.diffusion.samplers``; the table is ``ddpm_core.measure.tables``'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpm_core.app import flags
from ddpm_core.utils import arguments


def add_parser(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="sample from a checkpoint and print quality metrics")
    flags.add_checkpoint(evaluate)
    evaluate.add_argument("--num-samples", type=arguments.sample_count, default=1000,
                          help="number of samples (default 1000)")
    evaluate.add_argument("--seed", type=arguments.seed_int, default=0, help="sample i uses seed S+i (default 0)")
    flags.add_sampler(evaluate, ("steps", "eta"))
    evaluate.add_argument("--ema", action="store_true", help="use the EMA weights")
    evaluate.add_argument("--guidance", type=arguments.guidance_weight, default=None,
                          help="conditional models: guidance w; sample i asks for digit i mod 10 (default 1)")
    evaluate.add_argument("--classifier", type=Path, default=None, help="judge weights (default: the packaged ones)")
    flags.add_device_and_progress(evaluate)


def run(args: argparse.Namespace) -> int:
    from ddpm_core.measure.evaluation import evaluate_checkpoint
    from ddpm_core.measure.tables import format_metrics_table

    result = evaluate_checkpoint(
        args.checkpoint,
        num_samples=args.num_samples,
        seed=args.seed,
        sampler=args.sampler,
        use_ema=args.ema,
        device=args.device,
        classifier_path=args.classifier,
        progress=not args.no_progress,
        guidance=args.guidance,
        **flags.sampler_options(args),
    )
    print(format_metrics_table([result]))
    if "accuracy" in result:
        print(f"asked for digit i mod 10: {result['accuracy']:.1%} judged as asked; within-digit diversity "
              f"{result['diversity_mean']:.3f} of real digits'; per-digit Frechet {result['class_frechet_mean']:.1f}")
    print(f"sampling took {result['sampling_seconds']:.1f} s; Frechet distance against a fixed random set of "
          f"{result['num_real']} MNIST test images; NN: distance to the nearest of the 60,000 training images")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C."""
    return "interrupted: nothing was written; run the same command again to evaluate"
