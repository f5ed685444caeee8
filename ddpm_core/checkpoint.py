"""Saving and loading trained models.

A checkpoint is a folder written by ``train``:

    model.safetensors          weights after the last finished epoch (+ EMA weights under "ema.")
    epochs/epoch_NNN.safetensors  the same, for every epoch, kept for the book's quality curves
    resume.pt                  everything exact resumption needs: weights, EMA weights, optimiser
                               and random-number states, loss history and the model and training configs
    .lock                      held while a run trains into the folder (see ``lock.py``)

The safetensors metadata holds one JSON document (key ``ddpm_core``) with the
model config, schedule, training settings, epoch, loss history, seed, wall
time, device and library versions, so a weights file describes itself.
Every file is written to a temporary name and renamed into place, so a run
killed mid-write, or a disk that fills up, leaves the previous file intact.

Loading trusts nothing in a file: the metadata is checked field by field, and
the architecture it names is compared with the tensors' shapes (read from the
file's header) before a single weight is allocated, so a damaged or hostile
file is refused with a message instead of a crash or a huge allocation.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ddpm_core.errors import DDPMError, NonFiniteOutputError
from ddpm_core.files import atomic_write
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import LEGACY_DEFAULTS, UNet, UNetConfig

FORMAT = "ddpm_core/1"
CLASSIFIER_FORMAT = "ddpm_core/classifier/1"
EMA_PREFIX = "ema."
# Far beyond any network that fits 28x28 digits, far below what would exhaust a machine's memory.
MAX_WIDTH = 1024
MAX_EMBED_DIM = 4096
MAX_PARAMETERS = 50_000_000
MAX_NUM_STEPS = 100_000
MAX_CLASSES = 1000
RESUME_KEYS = ("epoch", "model", "optimizer", "generator", "torch_rng", "ema", "loss_history", "wall_time_s",
               "model_config", "train_config")


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def save_weights(
    path: str | Path,
    model: UNet,
    metadata: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the model's weights (and EMA weights, if any) with ``metadata`` as JSON, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if ema_state is not None:
        tensors.update({EMA_PREFIX + k: v.detach().cpu().contiguous() for k, v in ema_state.items()})
    metadata = {"format": FORMAT, "model_config": model.config.to_dict(), "has_ema": ema_state is not None, **metadata}
    document = json.dumps(metadata)
    needed = _tensor_bytes(tensors) + len(document) + 200 * len(tensors)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"ddpm_core": document}), needed)


def save_resume_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resume state (plain tensors, numbers and strings only) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp), _tensor_bytes(state) + 65_536)


def _resolve_weights_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise DDPMError(
            f"No checkpoint at {path}. Pass the model.safetensors written by "
            f"`python -m ddpm_core train --out DIR` (or the folder DIR itself)."
        )
    return path


def _bad_metadata(path: Path, problem: str) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} has unusable metadata: {problem}. The file was damaged or edited by hand; "
        f"use another epoch's file from the same run (epochs/epoch_NNN.safetensors) or train again."
    )


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a weights file, without loading the weights.

    Refuses a file that is not a diffusion checkpoint of this package's format (a classifier,
    a foreign safetensors file, metadata that is not a JSON object, an unknown format version).
    """
    path = _resolve_weights_path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("ddpm_core")
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, error) from None
    if raw is None:
        raise DDPMError(
            f"{path} is a safetensors file but not a ddpm_core checkpoint (its metadata has no 'ddpm_core' "
            f"entry). Load a file written by `python -m ddpm_core train`."
        )
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise _bad_metadata(path, f"it is not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise _bad_metadata(path, f"it is a JSON {type(metadata).__name__}, not an object")
    file_format = metadata.get("format", FORMAT)  # files from before the field existed are version 1
    if file_format == CLASSIFIER_FORMAT:
        raise DDPMError(
            f"{path} is the MNIST classifier (the judge of generated digits), not a diffusion model, so it "
            f"cannot generate images. Pass it to `evaluate --classifier`, and pass a model.safetensors "
            f"written by `python -m ddpm_core train` (or its folder) as --checkpoint."
        )
    if file_format != FORMAT:
        raise DDPMError(
            f"{path} has the checkpoint format {file_format!r}, which this version of ddpm_core does not know "
            f"(it reads {FORMAT!r}). Load it with the version of ddpm_core that wrote it, or train again."
        )
    return metadata


def _corrupt(path: Path, error: Exception) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} could not be read: it is truncated or corrupt ({error}). "
        f"Use another epoch's file from the same run (epochs/epoch_NNN.safetensors) or train again."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


_CONFIG_CHECKS = {
    "image_channels": (_is_int, "a whole number"),
    "channels": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(w) for w in v), "a list of whole numbers"),
    "time_freq_dim": (_is_int, "a whole number"),
    "time_embed_dim": (_is_int, "a whole number"),
    "num_groups": (_is_int, "a whole number"),
    "attention": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(r) for r in v), "a list of whole numbers"),
    "downsample": (lambda v: isinstance(v, str), "a string"),
    "zero_init": (lambda v: isinstance(v, bool), "true or false"),
    "num_classes": (lambda v: v is None or _is_int(v), "a whole number or null"),
}


