"""Fast sampling with DDIM: the same trained eps_theta, far fewer steps (Song, Meng and Ermon 2021).

References:
    Song, Meng and Ermon (2021), "Denoising Diffusion Implicit Models",
    https://arxiv.org/abs/2010.02502 (equations numbered as in the paper).
    Ho, Jain and Abbeel (2020), "Denoising Diffusion Probabilistic Models",
    https://arxiv.org/abs/2006.11239.

The paper writes alpha_t for what this package calls alpha_bar_t (the
cumulative product); the code below uses this package's names. One step from
timestep t down to an earlier timestep t_prev (eq. (12), with tau_i = t and
tau_{i-1} = t_prev):

    x0_pred  = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)
    x_t_prev = sqrt(alpha_bar_t_prev) x0_pred
               + sqrt(1 - alpha_bar_t_prev - sigma^2) eps_theta(x_t, t)
               + sigma z,                                         z ~ N(0, I)

    sigma    = eta sqrt((1 - alpha_bar_t_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_t_prev)   eq. (16)

with alpha_bar_0 = 1, so the last step lands exactly on x0_pred. eta = 0 is
the deterministic DDIM sampler; eta = 1 with every timestep visited is the
ancestral sampler of Ho et al. 2020 with sigma_t^2 = beta_tilde_t, the
posterior variance.

Timestep subsequence: ``steps = S`` visits tau_S > ... > tau_1 with
tau_i = floor(1 + (i - 1) (T - 1) / (S - 1) + 1/2), that is ``torch.linspace(1, T, S)``
rounded to the nearest integer (halves up), so tau_S = T and tau_1 = 1 always
(S = 1 visits T only). Consecutive values differ by (T - 1) / (S - 1) >= 1 before rounding,
so the S timesteps are distinct, and S = T visits every timestep.

alpha_bar_t, alpha_bar_0 = 1 included, is ``NoiseSchedule.alpha_bar(t)``, in float64.

Seeds work as in ``ddpm_core.diffusion.sampling.sample``, through the same ``SeedBatches``:
every sample has its own ``torch.Generator``, whose first draw is x_T (the same
x_T that ``sample`` starts from for that seed) and whose later draws are the
fresh z, so a sample does not depend on its batch and the two samplers can be
compared seed by seed; a given ``x_T`` takes the place of the first draw. ``ddim_step`` sits
beside ``sampling.ddpm_step``: one reverse step each, eps_theta in, the earlier x out.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import Labels
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import NoisePredictor, SeedBatches, Trajectory
from ddpm_core.utils.errors import DDPMError


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """The visited timesteps tau_S > ... > tau_1, largest first: ``linspace(1, T, S)`` rounded, T and 1 included.

    Args:
        num_steps: T, the length of the schedule.
        steps: S, how many network evaluations, 1..T.
    """
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= num_steps:
        raise DDPMError(
            f"steps must be an integer from 1 to the schedule's T={num_steps} (the number of network "
            f"evaluations: the sampler visits a subsequence of the T timesteps), got {steps!r}. Ask for "
            f"{min(50, num_steps)} steps (--steps {min(50, num_steps)} on the command line), or {num_steps} to "
            f"visit every timestep."
        )
    steps = int(steps)
    if steps == 1:
        return [num_steps]
    # tau_k = floor(1 + k (T - 1) / (S - 1) + 1/2): halves round up (torch.round would round them to even).
    # In integers, because a float linspace can land just below a half: for T = 1000, S = 59 it gives
    # 500.4999... for 500.5 (the panel's sampler.js, which divides exactly there, gives 501).
    taus = [(2 * k * (num_steps - 1) + 3 * (steps - 1)) // (2 * (steps - 1)) for k in range(steps)]
    return taus[::-1]


def check_timesteps(timesteps: Sequence[int], schedule: NoiseSchedule) -> list[int]:
    """A chosen subsequence tau_S > ... > tau_1 as a list, after refusing one a sampler cannot visit."""
    taus = [int(t) for t in timesteps]
    decreasing = all(a > b for a, b in zip(taus, taus[1:], strict=False))
    whole = all(t == u for t, u in zip(taus, timesteps, strict=True))
    if not taus or not whole or not decreasing or taus[0] > schedule.num_steps or taus[-1] < 1:
        raise DDPMError(
            f"timesteps must be whole numbers in 1..{schedule.num_steps}, strictly decreasing (largest first), "
            f"such as [1000, 500, 1]; got {list(timesteps)[:8]}."
        )
    return taus


def visited_timesteps(schedule: NoiseSchedule, steps: int, timesteps: Sequence[int] | None) -> list[int]:
    """The timesteps tau_S > ... > tau_1 that a sampler over a subsequence (DDIM, DPM-Solver++) visits: the given
    ``timesteps``, or else ``ddim_timesteps(T, steps)``."""
    return ddim_timesteps(schedule.num_steps, steps) if timesteps is None else check_timesteps(timesteps, schedule)


def ddim_sigma(schedule: NoiseSchedule, t: int, t_prev: int, eta: float) -> float:
    """sigma for the step t -> t_prev, Song et al. 2021, eq. (16), scaled by eta."""
    alpha_bar, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    # Song et al. 2021, eq. (16)
    return eta * ((1.0 - alpha_bar_prev) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_prev)) ** 0.5


def ddim_step(
    schedule: NoiseSchedule,
    xt: Tensor,
    eps_pred: Tensor,
    t: int,
    t_prev: int,
    eta: float = 0.0,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One DDIM update x_t -> x_{t_prev}, 0 <= t_prev < t: Song et al. 2021, eq. (12).

    ``eta`` scales sigma (0: deterministic, 1: the ancestral sampler's noise) and
    ``noise`` is z ~ N(0, I), needed when sigma > 0. Returns x_{t_prev} and x0_pred.
    """
    _check_step(schedule, t, t_prev)
    # 1. alpha_bar at the previous timestep, alpha_bar_0 = 1
    alpha_bar_prev = schedule.alpha_bar(t_prev)
    # 2. sigma of the step: Song et al. 2021, eq. (16), scaled by eta
    sigma = ddim_sigma(schedule, t, t_prev, eta)
    # 3. the "predicted x_0" of eq. (12): eq. (4) of Ho et al. 2020 solved for x_0
    x0_pred = schedule.predict_x0(xt, t, eps_pred)
    # 4. the "direction pointing to x_t" of eq. (12); clamped at 0, since for eta = 1
    #    the radicand is >= 0 exactly but can round to -1e-9
    direction = max(1.0 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps_pred
    # 5. x_{t_prev} without its noise: eq. (12)
    x_prev = alpha_bar_prev**0.5 * x0_pred + direction
    if sigma == 0:
        return x_prev, x0_pred
    # 6. the "random noise" sigma z of eq. (12)
    return x_prev + sigma * _fresh_noise(noise, t, t_prev, eta, sigma), x0_pred


@torch.no_grad()
def ddim_sample(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    num_samples: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    steps: int = 50,
    eta: float = 0.0,
    capture: Iterable[int] | None = None,
    progress: bool = True,
    batch_size: int = 64,
    image_shape: tuple[int, ...] | None = None,
    labels: Labels = None,
    guidance: float = 1.0,
    timesteps: Sequence[int] | None = None,
    x_T: Tensor | None = None,
) -> tuple[Tensor, Trajectory | None]:
    """Generate images with DDIM in ``steps`` network evaluations.

    Args:
        model: a trained eps_theta, called as ``model(x, t)``; a module is put in eval mode and
            used on its own device.
        schedule: the schedule the model was trained with.
        num_samples: how many images; sample i uses seed ``seed + i``.
        seed: the first seed (when ``seeds`` is not given).
        seeds: one seed per sample, overriding ``num_samples`` and ``seed``.
        steps: S, the number of timesteps visited, 1..T (see ``ddim_timesteps`` for which).
        eta: 0..1, scales sigma of eq. (16): 0 is deterministic given x_T, 1 adds the most noise.
        capture: timesteps at which to record x_t and the predicted x_0. Only timesteps the sampler
            visits, ``ddim_timesteps(T, steps)``, and 0 (the finished sample) exist in a DDIM run;
            any other raises DDPMError.
        progress: show a tqdm progress bar over the steps.
        batch_size: samples denoised together; the result does not depend on it.
        image_shape: (C, H, W) of one image; default (C, 28, 28), C from a UNet's config, else 1.
        labels: for a conditional model, the class of every sample (one int) or of each (N ints).
        guidance: w of classifier-free guidance (see ``conditioning.guided_eps``); 1 is plain conditional.
        timesteps: the visited timesteps tau_S > ... > tau_1 themselves, any strictly decreasing
            sequence in 1..T, instead of the evenly spaced ``ddim_timesteps(T, steps)``; ``steps``
            is then their number.
        x_T: the starting noise, (N, C, H, W), in place of each seed's first draw; the fresh z of
            eta > 0 still come from the seeds (see ``ddpm_core.diffusion.seeds``).

    Returns:
        The samples x_0, (N, C, H, W), not clipped, and the trajectory (None if nothing captured).
    """
    _check_eta(eta)
    taus = visited_timesteps(schedule, steps, timesteps)
    batches = SeedBatches(model, schedule, num_samples, seed, seeds, x_T, capture, progress, batch_size,
                          image_shape, labels, guidance, sampler="DDIM", visits=taus)
    for batch in batches:
        x = batch.x_T()  # the first draw of each seed's generator, as in sample()
        for t, t_prev in zip(taus, taus[1:] + [0], strict=True):
            eps_pred = batch.eps(x, t)
            # Fresh z only when sigma > 0, so eta = 0 draws nothing after x_T.
            noise = batch.noise() if ddim_sigma(schedule, t, t_prev, eta) > 0 else None
            x, _ = ddim_step(schedule, x, eps_pred, t, t_prev, eta, noise)
        batch.finish(x)
    return batches.result()


def _check_step(schedule: NoiseSchedule, t: int, t_prev: int) -> None:
    if not 0 <= t_prev < t <= schedule.num_steps:
        raise DDPMError(f"A DDIM step needs 0 <= t_prev < t <= {schedule.num_steps}, got t={t}, t_prev={t_prev}.")


def _fresh_noise(noise: Tensor | None, t: int, t_prev: int, eta: float, sigma: float) -> Tensor:
    if noise is None:
        raise DDPMError(
            f"The DDIM step t={t} -> {t_prev} with eta={eta} has sigma={sigma:.3g} > 0 and needs noise z; pass "
            f"noise=torch.randn_like(xt), or eta=0 for the deterministic sampler."
        )
    return noise


def _check_eta(eta: float) -> None:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
        raise DDPMError(
            f"eta must be a number from 0 to 1 (0: deterministic DDIM, 1: as much noise as the ancestral "
            f"sampler), got {eta!r}."
        )
