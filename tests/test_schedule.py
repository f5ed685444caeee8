"""The noise schedule: identities of Ho et al. 2020 checked against independent computations."""

import math

import pytest
import torch

from ddpm_core import DDPMError, NoiseSchedule


# A fresh schedule for every test (it costs microseconds), so that each test builds it itself: mutation
# testing (`make mutation-score`) then knows every test that reads NoiseSchedule.__init__.
@pytest.fixture
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


def test_betas_are_linear_from_beta_start_to_beta_end(schedule):
    assert schedule.betas.shape == (1000,)
    assert schedule.betas[0].item() == pytest.approx(1e-4)
    assert schedule.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(schedule.betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999), atol=1e-9)


def test_alpha_bar_is_cumulative_product(schedule):
    product = 1.0
    for t in (1, 2, 10, 500, 1000):
        expected = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * (s - 1) / 999) for s in range(1, t + 1))
        assert schedule.alpha_bars[t - 1].item() == pytest.approx(expected, rel=1e-5)
    for t in range(1, 1001):
        product *= 1.0 - schedule.betas[t - 1].double().item()
    assert schedule.alpha_bars[-1].item() == pytest.approx(product, rel=1e-4)
    assert schedule.alpha_bars[-1].item() == pytest.approx(4.04e-5, rel=0.01)  # x_T is almost pure noise


def test_at_looks_up_timestep_t_at_index_t_minus_one(schedule):
    values = schedule.at(schedule.betas, torch.tensor([1, 1000]))
    assert values.shape == (2, 1, 1, 1)
    assert values[0].item() == schedule.betas[0].item()
    assert values[1].item() == schedule.betas[999].item()


@pytest.mark.parametrize("t", [0, 1001])
def test_at_refuses_timesteps_outside_one_to_T(schedule, t):
    with pytest.raises(DDPMError, match=r"Timesteps must lie in 1\.\.1000"):
        schedule.at(schedule.betas, t)


@pytest.mark.parametrize("t", [1, 2, 50, 400, 1000])
def test_q_sample_is_the_closed_form_with_alpha_bar_from_the_betas(schedule, t):
    # alpha_bar_t = (1 - beta_1) ... (1 - beta_t), with the linear betas written out by hand (Ho et al. 2020, eq. (4)).
    alpha_bar = math.prod(1.0 - (1e-4 + (0.02 - 1e-4) * (s - 1) / 999) for s in range(1, t + 1))
    x0 = torch.linspace(-1, 1, 2 * 28 * 28).reshape(2, 1, 28, 28)
    noise = torch.linspace(3, -3, 2 * 28 * 28).reshape(2, 1, 28, 28)
    xt = schedule.q_sample(x0, torch.tensor([t, t]), noise)
    expected = math.sqrt(alpha_bar) * x0 + math.sqrt(1.0 - alpha_bar) * noise
    torch.testing.assert_close(xt, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_iterating_the_chain_matches_the_closed_form():
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    x = torch.full((100_000,), -0.5)
    for t in range(1, 301):
        beta = schedule.betas[t - 1].item()
        x = math.sqrt(1 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=generator)  # eq. (2)
    alpha_bar = schedule.alpha_bars[299].item()
    assert x.mean().item() == pytest.approx(math.sqrt(alpha_bar) * -0.5, abs=0.01)
    assert x.var().item() == pytest.approx(1 - alpha_bar, rel=0.02)


@pytest.mark.parametrize("t", [2, 10, 300, 999])
def test_posterior_matches_bayes_rule_for_gaussians(schedule, t):
    # q(x_{t-1} | x_0) = N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}); q(x_t | x_{t-1}) = N(sqrt(a_t) x_{t-1}, b_t).
    # Bayes: precision = 1/(1 - ab_{t-1}) + a_t/b_t,
    #        mean = var * (sqrt(ab_{t-1}) x0/(1 - ab_{t-1}) + sqrt(a_t) x_t/b_t).
    ab_prev = schedule.alpha_bars[t - 2].double().item()
    a_t = schedule.alphas[t - 1].double().item()
    b_t = schedule.betas[t - 1].double().item()
    x0, xt = torch.tensor([0.3, -0.8]), torch.tensor([1.1, 0.2])
    variance = 1.0 / (1.0 / (1.0 - ab_prev) + a_t / b_t)
    mean = variance * (math.sqrt(ab_prev) * x0 / (1.0 - ab_prev) + math.sqrt(a_t) * xt / b_t)
    assert schedule.posterior_variance[t - 1].item() == pytest.approx(variance, rel=1e-4)
    assert torch.allclose(schedule.posterior_mean(x0, xt, t).reshape(-1).double(), mean.double(), rtol=1e-4, atol=1e-5)


def test_posterior_mean_matches_a_numerical_bayes_computation(schedule):
    # Grid over x_{t-1}: prior N(sqrt(ab_{t-1}) x0, 1 - ab_{t-1}) times likelihood N(x_t; sqrt(a_t) x_{t-1}, b_t).
    t, x0, xt = 50, 0.4, 0.9
    grid = torch.linspace(-4, 4, 400_001, dtype=torch.float64)
    ab_prev = schedule.alpha_bars[t - 2].double()
    a_t, b_t = schedule.alphas[t - 1].double(), schedule.betas[t - 1].double()
    log_p = -((grid - ab_prev.sqrt() * x0) ** 2) / (2 * (1 - ab_prev)) - (xt - a_t.sqrt() * grid) ** 2 / (2 * b_t)
    weights = torch.softmax(log_p, dim=0)
    mean = (weights * grid).sum().item()
    variance = (weights * (grid - mean) ** 2).sum().item()
    assert schedule.posterior_mean(torch.tensor([x0]), torch.tensor([xt]), t).item() == pytest.approx(mean, rel=1e-4)
    assert schedule.posterior_variance[t - 1].item() == pytest.approx(variance, rel=1e-3)


def test_predict_x0_inverts_q_sample(schedule):
    x0 = torch.rand(4, 1, 28, 28) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([1, 10, 500, 1000])
    xt = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.predict_x0(xt, t, noise), x0, atol=2e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"beta_start": 0.5, "beta_end": 0.1}, "beta_start <= beta_end"),
        ({"beta_start": 0.0}, "beta_start <= beta_end"),
        ({"beta_end": 1.0}, "beta_start <= beta_end"),
        ({"beta_end": 1.5}, "beta_start <= beta_end"),
    ],
)
def test_bad_schedule_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(DDPMError, match=message):
        NoiseSchedule(**kwargs)


