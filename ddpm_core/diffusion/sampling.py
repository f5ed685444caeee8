"""The reverse process: generating images by ancestral sampling (Ho et al. 2020, Algorithm 2).

    x_T ~ N(0, I)
    for t = T, ..., 1:
        z ~ N(0, I) if t > 1 else z = 0
        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
    return x_0

``ddpm_step`` is one line 4 of that loop; ``sample`` runs the loop. The model can be
any noise predictor called as ``model(x, t)``: a ``UNet``, or a function written by hand.

Every sample has its own seed: its starting noise and every fresh z come from
a ``torch.Generator`` seeded with it, so a sample does not depend on which
other samples share its batch, and the same seed gives the same digit.
``SeedBatches`` does that bookkeeping (and the recording of a ``Trajectory``)
for this sampler and for DDIM's (``ddpm_core.diffusion.ddim``).

A conditional network (``UNetConfig(num_classes=10)``) is asked for one class per
sample (``labels``), with classifier-free guidance of strength ``guidance``
(Ho and Salimans 2022): ``guided_eps`` replaces eps_theta(x_t, t) in the update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import Labels, sampling_labels
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import NoisePredictor, SeedBatches, Trajectory, prepare_model
from ddpm_core.utils.errors import DDPMError

VARIANCES = ("beta", "posterior")


def guided_eps(
    model: NoisePredictor,
    x: Tensor,
    t: Tensor,
    labels: Tensor | None = None,
    guidance: float = 1.0,
) -> Tensor:
    """The noise prediction of classifier-free guidance (Ho and Salimans 2022, eq. (6)):

        eps = eps_theta(x_t, t) + w (eps_theta(x_t, t, y) - eps_theta(x_t, t))

    with w = ``guidance``: 0 is the network's unconditional prediction, 1 its plain
    conditional one, and w > 1 pushes x_t further towards what makes it class y. For
    0 < w != 1 the two predictions come from one call on a doubled batch. Without
    ``labels`` this is eps_theta(x_t, t).
    """
    if labels is None:
        return model(x, t)
    if guidance == 1.0:
        return model(x, t, labels)
    null = torch.full_like(labels, model.null_label)  # the "no class" label
    if guidance == 0.0:
        return model(x, t, null)
    # one call on the doubled batch: first half conditional, second half "no class"
    doubled = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
    eps_cond, eps_uncond = doubled.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


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

    Args:
        schedule: the schedule the model was trained with.
        xt: the batch x_t, (B, C, H, W).
        eps_pred: eps_theta(x_t, t) for that batch.
        t: the current timestep, 1..T.
        noise: z ~ N(0, I) shaped like ``xt``; needed for t > 1 unless ``noise_scale``
            is 0.
        variance: sigma_t^2 = beta_t ("beta") or the posterior variance beta_tilde_t
            ("posterior").
        noise_scale: multiplies z; 1.0 is Algorithm 2, 0.0 removes the fresh noise.

    Returns:
        x_{t-1}, (B, C, H, W).
    """
    # 1. alpha_t = 1 - beta_t and alpha_bar_t = alpha_1 ... alpha_t (eq. (4))
    alpha = schedule.alphas[t - 1].item()
    beta = schedule.betas[t - 1].item()
    alpha_bar = schedule.alpha_bars[t - 1].item()
    # 2. the mean of p_theta(x_{t-1} | x_t): the posterior mean with eps_theta, eq. (11)
    x_prev = (xt - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha**0.5
    if t == 1 or noise_scale == 0:
        return x_prev  # Algorithm 2, line 3: z = 0 at the last step
    # 3. sigma_t^2 = beta_t, or beta_tilde_t of eq. (7); sec. 3.2 finds both work
    sigmas_sq = schedule.betas if variance == "beta" else schedule.posterior_variance
    sigma = sigmas_sq[t - 1].item() ** 0.5
    if noise is None:
        raise DDPMError(f"The DDPM step at t={t} adds sigma_t z and needs noise z; "
                        f"pass noise=torch.randn_like(xt).")
    # 4. add the fresh noise sigma_t z: Algorithm 2, line 4
    return x_prev + noise_scale * sigma * noise


@torch.no_grad()
def sample(
    model: NoisePredictor, schedule: NoiseSchedule,
    num_samples: int | None = None, seed: int = 0, seeds: Sequence[int] | None = None,
    variance: str = "beta", noise_scale: float = 1.0,
    capture: Iterable[int] | None = None, progress: bool = True, batch_size: int = 64,
    image_shape: tuple[int, ...] | None = None,
    labels: Labels = None, guidance: float = 1.0,
) -> tuple[Tensor, Trajectory | None]:
    """The full T-step ancestral sampler: Algorithm 2 of Ho et al. 2020.

    Sample i starts from seed ``seed + i`` (or ``seeds[i]``; see
    ``ddpm_core.diffusion.seeds``). Returns the samples x_0, (N, C, H, W),
    unclipped, and the ``Trajectory`` of the ``capture`` timesteps (or None).
    ``variance`` and ``noise_scale`` are those of ``ddpm_step``; ``labels`` and
    ``guidance`` ask a conditional model for classes.
    """
    _check_ddpm_arguments(variance, noise_scale)
    device, image_shape = prepare_model(model, image_shape)
    batches = SeedBatches(num_samples, seed, seeds, capture, schedule.num_steps,
                          image_shape, device, batch_size=batch_size, progress=progress)
    num_classes = getattr(model, "null_label", None)
    labels = sampling_labels(num_classes, labels, guidance, len(batches.seeds))
    batches.set_labels(labels)
    for batch in batches:
        x = batch.noise()  # 1: x_T ~ N(0, I)
        for t in range(schedule.num_steps, 0, -1):  # 2: for t = T, ..., 1
            # 3: z ~ N(0, I) if t > 1, else z = 0
            z = batch.noise() if t > 1 and noise_scale > 0 else None
            eps_pred = guided_eps(model, x, batch.timestep(t), batch.labels, guidance)
            if batch.captures(t):
                batch.record(t, x, schedule.predict_x0(x, t, eps_pred))
            x = ddpm_step(schedule, x, eps_pred, t, z, variance, noise_scale)  # 4
            batch.advance()
        batch.finish(x)  # 6: return x_0
    return batches.result()


def _check_ddpm_arguments(variance: str, noise_scale: float) -> None:
    if variance not in VARIANCES:
        raise DDPMError(f"variance must be one of {VARIANCES}, got {variance!r}.")
    if noise_scale < 0:
        raise DDPMError(f"noise_scale must be >= 0, got {noise_scale}.")


