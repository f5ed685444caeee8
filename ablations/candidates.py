"""The recipes compared in the chapter "What makes the digits sharp".

Each candidate is the reference recipe (Adam at 2e-4, constant rate, uniform t,
L_simple, max pooling, no attention) with the named changes; all keep 324,705
parameters, batch 128, the linear schedule with T = 1000 and epsilon prediction.
A recipe is written out as every ``python -m ddpm_core train`` flag, so that its
command means the same thing whatever the defaults of the day are.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ddpm_core.diffusion.unet import UNetConfig
from ddpm_core.training import recipe
from ddpm_core.utils.arguments import MAX_SAMPLES, bounded_int
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import check_writable

TRAIN_KEYS = ("lr", "warmup_steps", "lr_decay", "grad_clip", "ema_decay", "ema_warmup", "loss_weighting",
              "min_snr_gamma")
MODEL_KEYS = ("channels", "time_embed_dim", "attention", "downsample", "zero_init", "num_groups", "dropout",
              "prediction")
# The reference recipe of ddpm_core.training.recipe with the book's network.
REFERENCE: dict[str, Any] = {**{key: getattr(recipe.REFERENCE, key) for key in TRAIN_KEYS},
                             **{key: getattr(UNetConfig(), key) for key in MODEL_KEYS}}
# Warm-up, cosine decay, gradient clipping and an EMA that warms up: the usual care for a short run.
TUNED = {**REFERENCE, "lr": 1e-3, "warmup_steps": 200, "lr_decay": "cosine", "grad_clip": 1.0, "ema_warmup": True}
# Attention after the two 7x7 blocks (down and up), and the widths that keep the count at 324,705:
# 32, 40, 40 with a time embedding of 80.
ATTENTION = {"channels": (32, 40, 40), "time_embed_dim": 80, "attention": (7,)}

CANDIDATES: dict[str, dict[str, Any]] = {
    "reference": {"what": "the reference recipe: Adam 2e-4, constant", "recipe": REFERENCE},
    "tuned": {"what": "lr 1e-3, 200 warm-up steps, cosine decay, clip 1.0, EMA warm-up", "recipe": TUNED},
    "tuned_attn7": {"what": "tuned + self-attention after both 7x7 blocks (widths 32,40,40, embedding 80)",
                    "recipe": {**TUNED, **ATTENTION}},
    "tuned_minsnr": {"what": "tuned + min-SNR-5 loss weighting", "recipe": {**TUNED, "loss_weighting": "min_snr"}},
    "tuned_lr2e-3": {"what": "tuned with peak lr 2e-3", "recipe": {**TUNED, "lr": 2e-3}},
    "tuned_minsnr_lr2e-3": {"what": "tuned + min-SNR-5 loss weighting, peak lr 2e-3",
                            "recipe": {**TUNED, "loss_weighting": "min_snr", "lr": 2e-3}},
    "tuned_zero": {"what": "tuned + zero-initialised last convolutions", "recipe": {**TUNED, "zero_init": True}},
}

# Round two starts from the book's recipe (the winner of round one) and changes one thing at a time:
# the network's layout at no more parameters, and the objective. Scored as round one was.
BOOK = {**TUNED, "loss_weighting": "min_snr", "lr": 2e-3}
ROUND_TWO: dict[str, dict[str, Any]] = {
    "book": {"what": "the book's recipe (tuned + min-SNR-5, peak lr 2e-3)", "recipe": BOOK},
    "gamma1": {"what": "min-SNR with gamma 1", "recipe": {**BOOK, "min_snr_gamma": 1.0}},
    "gamma2": {"what": "min-SNR with gamma 2", "recipe": {**BOOK, "min_snr_gamma": 2.0}},
    "gamma10": {"what": "min-SNR with gamma 10", "recipe": {**BOOK, "min_snr_gamma": 10.0}},
    "attn7": {"what": "self-attention after both 7x7 blocks (widths 32,40,40, embedding 80)",
              "recipe": {**BOOK, **ATTENTION}},
    "attn14": {"what": "self-attention after both 14x14 blocks (widths 32,40,40, embedding 80)",
               "recipe": {**BOOK, **ATTENTION, "attention": (14,)}},
    "zero": {"what": "zero-initialised residual branches and output convolution",
             "recipe": {**BOOK, "zero_init": True}},
    # A strided 3x3 convolution has weights, max pooling none: the first level narrows to pay for them.
    "strided": {"what": "strided 3x3 convolutions instead of max pooling (widths 24,32,48)",
                "recipe": {**BOOK, "downsample": "conv", "channels": (24, 32, 48)}},
    "v": {"what": "the network predicts v (min-SNR weights: the same loss, another parametrisation)",
          "recipe": {**BOOK, "prediction": "v"}},
    "x0": {"what": "the network predicts x_0 (min-SNR weights: the same loss, another parametrisation)",
           "recipe": {**BOOK, "prediction": "x0"}},
    "dropout": {"what": "dropout 0.1 in every residual block", "recipe": {**BOOK, "dropout": 0.1}},
    "groups4": {"what": "GroupNorm with 4 groups instead of 8", "recipe": {**BOOK, "num_groups": 4}},
    "groups16": {"what": "GroupNorm with 16 groups instead of 8", "recipe": {**BOOK, "num_groups": 16}},
    "two_levels": {"what": "two levels, 28x28 and 14x14 (widths 32,56)", "recipe": {**BOOK, "channels": (32, 56)}},
}


def _flag_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if value else "none"
    return str(value)


def train_flags(recipe: dict[str, Any]) -> list[str]:
    """Every flag of ``python -m ddpm_core train`` that sets ``recipe``, booleans included."""
    flags = []
    for key, value in recipe.items():
        name = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(name if value else "--no-" + key.replace("_", "-"))
        else:
            flags += [name, _flag_value(value)]
    return flags


def recipe_of(train_config: dict[str, Any], model_config: dict[str, Any]) -> dict[str, Any]:
    """The recipe a run used, read back from its checkpoint's metadata (missing fields: the reference's)."""
    stored = {**train_config, **model_config}
    return {key: stored.get(key, default) for key, default in REFERENCE.items()}


def train_command(recipe: dict[str, Any], epochs: int, out: str, seed: int = 0) -> str:
    return "python -m ddpm_core train " + shlex.join(
        ["--epochs", str(epochs), "--out", out, "--seed", str(seed), *train_flags(recipe)])


# The Frechet distance compares two distributions: it needs at least two samples of each.
scored_samples = bounded_int(2, MAX_SAMPLES, "a number of samples",
                             "; run the script several times with different seeds for more")
ddim_steps = bounded_int(1, recipe.REFERENCE.num_steps, "a number of DDIM steps (1 to every step of the schedule)")


def chosen(text: str | None, known: list[str], flag: str = "--only") -> list[str]:
    """The comma-separated names in ``text`` (all of ``known`` when None), each refused unless it is known."""
    if text is None:
        return list(known)
    names = [name.strip() for name in text.split(",")]
    unknown = list(dict.fromkeys(name for name in names if name not in known))
    if unknown:
        raise DDPMError(f"{flag} names {', '.join(repr(n) for n in unknown)}, which is not one of {', '.join(known)}; "
                        f"nothing was trained or scored.")
    return list(dict.fromkeys(names))


def earlier(entries: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry ``name`` of a results file read back, or an empty one when it is missing or not an object."""
    entry = entries.get(name)
    return entry if isinstance(entry, dict) else {}


def check_runs_folder(out: Path, names: list[str]) -> None:
    """Refuse, before any training, a folder of runs (``--out``) in which the runs ``names`` cannot be written."""
    for name in names:
        check_writable(out / name / "model.safetensors", "model.safetensors")
