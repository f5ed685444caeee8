"""The bugs of ``ddpm_core.book.bugs`` (the mutation tests' edits) still apply to today's package, and put the
bug where they say: in a module compiled beside the real one, or in a scratch copy of the repository."""

from pathlib import Path

import pytest
import torch

from ddpm_core import NoiseSchedule
from ddpm_core.book.bugs import BUGS, STAGES, bug, copy_with
from ddpm_core.diffusion import sampling as real_sampling
from ddpm_core.utils.errors import DDPMError
from tests.helpers import REPO, mnist_available
from tools.mutants import MUTANTS


@pytest.mark.parametrize("mutant", BUGS, ids=lambda m: m.name)
def test_every_bug_finds_the_text_it_breaks(mutant):
    assert mutant.stage in STAGES and mutant.edits
    for edit in mutant.edits:
        source = (REPO / edit.path).read_text()
        assert source.count(edit.old) == 1, (
            f"{mutant.name}: its text occurs {source.count(edit.old)} times in {edit.path}; "
            f"update ddpm_core/book/bugs.py to today's code")
        assert edit.new != edit.old and edit.path == mutant.path
    assert (REPO / mutant.chapter).is_file() if mutant.chapter else True
    assert all((REPO / test).is_file() for test in mutant.tests)


def test_the_mutation_tests_break_every_bug_of_the_book():
    assert MUTANTS == BUGS and len({m.name for m in BUGS}) == len(BUGS)


def test_a_diff_shows_the_edited_lines_and_nothing_else():
    diff = bug("reversed-time").diff()
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-        for t in range(schedule.num_steps, 0, -1):  # 2: for t = T, ..., 1",
                       "+        for t in range(1, schedule.num_steps + 1):  # 2: for t = T, ..., 1"]
    assert diff.startswith("--- a/ddpm_core/diffusion/sampling.py")


def _zero_model(x, t):
    return torch.zeros_like(x)  # predicts no noise: the step only rescales x_t and adds sigma_t z


def test_a_sampling_bug_runs_in_its_own_module_and_leaves_the_package_alone():
    schedule = NoiseSchedule(20)
    kwargs = dict(num_samples=2, seed=3, progress=False, image_shape=(1, 4, 4))
    correct, _ = real_sampling.sample(_zero_model, schedule, **kwargs)
    broken = bug("noise-at-t1").module()
    with_bug, _ = broken.sample(_zero_model, schedule, **kwargs)
    assert broken.__name__ != real_sampling.__name__ and broken.sample is not real_sampling.sample
    assert not torch.equal(correct, with_bug)  # the last step's noise changed the images
    again, _ = real_sampling.sample(_zero_model, schedule, **kwargs)
    assert torch.equal(correct, again)  # the real sampler is untouched


def test_a_training_bug_is_refused_as_a_module_and_lives_in_a_scratch_copy():
    images_bug = bug("images-0-1")
    with pytest.raises(DDPMError, match="copy of the repository"):
        images_bug.module()
    with copy_with(images_bug) as root:
        assert "/ 255.0" in (root / "ddpm_core" / "training" / "data.py").read_text()
        sampling = Path("ddpm_core") / "diffusion" / "sampling.py"
        assert (root / sampling).read_text() == (REPO / sampling).read_text()
    assert not root.exists()
    assert "/ 127.5 - 1.0" in (REPO / "ddpm_core" / "training" / "data.py").read_text()


def test_an_unknown_bug_is_named_with_the_known_ones():
    with pytest.raises(DDPMError, match="reversed-time"):
        bug("no-such-bug")


def test_the_bugs_command_lists_them_and_trains_only_training_bugs(capsys):
    from ddpm_core.book.bugs_cli import main

    assert main([]) == 0
    listed = capsys.readouterr().out
    assert all(entry.name in listed for entry in BUGS)
    assert main(["train", "reversed-time"]) == 2  # a sampling bug has no training run
    refused = capsys.readouterr()
    assert "not training bugs" in refused.err and refused.out == ""


@pytest.mark.skipif(not mnist_available(), reason="needs MNIST in $DDPM_DATA_DIR")
def test_a_short_run_is_measured_at_timesteps_spread_over_its_own_schedule(tiny_run):
    from ddpm_core.book.bugs import FRACTIONS, held_out_losses

    measured = held_out_losses(tiny_run / "model.safetensors", num_images=8)
    # the tiny run's schedule has T = 20: fractions of it, rounded, at least 1, each once
    assert measured["timesteps"] == sorted({max(1, round(f * 20)) for f in FRACTIONS})
    assert measured["timesteps"][0] == 1 and measured["timesteps"][-1] == 20
    assert len(measured["loss"]) == len(measured["timesteps"]) and all(v > 0 for v in measured["loss"])
