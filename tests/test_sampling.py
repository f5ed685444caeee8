"""The ancestral sampler (Ho et al. 2020, Algorithm 2)."""

import pytest
import torch

from ddpm_core import DDPMError, NoiseSchedule, sample
from ddpm_core.diffusion.sampling import ddpm_step
from ddpm_core.diffusion.seeds import SeedBatches, Trajectory, initial_noise
from tests.helpers import tiny_model, tiny_schedule


@pytest.mark.slow
def test_sample_returns_one_image_per_seed():
    images, trajectory = sample(tiny_model(), tiny_schedule(), num_samples=3, progress=False)
    assert images.shape == (3, 1, 28, 28)
    assert trajectory is None


@pytest.mark.slow
def test_same_seed_gives_the_same_samples_bit_for_bit():
    a, _ = sample(tiny_model(), tiny_schedule(), num_samples=4, seed=7, progress=False)
    b, _ = sample(tiny_model(), tiny_schedule(), num_samples=4, seed=7, progress=False)
    c, _ = sample(tiny_model(), tiny_schedule(), num_samples=4, seed=8, progress=False)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.slow
def test_a_sample_depends_on_its_own_seed_not_on_its_batch():
    batched, _ = sample(tiny_model(), tiny_schedule(), seeds=[3, 4, 5], progress=False)
    alone, _ = sample(tiny_model(), tiny_schedule(), seeds=[4], progress=False)
    assert torch.allclose(batched[1], alone[0], atol=1e-5)


@pytest.mark.slow
def test_noise_scale_zero_removes_the_fresh_noise():
    model, schedule = tiny_model(), tiny_schedule()
    images, _ = sample(model, schedule, seeds=[0], noise_scale=0.0, progress=False)
    # Replay Algorithm 2 by hand with z = 0: only x_T is random.
    x = torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(0))[None]
    with torch.no_grad():
        for t in range(schedule.num_steps, 0, -1):
            eps = model(x, torch.tensor([t]))
            a, b, ab = schedule.alphas[t - 1], schedule.betas[t - 1], schedule.alpha_bars[t - 1]
            x = (x - b / (1 - ab).sqrt() * eps) / a.sqrt()
    assert torch.allclose(images, x, atol=1e-5)
    noisy, _ = sample(model, schedule, seeds=[0], noise_scale=1.0, progress=False)
    assert not torch.allclose(noisy, images, atol=1e-3)


@pytest.mark.slow
def test_variance_choice_changes_the_samples():
    beta, _ = sample(tiny_model(), tiny_schedule(), seeds=[1], variance="beta", progress=False)
    posterior, _ = sample(tiny_model(), tiny_schedule(), seeds=[1], variance="posterior", progress=False)
    assert not torch.allclose(beta, posterior)


@pytest.mark.slow
def test_trajectory_captures_xt_and_predicted_x0_at_chosen_timesteps():
    schedule = tiny_schedule()
    images, trajectory = sample(tiny_model(), schedule, num_samples=2, capture=[0, 20, 10, 5], progress=False)
    assert isinstance(trajectory, Trajectory)
    assert trajectory.timesteps == [20, 10, 5, 0]
    assert trajectory.xt.shape == (4, 2, 1, 28, 28)
    assert trajectory.x0_pred.shape == (4, 2, 1, 28, 28)
    assert torch.equal(trajectory.xt[-1], images)  # at t = 0 the state is the sample
    first = torch.randn((1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert torch.equal(trajectory.xt[0, 0], first)  # at t = T the state is the seed's noise
    assert trajectory.index(10) == 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"num_samples": 1, "variance": "learned"}, "variance must be one of"),
        ({"num_samples": 1, "noise_scale": -1.0}, "noise_scale must be >= 0"),
        ({"num_samples": 1, "capture": [21]}, "Captured timesteps must lie in 0..20"),
    ],
)
def test_bad_sampler_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(DDPMError, match=message):
        sample(tiny_model(), tiny_schedule(), progress=False, **kwargs)


def test_ddpm_step_is_line_4_of_algorithm_2():
    schedule = tiny_schedule()
    generator = torch.Generator().manual_seed(0)
    xt, eps, z = (torch.randn((2, 1, 28, 28), generator=generator) for _ in range(3))
    # t = 2, the last step that adds noise, and t = 1, the only one that does not
    for t, variance in ((7, "beta"), (7, "posterior"), (2, "beta"), (2, "posterior"), (1, "beta")):
        x_prev = ddpm_step(schedule, xt, eps, t, z, variance)
        a, b, ab = schedule.alphas[t - 1], schedule.betas[t - 1], schedule.alpha_bars[t - 1]
        sigma_sq = b if variance == "beta" else (1 - schedule.alpha_bars[t - 2]) / (1 - ab) * b
        sigma = sigma_sq.sqrt() if t > 1 else 0.0  # no fresh noise at the last step
        expected = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt() + sigma * z
        torch.testing.assert_close(x_prev, expected, rtol=0, atol=1e-5)


def test_ddpm_step_without_the_noise_it_needs_is_refused():
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(DDPMError, match="needs noise z"):
        ddpm_step(tiny_schedule(), x, x, 5)
    assert torch.equal(ddpm_step(tiny_schedule(), x, x, 5, noise_scale=0.0), ddpm_step(tiny_schedule(), x, x, 5, x))


