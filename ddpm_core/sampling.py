"""The reverse process: generating images by ancestral sampling (Ho et al. 2020, Algorithm 2).

    x_T ~ N(0, I)
    for t = T, ..., 1:
        z ~ N(0, I) if t > 1 else z = 0
        x_{t-1} = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) + sigma_t z
    return x_0

Every sample has its own seed: its starting noise and every fresh z come from
a ``torch.Generator`` seeded with it, so a sample does not depend on which
other samples share its batch, and the same seed gives the same digit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_core.device import keep_freed_memory
from ddpm_core.errors import DDPMError
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import UNet

VARIANCES = ("beta", "posterior")


@dataclass
class Trajectory:
    """Snapshots of a sampling run at chosen timesteps, largest t first.

    ``xt[k]`` is the batch x_t at ``timesteps[k]`` and ``x0_pred[k]`` the model's
    estimate of the final image from it, (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).
    At t = 0 both are the finished sample.
    """

    timesteps: list[int]
    xt: Tensor  # (K, N, C, H, W)
    x0_pred: Tensor  # (K, N, C, H, W)

    def index(self, t: int) -> int:
        if t not in self.timesteps:
            raise DDPMError(f"Timestep {t} was not captured; captured ones are {self.timesteps[:5]}...")
        return self.timesteps.index(t)


def _seed_list(num_samples: int | None, seed: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise DDPMError("seeds is empty; pass at least one seed.")
        return seeds
    if num_samples is None or num_samples < 1:
        raise DDPMError(f"num_samples must be a positive integer, got {num_samples}.")
    return list(range(seed, seed + num_samples))


def _noise(generators: list[torch.Generator], shape: tuple[int, ...]) -> Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in generators])


def _capture_set(capture: Iterable[int] | None, num_steps: int) -> list[int]:
    if capture is None:
        return []
    steps = sorted({int(t) for t in capture}, reverse=True)
    if steps and (steps[0] > num_steps or steps[-1] < 0):
        raise DDPMError(f"Captured timesteps must lie in 0..{num_steps}, got {steps[-1]}..{steps[0]}.")
    return steps


@torch.no_grad()
def sample(
    model: UNet,
    schedule: NoiseSchedule,
    num_samples: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    variance: str = "beta",
    noise_scale: float = 1.0,
    capture: Iterable[int] | None = None,
    progress: bool = True,
    batch_size: int = 64,
) -> tuple[Tensor, Trajectory | None]:
    """Generate images with the full T-step ancestral sampler.

    Args:
        model: a trained eps_theta; it is put in eval mode and used on its own device.
        schedule: the schedule the model was trained with.
        num_samples: how many images; sample i uses seed ``seed + i``.
        seed: the first seed (when ``seeds`` is not given).
        seeds: one seed per sample, overriding ``num_samples`` and ``seed``.
        variance: sigma_t^2 = beta_t ("beta") or the posterior variance beta_tilde_t ("posterior"),
            the two choices of Ho et al. 2020, sec. 3.2.
        noise_scale: multiplies the fresh noise z; 1.0 is Algorithm 2, 0.0 removes it.
        capture: timesteps (0..T) at which to record x_t and the predicted x_0.
        progress: show a tqdm progress bar over the T steps.
        batch_size: samples denoised together; the result does not depend on it.

    Returns:
        The samples x_0, (N, C, H, W), not clipped, and the trajectory (None if nothing captured).
    """
    if variance not in VARIANCES:
        raise DDPMError(f"variance must be one of {VARIANCES}, got {variance!r}.")
    if noise_scale < 0:
        raise DDPMError(f"noise_scale must be >= 0, got {noise_scale}.")
    if batch_size < 1:
        raise DDPMError(f"batch_size must be a positive integer, got {batch_size}.")
    seed_list = _seed_list(num_samples, seed, seeds)
    steps = _capture_set(capture, schedule.num_steps)
    model.eval()
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()  # a quarter of each CPU step is page faults otherwise
    shape = (model.config.image_channels, 28, 28)
    sigmas_sq = schedule.betas if variance == "beta" else schedule.posterior_variance

    outputs, xt_frames, x0_frames = [], [], []
    num_batches = -(-len(seed_list) // batch_size)
    bar = tqdm(total=schedule.num_steps * num_batches, desc="sampling", unit="step", disable=not progress, leave=False)
    for start in range(0, len(seed_list), batch_size):
        batch_seeds = seed_list[start : start + batch_size]
        generators = [torch.Generator().manual_seed(s) for s in batch_seeds]
        x = _noise(generators, shape).to(device)  # x_T ~ N(0, I)
        snapshots_xt, snapshots_x0 = {}, {}
        for t in range(schedule.num_steps, 0, -1):
            t_batch = torch.full((len(batch_seeds),), t, device=device, dtype=torch.long)
            eps_pred = model(x, t_batch)
            if t in steps:
                snapshots_xt[t] = x.cpu()
                snapshots_x0[t] = schedule.predict_x0(x, t, eps_pred).cpu()
            alpha = schedule.alphas[t - 1].item()
            beta = schedule.betas[t - 1].item()
            alpha_bar = schedule.alpha_bars[t - 1].item()
            # Ho et al. 2020, eq. (11): the mean of p_theta(x_{t-1} | x_t).
            x = (x - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha**0.5
            if t > 1 and noise_scale > 0:
                sigma = sigmas_sq[t - 1].item() ** 0.5
                x = x + noise_scale * sigma * _noise(generators, shape).to(device)
            bar.update()
        if 0 in steps:
            snapshots_xt[0] = x.cpu()
            snapshots_x0[0] = x.cpu()
        outputs.append(x.cpu())
        if steps:
            xt_frames.append(torch.stack([snapshots_xt[t] for t in steps]))
            x0_frames.append(torch.stack([snapshots_x0[t] for t in steps]))
    bar.close()
    samples = torch.cat(outputs)
    if not steps:
        return samples, None
    return samples, Trajectory(timesteps=steps, xt=torch.cat(xt_frames, dim=1), x0_pred=torch.cat(x0_frames, dim=1))
