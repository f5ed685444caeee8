"""Saving and loading trained models.

A training run writes its files into a folder whose layout ``run_folder.py`` owns: the weights
after the last epoch and after every epoch (``.safetensors``, with the EMA weights under "ema."),
and ``resume.pt``, everything exact resumption needs (weights, EMA weights, optimiser and
random-number states, loss history and the model and training configs). This module writes and
reads those files.

The safetensors metadata holds one JSON document (key ``ddpm_core``) with the
model config, schedule, training settings, epoch, loss history, seed, wall
time, device and library versions, so a weights file describes itself.
Every file is written to a temporary name and renamed into place, so a run
killed mid-write, or a disk that fills up, leaves the previous file intact.

Loading trusts nothing in a file. The path must be a regular file (a FIFO or a
device is never opened); the safetensors header is read by this module itself,
bounded in size and nesting, and every tensor's dtype, shape and byte range is
checked against the file's size; the metadata is checked field by field; and
the architecture it names is compared with the tensors' names and shapes, all
before a single weight is mapped or allocated. A damaged or hostile file is
thus refused with a message instead of a crash or a huge allocation.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import stat
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import LEGACY_DEFAULTS, MAX_PARAMETERS, UNet, UNetConfig, current_name
from ddpm_core.utils.errors import DDPMError, NonFiniteOutputError
from ddpm_core.utils.files import MAX_JSON_BYTES, atomic_write, parse_json

FORMAT = "ddpm_core/1"
CLASSIFIER_FORMAT = "ddpm_core/classifier/1"  # the judge's weights (classifier.py): refused as a diffusion model
EMA_PREFIX = "ema."
MAX_NUM_STEPS = 100_000  # far beyond any schedule a sampler would run
RESUME_KEYS = ("epoch", "model", "optimizer", "generator", "torch_rng", "ema", "loss_history", "wall_time_s",
               "model_config", "train_config")
# The safetensors format: an 8-byte little-endian header length, a JSON header, then the tensors' bytes.
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")  # load_state_dict converts any of these to the model's float32
# The metadata document (at most MAX_JSON_BYTES, and up to twice that once its quotes are escaped inside the
# header) plus a few hundred short tensor entries.
MAX_HEADER_BYTES = 2 * MAX_JSON_BYTES + 1_000_000
MAX_HEADER_DEPTH = 3  # {"name": {"shape": [...]}}
# Raw and EMA weights of the largest network allowed, even in float64.
MAX_DATA_BYTES = 2 * MAX_PARAMETERS * 8


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a safetensors header declares it."""

    dtype: str
    shape: tuple[int, ...]
    offsets: tuple[int, int]  # begin and end, in bytes from the start of the data


@dataclass(frozen=True)
class SafetensorsHeader:
    """What a safetensors file declares, read without mapping or reading a byte of its tensors."""

    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_bytes: int

    def shapes(self, ema: bool = False) -> dict[str, tuple[int, ...]]:
        """The raw weights' shapes, or (``ema``) the EMA weights' shapes with ``EMA_PREFIX`` removed."""
        prefix = EMA_PREFIX if ema else ""
        return {k[len(prefix):]: e.shape for k, e in self.tensors.items() if k.startswith(EMA_PREFIX) == ema}


