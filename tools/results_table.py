"""Write the results table at the end of the book's first page from the stored results only.

Nothing is measured here: every figure is read from a file that a measurement wrote, and every row
names that file or the chapter whose stored output holds it.

- the epoch-mean losses: the records of the committed checkpoints (``read_metadata``), beside the
  reference run's published losses;
- the Fréchet distance and the judge's confident share: chapter 7's stored table of 1,000 samples;
- the lock-in timestep: chapter 6's stored output;
- DDIM's speed and quality (with eta 1, the live panel's default, and eta 0): chapter 8's stored output;
- guidance: chapter 9's stored output;
- the in-browser speed: ``RESULTS.md`` (``python -m benchmarks.live_panel``);
- the training time: ``book/results/training_time.json`` (``python -m benchmarks.training_time``), which
  also gives the appendix its sentence (``book/_generated/training_time.md``).

``python -m tools.results_table`` rewrites ``book/_generated/results_table.md``, which the first page
includes; ``--check`` only compares, and ``tests/test_pages.py`` fails when the two differ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import write_bytes
from ddpm_core.utils.scripts import run_script

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "book" / "_generated" / "results_table.md"
TRAINING_OUTPUT = REPO / "book" / "_generated" / "training_time.md"
TRAINING_TIME = REPO / "book" / "results" / "training_time.json"
# Estimates, not measurements, of the same run elsewhere: how many times faster each machine is
# assumed to train than the measured one (an 8-core laptop CPU against 2 cores of a server CPU; a
# data-centre GPU, where a step this small is bound by its fixed per-step overhead, not arithmetic).
LAPTOP_SPEED_UP = 4
GPU_SECONDS_PER_STEP = 0.01

# The reference run's published epoch-mean losses, epochs 1 to 15
# (mohapatra2025deconstructing in book/references.bib; chapter 4 plots all fifteen).
REFERENCE_LOSSES = [0.2203, 0.1124, 0.0987, 0.0889, 0.0839, 0.0779, 0.0756, 0.0727,
                    0.0716, 0.0693, 0.0686, 0.0670, 0.0644, 0.0632, 0.0619]
EPOCHS_SHOWN = (1, 5, 10, 15)


class MissingResult(DDPMError):
    """A stored result is not where this script reads it: the file, or its format, changed."""


def shown(path: Path) -> str:
    """``path`` as a message names it: relative to the repository when it lies inside."""
    return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)


def chapter_outputs(name: str) -> str:
    """Every stored text output of a chapter, in order, as one string."""
    notebook = json.loads((REPO / "book" / name).read_text(encoding="utf-8"))
    texts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            elif "text/plain" in output.get("data", {}):
                texts.append("".join(output["data"]["text/plain"]))
    return "\n".join(texts)


def find(pattern: str, text: str, where: str) -> re.Match:
    match = re.search(pattern, text, flags=re.MULTILINE)
    if match is None:
        raise MissingResult(f"{where}: no line matches {pattern!r}; rerun this script after updating it.")
    return match


def metrics_row(text: str, label: str, where: str) -> dict[str, str]:
    """One row of a stored metrics table (``format_metrics_table``), by its label, as column -> value."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Frechet" in line and "confident" in line:  # one row per set
            header = re.split(r"\s{2,}", line.strip())
            for row in lines[i + 1:]:
                if not row.strip():
                    break
                if row.strip().startswith(label + "  "):
                    values = re.split(r"\s{2,}", row.strip())
                    return dict(zip(["label", *header], values, strict=True))
        columns = re.split(r"\s{2,}", line.strip())
        if label in columns and i + 2 < len(lines) and lines[i + 2].lstrip().startswith("samples"):  # turned
            column = columns.index(label)
            found = {"label": label}
            for row in lines[i + 2:]:
                cells = re.split(r"\s{2,}", row.strip())
                if len(cells) != len(columns) + 1:
                    break
                found[cells[0]] = cells[1 + column]
            return found
    raise MissingResult(f"{where}: no metrics table with a row {label!r}.")


