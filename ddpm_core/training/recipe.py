"""The training recipe: every setting of a run, and what the settings do around each gradient step.

``TrainConfig`` holds the settings. Its defaults are the book's recipe, chosen by the measured
ablations of the chapter on sharper digits; ``REFERENCE`` is the reference run's recipe (Adam at
2e-4, constant, no clipping, uniform weights: Algorithm 1 as the paper states it). Each field
that a person may set carries its help text and the name of its parser in
``ddpm_core.utils.arguments``, so the command line's flags are made from this one definition.

``RecipeHooks`` attaches the recipe to an optimiser: before each step it sets the learning rate
(linear warm-up, then constant or cosine decay) and clips the gradients' norm; after it, it moves
the exponential moving average (EMA) of the weights. ``timestep_weights`` is the loss weighting
w(t) that ``objective.train_step`` applies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import Tensor

from ddpm_core.diffusion.objective import TimestepWeights, min_snr_weights
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.training.describe import short
from ddpm_core.utils.arguments import MAX_FLOAT, MAX_LEARNING_RATE, MAX_SEED
from ddpm_core.utils.errors import DDPMError

LR_DECAYS = ("constant", "cosine")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
PRECISIONS = ("fp32", "bf16")
# The largest whole-number settings. Beyond them a run never ends or allocates more than any machine has, and
# the learning rate's warm-up, which divides by its steps as a float, overflows.
MAX_EPOCHS = 100_000
MAX_STEPS = 10**10  # optimiser steps: more than MAX_EPOCHS epochs of 60,000 one-image batches take
MAX_BATCH_SIZE = 10_000_000  # images in one step; the memory check refuses most batches far below this


def setting(default: Any, help: str, parse: str | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A field a person may set on the command line: its help text, and the parser of its value
    (a name in ``ddpm_core.utils.arguments``) or its choices; a bool becomes --flag/--no-flag."""
    return field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """The settings of a training run; the defaults are the book's recipe."""

    epochs: int = setting(15, "passes over the training set", "positive_int")
    batch_size: int = setting(128, "images per optimiser step", "batch_size")
    lr: float = setting(2e-3, "Adam's learning rate; the peak rate after --warmup-steps",
                         "learning_rate_value")
    seed: int = setting(0, "seed for the initial weights, the data order and every t and eps drawn", "seed_int")
    ema_decay: float | None = setting(0.999, "decay of the weights' moving average (EMA), or none", "optional_decay")
    subset: int | None = setting(None, "train on the first N images only", "positive_int")
    num_steps: int = 1000  # T of the noise schedule
    beta_start: float = 1e-4
    beta_end: float = 0.02
    channels_last: bool = True  # NHWC activations: measured faster for convolutions on the CPU
    warmup_steps: int = setting(200, "raise the learning rate linearly from 0 over this many steps", "non_negative_int")
    lr_decay: str = setting("cosine", "the learning rate after the warm-up: constant, or cosine down to 0",
                            choices=LR_DECAYS)
    grad_clip: float | None = setting(1.0, "clip the gradients' global norm to this, or none",
                                      "optional_positive_float")
    ema_warmup: bool = setting(True, "EMA decay min(decay, (1 + n) / (10 + n)) at update n, so early weights fade")
    loss_weighting: str = setting("min_snr", "uniform (L_simple, Algorithm 1) or min_snr (Hang et al. 2023)",
                                  choices=LOSS_WEIGHTINGS)
    min_snr_gamma: float = setting(5.0, "gamma of min_snr: w(t) = min(SNR(t), gamma) / SNR(t)", "positive_float")
    p_uncond: float = 0.1  # conditional networks only: the share of labels dropped to "no class"
    precision: str = setting("fp32", "bf16: the network's forward pass under bfloat16 autocast, the loss in fp32",
                             choices=PRECISIONS)

    def validate(self) -> None:
        """Refuse a setting that no run can use, naming its flag: out of range, of the wrong type, or so large
        that the run would overflow, divide by zero or allocate absurd memory long after it started."""
        from ddpm_core.training.checkpoint_metadata import MAX_NUM_STEPS  # its owner, which imports this module

        wholes = {"epochs": (1, MAX_EPOCHS), "batch_size": (1, MAX_BATCH_SIZE), "seed": (0, MAX_SEED),
                  "warmup_steps": (0, MAX_STEPS), "num_steps": (1, MAX_NUM_STEPS)}
        if self.subset is not None:
            wholes["subset"] = (1, MAX_BATCH_SIZE)
        for name, (low, high) in wholes.items():
            if not (_is_whole(getattr(self, name)) and low <= getattr(self, name) <= high):
                _refuse(name, f"a whole number from {low:,} to {high:,}", getattr(self, name))
        if not (_is_number(self.lr) and 0 < self.lr <= MAX_LEARNING_RATE):
            _refuse("lr", f"above 0 and at most {MAX_LEARNING_RATE:g}", self.lr)
        if self.ema_decay is not None and not (_is_number(self.ema_decay) and 0.0 < self.ema_decay < 1.0):
            _refuse("ema_decay", "strictly between 0 and 1 (e.g. 0.999), or none", self.ema_decay)
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and 0 < self.grad_clip <= MAX_FLOAT):
            _refuse("grad_clip", f"positive and at most {MAX_FLOAT:g} (e.g. 1.0), or none", self.grad_clip)
        if not (_is_number(self.min_snr_gamma) and 0 < self.min_snr_gamma <= MAX_FLOAT):
            _refuse("min_snr_gamma", f"positive and at most {MAX_FLOAT:g} (e.g. 5)", self.min_snr_gamma)
        if not (_is_number(self.p_uncond) and 0.0 <= self.p_uncond <= 1.0):
            _refuse("p_uncond", "between 0 and 1 (e.g. 0.1)", self.p_uncond)
        for name, choices in (("lr_decay", LR_DECAYS), ("loss_weighting", LOSS_WEIGHTINGS), ("precision", PRECISIONS)):
            if getattr(self, name) not in choices:
                _refuse(name, f"one of {choices}", getattr(self, name))
        for name in ("beta_start", "beta_end"):
            if not _is_number(getattr(self, name)):
                _refuse(name, "a number", getattr(self, name))
        self.schedule()  # refuses impossible betas

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.num_steps, self.beta_start, self.beta_end)


