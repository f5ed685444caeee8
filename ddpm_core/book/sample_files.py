"""The file of one sample set: a compressed ``.npz`` of 8-bit images and a JSON record of how they were made.

Arrays in the file:

    samples    (N, 1, 28, 28) uint8, the digits (``ddpm_core.utils.images.to_uint8``)
    meta       uint8 bytes of a JSON object: what the set is, its definition, the checkpoint's SHA-256,
               the sampling time and threads, the judged timesteps and the checkpoint's training record
    requested  (N,) uint8, the digit each sample asked for (conditional sets only)
    readings   (K, N) uint8, the judge's reading of each sample at each judged timestep (judged sets only)

A file is read back only after it is checked: a regular file of bounded size (``files.read_small_file``),
unpacking to a bounded size, with every array and field of the kinds above. A file that is not (truncated,
edited, made by something else) is refused with a message that names it and says how to make it again.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import atomic_write, parse_json, read_small_file
from ddpm_core.utils.images import from_uint8, to_uint8

if TYPE_CHECKING:
    from ddpm_core.book.sample_sets import SampleSet

MAX_FILE_BYTES = 64_000_000  # the largest stored set, 1,000 judged digits, is under half a megabyte
MAX_UNPACKED_BYTES = 512_000_000  # 100,000 digits of 784 bytes and their readings
META_FIELDS = {"definition": dict, "checkpoint_sha256": str, "seconds": (int, float), "threads": int,
               "timesteps": (list, type(None)), "trained": (dict, type(None))}


@dataclass
class SampleRecord:
    """A generated set as the chapters use it.

    ``samples`` (N, 1, 28, 28) are in [-1, 1] (stored as 8-bit images, so within 1/255 of the
    sampler's output, clipped to [-1, 1]); ``seconds`` is the sampling wall time with ``threads``
    CPU threads; ``trained`` holds the checkpoint's epoch and epoch-mean losses. With a judged
    trajectory, ``readings[k, n]`` is the digit the judge reads in sample n's predicted x_0 at
    ``timesteps[k]`` (largest first, 0 last: the finished sample).
    """

    samples: Tensor
    seconds: float
    threads: int
    requested: Tensor | None = None
    timesteps: list[int] | None = None
    readings: Tensor | None = None
    trained: dict[str, Any] = field(default_factory=dict)


def write_record(path: Path, record: SampleRecord, spec: SampleSet, checkpoint_sha256: str) -> None:
    """Store ``record`` in a compressed ``.npz`` file, with its definition and the checkpoint's hash."""
    meta = {"what": spec.what, "definition": spec.definition(), "checkpoint_sha256": checkpoint_sha256,
            "seconds": record.seconds, "threads": record.threads, "timesteps": record.timesteps,
            "trained": record.trained}
    arrays = {"samples": to_uint8(record.samples.cpu()).numpy(),
              "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    if record.requested is not None:
        arrays["requested"] = record.requested.to(torch.uint8).numpy()
    if record.readings is not None:
        arrays["readings"] = record.readings.to(torch.uint8).numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()), needed_bytes=buffer.tell())


def _arrays(data: bytes) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``data``, after bounding what unpacking it costs (ValueError: why not)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_UNPACKED_BYTES:
        raise ValueError(f"it unpacks to {unpacked:,} bytes, more than the {MAX_UNPACKED_BYTES:,} of a sample set")
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        return {name: stored[name] for name in stored.files}


def _checked(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The metadata of a set's ``arrays``, after checking each array and field (ValueError: what is wrong)."""
    missing = [name for name in ("samples", "meta") if name not in arrays]
    if missing:
        raise ValueError(f"it has no {' and no '.join(missing)} array")
    samples, count = arrays["samples"], len(arrays["samples"])
    if samples.dtype != np.uint8 or samples.ndim != 4 or samples.shape[1:] != (1, 28, 28):
        raise ValueError(f"its samples are {samples.dtype} of shape {samples.shape}, not 8-bit digits (N, 1, 28, 28)")
    if arrays["meta"].dtype != np.uint8 or arrays["meta"].ndim != 1:
        raise ValueError("its meta is not the bytes of a JSON text")
    meta = parse_json(arrays["meta"].tobytes())
    wrong = [name for name, kind in META_FIELDS.items() if not isinstance(meta, dict)
             or not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool)]
    if wrong:
        raise ValueError(f"its meta is not a set's record ({', '.join(wrong)} missing or of the wrong type)")
    shapes = {"requested": (count,), "readings": (len(meta["timesteps"] or ()), count)}
    for name, shape in shapes.items():
        if name in arrays and (arrays[name].dtype != np.uint8 or arrays[name].shape != shape):
            raise ValueError(f"its {name} are {arrays[name].dtype} of shape {arrays[name].shape}, not uint8 {shape}")
    return meta


def read_record(path: Path, remedy: str | None = None) -> tuple[SampleRecord, dict[str, Any]]:
    """The record stored at ``path`` and its metadata (definition, checkpoint hash); ``DDPMError`` naming the
    file and ``remedy`` (how to make it again) when it is not a sample set."""
    remedy = remedy or "Delete it, and it is generated again."
    try:  # a FIFO, a folder or an oversized file is refused before a byte is read
        data = read_small_file(path, MAX_FILE_BYTES, "the sample set", follow_links=True)
    except DDPMError as error:
        raise DDPMError(f"{error} {remedy}") from None
    try:
        arrays = _arrays(data)
        meta = _checked(arrays)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DDPMError(f"{path} is not a readable sample set ({error}); nothing was read from it. {remedy}") from None
    record = SampleRecord(
        samples=from_uint8(arrays["samples"]),
        seconds=float(meta["seconds"]),
        threads=meta["threads"],
        requested=torch.from_numpy(arrays["requested"]).long() if "requested" in arrays else None,
        timesteps=meta["timesteps"],
        readings=torch.from_numpy(arrays["readings"]).long() if "readings" in arrays else None,
        trained=meta.get("trained") or {},
    )
    return record, meta
