"""Argument types for the command lines of the package and its benchmarks.

Each is an ``argparse`` type: it turns the text of one flag into a value, or raises
``argparse.ArgumentTypeError`` with what was expected, so that a bad value is refused before any
work starts. The ranges below are those that make sense for 28x28 digits on one machine; a value
outside them is almost always a typo.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_SEED = 2**32 - 1
MAX_SAMPLES = 100_000  # 300 MB of float32 images; evaluate's metrics stay within a few GB
MAX_GUIDANCE = 20.0  # classifier-free guidance beyond w = 20 only saturates the images (chapter 9 uses up to 7)
MAX_NOISE_SCALE = 2.0  # the fresh noise of Algorithm 2 scaled by more than 2 drowns the digit
MAX_EXPORT_SEEDS = 10_000  # x_T of 10,000 seeds is a 42 MB JSON file; the live panel reads 32
MAX_FLOAT = 1e6  # no float setting of the package means anything this large; beyond it, arithmetic overflows
MAX_LEARNING_RATE = 10.0  # Adam diverges far below this; above it its updates overflow float32


def at_least(low: int, what: str) -> Callable[[str], int]:
    """A whole number of at least ``low``; ``what`` names it in the message."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = at_least(1, "a positive integer")
non_negative_int = at_least(0, "a whole number, 0 or more")


def bounded_int(low: int, high: int, what: str, hint: str = "") -> Callable[[str], int]:
    """A whole number in ``low..high``; ``hint`` says what to do instead of a larger one."""

    span = f"from {low:,} to {high:,}" if high < 10**9 else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} {span}, got {text!r}") from None
        if not low <= value <= high:
            too_large = hint if value > high else ""
            raise argparse.ArgumentTypeError(f"expected {what} {span}, got {value}{too_large}")
        return value

    return parse


seed_int = bounded_int(0, MAX_SEED, "a seed", " (2**32 - 1 is the largest)")
sample_count = bounded_int(
    1, MAX_SAMPLES, "a number of samples", "; run the command several times with different --seed values for more"
)
export_seed_count = bounded_int(
    0, MAX_EXPORT_SEEDS, "a number of seeds", "; the live panel draws any other seed itself"
)


def finite_float(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value} (not a finite number)")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text, "a positive number")
    if not 0 < value <= MAX_FLOAT:
        raise argparse.ArgumentTypeError(f"expected a positive number up to {MAX_FLOAT:g}, got {value:g}")
    return value


def learning_rate_value(text: str) -> float:
    value = finite_float(text, "a learning rate")
    if not 0 < value <= MAX_LEARNING_RATE:
        raise argparse.ArgumentTypeError(
            f"expected a learning rate above 0 and at most {MAX_LEARNING_RATE:g} (the book's is 0.002), got {value:g}"
        )
    return value


def float_in(low: float, high: float, what: str) -> Callable[[str], float]:
    """A number in ``[low, high]``."""

    def parse(text: str) -> float:
        value = finite_float(text, f"{what} from {low:g} to {high:g}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {what} from {low:g} to {high:g}, got {value:g}")
        return value

    return parse


guidance_weight = float_in(0.0, MAX_GUIDANCE, "a guidance weight w")
noise_scale = float_in(0.0, MAX_NOISE_SCALE, "a noise scale")
dropout_rate = float_in(0.0, 0.9, "a dropout rate")


def fraction(strict: bool) -> Callable[[str], float]:
    """A number in [0, 1], or in (0, 1) when ``strict``."""

    def parse(text: str) -> float:
        value = finite_float(text, "a number between 0 and 1")
        if strict and not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.999), got {value}")
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
        return value

    return parse


decay = fraction(strict=True)
unit_interval = fraction(strict=False)


def int_list(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers; an empty entry ("1,,2" or a trailing comma) is refused, not dropped."""
    parts = [part.strip() for part in text.split(",")]
    if any(part == "" for part in parts):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers with no empty entries, such as 1,2,3, got {text!r}"
        )
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def label_list(text: str) -> tuple[int, ...]:
    try:
        labels = int_list(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated classes with no empty entries, such as 0,1,2, got {text!r}"
        ) from None
    if min(labels) < 0:
        raise argparse.ArgumentTypeError(f"expected classes 0 or more, such as 0,1,2, got {text!r}")
    return labels


def width_list(text: str) -> tuple[int, ...]:
    try:
        widths = int_list(text)
    except argparse.ArgumentTypeError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths such as 32,32,48, got {text!r}")
    return widths


def resolution_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return int_list(text)


def optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type that also takes "none", for settings that can be switched off."""

    def parse_or_none(text: str) -> Any:
        return None if text.strip().lower() == "none" else parse(text)

    return parse_or_none


def device_name(text: str) -> str:
    """auto, cpu, mps, cuda or cuda:N; only CUDA devices take an index (whether it exists is checked later)."""
    from ddpm_core.utils.device import DEVICE_CHOICES

    kind, _, index = text.lower().partition(":")
    if kind not in DEVICE_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if index and (kind != "cuda" or not index.isdigit()):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}: only CUDA devices take an index (cuda:0, cuda:1, ...); use {kind}"
        )
    return text


def folder(text: str) -> Path:
    """A folder to write into; an empty path is refused rather than read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder such as runs/mnist, got an empty path")
    return Path(text)


def file_path(text: str) -> Path:
    """A file path; an empty path is refused rather than read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file name, got an empty path")
    return Path(text)


optional_decay = optional(decay)
optional_positive_float = optional(positive_float)
batch_size = bounded_int(1, 60_000, "a batch size", " (the 60,000 training images; a larger batch is the whole set)")
