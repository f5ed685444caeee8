"""The resume state: everything exact resumption needs, written after every epoch as ``resume.pt``.

It holds the weights, the EMA weights, the optimiser's state, the state of every noise shard's
generator and of torch's global generator, the loss history, the wall time and both configs. The
weights are in it too, so it is consistent on its own even if a run is killed between writing the
weights files and writing it. It holds tensors, numbers and strings only, and is read with
``weights_only=True``: loading it runs no code. ``load_resume_state`` reads it only once it is known to be
a regular file of bounded size (a FIFO or ``/dev/zero`` in its place is never read), checks every entry
(``resume_checks.py``) before a run trusts it, and ``check_resume`` refuses to continue a run with
settings other than its own; the training loop does both before it loads the data.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion.unet import MAX_PARAMETERS, UNetConfig
from ddpm_core.training.checkpoint import tensor_bytes
from ddpm_core.training.checkpoint_metadata import config_from_metadata
from ddpm_core.training.describe import short
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.training.resume_checks import (
    MAX_NOISE_SHARDS,
    RNG_STATE_BYTES,
    entry_problems,
    wrong_entries,
    wrong_entry,
)
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import atomic_write, read_small_file

# The weights, the EMA weights and Adam's two moments of the largest network allowed, in float32, every noise
# shard's generator, and room for the rest; the pickled structure (names, numbers, a loss per epoch) is small.
MAX_RESUME_BYTES = 4 * MAX_PARAMETERS * 4 + MAX_NOISE_SHARDS * RNG_STATE_BYTES + 2**26
MAX_PICKLE_BYTES = 2**24
RESUME_KEYS = ("epoch", "model", "optimizer", "generators", "noise_shards", "torch_rng", "ema", "loss_history",
               "wall_time_s", "model_config", "train_config")


def resume_state(
    epoch: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator_states: list[Tensor],
    ema_state: dict[str, Tensor] | None,
    loss_history: list[float],
    wall_time_s: float,
    config: TrainConfig,
) -> dict[str, Any]:
    """The resume state after ``epoch``; ``generator_states`` holds every noise shard's, shard 0 first."""
    return {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "generators": generator_states,  # every noise shard's, so any number of processes can resume
        "noise_shards": len(generator_states),
        "torch_rng": torch.get_rng_state(),
        "ema": {k: v.detach().cpu() for k, v in ema_state.items()} if ema_state is not None else {},
        "loss_history": list(loss_history),
        "wall_time_s": wall_time_s,
        "model_config": model.config.to_dict(),
        "train_config": asdict(config),
    }


def save_resume_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resume state (plain tensors, numbers and strings only) atomically."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp), tensor_bytes(state) + 65_536)


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: list[torch.Generator],
    first_shard: int,
) -> None:
    """Put the weights, the optimiser, this process's noise shards (from ``first_shard`` on) and torch's
    global generator back as ``state`` left them."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for generator, saved in zip(generators, state["generators"][first_shard:], strict=False):
        generator.set_state(saved)
    torch.set_rng_state(state["torch_rng"])


def _how_to_go_on(path: Path) -> str:
    run = RunFolder(path.parent)
    checkpoint = run.sampling_checkpoint()
    weights = (f" Its weights stay usable for sampling: pass --checkpoint {checkpoint} to `python -m ddpm_core "
               f"sample`." if checkpoint is not None else "")
    return (f"Nothing was changed. Start a new run in another --out folder (the same command without "
            f"--resume): the run in {run.path} cannot be continued without a usable {path.name}.{weights}")


def _bad_resume(path: Path, problem: str) -> DDPMError:
    return DDPMError(f"The resume state {path} cannot be used: {problem}. {_how_to_go_on(path)}")


def _read_bytes(path: Path) -> bytes:
    """The bytes of ``resume.pt``, once it is known to be a regular file, a zip archive as ``torch.save`` writes,
    and no larger than a resume state of the largest network (a FIFO or a device is never read)."""
    try:
        data = read_small_file(path, MAX_RESUME_BYTES, "the resume state", follow_links=True)
    except DDPMError as error:
        raise DDPMError(f"{error} {_how_to_go_on(path)}") from None
    if not data:
        raise _bad_resume(path, "the file is empty (the run was killed while it was first written)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except Exception:  # zipfile raises BadZipFile, ValueError, struct.error, ... for bytes that are no archive
        raise _bad_resume(path, "it is truncated or corrupt (not the zip archive that torch.save writes)") from None
    # torch.load allocates what the archive declares: bounded here, before it does.
    declared = sum(entry.file_size for entry in entries)
    pickled = sum(entry.file_size for entry in entries if entry.filename.endswith(".pkl"))
    if declared > MAX_RESUME_BYTES:
        raise _bad_resume(path, f"its archive declares {declared:,} bytes of contents, more than the "
                                f"{MAX_RESUME_BYTES:,} that a resume state of the largest network holds")
    if pickled > MAX_PICKLE_BYTES:
        raise _bad_resume(path, f"its archive declares {pickled:,} bytes of pickled structure, more than the "
                                f"{MAX_PICKLE_BYTES:,} that a resume state's names and numbers take")
    return data


def _read(path: Path) -> dict[str, Any]:
    data = _read_bytes(path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises EOFError, RuntimeError, UnpicklingError, ...
        if isinstance(error, pickle.UnpicklingError):
            what = "it holds objects other than tensors, numbers and strings, which are never loaded"
        else:
            what = "it is truncated or corrupt"
        raise _bad_resume(path, f"{what} ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise _bad_resume(path, f"it holds a {type(state).__name__}, not a dictionary")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise _bad_resume(path, f"it lacks {', '.join(missing)}")
    return state


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Read ``resume.pt`` (tensors, numbers and strings only; no code is run) and check every entry's type, shape
    and range (``resume_checks``), so that ``restore`` cannot fail on it."""
    path = Path(path)
    state = _read(path)
    wrong = wrong_entries(state)
    if wrong:
        found = ", ".join(f"{k}: {wrong_entry(state, k)}" for k in wrong[:3])
        raise _bad_resume(path, f"the entries {', '.join(wrong)} have the wrong type or size ({found})")
    try:
        config = config_from_metadata(state["model_config"], path)
    except DDPMError:
        raise _bad_resume(path, f"its model_config is unusable: {short(state['model_config'], 200)}") from None
    problems = entry_problems(state, config)
    if problems:
        raise _bad_resume(path, "; ".join(problems))
    return state


