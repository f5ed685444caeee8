"""The metadata of a weights file: one JSON document that says what the weights are and how they were made.

A weights file's safetensors metadata holds, under the key ``ddpm_core``, the file's format, the
model config, whether EMA weights are there, the noise schedule, the training settings, the epoch,
the loss history, the seed, the wall time, the device and the library versions (``run_metadata``
makes it), so a weights file describes itself. Reading it back checks every field it uses before
anything is built from it: the format (the MNIST judge's weights are refused by name), each
field's type, the architecture's keys, types and size, and the schedule's betas.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import UNetConfig
from ddpm_core.training.describe import json_kind, recovery, short
from ddpm_core.training.legacy import LEGACY_DEFAULTS, with_legacy_defaults
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.training.run_folder import WEIGHTS_FILE
from ddpm_core.training.safetensors_guard import SafetensorsHeader
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import library_versions, parse_json

FORMAT = "ddpm_core/1"
CLASSIFIER_FORMAT = "ddpm_core/classifier/1"  # the judge's weights (classifier.py): refused as a diffusion model
MAX_NUM_STEPS = 100_000  # far beyond any schedule a sampler would run


def is_whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    return (is_whole_number(value) or isinstance(value, float)) and math.isfinite(value)


def run_metadata(
    config: TrainConfig, epoch: int, loss_history: list[float], wall_time_s: float, device: str
) -> dict[str, Any]:
    """What a training run's weights file says about the run, after ``epoch``."""
    return {
        "epoch": epoch,
        "loss_history": loss_history,
        "seed": config.seed,
        "wall_time_s": round(wall_time_s, 2),
        "device": device,
        "train_config": asdict(config),
        "schedule": {"num_steps": config.num_steps, "beta_start": config.beta_start, "beta_end": config.beta_end},
        "versions": library_versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def bad_metadata(path: Path, problem: str) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} has unusable metadata: {problem}. The file was damaged or edited by hand. "
        f"{recovery(path)}"
    )


