"""Saving and loading trained models: a run's weights files.

A weights file is a safetensors file holding the raw weights and, under "ema.", the EMA weights,
with a JSON document that describes them (``checkpoint_metadata.py``). ``save_weights`` writes it
with ``atomic_write``: a run killed mid-write, or a disk that fills up, leaves the previous file
intact. Where a run's files lie is ``run_folder.py``'s concern, the resume state ``resume.py``'s.

Loading trusts nothing in a file. The path must be a regular file (a FIFO or a device is never
opened); the safetensors header is read by ``safetensors_guard.py``, bounded in size and nesting,
with every tensor's dtype, shape and byte range checked against the file's size; the metadata is
checked field by field; and the architecture it names is compared with the tensors' names and
shapes, all before a single weight is mapped or allocated. A damaged or hostile file is thus
refused with a message instead of a crash or a huge allocation.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import MAX_PARAMETERS, UNet, UNetConfig
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training.checkpoint_metadata import (
    FORMAT,
    config_from_metadata,
    metadata_from_header,
    schedule_from_metadata,
)
from ddpm_core.training.describe import (
    PASS_A_CHECKPOINT,
    describe_file_type,
    describe_folder,
    recovery,
    short,
    what_to_pass_instead,
)
from ddpm_core.training.run_folder import WEIGHTS_FILE
from ddpm_core.training.safetensors_guard import WEIGHT_DTYPES, SafetensorsHeader, read_safetensors_header
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import atomic_write

EMA_PREFIX = "ema."
# Raw and EMA weights of the largest network allowed, even in float64.
MAX_DATA_BYTES = 2 * MAX_PARAMETERS * 8


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor in ``value``, a tensor or nested dictionaries, lists and tuples of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
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
    needed = tensor_bytes(tensors) + len(document) + 200 * len(tensors)
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"ddpm_core": document}), needed)


def _mode_of(path: Path) -> int:
    """``path``'s file type and permissions, from ``stat`` alone, or the message for a path with nothing there."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            raise DDPMError(
                f"No checkpoint at {path}: it is a symbolic link to {os.readlink(path)}, which does not exist. "
                f"{PASS_A_CHECKPOINT}"
            ) from None
        raise DDPMError(f"No checkpoint at {path}. {PASS_A_CHECKPOINT}") from None
    except OSError as error:
        raise DDPMError(f"The checkpoint {path} cannot be looked at ({error.strerror}). {PASS_A_CHECKPOINT}") from None


def _resolve_weights_path(path: str | Path) -> Path:
    """The weights file that ``path`` names (itself, or a run folder's), refused unless a regular file.

    Only ``stat`` looks at it: a FIFO or a device is never opened, since reading one could block forever.
    """
    path = Path(path)
    mode = _mode_of(path)
    if stat.S_ISDIR(mode):
        if not os.path.lexists(path / WEIGHTS_FILE):
            raise DDPMError(
                f"No checkpoint at {path}: it is a folder without {WEIGHTS_FILE}; {describe_folder(path)}. "
                f"{what_to_pass_instead(path)}"
            )
        path = path / WEIGHTS_FILE
        mode = _mode_of(path)
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else describe_file_type(mode)
        raise DDPMError(
            f"No checkpoint at {path}: it is not a regular file ({kind}), so it was not opened. {PASS_A_CHECKPOINT}"
        )
    return path


def _corrupt(path: Path, error: Exception) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} could not be read: it is truncated or corrupt ({error}). {recovery(path)}"
    )


def _read_header(path: Path) -> SafetensorsHeader:
    try:
        return read_safetensors_header(path)
    except OSError as error:
        raise DDPMError(
            f"The checkpoint {path} could not be opened ({error.strerror or error}). Check its permissions, or "
            f"{PASS_A_CHECKPOINT[0].lower()}{PASS_A_CHECKPOINT[1:]}"
        ) from None
    except ValueError as error:
        raise _corrupt(path, error) from None


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a weights file, without loading the weights.

    Refuses a file that is not a diffusion checkpoint of this package's format (a classifier,
    a foreign safetensors file, metadata that is not a JSON object, an unknown format version),
    and a file whose header is malformed; the tensors' bytes are never read.
    """
    path = _resolve_weights_path(path)
    return metadata_from_header(path, _read_header(path))


@dataclass
class LoadedModel:
    """A model ready for sampling, with the schedule and metadata it was trained with."""

    model: UNet
    schedule: NoiseSchedule
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def shape_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str:
    """The missing, unexpected and wrongly shaped weights of ``found``, in words ("" when it fits)."""
    # Names and shapes are cut short: a hostile file's can be megabytes long.
    missing = [k[:80] for k in sorted(set(expected) - set(found))]
    unexpected = [k[:80] for k in sorted(set(found) - set(expected))]
    wrong_shape = [
        f"{k[:80]}: file {short(found[k], 80)} vs model {expected[k]}"
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


def expected_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The weights' names and shapes of the network ``config`` names, found without allocating them."""
    with torch.device("meta"):
        # The weights' shapes do not depend on what the network predicts.
        return {k: tuple(v.shape) for k, v in build_unet(replace(config, prediction="eps")).state_dict().items()}


