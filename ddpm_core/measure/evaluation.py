"""Measuring a trained model: generate samples, then score them with the MNIST judge.

    generate             a timed sampling run from a loaded checkpoint, with any sampler
    evaluate_checkpoint  sample from a checkpoint and measure the samples (``python -m ddpm_core evaluate``)
    loss_by_timestep     the held-out training loss at chosen timesteps

The sample sets of the book's chapters are generated with the same ``generate``, so a number in
the book is a number the command prints for the same sampler and seeds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import COMMAND_LINE, every_class, sampling_labels
from ddpm_core.diffusion.samplers import DEFAULT_SAMPLER, check_options
from ddpm_core.diffusion.samplers import generate as run_sampler
from ddpm_core.diffusion.seeds import Trajectory
from ddpm_core.measure.classifier import load_classifier
from ddpm_core.measure.metrics import conditional_scores, evaluate_samples
from ddpm_core.training.checkpoint import LoadedModel, load_checkpoint
from ddpm_core.training.data import load_mnist
from ddpm_core.training.finite_samples import check_finite_samples
from ddpm_core.utils.device import keep_freed_memory, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.extras import require


@dataclass
class Generated:
    """One sampling run: the samples x_0 (N, C, H, W), not clipped; the trajectory at the captured
    timesteps (None when nothing was captured); the wall time in seconds and the CPU threads torch used."""

    samples: Tensor
    trajectory: Trajectory | None
    seconds: float
    threads: int


def generate(
    loaded: LoadedModel,
    num_samples: int,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    progress: bool = True,
    **options: Any,
) -> Generated:
    """Sample ``num_samples`` images (seeds ``seed``..``seed + N - 1``) from a loaded checkpoint, and time it.

    ``sampler`` and ``options`` are those of ``ddpm_core.diffusion.samplers.generate``: the sampler's
    own options (steps, eta, variance, ...; each not given takes the sampler's default), ``capture``,
    and ``labels`` and ``guidance`` for a conditional model.
    """
    if next(loaded.model.parameters()).device.type == "cpu":
        keep_freed_memory()  # a quarter of each CPU step is page faults otherwise
    started = time.perf_counter()
    images, trajectory = run_sampler(loaded.model, loaded.schedule, sampler, num_samples=num_samples, seed=seed,
                                     progress=progress, **options)
    return Generated(images, trajectory, time.perf_counter() - started, torch.get_num_threads())


def evaluate_checkpoint(
    checkpoint: str | Path,
    num_samples: int = 1000,
    seed: int = 0,
    sampler: str = DEFAULT_SAMPLER,
    use_ema: bool = False,
    device: str = "auto",
    classifier_path: str | Path | None = None,
    progress: bool = True,
    guidance: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Generate from ``checkpoint`` and return every metric of ``metrics.evaluate_samples``,
    plus the run's name (the sampler and its options) and the sampling wall time in seconds.

    ``options`` are the sampler's own (``ddpm_core.diffusion.samplers.SAMPLERS``), each not given
    taking the sampler's default. A conditional checkpoint is asked for every class in turn
    (sample i, seed ``seed + i``, for class i mod 10) with classifier-free guidance ``guidance``
    (default 1), and the result adds the metrics of ``metrics.conditional_scores``: "accuracy"
    (judged as asked), "diversity_mean" and "class_frechet_mean". ``guidance`` is refused for an
    unconditional checkpoint. The Frechet distance needs torchmetrics (the ``book`` extra), checked first.
    """
    if num_samples < 2:
        raise DDPMError(f"num_samples must be at least 2 to compare distributions, got {num_samples}.")
    require(("torchmetrics.image.fid",), "evaluate (its Frechet distance)")  # not after minutes of sampling
    chosen = check_options(sampler, options)  # before the checkpoint is loaded
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), use_ema=use_ema)
    source = f"The checkpoint {loaded.path}"
    num_classes = loaded.model.config.num_classes
    labels = sampling_labels(num_classes, every_class(num_classes, num_samples, source, "--num-samples"), guidance,
                             num_samples, COMMAND_LINE, source=source)
    guidance = 1.0 if guidance is None else guidance
    # Everything the metrics need is read before the long sampling, so a missing piece stops it at once.
    classifier = load_classifier(classifier_path)
    test_images, test_labels = load_mnist(train=False)
    train_images, _ = load_mnist(train=True)
    run = generate(loaded, num_samples, seed, sampler, progress=progress, labels=labels, guidance=guidance,
                   **options)
    check_finite_samples(run.samples, loaded.path)  # NaN would crash the Frechet distance's matrix square root
    images = run.samples.cpu()
    metrics = evaluate_samples(images, test_images, train_images, classifier)
    name = chosen.label(loaded.schedule.num_steps, **options) + (" EMA" if use_ema else "")
    if labels is not None:
        scores = conditional_scores(images, labels, test_images, test_labels, classifier)
        metrics |= {
            "accuracy": scores["accuracy"],
            "diversity_mean": scores["diversity_mean"],
            "class_frechet_mean": sum(scores["class_frechet"].values()) / len(scores["class_frechet"]),
        }
        name += f" w={guidance:g}"
    return {"name": name, "sampling_seconds": run.seconds, **metrics}


def loss_by_timestep(
    model: Any,
    schedule: Any,
    images: Tensor,
    timesteps: list[int],
    seed: int = 0,
    batch_size: int = 500,
) -> list[float]:
    """The held-out L_simple at each of ``timesteps``: mean over ``images`` of ||eps - eps_theta(x_t, t)||^2 per pixel.

    Every timestep sees the same images and the same noise (drawn once from ``seed``), so two
    models, or two timesteps, are compared on equal terms.
    """
    device = next(model.parameters()).device
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    model.eval()
    result = []
    with torch.no_grad():
        for t in timesteps:
            total = 0.0
            for start in range(0, len(images), batch_size):
                x0 = images[start : start + batch_size].to(device)
                eps = noise[start : start + batch_size].to(device)
                t_batch = torch.full((x0.shape[0],), t, device=device)
                eps_pred = model(schedule.q_sample(x0, t_batch, eps), t_batch)
                total += (eps_pred - eps).square().mean(dim=(1, 2, 3)).sum().item()
            result.append(total / len(images))
    return result