# Types of the metadata fields that loading or the book reads, where present (older files lack some).
_METADATA_CHECKS = {
    "has_ema": (lambda v: isinstance(v, bool), "true or false"),
    "epoch": (lambda v: is_whole_number(v) and v >= 0, "a whole number"),
    "loss_history": (lambda v: isinstance(v, list) and all(is_whole_number(x) or isinstance(x, float) for x in v),
                     "a list of numbers"),
    "seed": (is_whole_number, "a whole number"),
    "wall_time_s": (lambda v: is_whole_number(v) or isinstance(v, float), "a number"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "saved_at": (lambda v: isinstance(v, str), "a string"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
    "train_config": (lambda v: isinstance(v, dict), "an object"),
    "schedule": (lambda v: isinstance(v, dict), "an object"),
}


def _check_format(path: Path, metadata: dict[str, Any]) -> None:
    """Refuse the judge's weights and formats this version does not know."""
    file_format = metadata.get("format", FORMAT)  # the first files had no format field: they are version 1
    if file_format == CLASSIFIER_FORMAT:
        raise DDPMError(
            f"{path} is the MNIST classifier (the judge of generated digits), not a diffusion model, so it "
            f"cannot generate images. Pass it to `evaluate --classifier`, and pass a {WEIGHTS_FILE} "
            f"written by `python -m ddpm_core train` (or its folder) as --checkpoint."
        )
    if file_format != FORMAT:
        raise DDPMError(
            f"{path} has the checkpoint format {short(file_format)}, which this version of ddpm_core does not "
            f"know (it reads {FORMAT!r}). Load it with the version of ddpm_core that wrote it, or train again."
        )


def metadata_from_header(path: Path, header: SafetensorsHeader) -> dict[str, Any]:
    """The checkpoint's metadata document, parsed with bounded size and depth and checked field by field."""
    raw = header.metadata.get("ddpm_core")
    if raw is None:
        raise DDPMError(
            f"{path} is a safetensors file but not a ddpm_core checkpoint (its metadata has no 'ddpm_core' "
            f"entry). Load a file written by `python -m ddpm_core train`."
        )
    try:
        metadata = parse_json(raw)
    except ValueError as error:
        raise bad_metadata(path, str(error)) from None
    if not isinstance(metadata, dict):
        raise bad_metadata(path, f"it is a JSON {json_kind(metadata)}, not an object")
    _check_format(path, metadata)
    for key, (is_valid, expected) in _METADATA_CHECKS.items():
        if key in metadata and not is_valid(metadata[key]):
            raise bad_metadata(path, f"{key} must be {expected}, got {short(metadata[key])}")
    return metadata


_CONFIG_CHECKS = {
    "image_channels": (is_whole_number, "a whole number"),
    "channels": (lambda v: isinstance(v, (list, tuple)) and all(map(is_whole_number, v)), "a list of whole numbers"),
    "time_freq_dim": (is_whole_number, "a whole number"),
    "time_embed_dim": (is_whole_number, "a whole number"),
    "num_groups": (is_whole_number, "a whole number"),
    "attention": (lambda v: isinstance(v, (list, tuple)) and all(map(is_whole_number, v)), "a list of whole numbers"),
    "downsample": (lambda v: isinstance(v, str), "a string"),
    "zero_init": (lambda v: isinstance(v, bool), "true or false"),
    "dropout": (is_finite_number, "a number"),
    "prediction": (lambda v: isinstance(v, str), "a string"),
    "num_classes": (lambda v: v is None or is_whole_number(v), "a whole number or null"),
}


def config_from_metadata(data: Any, path: Path) -> UNetConfig:
    """The ``UNetConfig`` stored in a checkpoint, after checking every key, type and size."""
    if not isinstance(data, dict):
        raise bad_metadata(path, "model_config is missing or not a JSON object")
    unknown = sorted(set(data) - set(_CONFIG_CHECKS))
    if unknown:
        raise bad_metadata(path, f"model_config has unknown keys {unknown}")
    missing = sorted(set(_CONFIG_CHECKS) - set(LEGACY_DEFAULTS) - set(data))
    if missing:
        raise bad_metadata(path, f"model_config lacks the keys {missing}")
    for key, value in data.items():
        is_valid, expected = _CONFIG_CHECKS[key]
        if not is_valid(value):
            raise bad_metadata(path, f"model_config[{key!r}] must be {expected}, got {value!r}")
    config = UNetConfig.from_dict(with_legacy_defaults(data))
    try:
        config.validate(check_size=True)
    except ValueError as error:
        raise bad_metadata(path, f"the architecture it names is refused: {error}") from None
    return config


def _warn_if_trained_with_another(schedule: NoiseSchedule, metadata: dict[str, Any], path: Path) -> None:
    """Warn when the stored schedule is not the one the training settings name."""
    trained = metadata.get("train_config")
    if not isinstance(trained, dict):
        return
    used = {k: trained.get(k) for k in ("num_steps", "beta_start", "beta_end")}
    stored = {"num_steps": schedule.num_steps, "beta_start": schedule.beta_start, "beta_end": schedule.beta_end}
    differs = [f"{k} {stored[k]} (trained with {used[k]})" for k in stored if used[k] not in (None, stored[k])]
    if differs:
        warnings.warn(
            f"The schedule in {path} differs from the one its weights were trained with: {', '.join(differs)}. "
            f"Samples will be poor; fix the metadata or use the training run's own file.",
            stacklevel=4,
        )


def schedule_from_metadata(metadata: dict[str, Any], path: Path) -> NoiseSchedule:
    schedule = metadata.get("schedule", {})
    if not isinstance(schedule, dict) or set(schedule) - {"num_steps", "beta_start", "beta_end"}:
        raise bad_metadata(path, f"schedule must be an object with num_steps, beta_start, beta_end; got "
                                  f"{short(schedule)}")
    num_steps = schedule.get("num_steps", 1000)
    if not (is_whole_number(num_steps) and 1 <= num_steps <= MAX_NUM_STEPS):
        raise bad_metadata(path, f"schedule num_steps must be a whole number in 1..{MAX_NUM_STEPS}")
    if not all(is_finite_number(schedule[k]) for k in ("beta_start", "beta_end") if k in schedule):
        raise bad_metadata(path, "schedule beta_start and beta_end must be finite numbers")
    try:
        result = NoiseSchedule(**schedule)
    except DDPMError as error:  # the schedule names no file: say which one holds the impossible betas
        raise bad_metadata(path, f"its noise schedule is impossible ({str(error).rstrip('.')})") from None
    _check_alpha_bar_t(result, path)
    _warn_if_trained_with_another(result, metadata, path)
    return result


def _check_alpha_bar_t(schedule: NoiseSchedule, path: Path) -> None:
    """Refuse a schedule whose alpha_bar_T is below float32's smallest normal number: predicting x_0 (DDIM,
    DPM-Solver++, the trajectories) divides by sqrt(alpha_bar_t), which overflows there to NaN samples that
    would be blamed on the weights."""
    alpha_bar_t = schedule.alpha_bars[-1].item()
    smallest = torch.finfo(torch.float32).tiny
    if alpha_bar_t < smallest:
        raise DDPMError(
            f"The checkpoint {path} has a noise schedule that the samplers cannot use: {schedule.num_steps:,} steps "
            f"of beta from {schedule.beta_start:g} to {schedule.beta_end:g} leave alpha_bar_T = {alpha_bar_t:.1e}, "
            f"below float32's smallest normal number ({smallest:.1e}), where predicting x_0 (which divides by "
            f"sqrt(alpha_bar_t)) overflows to NaN. The schedule in its metadata is the cause, not its weights. "
            f"{recovery(path)}"
        )
