"""The sampler registry: one ``generate`` that runs each sampler with its own defaults and refuses another's options."""

import pytest
import torch

from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.dpm_solver import dpm_solver_sample
from ddpm_core.diffusion.samplers import SAMPLERS, check_options, generate, samplers_taking
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.utils.errors import DDPMError

T = 60


def noise_predictor(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.3 * x + 0.01 * t.view(-1, 1, 1, 1).float() / T  # any fixed eps_theta: the samplers are compared


def test_generate_runs_each_sampler_with_the_registrys_defaults():
    schedule = NoiseSchedule(num_steps=T)
    seeds = [4, 5]
    expected = {
        "ddpm": sample(noise_predictor, schedule, seeds=seeds, variance="beta", noise_scale=1.0, progress=False),
        "ddim": ddim_sample(noise_predictor, schedule, seeds=seeds, steps=50, eta=1.0, progress=False),
        "dpm": dpm_solver_sample(noise_predictor, schedule, seeds=seeds, steps=50, progress=False),
    }
    for name, (images, _) in expected.items():
        assert torch.equal(generate(noise_predictor, schedule, name, seeds=seeds, progress=False)[0], images), name


def test_an_option_given_as_none_takes_the_default_and_a_given_one_is_passed_on():
    schedule = NoiseSchedule(num_steps=T)
    default, _ = generate(noise_predictor, schedule, "ddim", seeds=[1], steps=None, eta=None, progress=False)
    assert torch.equal(default, generate(noise_predictor, schedule, "ddim", seeds=[1], progress=False)[0])
    deterministic, _ = generate(noise_predictor, schedule, "ddim", seeds=[1], steps=10, eta=0.0, progress=False)
    expected, _ = ddim_sample(noise_predictor, schedule, seeds=[1], steps=10, eta=0.0, progress=False)
    assert torch.equal(deterministic, expected)


def test_the_ddim_default_is_the_books_eta_of_1_and_a_run_is_named_by_its_options():
    assert SAMPLERS["ddim"].defaults["eta"] == 1.0
    assert SAMPLERS["ddim"].label(1000) == "DDIM-50 eta=1"
    assert SAMPLERS["ddim"].label(1000, steps=20, eta=0.0) == "DDIM-20 eta=0"
    assert SAMPLERS["ddpm"].label(1000, variance="posterior") == "DDPM-1000"
    assert SAMPLERS["dpm"].label(1000, steps=None) == "DPM-Solver++ 50"
    assert [s.name for s in samplers_taking("steps")] == ["ddim", "dpm"]
    assert samplers_taking("labels") == []  # every sampler takes it


@pytest.mark.parametrize("name, options, owner", [
    ("dpm", {"eta": 0.5}, "eta= is an option of ddim"),
    ("ddpm", {"steps": 50}, "steps= is an option of ddim and dpm"),
    ("ddim", {"variance": "posterior"}, "variance= is an option of ddpm"),
])
def test_an_option_of_another_sampler_is_refused_with_the_sampler_that_takes_it(name, options, owner):
    with pytest.raises(DDPMError, match=owner):
        check_options(name, options)
    with pytest.raises(DDPMError, match=owner):
        generate(noise_predictor, NoiseSchedule(num_steps=T), name, num_samples=1, progress=False, **options)
    check_options(name, {key: None for key in options})  # None means "not given"


def test_an_unknown_sampler_is_refused_with_the_known_ones():
    with pytest.raises(DDPMError, match="ddpm, ddim, dpm"):
        generate(noise_predictor, NoiseSchedule(num_steps=T), "euler", num_samples=1)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_capturing_the_trajectory_changes_no_sample(name):
    schedule = NoiseSchedule(num_steps=T)
    plain, none = generate(noise_predictor, schedule, name, seeds=[2, 3], progress=False)
    captured, trajectory = generate(noise_predictor, schedule, name, seeds=[2, 3], capture=[T, 0], progress=False)
    assert none is None and trajectory.timesteps == [T, 0]
    assert torch.equal(plain, captured)
