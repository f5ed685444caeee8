"""Seeds and trajectories: the bookkeeping around the samplers, kept out of their loops.

Every sample has its own seed. Its starting noise x_T and every fresh z after it are the
successive N(0, I) draws of ``torch.Generator().manual_seed(seed)``, so a sample does not depend
on which other samples share its batch, and the same seed gives the same x_T in every sampler,
in the exported seeds file of the live panel (``initial_noise``), and in the chapters. A sampler
may also be handed x_T itself (``x_T=``): it then takes the place of each seed's first draw, and
the fresh z are still the seed's later draws, so ``x_T=initial_noise(seeds)`` changes nothing.

``SeedBatches`` cuts a list of seeds into batches. Each ``SeedBatch`` draws its noise, asks the
network for eps_theta(x_t, t) (with the labels and the guidance of a conditional network, see
``conditioning.guided_eps``), records the captured timesteps of a ``Trajectory`` and counts the
steps on the progress bar. The three samplers, the ancestral one (``ddpm_core.diffusion.sampling``),
DDIM (``ddpm_core.diffusion.ddim``) and DPM-Solver++ (``ddpm_core.diffusion.dpm_solver``), all run
on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddpm_core.diffusion.conditioning import Labels, guided_eps, sampling_labels
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.progress import progress_bar

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
    return device, tuple(image_shape)


class SeedBatch:
    """One batch of seeds inside ``SeedBatches``: its noise draws, its network calls and its trajectory snapshots."""

    def __init__(self, batches: SeedBatches, start: int, end: int) -> None:
        self._batches = batches
        self.seeds = batches.seeds[start:end]
        labels, given = batches.labels, batches.given_x_T
        self.labels = labels[start:end].to(batches.device) if labels is not None else None  # (B,) classes, or None
        self._given_x_T = given[start:end] if given is not None else None
        self.generators = [seed_generator(s) for s in self.seeds]
        self.snapshots_xt: dict[int, Tensor] = {}
        self.snapshots_x0: dict[int, Tensor] = {}

    def noise(self) -> Tensor:
        """The next N(0, I) draw of every seed's generator, (B, C, H, W): the first is x_T, later ones z."""
        draws = [torch.randn(self._batches.image_shape, generator=g) for g in self.generators]
        return torch.stack(draws).to(self._batches.device)

    def x_T(self) -> Tensor:
        """The batch's x_T, (B, C, H, W): each seed's first draw, or the sampler's given x_T in its place."""
        drawn = self.noise()  # drawn even when x_T is given, so the fresh z are the seeds' later draws
        return drawn if self._given_x_T is None else self._given_x_T.to(drawn)

    def timestep(self, t: int) -> Tensor:
        """t for every image of the batch, (B,), as the model takes it."""
        return torch.full((len(self.seeds),), t, device=self._batches.device, dtype=torch.long)

    def eps(self, x_t: Tensor, t: int) -> Tensor:
        """eps_theta(x_t, t) for the batch (guided towards its labels, for a conditional network). At a
        captured timestep it also keeps x_t and the x_0 predicted from it; each call is a step of the bar."""
        batches = self._batches
        eps_pred = guided_eps(batches.model, x_t, self.timestep(t), self.labels, batches.guidance)
        if self.captures(t):
            self.record(t, x_t, batches.schedule.predict_x0(x_t, t, eps_pred))
        batches.bar.update()
        return eps_pred

    def captures(self, t: int) -> bool:
        return t in self._batches.captured

    def record(self, t: int, xt: Tensor, x0_pred: Tensor) -> None:
        """Keep x_t and the predicted x_0 at a captured timestep t."""
        self.snapshots_xt[t] = xt.cpu()
        self.snapshots_x0[t] = x0_pred.cpu()

    def finish(self, x0: Tensor) -> None:
        """Hand in the batch's samples; at t = 0 the state and its prediction are both the sample."""
        if self.captures(0):
            self.record(0, x0, x0)
        self._batches.collect(self, x0.cpu())


