"""DDIM sampling (Song, Meng and Ermon 2021) on a tiny untrained UNet: the properties hold for any weights."""

import pytest
import torch

from ddpm_core.diffusion.ddim import ddim_sample, ddim_sigma, ddim_step, ddim_timesteps
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import initial_noise
from ddpm_core.diffusion.unet import UNet, UNetConfig
from ddpm_core.utils.errors import DDPMError

T = 10


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(channels=(8, 8), time_freq_dim=8, time_embed_dim=16, num_groups=4)).eval()


# A fresh schedule for every test (it costs microseconds), so that each test builds it itself: mutation
# testing (`make mutation-score`) then knows every test that reads NoiseSchedule.__init__.
@pytest.fixture
def schedule() -> NoiseSchedule:
    # Large betas so that x_T is mostly noise after only T = 10 steps.
    return NoiseSchedule(num_steps=T, beta_start=0.05, beta_end=0.5)


def test_timestep_subsequence_is_rounded_linspace_including_T_and_1():
    assert ddim_timesteps(1000, 4) == [1000, 667, 334, 1]
    assert ddim_timesteps(1000, 1) == [1000]
    assert ddim_timesteps(4, 3) == [4, 3, 1]  # linspace gives 2.5, rounded up
    assert ddim_timesteps(10, 10) == list(range(10, 0, -1))
    taus = ddim_timesteps(1000, 50)
    assert len(taus) == 50 and taus[0] == 1000 and taus[-1] == 1
    for steps in range(1, 38):
        taus = ddim_timesteps(37, steps)
        assert len(set(taus)) == steps and taus == sorted(taus, reverse=True) and taus[0] == 37


def test_shapes_of_samples_and_trajectory(model, schedule):
    x0, trajectory = ddim_sample(model, schedule, num_samples=3, steps=4, capture=[T, 0], progress=False)
    assert x0.shape == (3, 1, 28, 28)
    assert trajectory.timesteps == [T, 0]
    assert trajectory.xt.shape == trajectory.x0_pred.shape == (2, 3, 1, 28, 28)
    assert ddim_sample(model, schedule, num_samples=2, steps=4, progress=False)[1] is None


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_same_seed_gives_same_sample_and_other_seed_does_not(model, schedule, eta):
    a, _ = ddim_sample(model, schedule, seeds=[5, 6], steps=5, eta=eta, progress=False)
    b, _ = ddim_sample(model, schedule, seeds=[5, 6], steps=5, eta=eta, progress=False)
    c, _ = ddim_sample(model, schedule, seeds=[7, 8], steps=5, eta=eta, progress=False)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 0.1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sample_does_not_depend_on_its_batch(model, schedule, eta):
    together, _ = ddim_sample(model, schedule, seeds=[3, 4, 5], steps=5, eta=eta, progress=False)
    alone, _ = ddim_sample(model, schedule, seeds=[4], steps=5, eta=eta, progress=False)
    split, _ = ddim_sample(model, schedule, seeds=[3, 4, 5], steps=5, eta=eta, batch_size=2, progress=False)
    torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(together, split, rtol=0, atol=1e-5)


def test_eta_zero_is_a_deterministic_map_of_x_T(model, schedule):
    x0, _ = ddim_sample(model, schedule, seeds=[11], steps=4, eta=0.0, progress=False)
    x = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(11))  # x_T of seed 11
    taus = ddim_timesteps(T, 4)
    with torch.no_grad():
        for t, t_prev in zip(taus, taus[1:] + [0], strict=True):
            x, _ = ddim_step(schedule, x, model(x, torch.tensor([t])), t, t_prev, eta=0.0)
    torch.testing.assert_close(x0, x, rtol=0, atol=1e-6)


def test_x_T_is_the_same_as_the_ancestral_samplers(model, schedule):
    _, ddim_trajectory = ddim_sample(model, schedule, seeds=[2, 9], steps=3, capture=[T], progress=False)
    _, ddpm_trajectory = sample(model, schedule, seeds=[2, 9], capture=[T], progress=False)
    assert torch.equal(ddim_trajectory.xt[0], ddpm_trajectory.xt[0])


def test_sigma_with_every_step_and_eta_one_is_the_posterior_variance():
    schedule = NoiseSchedule()
    sigmas_sq = torch.tensor([ddim_sigma(schedule, t, t - 1, 1.0) ** 2 for t in range(1, 1001)], dtype=torch.float64)
    torch.testing.assert_close(sigmas_sq, schedule.posterior_variance.double(), rtol=1e-6, atol=0)
    assert ddim_sigma(schedule, 500, 499, 0.0) == 0.0


@pytest.mark.parametrize("t", [1, 2, 500, 1000])
def test_full_step_with_eta_one_equals_the_ancestral_step(t):
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(t)
    xt, eps_pred, z = (torch.randn((4, 1, 28, 28), generator=generator) for _ in range(3))
    x_prev, _ = ddim_step(schedule, xt, eps_pred, t, t - 1, eta=1.0, noise=z)
    alpha, beta, alpha_bar = schedule.alphas[t - 1], schedule.betas[t - 1], schedule.alpha_bars[t - 1]
    sigma = schedule.posterior_variance[t - 1].sqrt() if t > 1 else 0.0
    # Ho et al. 2020, Algorithm 2 with sigma_t^2 = beta_tilde_t
    expected = (xt - beta / (1 - alpha_bar).sqrt() * eps_pred) / alpha.sqrt() + sigma * z
    torch.testing.assert_close(x_prev, expected, rtol=0, atol=2e-5)


def test_every_step_with_eta_one_reproduces_the_ancestral_sampler(model, schedule):
    ddim, _ = ddim_sample(model, schedule, seeds=[0, 1, 2], steps=T, eta=1.0, progress=False)
    ddpm, _ = sample(model, schedule, seeds=[0, 1, 2], variance="posterior", progress=False)
    torch.testing.assert_close(ddim, ddpm, rtol=0, atol=1e-4)