def _entry(name: str, value: Any) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"the entry of tensor {name!r} is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    name = _short(name)
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name} has the unknown dtype {_short(dtype, 30)}")
    if not (isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)):
        raise ValueError(f"tensor {name} has the shape {_short(shape)}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name} has the data_offsets {_short(offsets)}, not [begin, end]")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError(f"tensor {name} takes {offsets[1] - offsets[0]:,} bytes, which does not match its "
                         f"shape {_short(shape)} of {dtype}")
    return TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Read and check a safetensors file's header, never mapping or reading the tensors' bytes.

    Every entry must be well formed, the tensors must tile the data without gaps or overlaps, and the
    file must be exactly as long as the header says: a file that passes can be mapped safely, and its
    size is known before it is. Raises ``ValueError`` (with a short reason) for anything else, and
    ``OSError`` if the file cannot be opened.
    """
    # O_NONBLOCK: were a FIFO put in the file's place, opening it would otherwise wait for a writer forever.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("it is not a regular file")
        size = info.st_size
        start = file.read(8)
        if len(start) < 8:
            raise ValueError(f"it is {size} bytes long, too short for a safetensors header")
        length = int.from_bytes(start, "little")
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"its header claims {length:,} bytes, more than the {MAX_HEADER_BYTES:,} allowed")
        if 8 + length > size:
            raise ValueError(f"its header claims {length:,} bytes, but the file holds only {size - 8:,} after the "
                             f"length field")
        text = file.read(length)
    if len(text) != length:
        raise ValueError("the file shrank while its header was read")
    if not text.startswith(b"{"):
        raise ValueError("its header is not a JSON object")
    try:
        header = parse_json(text, max_bytes=MAX_HEADER_BYTES, max_depth=MAX_HEADER_DEPTH)
    except ValueError as error:
        raise ValueError(f"its header is unusable: {error}") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("its __metadata__ is not an object of strings")
    tensors = {name: _entry(name, value) for name, value in header.items()}
    end = 0
    for name, entry in sorted(tensors.items(), key=lambda item: item[1].offsets):
        if entry.offsets[0] != end:
            raise ValueError(f"tensor {_short(name)} starts at byte {entry.offsets[0]:,} of the data, not at {end:,} "
                             f"where the previous one ends")
        end = entry.offsets[1]
    if size != 8 + length + end:
        raise ValueError(f"the file is {size:,} bytes long, but its header describes {8 + length + end:,} (it was "
                         f"cut short or has bytes appended)")
    return SafetensorsHeader(tensors, metadata, end)


def describe_file_type(mode: int) -> str:
    """What a ``stat`` mode that is not a regular file or folder is, in words."""
    kinds = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "not a file")


def describe_folder(folder: Path, limit: int = 8) -> str:
    """A folder's first entries, for a message that says what is there instead of the expected file."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as error:
        return f"its contents could not be listed ({error.strerror})"
    if not names:
        return "it is empty"
    shown = []
    for name in names[:limit]:
        shown.append((name if name.isprintable() else ascii(name)) + ("/" if os.path.isdir(folder / name) else ""))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"it holds: {', '.join(shown)}{more}"


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


PASS_A_CHECKPOINT = ("Pass the model.safetensors written by `python -m ddpm_core train --out DIR` (or the folder DIR "
                     "itself).")


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
    """The weights file that ``path`` names (itself, or a folder's model.safetensors), refused unless a regular file.

    Only ``stat`` looks at it: a FIFO or a device is never opened, since reading one could block forever.
    """
    path = Path(path)
    mode = _mode_of(path)
    if stat.S_ISDIR(mode):
        if not os.path.lexists(path / "model.safetensors"):
            raise DDPMError(
                f"No checkpoint at {path}: it is a folder without model.safetensors; {describe_folder(path)}. "
                f"{_folder_hint(path)}"
            )
        path = path / "model.safetensors"
        mode = _mode_of(path)
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else describe_file_type(mode)
        raise DDPMError(
            f"No checkpoint at {path}: it is not a regular file ({kind}), so it was not opened. {PASS_A_CHECKPOINT}"
        )
    return path


def _folder_hint(folder: Path) -> str:
    """What to pass instead of a folder without model.safetensors."""
    try:
        weights = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
        epochs = sorted(p.name for p in (folder / "epochs").glob("epoch_*.safetensors") if p.is_file())
    except OSError:
        weights, epochs = [], []
    if weights:
        return f"Pass one of its .safetensors files, such as {folder / weights[-1]}, or a training run's folder."
    if epochs:
        return f"Pass one of its epochs' files, such as {folder / 'epochs' / epochs[-1]}."
    return PASS_A_CHECKPOINT


