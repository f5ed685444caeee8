"""The training objective: Algorithm 1 of Ho et al. 2020, one batch at a time.

    1: repeat
    2:   x_0 ~ q(x_0)
    3:   t ~ Uniform({1, ..., T})
    4:   eps ~ N(0, I)
    5:   take a gradient descent step on
             grad_theta || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    6: until converged

``train_step`` is lines 3 to 5 for one batch x_0 (line 2 is the data loader's, lines 1 and 6 the
loop's in ``ddpm_core.training.loop``), and ``per_sample_loss`` the squared error of line 5. The
loss may weight each timestep (``weights``): uniform weights are Algorithm 1 exactly (L_simple,
eq. (14)); ``min_snr_weights`` is the weighting of Hang et al. 2023. Everything else a real run
needs, the learning-rate schedule, gradient clipping, the moving average of the weights, mixed
precision and data-parallel processes, is attached around ``train_step`` by the training loop and
never enters it. Two of those attachments live here, because they decide which random numbers
the step draws:

- a conditional network (chapter on guidance) trains on labels, of which a share ``p_uncond`` is
  dropped to "no class" (Ho and Salimans 2022), so one network learns both predictions.
  ``LabelDropout`` hands ``train_step`` such a network as eps_theta(x_t, t): it draws the drops
  when ``train_step`` calls it, after t and eps, from the same generator;
- under torchrun the batch is cut into noise shards, each drawn from its own generator, so that
  any number of processes trains to the same weights. ``noise_shards`` gives ``train_step`` one
  generator that stands for a process's shards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.utils.errors import DDPMError

NoisePredictor = Callable[..., Tensor]  # eps_theta(x_t, t)
TimestepWeights = Callable[[Tensor], Tensor]  # w(t) for a batch of timesteps (B,) -> (B,)


def train_step(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    generator: torch.Generator,
    weights: TimestepWeights | None = None,
) -> Tensor:
    """Lines 3 to 5 of Algorithm 1 on one batch x0 (line 2), (B, C, H, W) in [-1, 1].

    t and eps are drawn on the CPU from ``generator``, so that a run draws the same
    numbers on every device. Returns L_simple of the batch; if it is not finite, no
    step is taken. ``weights`` w(t), if given, weight each image's squared error.
    """
    # 2: x_0 ~ q(x_0) is the batch x0, drawn by the training loop
    # 3: t ~ Uniform({1, ..., T}), one per image
    t = torch.randint(1, schedule.num_steps + 1, (len(x0),), generator=generator)
    # 4: eps ~ N(0, I), one per image
    eps = torch.randn(x0.shape, generator=generator)
    t, eps = t.to(x0.device), eps.to(x0.device)
    losses = per_sample_loss(model, schedule, x0, t, eps)  # 5: the squared error
    loss = losses.mean()  # L_simple, eq. (14)
    if not torch.isfinite(loss):
        return loss
    weighted = losses if weights is None else weights(t) * losses  # w(t) = 1: Alg. 1
    optimizer.zero_grad(set_to_none=True)
    weighted.mean().backward()  # 5: grad_theta of the loss
    optimizer.step()  # 5: the gradient descent step
    return loss


def per_sample_loss(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
) -> Tensor:
    """The squared error of each image, averaged over its pixels: shape (B,). Its mean
    is L_simple, the mean over the batch of
    || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2."""
    xt = schedule.q_sample(x0, t, noise)  # eq. (4)
    eps_pred = model(xt, t)
    return (eps_pred.float() - noise).square().flatten(1).mean(1)


def drop_labels(labels: Tensor, null_label: int, p_uncond: float, generator: torch.Generator) -> Tensor:
    """Replace each label by ``null_label`` ("no class") with probability ``p_uncond`` (Ho and Salimans 2022).

    The dropped images teach the same network the unconditional eps_theta(x_t, t), which
    classifier-free guidance needs beside the conditional one.
    """
    drop = torch.rand(labels.shape, generator=generator) < p_uncond
    return torch.where(drop, torch.full_like(labels, null_label), labels)


class LabelDropout:
    """A conditional network as ``train_step`` calls it, eps_theta(x_t, t): each call passes on the batch's
    ``labels``, each dropped to "no class" with probability ``p_uncond`` (``drop_labels``).

    The drops are drawn on the CPU from ``generator`` when ``train_step`` calls the network, after it has
    drawn t and eps from the same generator: each step draws t, then eps, then the drops.
    """

    def __init__(self, model: NoisePredictor, labels: Tensor, p_uncond: float, generator: torch.Generator) -> None:
        self.model = model
        self.labels = labels
        self.p_uncond = p_uncond
        self.generator = generator

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        labels = drop_labels(self.labels.cpu(), self.model.null_label, self.p_uncond, self.generator)
        return self.model(x_t, t, labels.to(x_t.device))


@contextmanager
def noise_shards(generators: Sequence[torch.Generator]) -> Iterator[torch.Generator]:
    """One generator that stands for the generators of several noise shards, for the draws of one batch.

    Under torchrun the global batch is cut into noise shards, each drawing its t, eps and label drops from
    its own generator, and a process holds an equal share of them (one, when every process holds one). In
    this block, a draw of ``torch.randint``, ``torch.randn`` or ``torch.rand`` from the generator it yields
    is made in ``len(generators)`` parts along the first dimension (as ``Tensor.tensor_split`` cuts it),
    part j from ``generators[j]``, and the parts are joined: each shard's images get the numbers its own
    generator draws, in the order t, eps, drops. With one generator it yields that generator itself.
    """
    if len(generators) == 1:
        yield generators[0]
        return
    with _ShardedDraws(generators) as draws:
        yield draws.generator


class _ShardedDraws(TorchFunctionMode):
    """Serves the draws from ``generator`` shard by shard (see ``noise_shards``); every other call passes."""

    DRAWS = (torch.randint, torch.randn, torch.rand)

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        self.generators = list(generators)
        self.generator = torch.Generator()  # stands for them all; never drawn from itself

    def __torch_function__(self, func: Callable, types: tuple, args: tuple = (), kwargs: dict | None = None) -> Tensor:
        kwargs = kwargs or {}
        if kwargs.get("generator") is not self.generator:
            return func(*args, **kwargs)
        *leading, size = args  # torch.randint(low, high, size), torch.randn(size), torch.rand(size)
        if func not in self.DRAWS or isinstance(size, int):
            raise DDPMError(f"Noise shards split draws of torch.randint, torch.randn and torch.rand given their size "
                            f"as one tuple; {getattr(func, '__name__', func)} was called with {args!r}.")
        size = torch.Size(size)
        parts = torch.arange(size[0]).tensor_split(len(self.generators))
        draws = [func(*leading, (len(part), *size[1:]), **{**kwargs, "generator": generator})
                 for part, generator in zip(parts, self.generators, strict=True)]
        return torch.cat(draws)


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, gamma: float) -> Tensor:
    """Min-SNR-gamma weights for the eps loss (Hang et al. 2023): min(SNR(t), gamma) / SNR(t).

    SNR(t) = alpha_bar_t / (1 - alpha_bar_t). Where the image is barely noised
    (SNR above gamma, small t) the weight falls below 1, so those easy, plentiful
    timesteps no longer pull the shared weights away from the noisy ones.
    """
    snr = schedule.signal_to_noise().to(t.device)[t - 1]
    return snr.clamp(max=gamma) / snr
