"""A second-order fast sampler: DPM-Solver++(2M) (Lu et al. 2022), on the same trained eps_theta.

References:
    Lu, Zhou, Bao, Chen, Li and Zhu (2022), "DPM-Solver++: Fast Solver for Guided Sampling of
    Diffusion Probabilistic Models", https://arxiv.org/abs/2211.01095 (Algorithm 2).

DDIM with eta = 0 follows the probability-flow ODE of the diffusion with one evaluation of the
network per step and a first-order rule: over a step it treats the predicted x_0 as constant.
DPM-Solver++(2M) keeps one step of memory. In the time variable lambda_t = log(alpha_t / sigma_t),
half the log signal-to-noise ratio, with alpha_t = sqrt(alpha_bar_t) and sigma_t = sqrt(1 - alpha_bar_t),
a step from t to s (s < t, h = lambda_s - lambda_t > 0) is

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D

where D is the predicted x_0 at t for the first step (this is exactly DDIM's eta = 0 step), and
afterwards a linear extrapolation of the last two predictions,

    D = (1 + 1 / (2 r)) x0_pred(t) - 1 / (2 r) x0_pred(t_before),   r = h_before / h,

which makes the rule second order at no extra network call. The last step lands on t = 0, where
sigma_0 = 0: the sample is the last predicted x_0, as in DDIM.

The timesteps, the seeds (x_T of seed s is the same as for the other samplers), the trajectory
and guidance work as in ``ddpm_core.diffusion.ddim.ddim_sample``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import Labels
from ddpm_core.diffusion.ddim import visited_timesteps
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import NoisePredictor, SeedBatches, Trajectory


def _alpha_sigma(schedule: NoiseSchedule, t: int) -> tuple[float, float]:
    # float64, as DDIM does: near t = 1, 1 - alpha_bar_t loses digits in float32
    alpha_bar = schedule.alpha_bar(t)
    return math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)


def dpm_solver_step(
    schedule: NoiseSchedule,
    xt: Tensor,
    x0_pred: Tensor,
    t: int,
    s: int,
    previous: tuple[Tensor, float] | None = None,
) -> tuple[Tensor, float]:
    """One DPM-Solver++(2M) update x_t -> x_s (s < t), Lu et al. 2022, Algorithm 2.

    ``x0_pred`` is the network's x_0 at t, ``previous`` the x_0 predicted one step earlier with that
    step's h (None at the first step: a first-order, DDIM, step). Returns x_s and this step's h.
    """
    alpha_t, sigma_t = _alpha_sigma(schedule, t)
    alpha_s, sigma_s = _alpha_sigma(schedule, s)
    if s == 0:  # sigma_0 = 0: lambda_0 is infinite and the step lands on the predicted x_0
        return x0_pred, math.inf
    h = math.log(alpha_s / sigma_s) - math.log(alpha_t / sigma_t)  # 1. the step in lambda
    d = x0_pred  # 2. first order: the predicted x_0 held constant over the step
    if previous is not None:  # 3. second order: extrapolate from the step before
        x0_before, h_before = previous
        r = h_before / h
        d = (1 + 1 / (2 * r)) * x0_pred - 1 / (2 * r) * x0_before
    return sigma_s / sigma_t * xt - alpha_s * math.expm1(-h) * d, h  # 4. the exact linear part plus D


@torch.no_grad()
def dpm_solver_sample(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    num_samples: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    steps: int = 20,
    capture: Iterable[int] | None = None,
    progress: bool = True,
    batch_size: int = 64,
    image_shape: tuple[int, ...] | None = None,
    labels: Labels = None,
    guidance: float = 1.0,
    timesteps: Sequence[int] | None = None,
    x_T: Tensor | None = None,
) -> tuple[Tensor, Trajectory | None]:
    """Generate images with DPM-Solver++(2M) in ``steps`` network evaluations.

    The arguments are those of ``ddim_sample`` without eta (the solver is deterministic given x_T):
    ``steps`` timesteps from ``ddim_timesteps(T, steps)``, or the given ``timesteps``; ``capture``
    records x_t and the predicted x_0 at visited timesteps; ``x_T`` replaces the seeds' starting
    noise. Returns the samples and the trajectory.
    """
    taus = visited_timesteps(schedule, steps, timesteps)
    batches = SeedBatches(model, schedule, num_samples, seed, seeds, x_T, capture, progress, batch_size,
                          image_shape, labels, guidance, sampler="DPM-Solver++", visits=taus)
    for batch in batches:
        x, previous = batch.x_T(), None  # x_T, the first draw of each seed's generator
        for t, s in zip(taus, taus[1:] + [0], strict=True):
            x0_pred = schedule.predict_x0(x, t, batch.eps(x, t))
            x, h = dpm_solver_step(schedule, x, x0_pred, t, s, previous)
            previous = (x0_pred, h)
        batch.finish(x)
    return batches.result()