def check_model_config(config: UNetConfig) -> None:
    """Refuse an architecture that cannot be built or is implausibly large for 28x28 digits (``ValueError``)."""
    if not 1 <= config.image_channels <= 4:
        raise ValueError(f"image_channels must lie in 1..4, got {config.image_channels}")
    if not 1 <= len(config.channels) <= 3:
        raise ValueError(f"channels needs 1 to 3 widths (for 28, 14 and 7 pixels), got {len(config.channels)}")
    if not all(1 <= width <= MAX_WIDTH for width in config.channels):
        raise ValueError(f"every width in channels must lie in 1..{MAX_WIDTH}, got {list(config.channels)}")
    if not (2 <= config.time_freq_dim <= MAX_EMBED_DIM and config.time_freq_dim % 2 == 0):
        raise ValueError(f"time_freq_dim must be even and lie in 2..{MAX_EMBED_DIM}, got {config.time_freq_dim}")
    if not 1 <= config.time_embed_dim <= MAX_EMBED_DIM:
        raise ValueError(f"time_embed_dim must lie in 1..{MAX_EMBED_DIM}, got {config.time_embed_dim}")
    if config.num_groups < 1:
        raise ValueError(f"num_groups must be positive, got {config.num_groups}")
    if config.num_classes is not None and not 1 <= config.num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in 1..{MAX_CLASSES} or be null, got {config.num_classes}")
    config.validate()
    with torch.device("meta"):  # shapes only: no memory is allocated
        parameters = sum(p.numel() for p in UNet(config).parameters())
    if parameters > MAX_PARAMETERS:
        raise ValueError(f"that network has {parameters:,} parameters, more than the {MAX_PARAMETERS:,} allowed")


def config_from_metadata(data: Any, path: Path) -> UNetConfig:
    """The ``UNetConfig`` stored in a checkpoint, after checking every key, type and size."""
    if not isinstance(data, dict):
        raise _bad_metadata(path, "model_config is missing or not a JSON object")
    unknown = sorted(set(data) - set(_CONFIG_CHECKS))
    if unknown:
        raise _bad_metadata(path, f"model_config has unknown keys {unknown}")
    missing = sorted(set(_CONFIG_CHECKS) - set(LEGACY_DEFAULTS) - set(data))
    if missing:
        raise _bad_metadata(path, f"model_config lacks the keys {missing}")
    for key, value in data.items():
        is_valid, expected = _CONFIG_CHECKS[key]
        if not is_valid(value):
            raise _bad_metadata(path, f"model_config[{key!r}] must be {expected}, got {value!r}")
    config = UNetConfig.from_dict(data)
    try:
        check_model_config(config)
    except ValueError as error:
        raise _bad_metadata(path, f"the architecture it names is refused: {error}") from None
    return config


def _schedule_from_metadata(metadata: dict[str, Any], path: Path) -> NoiseSchedule:
    schedule = metadata.get("schedule", {})
    if not isinstance(schedule, dict) or set(schedule) - {"num_steps", "beta_start", "beta_end"}:
        raise _bad_metadata(path, f"schedule must be an object with num_steps, beta_start, beta_end; got {schedule!r}")
    num_steps = schedule.get("num_steps", 1000)
    if not (_is_int(num_steps) and 1 <= num_steps <= MAX_NUM_STEPS):
        raise _bad_metadata(path, f"schedule num_steps must be a whole number in 1..{MAX_NUM_STEPS}")
    if not all(_is_number(schedule[k]) for k in ("beta_start", "beta_end") if k in schedule):
        raise _bad_metadata(path, "schedule beta_start and beta_end must be finite numbers")
    result = NoiseSchedule(**schedule)
    trained = metadata.get("train_config")
    if isinstance(trained, dict):
        used = {k: trained.get(k) for k in ("num_steps", "beta_start", "beta_end")}
        stored = {"num_steps": result.num_steps, "beta_start": result.beta_start, "beta_end": result.beta_end}
        differs = [f"{k} {stored[k]} (trained with {used[k]})" for k in stored if used[k] not in (None, stored[k])]
        if differs:
            warnings.warn(
                f"The schedule in {path} differs from the one its weights were trained with: {', '.join(differs)}. "
                f"Samples will be poor; fix the metadata or use the training run's own file.",
                stacklevel=3,
            )
    return result


@dataclass
class LoadedModel:
    """A model ready for sampling, with the schedule and metadata it was trained with."""

    model: UNet
    schedule: NoiseSchedule
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _shape_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{k}: file {found[k]} vs model {expected[k]}"
        for k in sorted(set(expected) & set(found))
        if found[k] != expected[k]
    ]
    return "; ".join(
        part
        for part in (
            f"missing {', '.join(missing[:5])}" if missing else "",
            f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
            f"wrong shapes {', '.join(wrong_shape[:5])}" if wrong_shape else "",
        )
        if part
    )