def _recovery(path: Path) -> str:
    """How to get a usable file instead of ``path``: another epoch of the same run where there is one."""
    epochs = path.parent if path.parent.name == "epochs" else path.parent / "epochs"
    try:
        others = sorted(p for p in epochs.glob("epoch_*.safetensors") if p.name != path.name and p.is_file())
    except OSError:
        others = []
    if others:
        return f"Use another epoch's file from the same run (such as {others[-1]}) or train again."
    return "Restore the original file, or train again with `python -m ddpm_core train --out DIR`."


def _bad_metadata(path: Path, problem: str) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} has unusable metadata: {problem}. The file was damaged or edited by hand. "
        f"{_recovery(path)}"
    )


def _corrupt(path: Path, error: Exception) -> DDPMError:
    return DDPMError(
        f"The checkpoint {path} could not be read: it is truncated or corrupt ({error}). {_recovery(path)}"
    )


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile file's values can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    names = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


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


# Types of the metadata fields that loading or the book reads, where present (older files lack some).
_METADATA_CHECKS = {
    "has_ema": (lambda v: isinstance(v, bool), "true or false"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "a whole number"),
    "loss_history": (lambda v: isinstance(v, list) and all(_is_int(x) or isinstance(x, float) for x in v),
                     "a list of numbers"),
    "seed": (_is_int, "a whole number"),
    "wall_time_s": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "device": (lambda v: isinstance(v, str), "a string"),
    "saved_at": (lambda v: isinstance(v, str), "a string"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
    "train_config": (lambda v: isinstance(v, dict), "an object"),
    "schedule": (lambda v: isinstance(v, dict), "an object"),
}


def _metadata_from_header(path: Path, header: SafetensorsHeader) -> dict[str, Any]:
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
        raise _bad_metadata(path, str(error)) from None
    if not isinstance(metadata, dict):
        raise _bad_metadata(path, f"it is a JSON {_json_kind(metadata)}, not an object")
    file_format = metadata.get("format", FORMAT)  # files from before the field existed are version 1
    if file_format == CLASSIFIER_FORMAT:
        raise DDPMError(
            f"{path} is the MNIST classifier (the judge of generated digits), not a diffusion model, so it "
            f"cannot generate images. Pass it to `evaluate --classifier`, and pass a model.safetensors "
            f"written by `python -m ddpm_core train` (or its folder) as --checkpoint."
        )
    if file_format != FORMAT:
        raise DDPMError(
            f"{path} has the checkpoint format {_short(file_format)}, which this version of ddpm_core does not "
            f"know (it reads {FORMAT!r}). Load it with the version of ddpm_core that wrote it, or train again."
        )
    for key, (is_valid, expected) in _METADATA_CHECKS.items():
        if key in metadata and not is_valid(metadata[key]):
            raise _bad_metadata(path, f"{key} must be {expected}, got {_short(metadata[key])}")
    return metadata


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a weights file, without loading the weights.

    Refuses a file that is not a diffusion checkpoint of this package's format (a classifier,
    a foreign safetensors file, metadata that is not a JSON object, an unknown format version),
    and a file whose header is malformed; the tensors' bytes are never read.
    """
    path = _resolve_weights_path(path)
    return _metadata_from_header(path, _read_header(path))


_CONFIG_CHECKS = {
    "image_channels": (_is_int, "a whole number"),
    "channels": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(w) for w in v), "a list of whole numbers"),
    "time_freq_dim": (_is_int, "a whole number"),
    "time_embed_dim": (_is_int, "a whole number"),
    "num_groups": (_is_int, "a whole number"),
    "attention": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(r) for r in v), "a list of whole numbers"),
    "downsample": (lambda v: isinstance(v, str), "a string"),
    "zero_init": (lambda v: isinstance(v, bool), "true or false"),
    "dropout": (lambda v: _is_number(v), "a number"),
    "prediction": (lambda v: isinstance(v, str), "a string"),
    "num_classes": (lambda v: v is None or _is_int(v), "a whole number or null"),
}


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
        config.validate(check_size=True)
    except ValueError as error:
        raise _bad_metadata(path, f"the architecture it names is refused: {error}") from None
    return config


def _schedule_from_metadata(metadata: dict[str, Any], path: Path) -> NoiseSchedule:
    schedule = metadata.get("schedule", {})
    if not isinstance(schedule, dict) or set(schedule) - {"num_steps", "beta_start", "beta_end"}:
        raise _bad_metadata(path, f"schedule must be an object with num_steps, beta_start, beta_end; got "
                                  f"{_short(schedule)}")
    num_steps = schedule.get("num_steps", 1000)
    if not (_is_int(num_steps) and 1 <= num_steps <= MAX_NUM_STEPS):
        raise _bad_metadata(path, f"schedule num_steps must be a whole number in 1..{MAX_NUM_STEPS}")
    if not all(_is_number(schedule[k]) for k in ("beta_start", "beta_end") if k in schedule):
        raise _bad_metadata(path, "schedule beta_start and beta_end must be finite numbers")
    try:
        result = NoiseSchedule(**schedule)
    except DDPMError as error:  # the schedule names no file: say which one holds the impossible betas
        raise _bad_metadata(path, f"its noise schedule is impossible ({str(error).rstrip('.')})") from None
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
    # Names and shapes are cut short: a hostile file's can be megabytes long.
    missing = [k[:80] for k in sorted(set(expected) - set(found))]
    unexpected = [k[:80] for k in sorted(set(found) - set(expected))]
    wrong_shape = [
        f"{k[:80]}: file {_short(found[k], 80)} vs model {expected[k]}"
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
        # The weights' shapes do not depend on what the network predicts.
        return {k: tuple(v.shape) for k, v in UNet(replace(config, prediction="eps")).state_dict().items()}


def _check_tensors(path: Path, header: SafetensorsHeader, config: UNetConfig, use_ema: bool) -> None:
    """Refuse a file whose tensors are not exactly the raw (and, if any, EMA) weights of ``config``."""
    if header.data_bytes > MAX_DATA_BYTES:
        largest = max(header.tensors.items(), key=lambda item: item[1].offsets[1] - item[1].offsets[0])
        size = largest[1].offsets[1] - largest[1].offsets[0]
        raise DDPMError(
            f"The checkpoint {path} declares {header.data_bytes / 1e9:,.1f} GB of tensors ({_short(largest[0])} "
            f"alone: {size / 1e9:,.1f} GB), more than the {MAX_DATA_BYTES / 1e9:.1f} GB that the weights of the "
            f"largest network allowed take, so nothing of it was loaded. It is not a file this package wrote, "
            f"or it was damaged. {_recovery(path)}"
        )
    odd = [f"{_short(k)} ({e.dtype})" for k, e in header.tensors.items() if e.dtype not in WEIGHT_DTYPES]
    if odd:
        raise DDPMError(
            f"The checkpoint {path} holds tensors that are not floating-point weights: {', '.join(odd[:5])}. "
            f"It is not a file this package wrote, or it was damaged. {_recovery(path)}"
        )
    expected = _expected_shapes(config)
    problems = [_shape_mismatch(expected, {current_name(k): v for k, v in header.shapes().items()})]
    ema = {current_name(k): v for k, v in header.shapes(ema=True).items()}
    if ema or use_ema:
        ema_problem = _shape_mismatch({EMA_PREFIX + k: v for k, v in expected.items()},
                                      {EMA_PREFIX + k: v for k, v in ema.items()})
        problems.append(ema_problem)
    mismatch = "; ".join(problem for problem in problems if problem)
    if mismatch:
        raise DDPMError(
            f"The weights in {path} do not fit the architecture its metadata describes ({mismatch}). "
            f"The file was written by a different network; load it with the code that trained it, or train again."
        )


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
    header = _read_header(path)
    metadata = _metadata_from_header(path, header)
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
    _check_tensors(path, header, config, use_ema)
    # Only now is the file mapped: its header was checked, so its size is that of the weights the model needs.
    prefix = EMA_PREFIX if use_ema else ""
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(EMA_PREFIX) == use_ema}
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise _corrupt(path, error) from None
    model = UNet(config, schedule.alpha_bars)
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
