"""Do the tests catch broken maths? Apply small breaking changes to ddpm_core, one at a time, and see
which test fails.

Each mutant is one edit of the package, made in a scratch copy of the repository (the working
tree is never touched). For each, the unit tests that cover the code run first (stopping at the
first failure), then the chapter that explains the formula, in quick mode. The table names the
first unit test that failed and what in the chapter failed: a claim its `check(...)` no longer
supports, a listing of the package's code that no longer matches (cells tagged
nbval-check-output), or a cell that raised. A mutant that no test catches is a hole in the
tests; the script then exits with status 1.

    make mutants                              # all mutants
    python -m tools.mutants --only ddim-sign  # one of them
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NBVAL = ["--nbval-lax", "--nbval-sanitize-with", "book/nbval_sanitize.cfg"]  # as `make nbtest` runs the chapters


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the broken formula, in words
    path: str  # the file of the package to edit
    old: str  # text that occurs exactly once in it
    new: str
    tests: tuple[str, ...]  # unit test files that should catch it
    chapter: str | None  # the chapter that explains the formula


MUTANTS = (
    Mutant("at-off-by-one", "NoiseSchedule.at reads timestep t+1's value", "ddpm_core/schedule.py",
           "out = values.to(t.device)[t - 1]", "out = values.to(t.device)[t.clamp(max=self.num_steps - 1)]",
           ("tests/test_schedule.py",), "book/01_forward_process.ipynb"),
    Mutant("posterior-mean-coef", "the x_0 coefficient of the posterior mean without its square root",
           "ddpm_core/schedule.py", "posterior_mean_coef_x0 = alpha_bars_prev.sqrt() * betas",
           "posterior_mean_coef_x0 = alpha_bars_prev * betas", ("tests/test_schedule.py",),
           "book/02_reverse_process.ipynb"),
    Mutant("posterior-variance-beta", "the posterior variance replaced by beta_t", "ddpm_core/schedule.py",
           "posterior_variance = (1.0 - alpha_bars_prev) / (1.0 - alpha_bars) * betas", "posterior_variance = betas",
           ("tests/test_schedule.py", "tests/test_ddim.py"), "book/02_reverse_process.ipynb"),
    Mutant("ancestral-sqrt", "the ancestral step divides by alpha_t, not its square root", "ddpm_core/sampling.py",
           "x_prev = (xt - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha**0.5",
           "x_prev = (xt - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha",
           ("tests/test_sampling.py",), "book/02_reverse_process.ipynb"),
    Mutant("ddim-sign", "DDIM's direction term with the wrong sign", "ddpm_core/ddim.py",
           "x_prev = alpha_bar_prev**0.5 * x0_pred + direction", "x_prev = alpha_bar_prev**0.5 * x0_pred - direction",
           ("tests/test_ddim.py",), "book/08_ddim.ipynb"),
    Mutant("no-noise-at-t2", "no fresh noise at the last step but one (t = 2)", "ddpm_core/sampling.py",
           "if t == 1 or noise_scale == 0:", "if t <= 2 or noise_scale == 0:",
           ("tests/test_sampling.py",), "book/02_reverse_process.ipynb"),
    Mutant("unet-skip", "the UNet's skip connections carry zeros", "ddpm_core/unet.py",
           "torch.cat([h, skips.pop()], dim=1)", "torch.cat([h, torch.zeros_like(skips.pop())], dim=1)",
           ("tests/test_unet.py",), "book/03_unet.ipynb"),
    Mutant("ema-1-minus-decay", "the EMA moves by decay instead of 1 - decay", "ddpm_core/recipe.py",
           "ema_state[name].lerp_(value, 1.0 - decay)", "ema_state[name].lerp_(value, decay)",
           ("tests/test_training.py",), "book/07_sharp_digits.ipynb"),
    Mutant("frechet-no-trace", "the Frechet distance without its trace term", "ddpm_core/metrics.py",
           "    return float(metric.compute())",
           "    mean = lambda s, n: s / n  # noqa: E731\n"
           "    return float((mean(metric.real_features_sum, metric.real_features_num_samples)\n"
           "                  - mean(metric.fake_features_sum, metric.fake_features_num_samples)).square().sum())",
           ("tests/test_metrics.py",), "book/06_quality.ipynb"),
    Mutant("trajectory-late", "the trajectory records x_{t-1} as x_t: one step late", "ddpm_core/sampling.py",
           "            if batch.captures(t):\n"
           "                batch.record(t, x, schedule.predict_x0(x, t, eps_pred))\n"
           "            x = ddpm_step(schedule, x, eps_pred, t, z, variance, noise_scale)  # 4\n",
           "            x_next = ddpm_step(schedule, x, eps_pred, t, z, variance, noise_scale)  # 4\n"
           "            if batch.captures(t):\n"
           "                batch.record(t, x_next, schedule.predict_x0(x, t, eps_pred))\n"
           "            x = x_next\n",
           ("tests/test_sampling.py",), "book/05_generation.ipynb"),
)


def scratch_copy() -> Path:
    """The committed files and any changes to them, in a new folder (no .venv, runs or build)."""
    root = Path(tempfile.mkdtemp(prefix="ddpm-mutant-"))
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def mutate(root: Path, mutant: Mutant) -> None:
    path = root / mutant.path
    text = path.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"{mutant.name}: the text to mutate occurs {text.count(mutant.old)} times in "
                         f"{mutant.path}, not once; update tools/mutants.py to today's code.")
    path.write_text(text.replace(mutant.old, mutant.new))


def pytest(root: Path, args: list[str], quick: bool) -> tuple[bool, str, str]:
    """Run pytest in ``root`` with its own copy of the package first on the path.

    Returns (passed, first failing test, pytest's output). Unit tests stop at the first failure;
    a chapter runs to its end, so that every claim it can no longer support is reported.
    """
    env = {**os.environ, "PYTHONPATH": str(root), "DDPM_SCRATCH": str(root / "scratch")}
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


def main() -> int:
    parser = argparse.ArgumentParser(description="Apply each mutant to a scratch copy and report what catches it.")
    parser.add_argument("--only", action="append", help="run only this mutant (repeatable)")
    parser.add_argument("--no-chapters", action="store_true", help="skip the chapters (unit tests only)")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    rows, survivors = [], []
    for mutant in chosen:
        started = time.perf_counter()
        root = scratch_copy()
        try:
            mutate(root, mutant)
            unit_passed, unit_failure, _ = pytest(root, list(mutant.tests), quick=False)
            chapter = "-"
            if mutant.chapter and not args.no_chapters:
                chapter_passed, _, output = pytest(root, [*NBVAL, mutant.chapter], quick=True)
                chapter = f"{Path(mutant.chapter).stem}: {chapter_verdict(chapter_passed, output)}"
        finally:
            shutil.rmtree(root, ignore_errors=True)
        caught = not unit_passed or not (chapter == "-" or chapter.endswith("missed"))
        if not caught:
            survivors.append(mutant.name)
        seconds = f"{time.perf_counter() - started:.0f}"
        rows.append((mutant.name, mutant.what, unit_failure or "missed", chapter, seconds))
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