class SeedBatches:
    """The seeds of one sampling run in batches, shared by the three samplers.

    Iterating yields one ``SeedBatch`` per ``batch_size`` seeds; a sampler starts from the batch's
    ``x_T``, draws its fresh noise from it (``noise``), asks it for eps_theta (``eps``) and hands in
    its samples (``finish``); ``result`` then returns all samples and the trajectory, in seed order.

    Args:
        model: the noise predictor; a module is put in eval mode and used on its own device.
        schedule: the schedule the model was trained with.
        num_samples, seed, seeds: which seeds, as for ``sampling.sample``.
        x_T: the starting noise of every sample, (N, C, H, W), in place of each seed's first draw.
        capture: timesteps (0..T) to record.
        progress: show a progress bar (a few plain lines when writing to a log).
        batch_size: seeds per batch.
        image_shape: (C, H, W) of one image.
        labels, guidance: the classes asked of a conditional network and the weight w of guidance.
        sampler: the sampler's name, for the progress bar and the messages.
        visits: the timesteps the sampler visits, largest first (default: all T), for the progress
            bar and to refuse a capture at a timestep it never visits.
    """

    def __init__(
        self,
        model: NoisePredictor,
        schedule: NoiseSchedule,
        num_samples: int | None = None,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        x_T: Tensor | None = None,
        capture: Iterable[int] | None = None,
        progress: bool = True,
        batch_size: int = 64,
        image_shape: tuple[int, ...] | None = None,
        labels: Labels = None,
        guidance: float = 1.0,
        sampler: str = "DDPM",
        visits: Sequence[int] | None = None,
    ) -> None:
        self.model, self.schedule, self.guidance = model, schedule, guidance
        if batch_size < 1:
            raise DDPMError(f"batch_size must be a positive integer, got {batch_size}.")
        self.given_x_T = _given_x_T(x_T, image_shape)
        if x_T is not None:
            image_shape = tuple(x_T.shape[1:])
        self.device, self.image_shape = prepare_model(model, image_shape)
        self.seeds = _seed_list(num_samples, seed, seeds, x_T)
        visits = list(range(schedule.num_steps, 0, -1)) if visits is None else list(visits)
        self.captured = _capture_list(capture, schedule.num_steps, visits, sampler)
        self.labels = sampling_labels(getattr(model, "null_label", None), labels, guidance, len(self.seeds))
        self.batch_size = batch_size
        num_batches = -(-len(self.seeds) // batch_size)
        self.bar = progress_bar(len(visits) * num_batches, f"{sampler} sampling", progress, unit="step")
        self._outputs: list[Tensor] = []
        self._xt_frames: list[Tensor] = []
        self._x0_frames: list[Tensor] = []

    def __iter__(self) -> Iterator[SeedBatch]:
        for start in range(0, len(self.seeds), self.batch_size):
            yield SeedBatch(self, start, start + self.batch_size)
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


def _seed_list(num_samples: int | None, seed: int, seeds: Sequence[int] | None, x_T: Tensor | None) -> list[int]:
    given = None if x_T is None else len(x_T)
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise DDPMError("seeds is empty; pass at least one seed.")
        if given is not None and len(seeds) != given:
            raise DDPMError(f"x_T holds {given} starting images but seeds has {len(seeds)}: pass one seed per "
                            f"image of x_T (its seed draws the image's fresh noise), or leave seeds out.")
        return seeds
    if num_samples is None and given is not None:
        num_samples = given
    if num_samples is None or num_samples < 1:
        raise DDPMError(f"num_samples must be a positive integer, got {num_samples}.")
    if given is not None and num_samples != given:
        raise DDPMError(f"x_T holds {given} starting images but num_samples is {num_samples}: leave num_samples "
                        f"out with x_T, or pass as many starting images as samples.")
    return list(range(seed, seed + num_samples))


def _given_x_T(x_T: Tensor | None, image_shape: tuple[int, ...] | None) -> Tensor | None:
    if x_T is None:
        return None
    shape = tuple(getattr(x_T, "shape", ()))
    if not isinstance(x_T, Tensor) or len(shape) != 4 or not torch.is_floating_point(x_T) or not shape[0]:
        raise DDPMError(f"x_T must be a floating-point tensor of starting images, (N, C, H, W), got "
                        f"{shape if isinstance(x_T, Tensor) else type(x_T).__name__}.")
    if image_shape is not None and tuple(image_shape) != shape[1:]:
        raise DDPMError(f"x_T holds images of shape {shape[1:]} but image_shape is {tuple(image_shape)}: leave "
                        f"image_shape out with x_T, which sets it.")
    return x_T.detach()


def _capture_list(capture: Iterable[int] | None, num_steps: int, visits: list[int], sampler: str) -> list[int]:
    if capture is None:
        return []
    captured = sorted({int(t) for t in capture}, reverse=True)
    if captured and (captured[0] > num_steps or captured[-1] < 0):
        raise DDPMError(f"Captured timesteps must lie in 0..{num_steps}, got {captured[-1]}..{captured[0]}.")
    missed = [t for t in captured if t != 0 and t not in visits]
    if missed:
        raise DDPMError(
            f"{sampler} with {len(visits)} steps never visits timesteps {missed[:5]}, so they cannot be captured. "
            f"Capture only visited timesteps ({visits[:5]}...{visits[-3:]}) or 0, or use the ancestral sampler "
            f"to capture any timestep."
        )
    return captured
