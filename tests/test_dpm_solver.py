"""DPM-Solver++(2M): checked step by step against an independent implementation, diffusers' scheduler."""

import pytest
import torch

from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.dpm_solver import dpm_solver_sample, dpm_solver_step
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import initial_noise
from ddpm_core.utils.errors import DDPMError
from tests.helpers import run_cli, tiny_model

diffusers = pytest.importorskip("diffusers", reason="diffusers is the test oracle: pip install -r requirements-dev.txt")


def _oracle(steps: int):
    scheduler = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        algorithm_type="dpmsolver++", solver_order=2, prediction_type="epsilon", final_sigmas_type="zero")
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [5, 10, 25])
def test_dpm_solver_matches_diffusers_dpm_solver_pp_2m(steps):
    torch.manual_seed(0)
    model, schedule = tiny_model(), NoiseSchedule()
    scheduler = _oracle(steps)
    taus = [int(t) + 1 for t in scheduler.timesteps]  # diffusers counts timesteps from 0, the paper from 1
    x_t = initial_noise([3, 4, 5], (1, 28, 28))
    theirs = x_t.double()
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(theirs.float(), torch.full((3,), int(t) + 1)).double()
            theirs = scheduler.step(eps, t, theirs).prev_sample
        ours, _ = dpm_solver_sample(model, schedule, seeds=[3, 4, 5], timesteps=taus, progress=False)
    assert torch.allclose(ours, theirs.float(), atol=2e-4), (ours - theirs.float()).abs().max()


def test_the_first_step_is_a_ddim_step_and_one_step_gives_ddims_sample():
    torch.manual_seed(0)
    model, schedule = tiny_model(), NoiseSchedule()
    for taus in ([1000], [1000, 400]):  # one step: x_0-hat of x_T; two: DDIM's step, then x_0-hat
        ours, _ = dpm_solver_sample(model, schedule, seeds=[0, 1], timesteps=taus, progress=False)
        ddim, _ = ddim_sample(model, schedule, seeds=[0, 1], timesteps=taus, progress=False)
        assert torch.allclose(ours, ddim, atol=1e-5)


def test_the_second_order_step_extrapolates_the_predicted_x0():
    schedule = NoiseSchedule()
    x, now, before = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    first, h = dpm_solver_step(schedule, x, now, 600, 400)
    second, _ = dpm_solver_step(schedule, x, now, 600, 400, previous=(before, h))
    # With x_t = 0 the update is -alpha_s (e^{-h} - 1) D, so the ratio of the two is D's: 1 + 1 / (2r), r = 1.
    assert torch.allclose(second / first, torch.full_like(first, 1.5))


def test_the_command_line_samples_with_dpm_solver_and_refuses_eta(tiny_run, tmp_path, capsys):
    import numpy as np

    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--sampler", "dpm", "--steps", "5",
                            "--num-samples", "3", "--out", str(tmp_path / "s.npy"), "--no-progress"], capsys)
    assert code == 0, output
    assert np.load(tmp_path / "s.npy").shape == (3, 28, 28)
    code, output = run_cli(["sample", "--checkpoint", str(tiny_run), "--sampler", "dpm", "--eta", "0.5",
                            "--out", str(tmp_path / "t.npy")], capsys)
    assert code == 2 and "--eta applies only to the DDIM sampler" in output and "Traceback" not in output
    assert not (tmp_path / "t.npy").exists()


def test_a_given_x_T_is_solved_as_the_seeds_own_and_a_capture_it_never_visits_names_dpm_solver():
    torch.manual_seed(0)
    model, schedule = tiny_model(), NoiseSchedule()
    seeded, _ = dpm_solver_sample(model, schedule, seeds=[3, 4], steps=4, progress=False)
    given, _ = dpm_solver_sample(model, schedule, x_T=initial_noise([3, 4]), steps=4, progress=False)
    assert torch.equal(given, seeded)
    with pytest.raises(DDPMError, match=r"DPM-Solver\+\+ with 4 steps never visits timesteps \[500\]"):
        dpm_solver_sample(model, schedule, num_samples=1, steps=4, capture=[500], progress=False)
    with pytest.raises(DDPMError, match="the sampler visits a subsequence"):
        dpm_solver_sample(model, schedule, num_samples=1, steps=0, progress=False)