BOOK = TrainConfig()
# The reference run: Algorithm 1 as the paper states it, Adam at 2e-4, batch 128, 15 epochs.
REFERENCE = TrainConfig(lr=2e-4, warmup_steps=0, lr_decay="constant", grad_clip=None, ema_warmup=False,
                        loss_weighting="uniform")
RECIPES = {"book": BOOK, "reference": REFERENCE}


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_whole(value) or isinstance(value, float)) and math.isfinite(value)


def _refuse(name: str, wanted: str, value: Any) -> NoReturn:
    """Refuse ``value`` of the setting ``name``, with its flag where the command line has one."""
    flag = f" (--{name.replace('_', '-')})" if TrainConfig.__dataclass_fields__[name].metadata else ""
    raise DDPMError(f"{name} must be {wanted}, got {short(value)}{flag}.")


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based) of a run of ``total_steps`` steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr


def timestep_weights(config: TrainConfig, schedule: NoiseSchedule) -> TimestepWeights | None:
    """The loss weighting w(t) of the recipe, or None for uniform weights (Algorithm 1 exactly)."""
    if config.loss_weighting == "min_snr":
        return lambda t: min_snr_weights(schedule, t, config.min_snr_gamma)
    return None


def update_ema(ema_state: dict[str, Tensor], model: torch.nn.Module, config: TrainConfig, step: int) -> None:
    """Move the EMA weights a share 1 - d towards the model's: ema <- d ema + (1 - d) theta, in place.

    d is ``config.ema_decay``; with ``config.ema_warmup`` it is min(d, (1 + n) / (10 + n)) for the
    n-th update (n = step + 1), so the first updates forget the initial weights quickly.
    """
    decay = config.ema_decay
    if config.ema_warmup:
        decay = min(decay, (2 + step) / (11 + step))  # n = step + 1 updates
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].lerp_(value, 1.0 - decay)


class RecipeHooks:
    """The recipe around each optimiser step: learning rate, clipping; then the EMA.

    ``step`` counts the optimiser steps of the run (0-based; set it when a run resumes).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module,
                 config: TrainConfig, total_steps: int,
                 ema_state: dict[str, Tensor] | None = None, step: int = 0) -> None:
        self.model, self.config, self.total_steps = model, config, total_steps
        self.ema_state, self.step = ema_state, step
        self._handles = [optimizer.register_step_pre_hook(self._before_step),
                         optimizer.register_step_post_hook(self._after_step)]

    def _before_step(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step, self.total_steps)
        if self.config.grad_clip is not None:
            clip = self.config.grad_clip
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)

    def _after_step(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        if self.ema_state is not None:
            update_ema(self.ema_state, self.model, self.config, self.step)
        self.step += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
