"""The mutation tests' edits still apply: each breaks text that occurs exactly once in today's package."""

from pathlib import Path

import pytest

from tools.mutants import MUTANTS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_every_mutant_finds_the_line_it_breaks(mutant):
    source = (REPO / mutant.path).read_text()
    assert source.count(mutant.old) == 1, (
        f"{mutant.name}: its text occurs {source.count(mutant.old)} times in {mutant.path}; "
        f"update tools/mutants.py to today's code")
    assert mutant.new != mutant.old
