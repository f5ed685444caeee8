"""Saving and loading trained models.

A checkpoint is a folder written by ``train``:

    model.safetensors          weights after the last finished epoch (+ EMA weights under "ema.")
    epochs/epoch_NNN.safetensors  the same, for every epoch, kept for the book's quality curves
    resume.pt                  optimiser and random-number states, for exact resumption

The safetensors metadata holds one JSON document (key ``ddpm_core``) with the
model config, schedule, training settings, epoch, loss history, seed, wall
time, device and library versions, so a weights file describes itself.
Every file is written to a temporary name and renamed into place, so a run
killed mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ddpm_core.errors import DDPMError
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import UNet, UNetConfig

FORMAT = "ddpm_core/1"
EMA_PREFIX = "ema."


def library_versions() -> dict[str, str]:
    import torchvision

    from ddpm_core import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "ddpm_core": __version__,
    }


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"ddpm_core": json.dumps(metadata)}))


def save_resume_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resume state (plain tensors, numbers and strings only) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


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


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a weights file, without loading the weights."""
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
    return json.loads(raw)


def _corrupt(path: Path, error: Exception) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} could not be read: it is truncated or corrupt ({error}). "
        f"Use another epoch's file from the same run (epochs/epoch_NNN.safetensors) or train again."
    )


@dataclass
class LoadedModel:
    """A model ready for sampling, with the schedule and metadata it was trained with."""

    model: UNet
    schedule: NoiseSchedule
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


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
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise _corrupt(path, error) from None
    config = UNetConfig.from_dict(metadata["model_config"])
    if expected_config is not None and config != expected_config:
        raise DDPMError(
            f"The checkpoint {path} holds a different architecture: {config}, but {expected_config} was "
            f"expected. Load it without expected_config, or train a model with the expected settings."
        )
    if use_ema:
        if not metadata.get("has_ema"):
            raise DDPMError(
                f"The checkpoint {path} has no EMA weights (it was trained with ema_decay off). "
                f"Load it with use_ema=False, or train with --ema-decay."
            )
        state = {k[len(EMA_PREFIX):]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    else:
        state = {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}
    model = UNet(config)
    _load_state_strict(model, state, path)
    schedule = NoiseSchedule(**metadata.get("schedule", {}))
    # Channels-last activations are measurably faster for these small convolutions on the CPU.
    memory_format = torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format
    model.to(device=device, memory_format=memory_format).eval()
    return LoadedModel(model=model, schedule=schedule, metadata=metadata, path=path)


def _load_state_strict(model: UNet, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(state))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            part
            for part in (
                f"missing {', '.join(missing[:5])}" if missing else "",
                f"unexpected {', '.join(unexpected[:5])}" if unexpected else "",
                f"wrong shapes {', '.join(wrong_shape[:5])}" if wrong_shape else "",
            )
            if part
        )
        raise DDPMError(
            f"The weights in {path} do not fit the architecture its metadata describes ({details}). "
            f"The file was written by a different network; load it with the code that trained it, or train again."
        )
    model.load_state_dict(state)
