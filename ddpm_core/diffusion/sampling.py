"""The reverse process: generating images by ancestral sampling (Ho et al. 2020, Algorithm 2).

    1: x_T ~ N(0, I)
    2: for t = T, ..., 1 do
    3:     z ~ N(0, I) if t > 1, else z = 0
    4:     x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
    5: end for
    6: return x_0

``ddpm_step`` is line 4; ``sample`` runs the loop. The model can be any noise predictor called
as ``model(x, t)``: a ``UNet``, or a function written by hand.

Every sample has its own seed: its starting noise and every fresh z come from a
``torch.Generator`` seeded with it, so a sample does not depend on which other samples share
its batch, and the same seed gives the same digit. ``seeds.SeedBatches`` does that bookkeeping
around the loop, for this sampler and the fast ones: the seeds' noise, a given x_T, the
``Trajectory`` of the captured timesteps, the progress bar, and, for a conditional network
(``UNetConfig(num_classes=10)``), the class asked of each sample (``labels``) with
classifier-free guidance of strength ``guidance`` (``conditioning.guided_eps``, Ho and Salimans
2022), which takes the place of eps_theta(x_t, t).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import Labels
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import NoisePredictor, SeedBatches, Trajectory
from ddpm_core.utils.errors import DDPMError

VARIANCES = ("beta", "posterior")


def ddpm_step(
    schedule: NoiseSchedule,
    xt: Tensor,
    eps_pred: Tensor,
    t: int,
    noise: Tensor | None = None,
    variance: str = "beta",
    noise_scale: float = 1.0,
) -> Tensor:
    """One ancestral step x_t -> x_{t-1}: line 4 of Ho et al. 2020, Algorithm 2.

    ``eps_pred`` is eps_theta(x_t, t) and ``noise`` the fresh z ~ N(0, I), shaped like
    ``xt``; sigma_t^2 is beta_t (``variance="beta"``) or beta_tilde_t ("posterior"),
    and ``noise_scale`` multiplies z: 1 is Algorithm 2, 0 removes the fresh noise.
    """
    # 1. alpha_t = 1 - beta_t and alpha_bar_t = alpha_1 ... alpha_t, eq. (4)
    alpha = schedule.alphas[t - 1].item()
    beta = schedule.betas[t - 1].item()
    alpha_bar = schedule.alpha_bars[t - 1].item()
    # 2. the mean of p_theta(x_{t-1} | x_t): the posterior mean with eps_theta, eq. (11)
    x_prev = (xt - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha**0.5
    # 3. z = 0 at the last step, t = 1: x_0 is the mean itself
    if t == 1 or noise_scale == 0:
        return x_prev
    # 4. sigma_t^2 = beta_t, or beta_tilde_t of eq. (7); section 3.2 finds both work
    sigmas_sq = schedule.betas if variance == "beta" else schedule.posterior_variance
    sigma = sigmas_sq[t - 1].item() ** 0.5
    # 5. the fresh noise sigma_t z
    return x_prev + noise_scale * sigma * _fresh_noise(noise, t)


@torch.no_grad()
def sample(
    model: NoisePredictor, schedule: NoiseSchedule,
    num_samples: int | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
    variance: str = "beta", noise_scale: float = 1.0,
    capture: Iterable[int] | None = None, progress: bool = True, batch_size: int = 64,
    image_shape: tuple[int, ...] | None = None,
    labels: Labels = None, guidance: float = 1.0, x_T: Tensor | None = None,
) -> tuple[Tensor, Trajectory | None]:
    """The T-step ancestral sampler: Algorithm 2 of Ho et al. 2020.

    Sample i starts from seed ``seed + i`` (or ``seeds[i]``), or from ``x_T[i]``
    (see ``ddpm_core.diffusion.seeds``); ``labels`` and ``guidance`` ask a conditional
    model for classes. Returns the samples x_0, (N, C, H, W), unclipped, and the
    ``Trajectory`` of the ``capture`` timesteps (or None).
    """
    _check_ddpm_arguments(variance, noise_scale)
    batches = SeedBatches(model, schedule, num_samples, seed, seeds, x_T, capture,
                          progress, batch_size, image_shape, labels, guidance)
    for batch in batches:
        x = batch.x_T()  # 1: x_T ~ N(0, I)
        for t in range(schedule.num_steps, 0, -1):  # 2: for t = T, ..., 1
            # 3: z ~ N(0, I) if t > 1, else z = 0
            z = batch.noise() if t > 1 and noise_scale > 0 else None
            eps_pred = batch.eps(x, t)  # eps_theta(x_t, t)
            x = ddpm_step(schedule, x, eps_pred, t, z, variance, noise_scale)  # 4
        batch.finish(x)  # 6: return x_0
    return batches.result()


def _fresh_noise(noise: Tensor | None, t: int) -> Tensor:
    if noise is None:
        raise DDPMError(f"The DDPM step at t={t} adds sigma_t z and needs noise z; "
                        f"pass noise=torch.randn_like(xt).")
    return noise


def _check_ddpm_arguments(variance: str, noise_scale: float) -> None:
    if variance not in VARIANCES:
        raise DDPMError(f"variance must be one of {VARIANCES}, got {variance!r}.")
    if noise_scale < 0:
        raise DDPMError(f"noise_scale must be >= 0, got {noise_scale}.")
