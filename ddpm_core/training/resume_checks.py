"""What a resume state must hold before a run trusts it: every entry's type, shape and range.

``resume.pt`` is read with ``weights_only=True``, so loading it runs no code, but what it holds can
still be anything made of tensors, numbers and strings: a noise-shard count that is no number, a
generator state torch refuses, an optimiser state of another network, integer weights, NaN. A
resumed run would meet each of these as a RuntimeError, ValueError or KeyError, some only after
the data had loaded, or train on silently from nonsense. ``wrong_entries`` names the entries of the
wrong type or size; ``entry_problems`` then compares each entry with what ``resume.resume_state``
writes for the architecture the state names: shapes before values, so that no check computes on a
tensor larger than the network's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion.unet import UNetConfig
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training.checkpoint import expected_shapes, shape_mismatch
from ddpm_core.training.checkpoint_metadata import is_finite_number, is_whole_number
from ddpm_core.training.describe import short
from ddpm_core.training.distributed import MAX_PROCESSES
from ddpm_core.training.recipe import MAX_EPOCHS

MAX_NOISE_SHARDS = MAX_PROCESSES  # one per process of the run a state stands for; each state is 5 kB
RNG_STATE_BYTES = torch.Generator().get_state().numel()  # a CPU generator's state, as get_state returns it


def _is_epoch(value: Any) -> bool:
    return is_whole_number(value) and 1 <= value <= MAX_EPOCHS


def _is_named_tensors(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


def _is_setting(value: Any) -> bool:
    """A value a ``TrainConfig`` field can take: compared with the requested one, it cannot raise (as a tensor's
    ambiguous truth would)."""
    return value is None or isinstance(value, (bool, int, float, str))


def glimpse(value: Any) -> str:
    """A value of a resume state in a few words: a number or string itself, a container by its size."""
    if isinstance(value, Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {short(tuple(value.shape), 40)}"
    if isinstance(value, (dict, list, tuple)):
        return f"a {type(value).__name__} of {len(value):,} entr{'y' if len(value) == 1 else 'ies'}"
    return short(value, 40)


def wrong_entry(state: dict[str, Any], name: str) -> str:
    """The entry ``name`` of ``wrong_entries`` in a few words; a training config by its unusable settings."""
    value = state[name]
    if name != "train_config" or not isinstance(value, dict):
        return glimpse(value)
    bad = [] if _is_epoch(value.get("epochs")) else ["epochs"]
    bad += [k for k, v in value.items() if not (isinstance(k, str) and _is_setting(v))]
    shown = [f"{k if isinstance(k, str) and len(k) <= 30 else short(k, 30)} = {glimpse(value.get(k))}" for k in bad]
    return "its settings " + ", ".join(shown[:3])


def wrong_entries(state: dict[str, Any]) -> list[str]:
    """The entries of a resume state (which holds every key of ``resume.RESUME_KEYS``) of the wrong type or size."""
    epoch, generators, config = state["epoch"], state["generators"], state["train_config"]
    checks = {
        "epoch": _is_epoch(epoch),
        "model": _is_named_tensors(state["model"]),
        "optimizer": isinstance(state["optimizer"], dict) and set(state["optimizer"]) == {"state", "param_groups"},
        "generators": isinstance(generators, list) and 1 <= len(generators) <= MAX_NOISE_SHARDS,
        "noise_shards": (is_whole_number(state["noise_shards"]) and isinstance(generators, list)
                         and state["noise_shards"] == len(generators)),
        "torch_rng": isinstance(state["torch_rng"], Tensor),
        "ema": _is_named_tensors(state["ema"]),
        # one mean loss per epoch: the history grows with every epoch saved
        "loss_history": (isinstance(state["loss_history"], list) and all(map(is_finite_number, state["loss_history"]))
                         and (len(state["loss_history"]) == epoch or not _is_epoch(epoch))),
        "wall_time_s": is_finite_number(state["wall_time_s"]) and state["wall_time_s"] >= 0,
        "train_config": (isinstance(config, dict) and _is_epoch(config.get("epochs"))
                         and all(isinstance(k, str) and _is_setting(v) for k, v in config.items())),
    }
    return [k for k, ok in checks.items() if not ok]


def entry_problems(state: dict[str, Any], config: UNetConfig) -> list[str]:
    """What is wrong with the entries of a resume state whose types and sizes are right (``wrong_entries`` is
    empty) and whose architecture is ``config``, in words; empty when the state can be restored."""
    weights = _weights_problems(state, config)
    if weights:  # the optimiser's moments are checked against the same shapes
        return weights
    return [*_optimizer_problems(state["optimizer"], config), *_generator_problems(state)]


def _tensor_problem(name: str, value: Any, shape: tuple[int, ...], non_negative: bool = False) -> str:
    """Why ``value`` is not a dense float32 tensor of ``shape`` with finite values (and none below 0 if
    ``non_negative``), or ""."""
    if not isinstance(value, Tensor) or value.layout != torch.strided:
        return f"{name} is {type(value).__name__ if not isinstance(value, Tensor) else value.layout}, not a tensor"
    if tuple(value.shape) != shape:
        return f"{name} has the shape {short(tuple(value.shape), 40)}, not {shape}"
    if value.dtype != torch.float32:
        return f"{name} holds {str(value.dtype).removeprefix('torch.')} values, not float32"
    if not torch.isfinite(value).all():
        return f"{name} holds NaN or infinite values"
    if non_negative and (value < 0).any():
        return f"{name} holds negative values"
    return ""


def _weights_problems(state: dict[str, Any], config: UNetConfig) -> list[str]:
    """The model's and the EMA's weights: the architecture's names and shapes, float32, finite; EMA weights
    exactly when the run's settings keep an EMA."""
    expected = expected_shapes(config)
    keeps_ema = state["train_config"].get("ema_decay") is not None
    if bool(state["ema"]) != keeps_ema:
        return [f"its settings {'keep a' if keeps_ema else 'keep no'} moving average of the weights (ema_decay "
                f"{short(state['train_config'].get('ema_decay'), 20)}), but its ema entry holds "
                f"{len(state['ema'])} tensors"]
    for name in ("model", "ema"):
        weights = state[name]
        if name == "ema" and not weights:
            continue
        found = {k: tuple(v.shape) if isinstance(v, Tensor) else () for k, v in weights.items()}
        mismatch = shape_mismatch(expected, found)
        if mismatch:
            return [f"its {name} weights do not fit its architecture ({mismatch})"]
        problems = [_tensor_problem(f"{name} weight {short(k, 60)}", v, expected[k]) for k, v in weights.items()]
        problems = [problem for problem in problems if problem]
        if problems:
            more = f" (and {len(problems) - 1} more of its {name} weights)" if len(problems) > 1 else ""
            return [problems[0] + more]
    return []


