"""What each candidate recipe costs per training step, as a ratio to the reference recipe's step.

A step is ``ddpm_core.diffusion.objective.train_step`` with the recipe's hooks attached, what ``train`` does per batch
of
128 under the recipe:
the draw of t and eps, the network forward and backward, the recipe's loss weighting, gradient
clipping, the Adam update and the EMA update. The recipes come from ``ablations/candidates.py``.
Each round times every recipe in turn (the same process, alternating, so a slower moment of a
shared machine hits all of them alike);
the best round of each is reported, with its ratio to the reference recipe and the 15-epoch time
that ratio gives from a measured 15-epoch time of the reference recipe (``--reference-minutes``).
The book's recipe is also timed as the class-conditional network of classifier-free guidance
(row "conditional"): its labels, label dropout and class embedding.

    python -m benchmarks.recipe_cost
    python -m benchmarks.recipe_cost --round 2   # the candidates of round two, as ratios to the book's recipe
    python -m benchmarks.recipe_cost --quick
"""

from __future__ import annotations

import argparse
import time

import torch

from ablations.candidates import CANDIDATES, ROUND_TWO
from benchmarks._common import DEVICE_HELP, batch_size, device_name, positive_int, print_table
from ddpm_core.diffusion.objective import LabelDropout, train_step
from ddpm_core.diffusion.unet import UNetConfig, count_parameters
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training.recipe import RecipeHooks, TrainConfig, timestep_weights
from ddpm_core.utils.arguments import positive_float
from ddpm_core.utils.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.utils.scripts import run_script

MODEL_KEYS = ("channels", "time_embed_dim", "attention", "downsample", "zero_init", "num_groups", "dropout",
              "prediction", "num_classes")
CHOSEN = "tuned_minsnr_lr2e-3"  # the book's default recipe, also timed as a class-conditional network


class RecipeStep:
    """One ``ddpm_core.diffusion.objective.train_step`` of a recipe, on a fixed pool of random batches."""

    def __init__(self, recipe: dict, device: torch.device, batch_size: int) -> None:
        torch.manual_seed(0)
        config = UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()
                               if k in MODEL_KEYS})
        self.config = TrainConfig(**{k: v for k, v in recipe.items() if k in TrainConfig.__dataclass_fields__})
        self.schedule = self.config.schedule()
        self.model = build_unet(config, self.schedule.alpha_bars).to(device=device, memory_format=torch.channels_last)
        self.parameters = count_parameters(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=recipe["lr"])
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.weights = timestep_weights(self.config, self.schedule)
        # A step in the middle of a long run: past any warm-up, so every part of the recipe is active.
        self.hooks = RecipeHooks(self.optimizer, self.model, self.config, total_steps=10_000, ema_state=self.ema,
                                 step=1_000)
        self.generator = torch.Generator().manual_seed(0)
        self.pool = [torch.rand(batch_size, 1, 28, 28, generator=self.generator) * 2 - 1 for _ in range(4)]
        self.labels = (torch.randint(0, config.num_classes, (batch_size,), generator=self.generator)
                       if config.num_classes is not None else None)
        self.calls = 0

    def __call__(self) -> None:
        x0 = self.pool[self.calls % len(self.pool)]
        model = self.model if self.labels is None else LabelDropout(self.model, self.labels, self.config.p_uncond,
                                                                    self.generator)
        train_step(model, self.schedule, self.optimizer, x0, self.generator, self.weights)
        self.calls += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    parser.add_argument("--steps", type=positive_int, default=15, help="timed steps per recipe and round")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds; the best of each recipe counts")
    parser.add_argument("--batch-size", type=batch_size, default=128)
    parser.add_argument("--reference-minutes", type=positive_float, default=35.4,
                        help="measured 15-epoch time of the reference recipe (default 35.4, idle 2-core CPU)")
    parser.add_argument("--round", type=int, choices=(1, 2), default=1,
                        help="1: the recipes of round one against the reference; 2: round two's against the book's")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 round, batch 16: checks that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.rounds, args.batch_size = 2, 1, 16
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()
    print(f"device: {device_description(device)}; batch {args.batch_size}, best of {args.rounds} rounds "
          f"of {args.steps} steps")
    candidates, baseline = (CANDIDATES, "reference") if args.round == 1 else (ROUND_TWO, "book")
    steps = {name: RecipeStep(c["recipe"], device, args.batch_size) for name, c in candidates.items()}
    if args.round == 1:
        steps["conditional"] = RecipeStep({**CANDIDATES[CHOSEN]["recipe"], "num_classes": 10}, device,
                                          args.batch_size)
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(args.rounds):
        for name, step in steps.items():
            step()  # one untimed step after switching recipes
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], (time.perf_counter() - started) / args.steps)
    rows = []
    for name, seconds in best.items():
        ratio = seconds / best[baseline]
        rows.append([name, f"{steps[name].parameters:,}", f"{args.batch_size / seconds:.0f}", f"{ratio:.3f}",
                     f"{args.reference_minutes * ratio:.1f}"])
    if args.round == 2:  # the minutes column scales the reference's time, which is not round two's baseline
        rows = [row[:4] for row in rows]
    print_table(["recipe", "parameters", "images/s", f"step time / {baseline}", "15 epochs (min)"][:len(rows[0])],
                rows)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