def _stored_shapes(header: SafetensorsHeader, ema: bool) -> dict[str, tuple[int, ...]]:
    """The raw weights' shapes, or (``ema``) the EMA weights' shapes, by name without the prefix."""
    prefix = EMA_PREFIX if ema else ""
    return {k[len(prefix):]: e.shape for k, e in header.tensors.items()
            if k.startswith(EMA_PREFIX) == ema}


def _check_sizes_and_types(path: Path, header: SafetensorsHeader) -> None:
    """Refuse more bytes than the largest network's weights take, and tensors that are not floating point."""
    if header.data_bytes > MAX_DATA_BYTES:
        largest = max(header.tensors.items(), key=lambda item: item[1].offsets[1] - item[1].offsets[0])
        size = largest[1].offsets[1] - largest[1].offsets[0]
        raise DDPMError(
            f"The checkpoint {path} declares {header.data_bytes / 1e9:,.1f} GB of tensors ({short(largest[0])} "
            f"alone: {size / 1e9:,.1f} GB), more than the {MAX_DATA_BYTES / 1e9:.1f} GB that the weights of the "
            f"largest network allowed take, so nothing of it was loaded. It is not a file this package wrote, "
            f"or it was damaged. {recovery(path)}"
        )
    odd = [f"{short(k)} ({e.dtype})" for k, e in header.tensors.items() if e.dtype not in WEIGHT_DTYPES]
    if odd:
        raise DDPMError(
            f"The checkpoint {path} holds tensors that are not floating-point weights: {', '.join(odd[:5])}. "
            f"It is not a file this package wrote, or it was damaged. {recovery(path)}"
        )


def _check_tensors(path: Path, header: SafetensorsHeader, config: UNetConfig, use_ema: bool) -> None:
    """Refuse a file whose tensors are not exactly the raw (and, if any, EMA) weights of ``config``."""
    _check_sizes_and_types(path, header)
    expected = expected_shapes(config)
    problems = [shape_mismatch(expected, _stored_shapes(header, ema=False))]
    ema = _stored_shapes(header, ema=True)
    if ema or use_ema:
        problems.append(shape_mismatch({EMA_PREFIX + k: v for k, v in expected.items()},
                                       {EMA_PREFIX + k: v for k, v in ema.items()}))
    mismatch = "; ".join(problem for problem in problems if problem)
    if mismatch:
        raise DDPMError(
            f"The weights in {path} do not fit the architecture its metadata describes ({mismatch}). "
            f"The file was written by a different network; load it with the code that trained it, or train again."
        )


def _check_request(path: Path, metadata: dict[str, Any], config: UNetConfig, expected_config: UNetConfig | None,
                   use_ema: bool) -> None:
    """Refuse another architecture than the one asked for, and EMA weights that the file does not hold."""
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


def _read_weights(path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    """The raw or the EMA weights, mapped only now that the header has been checked."""
    prefix = EMA_PREFIX if use_ema else ""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(EMA_PREFIX) == use_ema}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _corrupt(path, error) from None


def load_checkpoint(
    path: str | Path,
    device: torch.device | str = "cpu",
    use_ema: bool = False,
    expected_config: UNetConfig | None = None,
) -> LoadedModel:
    """Load a weights file (or a training folder) into a ``UNet`` in eval mode.

    Args:
        path: a ``.safetensors`` file or a run folder holding ``model.safetensors``.
        device: where to put the model.
        use_ema: load the exponential moving average of the weights instead of the raw weights.
        expected_config: refuse the file unless it was trained with this architecture.
    """
    path = _resolve_weights_path(path)
    header = _read_header(path)
    metadata = metadata_from_header(path, header)
    config = config_from_metadata(metadata.get("model_config"), path)
    _check_request(path, metadata, config, expected_config, use_ema)
    schedule = schedule_from_metadata(metadata, path)
    _check_tensors(path, header, config, use_ema)
    model = build_unet(config, schedule.alpha_bars)
    model.load_state_dict(_read_weights(path, use_ema))
    # Channels-last activations are measurably faster for these small convolutions on the CPU.
    memory_format = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).eval()
    return LoadedModel(model=model, schedule=schedule, metadata=metadata, path=path)