def test_one_step_with_eta_zero_returns_the_prediction_from_x_T(model, schedule):
    x0, trajectory = ddim_sample(model, schedule, seeds=[4], steps=1, capture=[T], progress=False)
    torch.testing.assert_close(x0, trajectory.x0_pred[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [10, 43, 50, 59, 85, 100, 250])
def test_the_timesteps_are_the_exactly_rounded_linspace(steps):
    """round(1 + k (T - 1) / (steps - 1)), halves up, in exact arithmetic (float32 would miss some)."""
    from fractions import Fraction

    exact = [int(1 + Fraction(k * 999, steps - 1) + Fraction(1, 2)) for k in range(steps)]
    assert ddim_timesteps(1000, steps) == sorted(exact, reverse=True)


def test_the_default_step_is_deterministic_and_needs_no_noise():
    schedule = NoiseSchedule()
    x, eps = torch.randn(2, 1, 28, 28), torch.randn(2, 1, 28, 28)
    default, _ = ddim_step(schedule, x, eps, 500, 480)
    explicit, _ = ddim_step(schedule, x, eps, 500, 480, eta=0.0)
    assert torch.equal(default, explicit)


@pytest.mark.parametrize(("t", "t_prev"), [(500, 500), (500, 501), (1001, 10), (10, -1)])
def test_a_step_must_go_back_in_time_within_the_schedule(t, t_prev):
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(DDPMError, match="A DDIM step needs 0 <= t_prev < t <= 1000"):
        ddim_step(NoiseSchedule(), x, x, t, t_prev)


def test_noisy_step_without_noise_is_refused():
    schedule = NoiseSchedule()
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(DDPMError, match="needs noise z"):
        ddim_step(schedule, x, x, 500, 480, eta=0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": 0}, r"steps must be an integer from 1 to the schedule's T=10.*got 0"),
        ({"steps": T + 1}, r"steps must be an integer from 1 to the schedule's T=10.*got 11"),
        ({"steps": 2.5}, r"steps must be an integer.*got 2.5"),
        ({"eta": -0.1}, r"eta must be a number from 0 to 1.*got -0.1"),
        ({"eta": 1.5}, r"eta must be a number from 0 to 1.*got 1.5"),
        ({"eta": True}, r"eta must be a number from 0 to 1.*got True"),
        ({"capture": [8]}, r"never visits timesteps \[8\]"),
        ({"capture": [T + 1]}, r"Captured timesteps must lie in 0..10"),
    ],
)
def test_bad_arguments_raise_a_clear_error(model, schedule, kwargs, message):
    with pytest.raises(DDPMError, match=message):
        ddim_sample(model, schedule, num_samples=1, **{"steps": 4, **kwargs}, progress=False)


def test_trajectory_captures_visited_steps_and_the_final_sample(model, schedule):
    taus = ddim_timesteps(T, 4)  # [10, 7, 4, 1]
    x0, trajectory = ddim_sample(model, schedule, seeds=[1, 2], steps=4, capture=[0, taus[1], taus[-1]], progress=False)
    assert trajectory.timesteps == [taus[1], taus[-1], 0]
    assert torch.equal(trajectory.xt[trajectory.index(0)], x0)
    assert torch.equal(trajectory.x0_pred[trajectory.index(0)], x0)
    # The last step lands on x0_pred exactly when eta = 0, since alpha_bar_0 = 1 (Song et al. 2021, eq. (12)).
    torch.testing.assert_close(trajectory.x0_pred[trajectory.index(1)], x0, rtol=0, atol=1e-6)
    # x0_pred is the inversion of eq. (4) applied to the captured x_t.
    k = trajectory.index(taus[1])
    with torch.no_grad():
        xt = trajectory.xt[k]
        eps_pred = model(xt, torch.full((2,), taus[1]))
    torch.testing.assert_close(trajectory.x0_pred[k], schedule.predict_x0(xt, taus[1], eps_pred), rtol=0, atol=1e-5)


def test_a_given_x_T_is_mapped_by_the_same_steps_and_eta_one_still_draws_z_from_the_seeds(model, schedule):
    x_T = torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(42))
    taus = ddim_timesteps(T, 4)
    x = x_T
    with torch.no_grad():
        for t, t_prev in zip(taus, taus[1:] + [0], strict=True):
            x, _ = ddim_step(schedule, x, model(x, torch.full((2,), t)), t, t_prev)
    mapped, _ = ddim_sample(model, schedule, x_T=x_T, steps=4, progress=False)
    torch.testing.assert_close(mapped, x, rtol=0, atol=1e-6)
    seeded, _ = ddim_sample(model, schedule, seeds=[5, 6], steps=4, eta=1.0, progress=False)
    given, _ = ddim_sample(model, schedule, seeds=[5, 6], x_T=initial_noise([5, 6]), steps=4, eta=1.0, progress=False)
    assert torch.equal(given, seeded)


def test_the_float64_alpha_bar_of_the_schedule_is_the_one_ddim_steps_with(schedule):
    # sigma of eq. (16) and the last step's landing on x0_pred both read alpha_bar_0 = 1
    t, t_prev = 3, 0
    assert ddim_sigma(schedule, t, t_prev, 1.0) == 0.0
    x, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    x_prev, x0_pred = ddim_step(schedule, x, eps, t, t_prev)
    assert torch.equal(x_prev, x0_pred)
    alpha_bar, alpha_bar_prev = schedule.alpha_bar(5), schedule.alpha_bar(2)
    expected = ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5
    assert ddim_sigma(schedule, 5, 2, 1.0) == expected