def _expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in UNet(config).state_dict().items()}


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    use_ema: bool = False,
    expected_config: UNetConfig | None = None,
) -> LoadedModel:
    """Load a weights file (or a training folder) into a ``UNet`` in eval mode.

    Args:
        path: a ``.safetensors`` file or a folder holding ``model.safetensors``.
        device: where to put the model.
        use_ema: load the exponential moving average of the weights instead of the raw weights.
        expected_config: refuse the file unless it was trained with this architecture.
    """
    path = _resolve_weights_path(path)
    metadata = read_metadata(path)
    config = config_from_metadata(metadata.get("model_config"), path)
    if expected_config is not None and config != expected_config:
        raise DDPMError(
            f"The checkpoint {path} holds a different architecture: {config}, but {expected_config} was "
            f"expected. Load it without expected_config, or train a model with the expected settings."
        )
    if use_ema and not metadata.get("has_ema"):
        raise DDPMError(
            f"The checkpoint {path} has no EMA weights (it was trained without --ema-decay). "
            f"Sample without --ema (in Python: use_ema=False), or train a run with --ema-decay 0.999."
        )
    schedule = _schedule_from_metadata(metadata, path)
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, error) from None
    prefix = EMA_PREFIX if use_ema else ""
    wanted = {k[len(prefix):]: shape for k, shape in shapes.items() if k.startswith(EMA_PREFIX) == use_ema}
    mismatch = _shape_mismatch(_expected_shapes(config), wanted)
    if mismatch:
        raise DDPMError(
            f"The weights in {path} do not fit the architecture its metadata describes ({mismatch}). "
            f"The file was written by a different network; load it with the code that trained it, or train again."
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, error) from None
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX) == use_ema}
    model = UNet(config)
    model.load_state_dict(state)
    # Channels-last activations are measurably faster for these small convolutions on the CPU.
    memory_format = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).eval()
    return LoadedModel(model=model, schedule=schedule, metadata=metadata, path=path)


def check_finite_samples(images: torch.Tensor, path: str | Path | None) -> None:
    """Raise ``NonFiniteOutputError`` unless every value of ``images`` is finite."""
    bad = ~torch.isfinite(images).flatten(1).all(dim=1)
    if bad.any():
        source = f"The model in {path}" if path is not None else "The model"
        raise NonFiniteOutputError(
            f"{source} produced non-finite values (NaN or inf) in {int(bad.sum())} of {len(images)} samples, "
            f"so nothing was written. Its weights are damaged or diverged: use an earlier epoch's file from "
            f"the same run (epochs/epoch_NNN.safetensors) or train again."
        )


def _bad_resume(path: Path, problem: str) -> DDPMError:
    return DDPMError(
        f"The resume state {path} cannot be used: {problem}. Nothing was changed. Remove it and start a new "
        f"run in another --out folder (the weights in {path.parent / 'model.safetensors'} and "
        f"{path.parent / 'epochs'} stay loadable for sampling)."
    )


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read ``resume.pt`` (tensors, numbers and strings only; no code is run) and check its contents."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise _bad_resume(path, "the file is empty (the run was killed while it was first written)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, ...
        if isinstance(error, pickle.UnpicklingError) and zipfile.is_zipfile(path):
            what = "it holds objects other than tensors, numbers and strings, which are never loaded"
        else:
            what = "it is truncated or corrupt"
        raise _bad_resume(path, f"{what} ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise _bad_resume(path, f"it holds a {type(state).__name__}, not a dictionary")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise _bad_resume(path, f"it lacks {', '.join(missing)}")
    rng_size = torch.Generator().get_state().numel()
    checks = {
        "epoch": _is_int(state["epoch"]) and state["epoch"] >= 0,
        "model": isinstance(state["model"], dict),
        "optimizer": isinstance(state["optimizer"], dict) and {"state", "param_groups"} <= set(state["optimizer"]),
        "generator": isinstance(state["generator"], torch.Tensor) and state["generator"].numel() == rng_size,
        "torch_rng": isinstance(state["torch_rng"], torch.Tensor) and state["torch_rng"].numel() == rng_size,
        "ema": isinstance(state["ema"], dict),
        "loss_history": isinstance(state["loss_history"], list) and all(map(_is_number, state["loss_history"])),
        "wall_time_s": _is_number(state["wall_time_s"]),
        "train_config": isinstance(state["train_config"], dict),
    }
    wrong = [k for k, ok in checks.items() if not ok]
    if wrong:
        raise _bad_resume(path, f"the entries {', '.join(wrong)} have the wrong type or size")
    try:
        config = config_from_metadata(state["model_config"], path)
    except DDPMError:
        raise _bad_resume(path, f"its model_config is unusable: {state['model_config']!r}"[:300]) from None
    expected = _expected_shapes(config)
    for name, weights in (("model", state["model"]), ("ema", state["ema"])):
        if name == "ema" and not weights:
            continue
        found = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else () for k, v in weights.items()}
        mismatch = _shape_mismatch(expected, found)
        if mismatch:
            raise _bad_resume(path, f"its {name} weights do not fit its architecture ({mismatch})")
    return state