def test_any_function_of_x_and_t_can_be_sampled_given_the_image_shape():
    schedule = tiny_schedule()
    calls = []

    def zero_noise(x, t):
        calls.append((tuple(x.shape), t.tolist()))
        return torch.zeros_like(x)

    images, _ = sample(zero_noise, schedule, seeds=[0, 1], image_shape=(1, 8, 8), progress=False)
    assert images.shape == (2, 1, 8, 8)
    assert calls[0] == ((2, 1, 8, 8), [20, 20]) and calls[-1][1] == [1, 1]
    # With eps_theta = 0 every step only rescales: x_0 = x_T / sqrt(alpha_bar_T) plus the scaled fresh noise.
    quiet, _ = sample(zero_noise, schedule, seeds=[0], image_shape=(1, 8, 8), noise_scale=0.0, progress=False)
    x_T = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(quiet[0], x_T / schedule.alpha_bars[-1].sqrt(), rtol=1e-5, atol=1e-5)


def test_seed_batches_hand_out_each_seeds_own_noise_in_seed_order():
    calls = []

    def zero_noise(x, t):
        calls.append(t.tolist())
        return torch.zeros_like(x)

    schedule = NoiseSchedule(num_steps=3, beta_start=0.1, beta_end=0.2)
    batches = SeedBatches(zero_noise, schedule, seeds=[4, 5, 6], capture=[3, 0], image_shape=(1, 2, 2),
                          batch_size=2, progress=False)
    for batch in batches:
        x = batch.x_T()
        for seed, row in zip(batch.seeds, x, strict=True):
            assert torch.equal(row, torch.randn((1, 2, 2), generator=torch.Generator().manual_seed(seed)))
        assert batch.captures(3) and not batch.captures(2)
        assert torch.equal(batch.eps(x, 3), torch.zeros_like(x))  # eps_theta(x_3, 3), recorded at t = 3
        batch.eps(x, 2)  # not captured
        batch.finish(2 * x)
    assert calls == [[3, 3], [2, 2], [3], [2]]
    samples, trajectory = batches.result()
    assert samples.shape == (3, 1, 2, 2)
    assert trajectory.timesteps == [3, 0]
    torch.testing.assert_close(trajectory.xt[0], samples / 2)
    torch.testing.assert_close(trajectory.x0_pred[0], samples / 2 / schedule.alpha_bars[2].sqrt())  # eps = 0
    torch.testing.assert_close(trajectory.x0_pred[1], samples)


def zero_noise(x, t):
    return torch.zeros_like(x)


def test_a_given_x_T_replaces_only_the_first_draw_of_each_seed():
    schedule, seeds = tiny_schedule(), [3, 8]
    drawn, _ = sample(zero_noise, schedule, seeds=seeds, image_shape=(1, 6, 6), progress=False)
    given, _ = sample(zero_noise, schedule, seeds=seeds, x_T=initial_noise(seeds, (1, 6, 6)), progress=False)
    assert torch.equal(given, drawn)  # the seeds' own x_T, and the same fresh z after it
    x_T = torch.linspace(-2, 2, 2 * 36).reshape(2, 1, 6, 6)
    quiet, _ = sample(zero_noise, schedule, seeds=seeds, x_T=x_T, noise_scale=0.0, progress=False)
    torch.testing.assert_close(quiet, x_T / schedule.alpha_bars[-1].sqrt(), rtol=1e-5, atol=1e-5)
    noisy, _ = sample(zero_noise, schedule, seeds=seeds, x_T=x_T, progress=False)
    # x_T given, z from the seeds: the difference from the quiet run is the seeds' fresh noise
    torch.testing.assert_close(noisy - quiet, drawn - initial_noise(seeds, (1, 6, 6)) / schedule.alpha_bars[-1].sqrt(),
                               rtol=1e-5, atol=1e-5)


def test_x_T_sets_the_number_of_samples_and_their_shape():
    x_T = torch.zeros(3, 1, 5, 5)
    images, _ = sample(zero_noise, tiny_schedule(), x_T=x_T, noise_scale=0.0, progress=False)
    assert images.shape == (3, 1, 5, 5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x_T": torch.zeros(2, 1, 5, 5), "num_samples": 3}, "x_T holds 2 starting images but num_samples is 3"),
        ({"x_T": torch.zeros(2, 1, 5, 5), "seeds": [1]}, "x_T holds 2 starting images but seeds has 1"),
        ({"x_T": torch.zeros(1, 5, 5)}, r"x_T must be a floating-point tensor of starting images, \(N, C, H, W\)"),
        ({"x_T": torch.zeros(2, 1, 5, 5, dtype=torch.long)}, "x_T must be a floating-point tensor"),
        ({"x_T": torch.zeros(2, 1, 5, 5), "image_shape": (1, 28, 28)}, "leave image_shape out with x_T"),
    ],
)
def test_an_x_T_that_does_not_fit_the_request_is_refused(kwargs, message):
    with pytest.raises(DDPMError, match=message):
        sample(zero_noise, tiny_schedule(), progress=False, **kwargs)
