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
for this sampler and for DDIM's (``ddpm_core.ddim``).

A conditional network (``UNetConfig(num_classes=10)``) is asked for one class per
sample (``labels``), with classifier-free guidance of strength ``guidance``
(Ho and Salimans 2022): ``guided_eps`` replaces eps_theta(x_t, t) in the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_core.device import keep_freed_memory
from ddpm_core.errors import DDPMError
from ddpm_core.schedule import NoiseSchedule

VARIANCES = ("beta", "posterior")
MNIST_SHAPE = (1, 28, 28)
NoisePredictor = Callable[[Tensor, Tensor], Tensor]  # eps_theta: (x_t (B, C, H, W), t (B,)) -> eps (B, C, H, W)
Labels = int | Sequence[int] | Tensor | None  # the class asked of every sample, or one class each


def guided_eps(model: NoisePredictor, x: Tensor, t: Tensor, labels: Tensor | None = None,
               guidance: float = 1.0) -> Tensor:
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
    eps_cond, eps_uncond = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null])).chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def check_labels(model: NoisePredictor, labels: Labels, guidance: float, num_samples: int) -> Tensor | None:
    """The labels as a (N,) tensor of classes, after refusing what the model cannot do with them.

    A conditional model needs labels; an unconditional one takes none; every label must be a
    class of the model; ``guidance`` must be a finite number >= 0 and needs labels.
    """
    null_label = getattr(model, "null_label", None)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance < float("inf"):
        raise DDPMError(f"guidance must be a finite number >= 0 (0: unconditional, 1: conditional), got {guidance!r}.")
    if labels is None:
        if null_label is not None:
            raise DDPMError(
                f"This model is conditional (trained with {null_label} classes): say which digit each sample "
                f"should be with labels (one class, or one per sample; on the command line --label or --labels). "
                f"For unconditional samples from the same network, pass any labels with guidance=0."
            )
        if guidance != 1.0:
            raise DDPMError(f"guidance={guidance} needs labels: guidance steers samples towards a requested class.")
        return None
    if null_label is None:
        raise DDPMError(
            "This model is unconditional (trained without labels), so it cannot be asked for a class. Sample "
            "without labels (on the command line: without --label, --labels and --guidance), or train a "
            "conditional model with `python -m ddpm_core train --conditional`."
        )
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() == 1:
        labels = labels.expand(num_samples)
    if labels.numel() != num_samples:
        raise DDPMError(f"Pass one label for all samples or one per sample: {labels.numel()} labels for "
                        f"{num_samples} samples.")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < null_label):
        bad = int(labels.max()) if int(labels.max()) >= null_label else int(labels.min())
        raise DDPMError(f"The label {bad} is not a class of this model, which knows the classes 0..{null_label - 1}.")
    return labels.clone()


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
        noise: z ~ N(0, I) shaped like ``xt``; needed for t > 1 unless ``noise_scale`` is 0.
        variance: sigma_t^2 = beta_t ("beta") or the posterior variance beta_tilde_t ("posterior").
        noise_scale: multiplies z; 1.0 is Algorithm 2, 0.0 removes the fresh noise.

    Returns:
        x_{t-1}, (B, C, H, W).
    """
    # 1. alpha_t = 1 - beta_t and alpha_bar_t = alpha_1 ... alpha_t (Ho et al. 2020, eq. (4))
    alpha = schedule.alphas[t - 1].item()
    beta = schedule.betas[t - 1].item()
    alpha_bar = schedule.alpha_bars[t - 1].item()
    # 2. the mean of p_theta(x_{t-1} | x_t), the posterior mean written with eps_theta: eq. (11)
    x_prev = (xt - beta / (1.0 - alpha_bar) ** 0.5 * eps_pred) / alpha**0.5
    if t == 1 or noise_scale == 0:
        return x_prev  # Algorithm 2, line 3: z = 0 at the last step
    # 3. sigma_t^2 = beta_t, or beta_tilde_t of eq. (7); sec. 3.2 finds both work
    sigmas_sq = schedule.betas if variance == "beta" else schedule.posterior_variance
    sigma = sigmas_sq[t - 1].item() ** 0.5
    if noise is None:
        raise DDPMError(f"The DDPM step at t={t} adds sigma_t z and needs noise z; pass noise=torch.randn_like(xt).")
    # 4. add the fresh noise sigma_t z: Algorithm 2, line 4
    return x_prev + noise_scale * sigma * noise


@torch.no_grad()
def sample(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    num_samples: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    variance: str = "beta",
    noise_scale: float = 1.0,
    capture: Iterable[int] | None = None,
    progress: bool = True,
    batch_size: int = 64,
    image_shape: tuple[int, ...] | None = None,
    labels: Labels = None,
    guidance: float = 1.0,
) -> tuple[Tensor, Trajectory | None]:
    """Generate images with the full T-step ancestral sampler.

    Args:
        model: a trained eps_theta, called as ``model(x, t)``; a module is put in eval mode and
            used on its own device.
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
        image_shape: (C, H, W) of one image; default (C, 28, 28), C from a UNet's config, else 1.
        labels: for a conditional model, the class of every sample (one int) or of each (N ints).
        guidance: w of classifier-free guidance (see ``guided_eps``); 1 is plain conditional sampling.

    Returns:
        The samples x_0, (N, C, H, W), not clipped, and the trajectory (None if nothing captured).
    """
    _check_ddpm_arguments(variance, noise_scale)
    device, image_shape = prepare_model(model, image_shape)
    batches = SeedBatches(num_samples, seed, seeds, capture, schedule.num_steps, image_shape, device,
                          batch_size=batch_size, progress=progress)
    batches.set_labels(check_labels(model, labels, guidance, len(batches.seeds)))
    for batch in batches:
        x = batch.noise()  # Algorithm 2, line 1: x_T ~ N(0, I)
        for t in range(schedule.num_steps, 0, -1):  # line 2
            eps_pred = guided_eps(model, x, batch.timestep(t), batch.labels, guidance)
            if batch.captures(t):
                batch.record(t, x, schedule.predict_x0(x, t, eps_pred))
            z = batch.noise() if t > 1 and noise_scale > 0 else None  # line 3
            x = ddpm_step(schedule, x, eps_pred, t, z, variance, noise_scale)  # line 4
            batch.advance()
        batch.finish(x)  # line 6: x_0
    return batches.result()


def _check_ddpm_arguments(variance: str, noise_scale: float) -> None:
    if variance not in VARIANCES:
        raise DDPMError(f"variance must be one of {VARIANCES}, got {variance!r}.")
    if noise_scale < 0:
        raise DDPMError(f"noise_scale must be >= 0, got {noise_scale}.")


def prepare_model(model: NoisePredictor, image_shape: tuple[int, ...] | None = None) -> tuple[torch.device, tuple]:
    """Get a noise predictor ready to sample: eval mode for a module, its device and the image shape.

    The device is that of the module's first parameter or buffer (the CPU for a plain function).
    The image shape defaults to (C, 28, 28), with C the ``image_channels`` of a UNet's config, else 1.
    """
    device = torch.device("cpu")
    if isinstance(model, nn.Module):
        model.eval()
        tensor = next(iter(model.parameters()), None)
        tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else device
    if image_shape is None:
        config = getattr(model, "config", None)
        image_shape = (getattr(config, "image_channels", MNIST_SHAPE[0]), *MNIST_SHAPE[1:])
    if device.type == "cpu":
        keep_freed_memory()  # a quarter of each CPU step is page faults otherwise
    return device, tuple(image_shape)


class SeedBatch:
    """One batch of seeds inside ``SeedBatches``: its noise draws and its trajectory snapshots."""

    def __init__(self, batches: SeedBatches, seeds: list[int], labels: Tensor | None = None) -> None:
        self._batches = batches
        self.seeds = seeds
        self.labels = labels.to(batches.device) if labels is not None else None  # (B,) classes, or None
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.snapshots_xt: dict[int, Tensor] = {}
        self.snapshots_x0: dict[int, Tensor] = {}

    def noise(self) -> Tensor:
        """The next N(0, I) draw of every seed's generator, (B, C, H, W): the first is x_T, later ones z."""
        draws = [torch.randn(self._batches.image_shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self._batches.device)

    def timestep(self, t: int) -> Tensor:
        """t for every image of the batch, (B,), as the model takes it."""
        return torch.full((len(self.seeds),), t, device=self._batches.device, dtype=torch.long)

    def captures(self, t: int) -> bool:
        return t in self._batches.captured

    def record(self, t: int, xt: Tensor, x0_pred: Tensor) -> None:
        """Keep x_t and the predicted x_0 at a captured timestep t."""
        self.snapshots_xt[t] = xt.cpu()
        self.snapshots_x0[t] = x0_pred.cpu()

    def advance(self) -> None:
        """Count one finished step on the progress bar."""
        self._batches.bar.update()

    def finish(self, x0: Tensor) -> None:
        """Hand in the batch's samples; at t = 0 the state and its prediction are both the sample."""
        if self.captures(0):
            self.record(0, x0, x0)
        self._batches.collect(self, x0.cpu())


class SeedBatches:
    """Per-seed batching and trajectory recording, shared by ``sample`` and ``ddim.ddim_sample``.

    Iterating yields one ``SeedBatch`` per ``batch_size`` seeds; a sampler draws its noise from the
    batch (``noise``), records the captured timesteps (``record``) and hands in its samples
    (``finish``); ``result`` then returns all samples and the trajectory, in seed order.

    Args:
        num_samples, seed, seeds: which seeds, as for ``sample``.
        capture: timesteps (0..T) to record.
        num_steps: T, the length of the schedule.
        image_shape: (C, H, W) of one image.
        device: where the sampler computes.
        batch_size: seeds per batch.
        progress: show a tqdm progress bar.
        desc: its label.
        steps_per_batch: network calls per batch, for the progress bar (default T).
    """

    def __init__(
        self,
        num_samples: int | None,
        seed: int,
        seeds: Sequence[int] | None,
        capture: Iterable[int] | None,
        num_steps: int,
        image_shape: tuple[int, ...],
        device: torch.device,
        batch_size: int = 64,
        progress: bool = True,
        desc: str = "sampling",
        steps_per_batch: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise DDPMError(f"batch_size must be a positive integer, got {batch_size}.")
        self.seeds = _seed_list(num_samples, seed, seeds)
        self.captured = _capture_list(capture, num_steps)
        self.image_shape = tuple(image_shape)
        self.device = device
        self.batch_size = batch_size
        num_batches = -(-len(self.seeds) // batch_size)
        total = (steps_per_batch or num_steps) * num_batches
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
        self.labels: Tensor | None = None
        self._outputs: list[Tensor] = []
        self._xt_frames: list[Tensor] = []
        self._x0_frames: list[Tensor] = []

    def set_labels(self, labels: Tensor | None) -> None:
        """One class per seed (from ``check_labels``), handed to each batch as ``SeedBatch.labels``."""
        self.labels = labels

    def __iter__(self) -> Iterator[SeedBatch]:
        for start in range(0, len(self.seeds), self.batch_size):
            end = start + self.batch_size
            yield SeedBatch(self, self.seeds[start:end], self.labels[start:end] if self.labels is not None else None)
        self.bar.close()

    def collect(self, batch: SeedBatch, samples: Tensor) -> None:
        self._outputs.append(samples)
        if self.captured:
            self._xt_frames.append(torch.stack([batch.snapshots_xt[t] for t in self.captured]))
            self._x0_frames.append(torch.stack([batch.snapshots_x0[t] for t in self.captured]))

    def result(self) -> tuple[Tensor, Trajectory | None]:
        """The samples (N, C, H, W) and the trajectory (None if nothing was captured)."""
        samples = torch.cat(self._outputs)
        if not self.captured:
            return samples, None
        xt, x0_pred = torch.cat(self._xt_frames, dim=1), torch.cat(self._x0_frames, dim=1)
        return samples, Trajectory(timesteps=self.captured, xt=xt, x0_pred=x0_pred)


def _seed_list(num_samples: int | None, seed: int, seeds: Sequence[int] | None) -> list[int]:
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise DDPMError("seeds is empty; pass at least one seed.")
        return seeds
    if num_samples is None or num_samples < 1:
        raise DDPMError(f"num_samples must be a positive integer, got {num_samples}.")
    return list(range(seed, seed + num_samples))


def _capture_list(capture: Iterable[int] | None, num_steps: int) -> list[int]:
    if capture is None:
        return []
    captured = sorted({int(t) for t in capture}, reverse=True)
    if captured and (captured[0] > num_steps or captured[-1] < 0):
        raise DDPMError(f"Captured timesteps must lie in 0..{num_steps}, got {captured[-1]}..{captured[0]}.")
    return captured
