"""Seeds and trajectories: the bookkeeping around the samplers, kept out of their loops.

Every sample has its own seed. Its starting noise x_T and every fresh z after it are the
successive N(0, I) draws of ``torch.Generator().manual_seed(seed)``, so a sample does not depend
on which other samples share its batch, and the same seed gives the same x_T in every sampler,
in the exported seeds file of the live panel (``initial_noise``), and in the chapters.

``SeedBatches`` cuts a list of seeds into batches, draws each batch's noise, records the
captured timesteps of a ``Trajectory`` and shows the progress bar; the ancestral sampler
(``ddpm_core.diffusion.sampling``) and DDIM (``ddpm_core.diffusion.ddim``) both run on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_core.utils.device import keep_freed_memory
from ddpm_core.utils.errors import DDPMError

MNIST_SHAPE = (1, 28, 28)
NoisePredictor = Callable[..., Tensor]  # eps_theta: (x_t (B, C, H, W), t (B,)[, labels (B,)]) -> eps (B, C, H, W)


def seed_generator(seed: int) -> torch.Generator:
    """The generator of one seed: its first N(0, I) draw is x_T, the later ones the fresh z of each step."""
    return torch.Generator().manual_seed(int(seed))


def initial_noise(seeds: Sequence[int], image_shape: tuple[int, ...] = MNIST_SHAPE) -> Tensor:
    """x_T of each seed as every sampler draws it, (N, C, H, W)."""
    return torch.stack([torch.randn(tuple(image_shape), generator=seed_generator(s)) for s in seeds])


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
        self.generators = [seed_generator(s) for s in seeds]
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
        """One class per seed (from ``conditioning.sampling_labels``), handed to each batch as ``SeedBatch.labels``."""
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
