"""Choosing where tensors live (CUDA, then Apple's MPS, then the CPU), and keeping the CPU fast.

On the CPU a forward pass of the UNet allocates and frees a few megabytes per
layer. glibc's ``malloc`` serves blocks of 128 KiB and more with fresh ``mmap``
pages and gives freed memory back to the kernel, so the next layer touches new
pages and pays a page fault for every 4 KiB: 4,400 to 6,500 faults per
batch-32 call, about a quarter of its time. :func:`keep_freed_memory` asks ``malloc`` to keep
such memory instead; the training loop, the sampling commands and the book's chapters
call it when they run on the CPU. ``python -m benchmarks.sampling`` measures the difference.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch

from ddpm_core.utils.errors import DDPMError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str | None = "auto") -> torch.device:
    """Turn "auto", "cpu", "cuda", "cuda:1" or "mps" into a device that exists here."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DDPMError(f"Unknown device {name!r}. Choose one of {', '.join(DEVICE_CHOICES)} (or cuda:N).")
    index = name.partition(":")[2]
    if index and (kind != "cuda" or not index.isdigit()):
        raise DDPMError(f"Unknown device {name!r}: only CUDA devices take an index (cuda:0, cuda:1, ...); use {kind}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise DDPMError(f"Device {name!r} was asked for, but this PyTorch sees no CUDA GPU. Use --device cpu or auto.")
    if index and int(index) >= torch.cuda.device_count():
        raise DDPMError(
            f"Device {name!r} was asked for, but this machine has {torch.cuda.device_count()} CUDA GPUs, "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}. Pass one of those, or --device auto."
        )
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DDPMError(f"Device {name!r} was asked for, but MPS is not available here. Use --device cpu or auto.")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    """A human-readable name of the hardware behind ``device``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {torch.get_num_threads()} threads"


# mallopt(3) parameters from glibc's <malloc.h>, and the values for "keep" and for glibc's initial defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP = {_M_MMAP_THRESHOLD: 32 * 1024 * 1024, _M_TRIM_THRESHOLD: 1024 * 1024 * 1024}  # 32 MiB: glibc's ceiling
_RETURN = {_M_MMAP_THRESHOLD: 128 * 1024, _M_TRIM_THRESHOLD: 128 * 1024}  # glibc's initial values
_kept: bool | None = None  # None: not decided yet in this process


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory(on: bool | None = None) -> bool:
    """Make glibc keep freed blocks of up to 32 MiB for reuse instead of returning them to the kernel.

    This removes the page faults that otherwise cost about a quarter of a CPU
    forward pass (see the module docstring). The process keeps its peak heap
    for its lifetime, which for this model is a few hundred megabytes at most.
    It changes only where memory comes from, never a computed value.

    Args:
        on: True keeps freed memory. None, what the training loop and the
            sampling commands pass, turns it on unless this process has already decided or
            the environment variable ``DDPM_KEEP_FREED_MEMORY`` is ``0``.
            False, before it was ever on, leaves glibc untouched (its adaptive
            defaults); after it was on, glibc cannot go back to adapting, so
            False sets its initial 128 KiB thresholds and releases what was kept.

    Returns whether the setting is on. Where the C library is not glibc (macOS,
    Windows, musl) nothing changes and the answer is False.
    """
    global _kept
    if on is None:
        if _kept is not None:
            return _kept
        on = os.environ.get("DDPM_KEEP_FREED_MEMORY", "1") != "0"
    libc = _libc()
    if libc is None or (not on and not _kept):
        _kept = False
        return False
    # Both thresholds matter: a high mmap threshold alone still trims the top of
    # the heap after each free, and a high trim threshold alone still maps large blocks afresh.
    values = _KEEP if on else _RETURN
    applied = all(libc.mallopt(parameter, value) == 1 for parameter, value in values.items())
    if not on:
        libc.malloc_trim(0)
    _kept = on and applied
    return _kept