def test_the_edges_of_the_valid_arguments_are_accepted():
    one_step = NoiseSchedule(num_steps=1, beta_start=0.5, beta_end=0.5)
    assert one_step.alpha_bars.tolist() == [0.5]
    constant = NoiseSchedule(num_steps=3, beta_start=0.1, beta_end=0.1)
    assert torch.allclose(constant.betas, torch.full((3,), 0.1))
    assert repr(constant) == "NoiseSchedule(num_steps=3, beta_start=0.1, beta_end=0.1)"


def test_alpha_bars_prev_is_alpha_bars_shifted_by_one_with_alpha_bar_0_one(schedule):
    assert schedule.alpha_bars_prev[0].item() == 1.0
    assert torch.equal(schedule.alpha_bars_prev[1:], schedule.alpha_bars[:-1])


def test_at_takes_whole_numbers_of_any_dtype(schedule):
    as_float = schedule.at(schedule.betas, torch.tensor([1.0, 500.0]))
    assert torch.equal(as_float, schedule.at(schedule.betas, torch.tensor([1, 500])))


def test_the_formulas_broadcast_over_batches_of_any_rank(schedule):
    """Flat (B, D) batches with one timestep per row: each row as if computed alone."""
    generator = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    t = torch.tensor([1, 300, 1000])
    xt = schedule.q_sample(x0, t, noise)
    mean = schedule.posterior_mean(x0, xt, t)
    x0_back = schedule.predict_x0(xt, t, noise)
    for row in range(3):
        alpha_bar = schedule.alpha_bars[t[row] - 1]
        expected = alpha_bar.sqrt() * x0[row] + (1 - alpha_bar).sqrt() * noise[row]
        assert torch.allclose(xt[row], expected, atol=1e-6)
        alone = schedule.posterior_mean(x0[row : row + 1], xt[row : row + 1], int(t[row]))
        assert torch.allclose(mean[row], alone[0], atol=1e-6)
    assert xt.shape == mean.shape == x0_back.shape == (3, 5)
    assert torch.allclose(x0_back, x0, atol=2e-3)


def test_alpha_bar_of_one_timestep_is_the_float64_product_with_alpha_bar_0_one(schedule):
    assert schedule.alpha_bar(0) == 1.0  # the empty product: x_0 holds no noise
    betas = schedule.betas.double().tolist()  # the float32 betas the network was trained with
    for t in (1, 2, 500, 1000):
        assert schedule.alpha_bar(t) == pytest.approx(math.prod(1.0 - b for b in betas[:t]), rel=1e-12)
    # 1 - alpha_bar_1 = beta_1 to float64's precision, which DDIM's last steps need
    assert 1.0 - schedule.alpha_bar(1) == pytest.approx(betas[0], rel=1e-12)


@pytest.mark.parametrize("t", [-1, 1001])
def test_alpha_bar_refuses_timesteps_outside_zero_to_T(schedule, t):
    with pytest.raises(DDPMError, match=r"alpha_bar_t needs a timestep in 0\.\.1000"):
        schedule.alpha_bar(t)