def check_resume(folder: RunFolder, state: dict[str, Any], config: TrainConfig, model_config: UNetConfig) -> None:
    """Refuse to resume a run with another architecture, fewer epochs or other settings than its own."""
    saved_architecture = UNetConfig.from_dict(state["model_config"])
    if saved_architecture != model_config:
        raise _architecture_mismatch(folder.path, saved_architecture, model_config)
    planned = state["train_config"].get("epochs")
    if config.lr_decay == "cosine" and planned != config.epochs:
        raise DDPMError(
            f"The run in {folder.path} decays its learning rate along a cosine planned for {planned} epochs, so it "
            f"resumes only with --epochs {planned}. With --epochs {config.epochs} the rate would jump back up "
            f"from where the old plan left it. Resume with --epochs {planned}, or start a new run with "
            f"--epochs {config.epochs} in another --out folder, so that the decay spans all of them."
        )
    done = int(state["epoch"])
    if config.epochs < done:
        raise DDPMError(
            f"The run in {folder.path} already has {done} epochs, and --epochs {config.epochs} asks for fewer. "
            f"--epochs counts all of a run's epochs, the saved ones included, so it must be at least {done}: "
            f"pass --epochs {done + 1} or more with --resume to train it further. Its weights after epoch {done} "
            f"are in {folder.weights}; nothing was changed."
        )
    saved = {k: v for k, v in state["train_config"].items() if k != "epochs"}
    requested = {k: v for k, v in asdict(config).items() if k != "epochs"}
    if saved != requested:
        changed = ", ".join(f"{k}: {_setting(saved.get(k))} -> {_setting(requested.get(k))}"
                            for k in sorted(set(saved) | set(requested)) if saved.get(k) != requested.get(k))
        raise DDPMError(
            f"The run in {folder.path} was started with other settings ({changed}). Only --epochs may change "
            f"on --resume: resume it with its own settings, or start a new run in another --out folder (without "
            f"--resume) to change the rest."
        )


# The command-line flag of each architecture field that has one (see ddpm_core.app.train_command).
_ARCHITECTURE_FLAGS = {"channels": "--channels", "time_embed_dim": "--time-embed-dim", "attention": "--attention",
                       "downsample": "--downsample"}


def _setting(value: object) -> str:
    """A setting as a message shows it, cut short: a hostile resume state's can be megabytes long."""
    plain = isinstance(value, (str, float, bool, type(None))) or (isinstance(value, int) and value.bit_length() < 64)
    text = str(value) if plain else short(value, 40)
    return text if len(text) <= 40 else text[:37] + "..."


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _architecture_mismatch(out_dir: Path, saved: UNetConfig, asked: UNetConfig) -> DDPMError:
    """The architecture a resumed run was asked for differs from its own: each difference, and how to match it."""
    differences = []
    conditionality_differs = (saved.num_classes is None) != (asked.num_classes is None)
    if conditionality_differs and saved.num_classes is not None:
        differences.append(f"it is a conditional network ({saved.num_classes} classes): add --conditional")
    elif conditionality_differs:
        differences.append("it is an unconditional network: drop --conditional")
    for name in (f.name for f in fields(UNetConfig)):
        old, new = getattr(saved, name), getattr(asked, name)
        if old == new or (name == "num_classes" and conditionality_differs):
            continue
        if name in _ARCHITECTURE_FLAGS:
            how = f"pass {_ARCHITECTURE_FLAGS[name]} {_shown(old)}"
        elif name == "zero_init":
            how = "pass --zero-init" if old else "pass --no-zero-init"
        else:  # no flag: only Python's UNetConfig sets it
            how = f"use UNetConfig({name}={old!r})"
        differences.append(f"{name} {_shown(old)} in the run, {_shown(new)} asked: {how}")
    return DDPMError(
        f"The run in {out_dir} cannot be resumed with another architecture: {'; '.join(differences)}. Resume it "
        f"with its own model settings, or start a new run in another --out folder to train the new architecture."
    )