def _parameter_shapes(config: UNetConfig) -> list[tuple[int, ...]]:
    """The shapes of the network's parameters in the optimiser's order, found without allocating them."""
    with torch.device("meta"):
        return [tuple(p.shape) for p in build_unet(replace(config, prediction="eps")).parameters()]


def _adam_defaults() -> dict[str, Any]:
    """Adam's settings as ``torch.optim.Adam(parameters, lr=...)`` makes them, which the training loop uses."""
    group = torch.optim.Adam([torch.zeros(1)]).param_groups[0]
    return {k: v for k, v in group.items() if k not in ("params", "lr")}


def _same(value: Any, default: Any) -> bool:
    """``value == default`` for Adam's settings, without comparing a tensor (whose truth is ambiguous)."""
    if isinstance(default, tuple):
        return isinstance(value, tuple) and len(value) == len(default) and all(map(_same, value, default))
    return type(value) is type(default) and value == default


def _optimizer_problems(optimizer: dict[str, Any], config: UNetConfig) -> list[str]:
    """Adam's state for this network: one parameter group over every parameter with Adam's settings, and for
    each parameter a step count and two moments of its shape."""
    shapes = _parameter_shapes(config)
    groups, moments = optimizer["param_groups"], optimizer["state"]
    if not (isinstance(groups, list) and len(groups) == 1 and isinstance(groups[0], dict)):
        return [f"its optimizer holds {glimpse(groups)} as parameter groups, not the one group of this network"]
    group, defaults = groups[0], _adam_defaults()
    if group.get("params") != list(range(len(shapes))):
        return [f"its optimizer's parameter group is not the {len(shapes)} parameters of its network"]
    other = [k for k in group if k not in ("params", "lr") and (k not in defaults or not _same(group[k], defaults[k]))]
    if other or not (is_finite_number(group.get("lr")) and group["lr"] >= 0):
        named = ", ".join(f"{short(k, 30)} {short(group[k], 30)}" for k in (other or ["lr"]))
        return [f"its optimizer's settings are not the training loop's Adam ({named})"]
    if not (isinstance(moments, dict) and set(moments) <= set(range(len(shapes)))):
        return ["its optimizer state names parameters its network does not have"]
    problems = []
    for index, moment in moments.items():
        if not (isinstance(moment, dict) and set(moment) == {"step", "exp_avg", "exp_avg_sq"}):
            return [f"its optimizer state of parameter {index} is not Adam's step, exp_avg and exp_avg_sq"]
        step = moment["step"]
        if not (isinstance(step, Tensor) and step.numel() == 1 and step.is_floating_point()
                and torch.isfinite(step).all() and step.item() >= 1 and step.item() == int(step.item())):
            return [f"its optimizer's step count of parameter {index} is {short(step, 30)}, not a whole number from 1"]
        problems += [_tensor_problem(f"the optimizer's {name} of parameter {index}", moment[name], shapes[index],
                                     non_negative=name == "exp_avg_sq") for name in ("exp_avg", "exp_avg_sq")]
    return [problem for problem in problems if problem][:3]


def _rng_problem(name: str, value: Any) -> str:
    """Why ``value`` is not a state that torch's CPU generator accepts, or ""."""
    if not (isinstance(value, Tensor) and value.layout == torch.strided and value.dtype == torch.uint8
            and tuple(value.shape) == (RNG_STATE_BYTES,)):
        return f"{name} is {glimpse(value)}, not a generator state ({RNG_STATE_BYTES:,} bytes of uint8)"
    try:
        torch.Generator().set_state(value)
    except (RuntimeError, TypeError, ValueError) as error:
        return f"{name} is no state of torch's generator ({str(error).strip().splitlines()[0][:80]})"
    return ""


def _generator_problems(state: dict[str, Any]) -> list[str]:
    """Every noise shard's generator state and torch's global one, each tried on a generator of its own."""
    problems = [_rng_problem(f"the generator state of noise shard {j}", value)
                for j, value in enumerate(state["generators"])]
    problems.append(_rng_problem("torch_rng", state["torch_rng"]))
    return [problem for problem in problems if problem][:3]
