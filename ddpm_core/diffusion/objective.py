"""The training objective: Algorithm 1 of Ho et al. 2020, one batch at a time.

    1: repeat
    2:   x_0 ~ q(x_0)
    3:   t ~ Uniform({1, ..., T})
    4:   eps ~ N(0, I)
    5:   take a gradient descent step on
             grad_theta || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    6: until converged

``train_step`` is lines 3 to 5 for one batch x_0 (line 2 is the data loader's, lines 1 and 6 the
loop's in ``ddpm_core.training.loop``). Its loss may weight each timestep (``weights``): uniform weights
are Algorithm 1 exactly (L_simple, eq. (14)); ``min_snr_weights`` is the weighting of Hang et
al. 2023. Everything else a real run needs, the learning-rate schedule, gradient clipping, the
moving average of the weights, mixed precision and data-parallel processes, is attached around
this function by the training loop and never enters it.

A conditional network (chapter on guidance) trains on labels, of which a share ``p_uncond`` is
dropped to "no class" (Ho and Salimans 2022), so one network learns both predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddpm_core.diffusion.schedule import NoiseSchedule

NoisePredictor = Callable[..., Tensor]  # eps_theta(x_t, t[, labels])
TimestepWeights = Callable[[Tensor], Tensor]  # w(t) for a batch of timesteps (B,) -> (B,)


def train_step(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    generators: torch.Generator | Sequence[torch.Generator],
    weights: TimestepWeights | None = None,
    labels: Tensor | None = None,
    p_uncond: float = 0.0,
) -> Tensor:
    """Lines 3 to 5 of Algorithm 1 on one batch x0 (line 2), (B, C, H, W) in [-1, 1].

    t and eps come from ``generators``: the run's generator, or one per noise shard
    (see ``draw_t_and_noise``). Returns L_simple of the batch, the mean of the
    per-image losses; if it is not finite, no step is taken.
    """
    null = getattr(model, "null_label", None)  # "no class", for a conditional network
    # 3: t ~ U{1..T} and 4: eps ~ N(0, I)
    t, eps, labels = draw_t_and_noise(schedule, x0, generators, labels, null, p_uncond)
    losses = per_sample_loss(model, schedule, x0, t, eps, labels)  # 5: squared error
    loss = losses.mean()  # L_simple, eq. (14)
    if not torch.isfinite(loss):
        return loss
    weighted = losses if weights is None else weights(t) * losses  # w(t) = 1: Alg. 1
    optimizer.zero_grad(set_to_none=True)
    weighted.mean().backward()  # 5: grad_theta of the loss
    optimizer.step()  # 5: the gradient descent step
    return loss


def draw_t_and_noise(
    schedule: NoiseSchedule,
    x0: Tensor,
    generators: torch.Generator | Sequence[torch.Generator],
    labels: Tensor | None = None,
    null_label: int | None = None,
    p_uncond: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Lines 3 and 4 of Algorithm 1 for a batch: t ~ U{1..T}, eps ~ N(0, I).

    The batch is cut into ``len(generators)`` equal parts, each drawn from its own
    generator in the order t, eps, labels: one part for a single process, and under
    torchrun the parts of the global batch this process holds (``distributed.py``).
    The draws are made on the CPU, so a run gives the same numbers on every device.
    """
    if isinstance(generators, torch.Generator):
        generators = [generators]
    parts = len(generators)
    label_parts = labels.tensor_split(parts) if labels is not None else [None] * parts
    ts, noises, dropped = [], [], []
    batch_parts = zip(generators, x0.tensor_split(parts), label_parts, strict=True)
    for generator, x, part_labels in batch_parts:
        t = torch.randint(1, schedule.num_steps + 1, (x.shape[0],), generator=generator)
        ts.append(t)  # 3: t ~ U{1..T}
        noises.append(torch.randn(x.shape, generator=generator))  # 4: eps ~ N(0, I)
        if part_labels is not None:  # some images learn the "no class" prediction
            part_labels = part_labels.cpu()
            dropped.append(drop_labels(part_labels, null_label, p_uncond, generator))
    device = x0.device
    labels = torch.cat(dropped).to(device) if labels is not None else None
    return torch.cat(ts).to(device), torch.cat(noises).to(device), labels


def per_sample_loss(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    labels: Tensor | None = None,
) -> Tensor:
    """The squared error of each image, averaged over its pixels: shape (B,). Its mean
    is L_simple, the mean over the batch of
    || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2.
    ``labels`` (B,) go to a conditional network."""
    xt = schedule.q_sample(x0, t, noise)  # eq. (4)
    eps_pred = model(xt, t) if labels is None else model(xt, t, labels)
    return (eps_pred.float() - noise).square().flatten(1).mean(1)


def drop_labels(labels: Tensor, null_label: int, p_uncond: float, generator: torch.Generator) -> Tensor:
    """Replace each label by ``null_label`` ("no class") with probability ``p_uncond`` (Ho and Salimans 2022).

    The dropped images teach the same network the unconditional eps_theta(x_t, t), which
    classifier-free guidance needs beside the conditional one.
    """
    drop = torch.rand(labels.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weights for the eps loss (Hang et al. 2023): min(SNR(t), gamma) / SNR(t).

    SNR(t) = alpha_bar_t / (1 - alpha_bar_t). Where the image is barely noised
    (SNR above gamma, small t) the weight falls below 1, so those easy, plentiful
    timesteps no longer pull the shared weights away from the noisy ones.
    """
    snr = schedule.signal_to_noise().to(t.device)[t - 1]
    return snr.clamp(max=gamma) / snr
