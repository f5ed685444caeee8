"""Do the tests catch broken maths? Apply small breaking changes to ddpm_core, one at a time, and see which
test fails.

Each mutant is one bug of ``ddpm_core.book.bugs`` (the edits that the chapter "When it goes wrong" also
shows), made in a scratch copy of the repository (the working tree is never touched). For each, the unit
tests that cover the code run first (stopping at the first failure), then the chapter that explains the
formula, in quick mode. The table names the first unit test that failed and what in the chapter failed:
a claim its `check(...)` no longer supports, a listing of the package's code that no longer matches
(cells tagged nbval-check-output), or a cell that raised. A mutant that no test catches is a hole in the
tests; the script then exits with status 1.

    make mutants                              # all mutants
    python -m tools.mutants --only ddim-sign  # one of them

Each mutant's row is also kept in ``book/results/mutants.json`` (a run of some mutants replaces only
their rows), which the chapter "When it goes wrong" reads for its table of which check catches which bug.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from ddpm_core.book.bugs import BUGS, REPO, VERDICTS, copy_with, env_of
from ddpm_core.book.checkout import require_checkout
from ddpm_core.utils.arguments import file_path
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import store_entry
from ddpm_core.utils.scripts import results_file, run_script

NBVAL = ["--nbval-lax", "--nbval-sanitize-with", "book/nbval_sanitize.cfg"]  # as `make nbtest` runs the chapters
MUTANTS = BUGS  # every bug of ddpm_core.book.bugs: the chapter's gallery and the formulas the unit tests guard


def pytest(root: Path, args: list[str], quick: bool) -> tuple[bool, str, str]:
    """Run pytest in ``root`` with its own copy of the package first on the path.

    Returns (passed, first failing test, pytest's output). Unit tests stop at the first failure;
    a chapter runs to its end, so that every claim it can no longer support is reported.
    """
    env = env_of(root) | {"DDPM_SCRATCH": str(root / "scratch")}
    if quick:
        env["DDPM_QUICK"] = "1"
    stop = [] if quick else ["-x"]
    done = subprocess.run([sys.executable, "-m", "pytest", *stop, "-q", "-rf", "-p", "no:cacheprovider", *args],
                          cwd=root, env=env, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.M)
    if done.returncode not in (0, 1):
        failed = failed or [f"(pytest exit {done.returncode})"]
    return done.returncode == 0, failed[0] if failed else "", done.stdout


def chapter_verdict(passed: bool, output: str) -> str:
    """What in a chapter caught the mutant: its first broken claim, else a changed listing, else an error."""
    if passed:
        return "missed"
    output = re.sub(r"\x1b\[[0-9;]*m", "", output)  # the kernel's tracebacks come in colour
    claims = re.findall(r"AssertionError: \u2717 (.+?): the numbers above no longer support", output)
    cells = re.findall(r"^FAILED \S+::Cell (\d+)", output, flags=re.M)
    where = f"cell {cells[0]}" if cells else "a cell"
    if claims:
        more = f" (+{len(claims) - 1} more)" if len(claims) > 1 else ""
        return f"check: {claims[0][:60]}{more}"
    if re.search(r"mismatch '", output):
        return f"listing or output of {where} changed"
    return f"error in {where}"


def keep(path: Path, name: str, unit: str, chapter: str, caught: bool) -> None:
    """Store one mutant's verdicts in ``path``, keeping the rows of the others."""
    store_entry(path, name, {"unit_test": unit, "chapter": chapter, "caught": caught},
                order=[m.name for m in MUTANTS])


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.mutants",
                                     description="Apply each mutant to a scratch copy and report what catches it.")
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--no-chapters", action="store_true", help="skip the chapters (unit tests only)")
    parser.add_argument("--results", type=file_path, default=VERDICTS,
                        help=f"JSON file that keeps each mutant's row (default {VERDICTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - {m.name for m in MUTANTS})
    if unknown:
        raise DDPMError(f"--only names {unknown}, which are not mutants; they are "
                        f"{', '.join(m.name for m in MUTANTS)}.")
    if not args.no_chapters:  # the rows are kept only when the chapters ran
        results_file(args.results)
    require_checkout("python -m tools.mutants", git=True)  # every mutant runs in a copy of the git checkout
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    rows, survivors = [], []
    for mutant in chosen:
        started = time.perf_counter()
        with copy_with(mutant) as root:
            unit_passed, unit_failure, _ = pytest(root, list(mutant.tests), quick=False)
            chapter = "-"
            if mutant.chapter and not args.no_chapters:
                chapter_passed, _, output = pytest(root, [*NBVAL, mutant.chapter], quick=True)
                chapter = f"{Path(mutant.chapter).stem}: {chapter_verdict(chapter_passed, output)}"
        caught = not unit_passed or not (chapter == "-" or chapter.endswith("missed"))
        if not caught:
            survivors.append(mutant.name)
        seconds = f"{time.perf_counter() - started:.0f}"
        rows.append((mutant.name, mutant.what, unit_failure or "missed", chapter, seconds))
        if not args.no_chapters:
            keep(args.results, mutant.name, unit_failure or "missed", chapter, caught)
        print(f"{mutant.name}: {'caught' if caught else 'SURVIVED'}", file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in [("mutant", "broken formula", "first failing unit test", "chapter", "s"), *rows])
              for i in range(5)]
    for i, row in enumerate([("mutant", "broken formula", "first failing unit test", "chapter", "s"), *rows]):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{len(rows) - len(survivors)} of {len(rows)} mutants caught" +
          (f"; survived: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
