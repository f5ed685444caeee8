"""Summarise mutmut's run (`make mutation-score`): how many of its generated mutants the unit tests kill.

mutmut (https://github.com/boxed/mutmut) rewrites each function of the modules listed under
[tool.mutmut] in pyproject.toml in many small ways (a + becomes a -, a constant changes, an argument
is dropped) and runs the tests that reach that function against each version. A mutant that no test
fails on "survived". The score is the share of mutants that a test killed (a timeout counts as
killed: the tests noticed that something was wrong), among the mutants that some test reaches.

    python -m tools.mutation_score   # after `mutmut run`
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
from pathlib import Path

from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script

BIN = Path(sys.executable).parent


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    argparse.ArgumentParser(prog="python -m tools.mutation_score", description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        done = subprocess.run([str(BIN / "mutmut"), "results", "--all", "true"], capture_output=True, text=True)
    except OSError as error:
        raise DDPMError(f"mutmut could not be run ({error.strerror}): run make mutation-score, which installs it "
                        f"and runs it first.") from None
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DDPMError(f"mutmut results failed ({said}); run make mutation-score, which runs mutmut first.")
    by_module: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in done.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            by_module[name.split(".")[1]][status] += 1
    rows, totals = [], collections.Counter()
    for module, counts in sorted(by_module.items()):
        totals.update(counts)
        rows.append((module, counts))
    rows.append(("all", totals))
    print(f"{'module':<10} {'mutants':>8} {'killed':>7} {'timeout':>8} {'survived':>9} {'no test':>8} {'score':>7}")
    for module, c in rows:
        reached = sum(c.values()) - c["no tests"] - c["skipped"]
        killed = c["killed"] + c["timeout"]
        score = f"{killed / reached:.1%}" if reached else "-"
        print(f"{module:<10} {sum(c.values()):>8} {c['killed']:>7} {c['timeout']:>8} {c['survived']:>9} "
              f"{c['no tests']:>8} {score:>7}")
    others = set(totals) - {"killed", "timeout", "survived", "no tests", "skipped"}
    if others:
        print("other outcomes:", ", ".join(f"{k} {totals[k]}" for k in sorted(others)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
