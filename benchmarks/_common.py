"""Helpers shared by the benchmark scripts: argument parsing and plain-text tables."""

import argparse

from ddpm_core.utils.arguments import batch_size, bounded_int, device_name, int_list, positive_int, sample_count

__all__ = ["batch_size", "device_name", "positive_int", "print_table", "sample_count", "schedule_steps",
           "thread_counts", "DEVICE_HELP"]

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default: auto)"
# A longer schedule than the book's T = 1000 times nothing new; at 10,000 steps one run already takes minutes.
schedule_steps = bounded_int(1, 10_000, "a number of timesteps T")
MAX_THREADS = 1024  # far more than any CPU's cores; beyond it, starting the threads alone would take the machine


def thread_counts(text: str) -> tuple[int, ...]:
    """Comma-separated numbers of CPU threads, such as 1,2,4."""
    try:
        counts = int_list(text)
    except argparse.ArgumentTypeError:
        counts = ()
    if not counts or not all(1 <= n <= MAX_THREADS for n in counts):
        raise argparse.ArgumentTypeError(f"expected thread counts from 1 to {MAX_THREADS} such as 1,2,4, got {text!r}")
    return counts


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