def rounded(value: str | float, step: str = "0.1") -> str:
    """``value`` rounded half up to ``step``, as a person reading the stored output would round it."""
    return str(Decimal(str(value)).quantize(Decimal(step), rounding=ROUND_HALF_UP))


def losses() -> list[str]:
    from ddpm_core.training.checkpoint import read_metadata

    book = read_metadata(REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors")["loss_history"]
    reference_recipe = read_metadata(
        REPO / "book" / "checkpoints" / "reference_recipe.safetensors")["loss_history"]
    rows = [
        "| epoch | reference run | this book | our network, reference recipe |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for epoch in EPOCHS_SHOWN:
        rows.append(f"| {epoch} | {REFERENCE_LOSSES[epoch - 1]:.4f} | {book[epoch - 1]:.4f} "
                    f"| {reference_recipe[epoch - 1]:.4f} |")
    return rows


def samples() -> list[str]:
    where7 = "chapter 7 (book/07_sharp_digits.ipynb)"
    ch7 = chapter_outputs("07_sharp_digits.ipynb")
    chosen = metrics_row(ch7, "chosen, raw", where7)
    reference = metrics_row(ch7, "reference, raw", where7)
    real = metrics_row(ch7, "real test digits", where7)
    count = chosen["samples"]

    ch6 = chapter_outputs("06_quality.ipynb")
    lock = find(r"lock-in timestep over ([\d,]+) samples: median (\d+), quartiles (\d+)-(\d+)",
                ch6, "chapter 6 (book/06_quality.ipynb)")

    ch8 = chapter_outputs("08_ddim.ipynb")
    where8 = "chapter 8 (book/08_ddim.ipynb)"
    ddim = find(r"DDIM-50 eta=1: ([\d.]+)x faster than DDPM-1000, Frechet distance ([\d.]+) vs ([\d.]+)",
                ch8, where8)
    deterministic = find(r"DDIM-50 eta=0: [\d.]+x faster than DDPM-1000, Frechet distance ([\d.]+)", ch8, where8)
    ddim_count = find(r"^DDPM-1000\s+(\d+)\s", ch8, where8).group(1)

    ch9 = chapter_outputs("09_guidance.ipynb")
    guided = find(r"best w = ([\d.]+): ([\d.]+)% as asked, confident ([\d.]+), Frechet ([\d.]+) "
                  r"\(unconditional: ([\d.]+)\)", ch9, "chapter 9 (book/09_guidance.ipynb)")

    results = (REPO / "RESULTS.md").read_text(encoding="utf-8")
    browser = find(r"one digit: DDIM-50 ([\d.]+)-([\d.]+) s, DDPM-1000 ([\d.]+)-([\d.]+) s",
                   results, "RESULTS.md, the live panel's row")

    def share(value: str) -> str:
        return f"{rounded(float(value) * 100, '1')}%"

    return [
        "| what | this book | for comparison | from |",
        "| --- | --- | --- | --- |",
        f"| Fréchet distance, {int(count):,} samples of the 1,000-step sampler (lower is better) "
        f"| {rounded(chosen['Frechet'])} "
        f"| real test digits {rounded(real['Frechet'])}; "
        f"reference recipe {rounded(reference['Frechet'])} "
        "| {doc}`chapter 7 <07_sharp_digits>` |",
        f"| share of those samples that the judge, an MNIST classifier, is confident about "
        f"| {share(chosen['confident'])} "
        f"| real test digits {share(real['confident'])}; reference recipe {share(reference['confident'])} "
        "| {doc}`chapter 7 <07_sharp_digits>` |",
        f"| lock-in timestep of a digit's identity, median (quartiles), "
        f"{int(lock.group(1).replace(',', '')):,} samples "
        f"| $t={lock.group(2)}$ ({lock.group(3)} to {lock.group(4)}) "
        "| reference run: between $t=400$ and $t=100$ "
        "| {doc}`chapter 6 <06_quality>` |",
        f"| DDIM, 50 steps with fresh noise ($\\eta=1$, the live panel's default), against the 1,000-step sampler, "
        f"{int(ddim_count):,} samples "
        f"| {ddim.group(1)} times faster "
        f"| Fréchet distance {rounded(ddim.group(2))} (1,000 steps: {rounded(ddim.group(3))}; "
        f"deterministic, $\\eta=0$: {rounded(deterministic.group(1))}) "
        "| {doc}`chapter 8 <08_ddim>` |",
        f"| guidance at $w={guided.group(1)}$: digits judged as the one asked for "
        f"| {rounded(guided.group(2), '1')}% ({rounded(float(guided.group(3)) * 100)}% confidently) "
        f"| Fréchet distance {rounded(guided.group(4))} (unconditional model: {rounded(guided.group(5))}) "
        "| {doc}`chapter 9 <09_guidance>` |",
        f"| one digit in the browser (headless Chromium, one thread) "
        f"| DDIM-50: {browser.group(1)} to {browser.group(2)} s "
        f"| 1,000 steps: {browser.group(3)} to {browser.group(4)} s "
        "| {doc}`how the numbers were made <appendix_numbers>` |",
    ]


def training_time() -> dict:
    if not TRAINING_TIME.is_file():
        raise MissingResult(f"{shown(TRAINING_TIME)} is missing: run python -m benchmarks.training_time")
    return json.loads(TRAINING_TIME.read_text(encoding="utf-8"))


def training_row() -> str:
    measured = training_time()
    return (f"| the 15-epoch training of the book's model, {measured['full_run_steps']:,} steps "
            f"| {rounded(measured['estimated_minutes'], '1')} minutes "
            f"| {measured['machine']}; extrapolated from {measured['measured_steps']} timed steps "
            "| {doc}`how the numbers were made <appendix_numbers>` |")


def training_sentence() -> str:
    measured = training_time()
    minutes = float(measured["estimated_minutes"])
    laptop = minutes / LAPTOP_SPEED_UP
    gpu_seconds = measured["full_run_steps"] * GPU_SECONDS_PER_STEP
    return "\n".join([
        "% Written by tools/results_table.py from book/results/training_time.json; do not edit by hand.",
        "",
        f"The 15-epoch training of the book's recipe ({measured['full_run_steps']:,} optimiser steps), measured "
        f"once on an otherwise idle machine, {measured['machine']}, takes about **{rounded(minutes, '1')} "
        f"minutes**. It was measured by `python -m benchmarks.training_time` on {measured['measured_on']}: "
        f"{measured['method']}. Every page of the book quotes this figure.",
        "",
        f"Estimates, not measurements: a laptop whose 8 cores train about {LAPTOP_SPEED_UP} times as fast as these "
        f"2 would take about {rounded(laptop, '1')} minutes; on a data-centre GPU a step of this small network "
        f"costs mostly its fixed overhead, about {GPU_SECONDS_PER_STEP * 1000:.0f} ms, which makes about "
        f"{rounded(gpu_seconds, '10')} seconds.",
        "",
    ])


def render() -> str:
    lines = [
        "% Written by tools/results_table.py from the stored results; do not edit by hand:",
        "% run `python -m tools.results_table` after a chapter, a checkpoint or RESULTS.md changes.",
        "",
        "**Training loss**, the epoch-mean $L_\\text{simple}$ (the reference run's as published by "
        "{cite:t}`mohapatra2025deconstructing`; ours from the records of the committed checkpoints, "
        "{doc}`chapter 4 <04_training>` and {doc}`chapter 7 <07_sharp_digits>`):",
        "",
        *losses(),
        "",
        "**Samples and speed**, each figure as a chapter's stored output shows it:",
        "",
        *samples(),
        training_row(),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.results_table", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare with the committed table; exit 1 if it is stale")
    args = parser.parse_args(argv)
    outputs = {OUTPUT: render(), TRAINING_OUTPUT: training_sentence()}
    if args.check:
        stale = [path for path, text in outputs.items()
                 if (path.read_text(encoding="utf-8") if path.exists() else "") != text]
        for path in stale:
            print(f"{shown(path)} is stale: run python -m tools.results_table", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        write_bytes(path, text.encode("utf-8"))  # atomically: a killed run leaves the page's table as it was
        print(f"wrote {shown(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
