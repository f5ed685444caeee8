"""How long each chapter takes a reader to run, top to bottom, from a fresh clone.

Each chapter runs as a reader's Jupyter would run it: the default mode (no quick mode, nothing
regenerated), its kernel started in ``book/``, in a fresh ``git clone`` of the current commit, so
only what is committed is there (the sample sets and checkpoints, no ``runs/``). The executed copy
goes to a scratch folder; the stored chapters are not touched. A chapter that runs longer than
``--limit`` minutes is stopped and recorded as over the limit.

    python -m tools.chapter_times                 # every chapter
    python -m tools.chapter_times 05_generation   # one chapter, merged into the stored results
    python -m tools.chapter_times --check         # only compare the README's table with the results

The results go to ``book/results/chapter_times.json`` with the machine, its thread count and the
commit, and the README's table (between its ``chapter-times`` markers) is rewritten from them.
Time them on an otherwise idle machine: another job on the same cores slows every chapter.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ddpm_core.utils.arguments import positive_float
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import check_writable, store_entry, write_bytes
from ddpm_core.utils.scripts import read_json_object, run_script

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "book" / "results" / "chapter_times.json"
README = REPO / "README.md"
START, END = "<!-- chapter-times:start -->", "<!-- chapter-times:end -->"
LIMIT_MINUTES = 10  # what a reader should wait for one chapter


def chapters() -> list[str]:
    return sorted(path.stem for path in (REPO / "book").glob("[0-9][0-9]_*.ipynb"))


def fresh_clone() -> Path:
    """A clone of the current commit: what a reader gets (uncommitted changes are not in it)."""
    root = Path(tempfile.mkdtemp(prefix="ddpm-fresh-clone-"))
    done = subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(root / "book-clone")],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise DDPMError(f"Cannot clone {REPO} (git clone stopped with exit status {done.returncode}: "
                        f"{done.stderr.strip()[-200:]}); the chapters are timed in a fresh clone of a git checkout.")
    return root / "book-clone"


def run_chapter(clone: Path, name: str, limit_minutes: float) -> dict:
    """Execute one chapter in ``clone`` as a reader would; its wall time in seconds and whether it finished."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DDPM_QUICK", "DDPM_REGENERATE", "DDPM_SCRATCH")}
    env["PYTHONPATH"] = str(clone)  # the clone's package, not the working tree's
    scratch = Path(tempfile.mkdtemp(prefix="ddpm-chapter-"))
    command = [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
               "--output-dir", str(scratch), f"--ExecutePreprocessor.timeout={int(limit_minutes * 60)}",
               str(clone / "book" / f"{name}.ipynb")]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True,
                              timeout=limit_minutes * 60 + 60)
        finished, detail = done.returncode == 0, done.stderr[-600:]
    except subprocess.TimeoutExpired:
        finished, detail = False, f"stopped after {limit_minutes:g} minutes"
    seconds = time.perf_counter() - started
    if not finished:
        print(f"{name}: did not finish: {detail.strip()}", file=sys.stderr)
    return {"seconds": round(seconds, 1), "finished": finished}


def machine() -> tuple[str, int]:
    import torch

    from ddpm_core.utils.device import device_description

    return device_description(torch.device("cpu")), torch.get_num_threads()


def table(results: dict) -> str:
    rows = [f"Measured from a fresh clone on {results.get('machine')}, {results.get('measured_on')} "
            f"(`python -m tools.chapter_times`):", "",
            "| chapter | run time |", "| --- | ---: |"]
    for name, entry in sorted(results["chapters"].items()):
        minutes = entry["seconds"] / 60
        shown = f"{minutes:.1f} min" if entry["finished"] else f"stopped after {minutes:.0f} min"
        rows.append(f"| `{name}` | {shown} |")
    return "\n".join(rows)


INTRODUCTION = """Each chapter, run top to bottom in Jupyter from a fresh clone, reads the committed sample sets and
checkpoints instead of generating them again (`DDPM_REGENERATE=1` regenerates every sample set it reads):
"""
ANCHOR = "The book ships the trained weights, so no chapter trains the full run.\n"


def readme_with(text: str, block: str) -> str:
    """The README with ``block`` between its chapter-times markers (placed after the training time the first time)."""
    if START not in text:
        if ANCHOR not in text:
            raise DDPMError(f"README.md has neither the {START} block nor the line {ANCHOR.strip()!r}; "
                            f"nothing was timed.")
        text = text.replace(ANCHOR, f"{ANCHOR}\n{INTRODUCTION}\n{START}\n{END}\n", 1)
    head, rest = text.split(START, 1)
    return f"{head}{START}\n{block}\n{END}{rest.split(END, 1)[1]}"


def stored_results() -> dict:
    """The stored results (none yet when the file is missing), refused before any work if they are damaged."""
    if not RESULTS.exists():
        return {"chapters": {}}
    remedy = f"Nothing was timed; restore it with `git checkout {RESULTS.relative_to(REPO)}`."
    stored = read_json_object(RESULTS, "the chapters' run times (a JSON object)", remedy)
    entries = stored.get("chapters")
    if not isinstance(entries, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("seconds"), int | float) and isinstance(e.get("finished"), bool)
            for e in entries.values()):
        raise DDPMError(f"{RESULTS} has no \"chapters\" object of run times in seconds. {remedy}")
    return stored


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.chapter_times",
                                     description="Time each chapter's default run from a fresh clone.")
    parser.add_argument("chapters", nargs="*", help="chapter names such as 05_generation (default: all)")
    parser.add_argument("--limit", type=positive_float, default=LIMIT_MINUTES + 5,
                        help="stop a chapter after this many minutes")
    parser.add_argument("--check", action="store_true", help="only check that the README shows the stored results")
    args = parser.parse_args(argv)
    stored = stored_results()
    if args.check:
        if not stored["chapters"]:
            return 0 if START not in README.read_text() else 1  # nothing measured, nothing shown
        expected = readme_with(README.read_text(), table(stored))
        if expected != README.read_text():
            print("README.md's table of chapter times is stale: run python -m tools.chapter_times", file=sys.stderr)
            return 1
        return 0
    unknown = sorted(set(args.chapters) - set(chapters()))
    if unknown:
        raise DDPMError(f"No chapter called {unknown}; the chapters are {', '.join(chapters())}.")
    readme_with(README.read_text(), "")  # the README has its markers: checked before hours of timing
    check_writable(README, README.name)
    check_writable(RESULTS, RESULTS.name)
    clone = fresh_clone()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                            text=True, check=True).stdout.strip()
    name_of_machine, threads = machine()
    for name in args.chapters or chapters():
        entry = run_chapter(clone, name, args.limit)
        stored["chapters"][name] = entry | {"commit": commit}
        store_entry(RESULTS, "chapters", stored["chapters"])
        print(f"{name}: {entry['seconds'] / 60:.1f} min" + ("" if entry["finished"] else " (stopped)"), flush=True)
    stored |= {"machine": name_of_machine, "threads": threads, "measured_on": datetime.date.today().isoformat()}
    for key in ("machine", "threads", "measured_on"):
        store_entry(RESULTS, key, stored[key])
    text = readme_with(README.read_text(), table(stored))
    write_bytes(README, text.encode("utf-8"))  # atomically: a killed run leaves the README as it was
    return 0 if all(entry["finished"] for entry in stored["chapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
