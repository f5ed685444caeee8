"""The safetensors header, read and checked before a byte of weights is mapped.

A safetensors file is an 8-byte little-endian header length, a JSON header that names each
tensor's dtype, shape and byte range (and a ``__metadata__`` object of strings), then the tensors'
bytes. ``read_safetensors_header`` reads that header itself, bounded in size and nesting, and checks
every entry against the file's size; a FIFO or a device in a file's place is refused without
blocking on it. A damaged or hostile file is thus refused with a short reason instead of a crash or
a huge allocation. The diffusion checkpoints (``checkpoint.py``) and the MNIST judge
(``ddpm_core.measure.classifier``) are both read through it.
"""

from __future__ import annotations

import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ddpm_core.training.describe import short
from ddpm_core.utils.files import MAX_JSON_BYTES, parse_json

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
WEIGHT_DTYPES = ("F32", "F16", "BF16", "F64")  # load_state_dict converts any of these to the model's float32
# The metadata document (at most MAX_JSON_BYTES, and up to twice that once its quotes are escaped inside the
# header) plus a few hundred short tensor entries.
MAX_HEADER_BYTES = 2 * MAX_JSON_BYTES + 1_000_000
MAX_HEADER_DEPTH = 3  # {"name": {"shape": [...]}}


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


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, value: Any) -> TensorEntry:
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"the entry of tensor {short(name)} is not an object with dtype, shape and data_offsets")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    name = short(name)
    if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name} has the unknown dtype {short(dtype, 30)}")
    if not (isinstance(shape, list) and all(map(_is_size, shape))):
        raise ValueError(f"tensor {name} has the shape {short(shape)}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_size, offsets))
            and offsets[0] <= offsets[1]):
        raise ValueError(f"tensor {name} has the data_offsets {short(offsets)}, not [begin, end]")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError(f"tensor {name} takes {offsets[1] - offsets[0]:,} bytes, which does not match its "
                         f"shape {short(shape)} of {dtype}")
    return TensorEntry(dtype, tuple(shape), (offsets[0], offsets[1]))


def _read_header_bytes(path: str | Path) -> tuple[bytes, int]:
    """The header's JSON bytes and the file's size, after checking the length field against both."""
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
    return text, size


def _data_bytes(tensors: dict[str, TensorEntry]) -> int:
    """The bytes the tensors take, once checked to tile the data without gaps or overlaps."""
    end = 0
    for name, entry in sorted(tensors.items(), key=lambda item: item[1].offsets):
        if entry.offsets[0] != end:
            raise ValueError(f"tensor {short(name)} starts at byte {entry.offsets[0]:,} of the data, not at {end:,} "
                             f"where the previous one ends")
        end = entry.offsets[1]
    return end


def read_safetensors_header(path: str | Path) -> SafetensorsHeader:
    """Read and check a safetensors file's header, never mapping or reading the tensors' bytes.

    Every entry must be well formed, the tensors must tile the data without gaps or overlaps, and the
    file must be exactly as long as the header says: a file that passes can be mapped safely, and its
    size is known before it is. Raises ``ValueError`` (with a short reason) for anything else, and
    ``OSError`` if the file cannot be opened.
    """
    text, size = _read_header_bytes(path)
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
    data_bytes = _data_bytes(tensors)
    if size != 8 + len(text) + data_bytes:
        raise ValueError(f"the file is {size:,} bytes long, but its header describes {8 + len(text) + data_bytes:,} "
                         f"(it was cut short or has bytes appended)")
    return SafetensorsHeader(tensors, metadata, data_bytes)
