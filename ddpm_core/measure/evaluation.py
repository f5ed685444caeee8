"""Measuring a trained model: generate samples, then score them with the MNIST judge.

The same functions back ``python -m ddpm_core evaluate`` and the book's quality and
fast-sampling chapters, so a number in the book is a number the command prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ddpm_core.diffusion.conditioning import COMMAND_LINE, Labels, sampling_labels
from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.dpm_solver import dpm_solver_sample
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.seeds import Trajectory
from ddpm_core.measure.classifier import load_classifier
from ddpm_core.measure.metrics import conditional_scores, evaluate_samples
from ddpm_core.training.checkpoint import LoadedModel, check_finite_samples, load_checkpoint
from ddpm_core.training.data import load_mnist
from ddpm_core.utils.arguments import SAMPLERS
from ddpm_core.utils.device import resolve_device
from ddpm_core.utils.errors import DDPMError


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
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
    capture: list[int] | None = None,
    progress: bool = True,
    variance: str = "beta",
    labels: Labels = None,
    guidance: float = 1.0,
) -> Generated:
    """Sample ``num_samples`` images (seeds ``seed``..``seed + N - 1``) and time it.

    ``sampler`` is "ddpm" (the 1000-step ancestral sampler, sigma_t^2 = beta_t, or the
    posterior variance with ``variance="posterior"``), "ddim" (``steps`` steps,
    stochasticity ``eta``) or "dpm" (DPM-Solver++(2M), ``steps`` steps). A conditional
    model takes ``labels`` and ``guidance`` as the samplers do.
    """
    if sampler not in SAMPLERS:
        raise DDPMError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
    started = time.perf_counter()
    if sampler == "ddpm":
        images, trajectory = sample(loaded.model, loaded.schedule, num_samples=num_samples, seed=seed,
                                    variance=variance, capture=capture, progress=progress, labels=labels,
                                    guidance=guidance)
    elif sampler == "dpm":
        images, trajectory = dpm_solver_sample(loaded.model, loaded.schedule, num_samples=num_samples, seed=seed,
                                               steps=steps, capture=capture, progress=progress, labels=labels,
                                               guidance=guidance)
    else:
        images, trajectory = ddim_sample(loaded.model, loaded.schedule, num_samples=num_samples, seed=seed,
                                         steps=steps, eta=eta, capture=capture, progress=progress, labels=labels,
                                         guidance=guidance)
    return Generated(images, trajectory, time.perf_counter() - started, torch.get_num_threads())


def generate_record(loaded: LoadedModel, num_samples: int, **options: Any) -> dict[str, Tensor]:
    """``generate`` (same options) as a dict of tensors, the form the book stores with
    ``ddpm_core.book.chapter.cached``: "samples", "seconds" and the CPU "threads" torch used for them
    (the wall time depends on it), and with ``capture`` also the captured "timesteps" and the
    predicted x_0 at each of them, "x0_pred"."""
    run = generate(loaded, num_samples, progress=False, **options)
    record = {"samples": run.samples, "seconds": torch.tensor(run.seconds), "threads": torch.tensor(run.threads)}
    if run.trajectory is not None:
        record["timesteps"] = torch.tensor(run.trajectory.timesteps)
        record["x0_pred"] = run.trajectory.x0_pred
    return record


def evaluate_checkpoint(
    checkpoint: str | Path,
    num_samples: int = 1000,
    seed: int = 0,
    sampler: str = "ddpm",
    steps: int = 50,
    eta: float = 0.0,
    use_ema: bool = False,
    device: str = "auto",
    classifier_path: str | Path | None = None,
    progress: bool = True,
    guidance: float | None = None,
) -> dict[str, Any]:
    """Generate from ``checkpoint`` and return every metric of ``metrics.evaluate_samples``,
    plus the sampler's name and the sampling wall time in seconds.

    A conditional checkpoint is asked for every class in turn (sample i, seed ``seed + i``, for
    class i mod 10) with classifier-free guidance ``guidance`` (default 1), and the result adds
    the metrics of ``metrics.conditional_scores``: "accuracy" (judged as asked), "diversity_mean"
    and "class_frechet_mean". ``guidance`` is refused for an unconditional checkpoint.
    """
    if num_samples < 2:
        raise DDPMError(f"num_samples must be at least 2 to compare distributions, got {num_samples}.")
    loaded = load_checkpoint(checkpoint, device=resolve_device(device), use_ema=use_ema)
    num_classes = loaded.model.config.num_classes
    if num_classes is not None and num_samples < 2 * num_classes:
        raise DDPMError(f"A conditional model is evaluated on at least 2 samples of each of its {num_classes} "
                        f"classes: pass --num-samples {2 * num_classes} or more, got {num_samples}.")
    every_class = torch.arange(num_samples) % num_classes if num_classes is not None else None
    labels = sampling_labels(num_classes, every_class, guidance, num_samples, COMMAND_LINE,
                             source=f"The checkpoint {loaded.path}")
    guidance = 1.0 if guidance is None else guidance
    # Everything the metrics need is read before the long sampling, so a missing piece stops it at once.
    classifier = load_classifier(classifier_path)
    test_images, test_labels = load_mnist(train=False)
    train_images, _ = load_mnist(train=True)
    run = generate(loaded, num_samples, seed, sampler, steps, eta, progress=progress, labels=labels,
                   guidance=guidance)
    images, seconds = run.samples, run.seconds
    check_finite_samples(images, loaded.path)  # NaN would crash the Frechet distance's matrix square root
    metrics = evaluate_samples(images.cpu(), test_images, train_images, classifier)
    name = {"ddpm": f"DDPM-{loaded.schedule.num_steps}",
            "ddim": f"DDIM-{steps} eta={eta:g}", "dpm": f"DPM-Solver++ {steps}"}[sampler]
    name += " EMA" if use_ema else ""
    if labels is not None:
        scores = conditional_scores(images.cpu(), labels, test_images, test_labels, classifier)
        metrics |= {
            "accuracy": scores["accuracy"],
            "diversity_mean": scores["diversity_mean"],
            "class_frechet_mean": sum(scores["class_frechet"].values()) / len(scores["class_frechet"]),
        }
        name += f" w={guidance:g}"
    return {"name": name, "sampling_seconds": seconds, **metrics}


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
