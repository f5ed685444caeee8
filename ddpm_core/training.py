"""Training eps_theta: Algorithm 1 of Ho et al. 2020, with the recipe this book's model uses.

    repeat
        x_0 ~ q(x_0);  t ~ Uniform{1, ..., T};  eps ~ N(0, I)
        take a gradient step on w(t) || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    until converged

With w(t) = 1 and a constant learning rate this is Algorithm 1 exactly. The defaults of
``TrainConfig`` are the recipe chosen by measured ablations (the book's chapter 7): min-SNR
weights w(t), a warm-up and cosine decay of the learning rate, gradient clipping at 1.0, and
an EMA of the weights that warms up.

``train_step`` is one pass of that loop on a batch; ``train`` runs it over the epochs.
Every epoch ends with a checkpoint (see ``checkpoint.py``). Resumption is exact: the data
order of epoch ``e`` depends only on (seed, e), and the generator that draws t and eps is
saved with the optimiser, so a run interrupted after any epoch and resumed ends with the
same weights as the run straight through (on the CPU). A constant-rate run may also be
resumed with more epochs; a cosine-decay run only with the epochs it was planned for.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_core import distributed
from ddpm_core.checkpoint import load_resume_state, save_resume_state, save_weights
from ddpm_core.data import load_mnist
from ddpm_core.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.errors import DDPMError
from ddpm_core.files import library_versions
from ddpm_core.lock import holds_run_lock
from ddpm_core.run_folder import EPOCHS_DIR as EPOCHS_DIR  # the names of a run's files, kept here for older code
from ddpm_core.run_folder import RESUME_FILE as RESUME_FILE
from ddpm_core.run_folder import WEIGHTS_FILE as WEIGHTS_FILE
from ddpm_core.run_folder import RunFolder
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.unet import UNet, UNetConfig

LR_DECAYS = ("constant", "cosine")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
# What a stored run without these settings did: the training loop before they were added.
LEGACY_TRAIN_DEFAULTS = {
    "warmup_steps": 0, "lr_decay": "constant", "grad_clip": None, "ema_warmup": False,
    "loss_weighting": "uniform", "min_snr_gamma": 5.0, "p_uncond": 0.1, "precision": "fp32",
}
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    # The defaults are the recipe chosen by the measured ablations of the chapter "What makes the digits
    # sharp" (ablations/); the reference run's recipe is lr=2e-4, constant, no clipping, uniform weights.
    epochs: int = 15  # passes over the training set
    batch_size: int = 128
    lr: float = 2e-3  # Adam's peak learning rate
    seed: int = 0  # sets the initial weights, the data order and every t and eps drawn
    ema_decay: float | None = 0.999  # keep an exponential moving average of the weights; None: off
    subset: int | None = None  # train on the first N images only (quick runs)
    num_steps: int = 1000  # T of the noise schedule
    beta_start: float = 1e-4
    beta_end: float = 0.02
    channels_last: bool = True  # NHWC activations: measured faster for convolutions on the CPU
    warmup_steps: int = 200  # raise the learning rate linearly from 0 to lr over this many steps
    lr_decay: str = "cosine"  # after the warm-up: "constant", or "cosine" down to 0 at the last step
    grad_clip: float | None = 1.0  # clip the gradients' global norm to this value; None: off
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1 + n) / (10 + n)) at step n, so early weights fade
    loss_weighting: str = "min_snr"  # "uniform" (L_simple) or "min_snr" (Hang et al. 2023)
    min_snr_gamma: float = 5.0  # gamma of min-SNR weighting: weight(t) = min(SNR(t), gamma) / SNR(t)
    p_uncond: float = 0.1  # conditional networks only: the share of labels dropped to "no class"
    precision: str = "fp32"  # "bf16": the network's forward pass under bfloat16 autocast, the loss in fp32

    def validate(self) -> None:
        if self.epochs < 1:
            raise DDPMError(f"epochs must be a positive integer, got {self.epochs}.")
        if self.batch_size < 1:
            raise DDPMError(f"batch_size must be a positive integer, got {self.batch_size}.")
        if not self.lr > 0:
            raise DDPMError(f"lr must be positive, got {self.lr}.")
        if self.subset is not None and self.subset < 1:
            raise DDPMError(f"subset must be a positive number of images, got {self.subset}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise DDPMError(f"ema_decay must lie strictly between 0 and 1 (e.g. 0.999), got {self.ema_decay}.")
        if self.warmup_steps < 0:
            raise DDPMError(f"warmup_steps must be 0 or more, got {self.warmup_steps}.")
        if self.lr_decay not in LR_DECAYS:
            raise DDPMError(f"lr_decay must be one of {LR_DECAYS}, got {self.lr_decay!r}.")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise DDPMError(f"grad_clip must be positive (e.g. 1.0), got {self.grad_clip}.")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise DDPMError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}.")
        if not self.min_snr_gamma > 0:
            raise DDPMError(f"min_snr_gamma must be positive (e.g. 5), got {self.min_snr_gamma}.")
        if not 0.0 <= self.p_uncond <= 1.0:
            raise DDPMError(f"p_uncond must lie between 0 and 1 (e.g. 0.1), got {self.p_uncond}.")
        if self.precision not in PRECISIONS:
            raise DDPMError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.num_steps, self.beta_start, self.beta_end)


@dataclass
class TrainResult:
    out_dir: Path
    loss_history: list[float] = field(default_factory=list)  # mean loss of each epoch, epoch 1 first
    wall_time_s: float = 0.0  # training time summed over all sessions of this run
    device: str = ""


def diffusion_loss(model: UNet, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """L_simple of Ho et al. 2020, eq. (14): the mean squared error between eps and eps_theta(x_t, t)."""
    xt = schedule.q_sample(x0, t, noise)
    return F.mse_loss(model(xt, t), noise)


def per_sample_loss(
    model: UNet, schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None
) -> Tensor:
    """The squared error of each image, averaged over its pixels: shape (B,). Its mean is L_simple.

    ``labels`` (B,) are passed to a conditional network; None asks an unconditional one.
    """
    xt = schedule.q_sample(x0, t, noise)
    eps_pred = model(xt, t) if labels is None else model(xt, t, labels)
    return (eps_pred - noise).square().flatten(1).mean(1)


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


def draw_t_and_noise(
    schedule: NoiseSchedule,
    x0: Tensor,
    generators: Sequence[torch.Generator],
    labels: Tensor | None = None,
    null_label: int | None = None,
    p_uncond: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Lines 3 and 4 of Algorithm 1 for a batch: t ~ U{1..T}, eps ~ N(0, I) and the dropped labels.

    The batch is cut into ``len(generators)`` equal parts (``tensor_split``), each drawn from its own
    generator in the order t, eps, labels: one part for a single process, and under torchrun the
    parts of the global batch this process holds (see ``ddpm_core.distributed``).
    """
    label_parts = labels.tensor_split(len(generators)) if labels is not None else [None] * len(generators)
    ts, noises, kept = [], [], []
    for generator, x, part_labels in zip(generators, x0.tensor_split(len(generators)), label_parts, strict=True):
        ts.append(torch.randint(1, schedule.num_steps + 1, (x.shape[0],), generator=generator))  # 3: t ~ U{1..T}
        noises.append(torch.randn(x.shape, generator=generator))  # 4: eps ~ N(0, I)
        if part_labels is not None:  # classifier-free guidance: some images train the "no class" prediction
            kept.append(drop_labels(part_labels, null_label, p_uncond, generator))
    return torch.cat(ts), torch.cat(noises), torch.cat(kept) if labels is not None else None


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based) of a run of ``total_steps`` steps."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine":
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.lr


def train_step(
    model: UNet,
    schedule: NoiseSchedule,
    optimizer: torch.optim.Optimizer,
    x0: Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
    config: TrainConfig,
    step: int = 0,
    total_steps: int = 1,
    ema_state: dict[str, Tensor] | None = None,
    labels: Tensor | None = None,
    share: float = 1.0,
) -> Tensor:
    """Lines 3 to 5 of Algorithm 1 (Ho et al. 2020) on one batch x0: draw t and eps, one gradient step.

    Args:
        model: eps_theta, in training mode, on its device.
        schedule: the noise schedule.
        optimizer: the optimiser of ``model``'s parameters.
        x0: a batch of training images in [-1, 1], (B, C, H, W), on the CPU.
        generator: the CPU generator that draws every t and eps of the run, or one per noise shard
            of the batch (see ``draw_t_and_noise``).
        config: the run's settings (loss weighting, learning-rate schedule, clipping, EMA).
        step: the 0-based optimiser step of the run, for the learning rate and the EMA warm-up.
        total_steps: the run's number of optimiser steps, for the cosine decay.
        ema_state: the EMA weights, updated in place (None: no EMA).
        labels: the classes of x0, (B,), for a conditional network (None: unconditional). A share
            ``config.p_uncond`` of them, drawn by ``generator``, is replaced by "no class".
        share: under torchrun, the size of this process's part of the global batch times the number
            of processes, divided by the global batch size (1 when the parts are equal, and alone):
            DDP averages the processes' gradients, so scaling by it gives the global batch's mean.

    Returns:
        L_simple of the batch, a 0-d tensor. A loss that is not finite is returned before any
        update, so the caller can stop with the weights unchanged.
    """
    unet = getattr(model, "module", model)  # the UNet itself when DistributedDataParallel wraps it
    device = next(unet.parameters()).device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    generators = [generator] if isinstance(generator, torch.Generator) else list(generator)
    # 3: t ~ U{1..T}, 4: eps ~ N(0, I), and the labels dropped to "no class" of a conditional network
    t, noise, labels = draw_t_and_noise(schedule, x0, generators, labels, unet.null_label, config.p_uncond)
    x0, t, noise = (v.to(device) for v in (x0, t, noise))
    labels = labels.to(device) if labels is not None else None
    x0 = x0.contiguous(memory_format=memory_format)
    noise = noise.contiguous(memory_format=memory_format)
    # 5: || eps - eps_theta(sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, t) ||^2, eq. (14)
    bf16 = torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bf16" else contextlib.nullcontext()
    with bf16:  # the network in bfloat16; its output meets the fp32 noise, so the loss is fp32
        losses = per_sample_loss(model, schedule, x0, t, noise, labels).float()
    loss = losses.mean()  # L_simple, the loss every run reports
    if not torch.isfinite(loss):
        return loss
    objective = loss
    if config.loss_weighting == "min_snr":
        objective = (min_snr_weights(schedule, t, config.min_snr_gamma) * losses).mean()
    objective = objective * share  # exactly the objective alone (share 1)
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(config, step, total_steps)
    optimizer.zero_grad(set_to_none=True)
    objective.backward()  # 5: the gradient of the loss
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    optimizer.step()  # 5: the gradient step
    if ema_state is not None:
        update_ema(ema_state, unet, config, step)
    return loss


def update_ema(ema_state: dict[str, Tensor], model: torch.nn.Module, config: TrainConfig, step: int) -> None:
    """Move the EMA weights a share 1 - d towards the model's: ema <- d ema + (1 - d) theta, in place.

    d is ``config.ema_decay``; with ``config.ema_warmup`` it is min(d, (1 + n) / (10 + n)) for the
    n-th update (n = step + 1), so the first updates forget the initial weights quickly.
    """
    decay = config.ema_decay
    if config.ema_warmup:
        decay = min(decay, (2 + step) / (11 + step))  # n = step + 1 updates
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].lerp_(value, 1.0 - decay)


def _epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    # The permutation of epoch e depends on (seed, e) only, so a resumed run sees the same order.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@holds_run_lock  # one run per folder; see lock.py
def train(
    out_dir: str | Path,
    config: TrainConfig | None = None,
    model_config: UNetConfig | None = None,
    resume: bool = False,
    device: str | torch.device = "auto",
    images: Tensor | None = None,
    progress: bool = True,
    labels: Tensor | None = None,
    noise_shards: int | None = None,
) -> TrainResult:
    """Train a UNet and write a checkpoint into ``out_dir`` after every epoch.

    Under ``torchrun --nproc-per-node N`` each of the N processes runs this function: they split every
    batch, DDP averages their gradients, and rank 0 alone writes (see ``ddpm_core.distributed``).

    Args:
        out_dir: folder for ``model.safetensors``, ``epochs/`` and ``resume.pt``.
        config: the training settings (default: the reference run's).
        model_config: the architecture (default: the 324,705-parameter UNet).
        resume: continue the run saved in ``out_dir`` up to ``config.epochs``.
        device: "auto" (CUDA, then MPS, then CPU) or a device name.
        images: training images in [-1, 1], shape (N, 1, 28, 28); default: MNIST's training set.
        progress: show a tqdm progress bar per epoch and print each epoch's mean loss.
        labels: the classes of ``images``, (N,), which a conditional network
            (``model_config.num_classes``) needs; default: MNIST's training labels.
        noise_shards: draw t and eps of each batch in this many parts, each from its own generator
            (default: one per process). A single process with ``noise_shards=N`` trains as N
            processes under torchrun do; a resumed run keeps the number it started with.
    """
    config = config or TrainConfig()
    model_config = model_config or UNetConfig()
    config.validate()
    out_dir = Path(out_dir)
    ranks = distributed.ranks_from_env()
    if config.batch_size % ranks.world_size:
        raise DDPMError(
            f"The batch of {config.batch_size} images cannot be split equally over {ranks.world_size} processes: "
            f"choose a --batch-size that {ranks.world_size} divides (the batch is the global one, split across "
            f"the processes), or another number of processes."
        )
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if ranks.distributed:
        device = distributed.start(ranks, device)
        progress = progress and ranks.main
    try:
        return _train(out_dir, config, model_config, resume, device, images, progress, labels, noise_shards, ranks)
    except Exception as error:
        if ranks.distributed and distributed.lost_peer(error):
            epoch = RunFolder(out_dir).saved_epoch()
            kept = f"its last checkpoint (epoch {epoch})" if epoch else "no checkpoint yet"
            raise DDPMError(
                f"Process {ranks.rank} of {ranks.world_size} lost contact with the others: another process stopped "
                f"or hung ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {out_dir} "
                f"holds {kept}, intact; find the failed process in torchrun's report above, then start the same "
                f"command again{' with --resume' if epoch else ' (without --resume: there is nothing to resume)'}."
            ) from None
        raise
    finally:
        if ranks.distributed:
            distributed.stop()


def saved_epoch(out_dir: str | Path) -> int | None:
    """The epoch that ``resume=True`` would continue from in ``out_dir``, or None if there is none."""
    return RunFolder(out_dir).saved_epoch()


def _check_run_folder(folder: RunFolder, resume: bool) -> None:
    """Refuse, before anything is loaded, a folder whose files this run would overwrite or mix with its own.

    A new run starts only in a folder without any run's files; a resumed run only where ``resume.pt``
    is a regular file (a pipe or a folder of that name is never opened).
    """
    present = folder.run_files()
    if folder.resumable():
        if not resume:
            epoch = folder.saved_epoch()
            saved = f"{epoch} epoch{'s' if epoch != 1 else ''} saved: " if epoch is not None else ""
            raise DDPMError(
                f"{folder.path} already holds a training run. Pass --resume (resume=True) to continue it "
                f"({saved}{folder.describe(present)}), or choose another --out folder; nothing was overwritten."
            )
        # What a checkpoint replaces must be a file (or a link, which is replaced itself), and epochs/ a folder.
        blocking = [p for p in (folder.weights,) if p.exists() and not p.is_file()]
        blocking += [folder.epochs] if folder.epochs.exists() and not folder.epochs.is_dir() else []
        if blocking:
            names = ", ".join(str(p) for p in blocking)
            raise DDPMError(
                f"The run in {folder.path} cannot save its checkpoints: {names} should be "
                f"{'a file' if blocking[0] == folder.weights else 'a folder'} but is something else. Move it out of "
                f"{folder.path}, then resume again; nothing was changed."
            )
        return
    if present:
        checkpoint = folder.sampling_checkpoint()
        weights = (f" Its weights stay usable for sampling: pass --checkpoint {checkpoint} to "
                   f"`python -m ddpm_core sample`." if checkpoint is not None else "")
        raise DDPMError(
            f"{folder.path} holds files of an earlier training run ({folder.describe(present)}), but "
            f"{folder.resume_problem()}, so that run cannot be continued{' with --resume' if resume else ''}: "
            f"{RESUME_FILE} holds the optimiser and random-number states that continuing needs.{weights} Start a "
            f"new run in another --out folder, or move those files out of {folder.path} to start one there; "
            f"nothing was overwritten."
        )
    if resume:
        raise DDPMError(
            f"Nothing to resume in {folder.path}: {folder.resume_problem()}, and no other file of a training run is "
            f"there. Drop --resume (resume=False) to start a new run there."
        )


def _train(
    out_dir: Path,
    config: TrainConfig,
    model_config: UNetConfig,
    resume: bool,
    device: torch.device,
    images: Tensor | None,
    progress: bool,
    labels: Tensor | None,
    noise_shards: int | None,
    ranks: distributed.Ranks,
) -> TrainResult:
    if device.type == "cpu":
        keep_freed_memory()  # no page fault per freed activation; see ddpm_core.device
    folder = RunFolder(out_dir)
    _check_run_folder(folder, resume)
    if ranks.main:  # the folder is accepted: what a killed write of the package left here can go (nothing else)
        folder.remove_own_temporaries()

    conditional = model_config.num_classes is not None
    if images is None:
        images, labels = load_mnist(train=True, subset=config.subset)
    elif config.subset is not None:
        images = images[: config.subset]
        labels = labels[: config.subset] if labels is not None else None
    if config.subset is not None and images.shape[0] < config.subset:
        raise DDPMError(
            f"--subset {config.subset:,} asks for more images than the training set has: it holds "
            f"{images.shape[0]:,}. Pass --subset {images.shape[0]} or less, or drop --subset to train on all of them."
        )
    if conditional:
        _check_labels(labels, images, model_config.num_classes)
    else:
        labels = None  # an unconditional network never sees them
    schedule = config.schedule()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    torch.manual_seed(config.seed)  # the initial weights, the same in every process
    model = UNet(model_config).to(device=device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    state = load_resume_state(folder.resume) if resume else None
    noise_shards = int(state.get("noise_shards", 1)) if state is not None else noise_shards or ranks.world_size
    shards = distributed.owned_shards(ranks, noise_shards)
    # Every t and eps of the run: one generator per noise shard this process draws (one, alone).
    generators = [torch.Generator().manual_seed(distributed.shard_seed(config.seed, j)) for j in shards]
    ema_state = (
        {k: v.detach().clone() for k, v in model.state_dict().items()} if config.ema_decay is not None else None
    )
    processes = f" x {ranks.world_size} processes (DDP)" if ranks.distributed else ""
    result = TrainResult(out_dir=out_dir, device=device_description(device) + processes)
    start_epoch = 0

    if state is not None:
        saved_architecture = UNetConfig.from_dict(state["model_config"])
        if saved_architecture != model_config:
            raise _architecture_mismatch(out_dir, saved_architecture, model_config)
        planned = state["train_config"].get("epochs")
        if config.lr_decay == "cosine" and planned != config.epochs:
            raise DDPMError(
                f"The run in {out_dir} decays its learning rate along a cosine planned for {planned} epochs, so it "
                f"resumes only with --epochs {planned}. With --epochs {config.epochs} the rate would jump back up "
                f"from where the old plan left it. Resume with --epochs {planned}, or start a new run with "
                f"--epochs {config.epochs} so that the decay spans all of them."
            )
        done = int(state["epoch"])
        if config.epochs < done:
            raise DDPMError(
                f"The run in {out_dir} already has {done} epochs, and --epochs {config.epochs} asks for fewer. "
                f"--epochs counts all of a run's epochs, the saved ones included, so it must be at least {done}: "
                f"pass --epochs {done + 1} or more with --resume to train it further. Its weights after epoch {done} "
                f"are in {folder.weights}; nothing was changed."
            )
        saved = {k: v for k, v in {**LEGACY_TRAIN_DEFAULTS, **state["train_config"]}.items() if k != "epochs"}
        asked = {k: v for k, v in asdict(config).items() if k != "epochs"}
        if saved != asked:
            changed = ", ".join(f"{k}: {saved.get(k)} -> {asked.get(k)}" for k in asked if saved.get(k) != asked.get(k))
            raise DDPMError(
                f"The run in {out_dir} was started with other settings ({changed}). Only --epochs may change "
                f"on --resume; start a new run in another folder to change the rest."
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for generator, saved_state in zip(generators, state.get("generators", [state["generator"]])[shards.start:],
                                          strict=False):
            generator.set_state(saved_state)
        torch.set_rng_state(state["torch_rng"])
        if ema_state is not None:
            ema_state = {k: v.to(device) for k, v in state["ema"].items()}
        start_epoch = int(state["epoch"])
        result.loss_history = list(state["loss_history"])
        result.wall_time_s = float(state["wall_time_s"])
        if start_epoch >= config.epochs:
            return result

    n = images.shape[0]
    _check_memory(model, schedule, config, device, images, ranks, resume, out_dir)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    stepped = model  # what the training step calls: DDP averages the gradients of all processes
    if ranks.distributed:
        device_ids = [device] if device.type == "cuda" else None
        stepped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        order = _epoch_order(config.seed, epoch, n)
        total, seen = 0.0, 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            local = batch.tensor_split(ranks.world_size)[ranks.rank]  # this process's part (all, alone)
            x0 = images[local]  # line 2 of Algorithm 1
            b = x0.shape[0]
            global_step = (epoch - 1) * steps_per_epoch + step
            loss = train_step(stepped, schedule, optimizer, x0, generators, config, global_step, total_steps,
                              ema_state, labels=labels[local] if labels is not None else None,
                              share=b * ranks.world_size / len(batch))
            if not torch.isfinite(loss):
                bar.close()
                if epoch > 1:
                    kept = f"The last good checkpoint in {out_dir} (epoch {epoch - 1}) was kept unchanged."
                else:
                    kept = f"Nothing was saved in {out_dir}: no epoch had finished."
                raise DDPMError(
                    f"Training stopped: the loss became {loss.item()} at epoch {epoch}, step {step + 1}. {kept} "
                    f"Check the data for NaN or inf values, or start a new run with a lower learning rate (--lr) "
                    f"in another folder; a resumed run keeps its learning rate and would diverge again."
                )
            total += loss.item() * b
            seen += b
            bar.update()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / seen:.4f}")
        bar.close()
        generator_states = [g.get_state() for g in generators]
        if ranks.distributed:  # the epoch's mean over all processes, and every shard's generator for rank 0
            total, seen = distributed.all_sum([total, seen], device)
            generator_states = [s for states in distributed.gather(generator_states) for s in states]
        result.loss_history.append(total / seen)
        result.wall_time_s += time.perf_counter() - started
        if ranks.main:
            try:
                _save_epoch(folder, epoch, model, ema_state, optimizer, generator_states, config, result)
            except BaseException:
                if not resume and epoch == 1 and not folder.resume.exists():
                    # The folder held no run's files when this one started, so what the unfinished first checkpoint
                    # wrote is this run's own: remove it, so the folder is as it was and the same command works again.
                    for path in (folder.epoch_file(1), folder.weights):
                        if path.is_file() and not path.is_symlink():
                            path.unlink()
                raise
        if ranks.distributed:
            distributed.barrier()  # no process runs ahead of the checkpoint
        if progress:
            tqdm.write(
                f"epoch {epoch}/{config.epochs}: mean loss {result.loss_history[-1]:.4f} "
                f"({result.wall_time_s:.0f} s so far)"
            )
    return result


def _check_labels(labels: Tensor | None, images: Tensor, num_classes: int) -> None:
    if labels is None:
        raise DDPMError(
            f"A conditional network (num_classes={num_classes}) trains on labelled images: pass labels= with one "
            f"class per image, or train an unconditional network (num_classes=None)."
        )
    if labels.shape != (images.shape[0],):
        raise DDPMError(f"labels must have one entry per image, shape ({images.shape[0]},), got {tuple(labels.shape)}.")
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise DDPMError(
            f"labels must lie in 0..{num_classes - 1} for num_classes={num_classes}, got "
            f"{int(labels.min())}..{int(labels.max())}."
        )


# The command-line flag of each architecture field that has one (see cli.py).
_ARCHITECTURE_FLAGS = {"channels": "--channels", "time_embed_dim": "--time-embed-dim", "attention": "--attention",
                       "downsample": "--downsample"}


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def _architecture_mismatch(out_dir: Path, saved: UNetConfig, asked: UNetConfig) -> DDPMError:
    """The architecture a resumed run was asked for differs from its own: each difference, and how to match it."""
    differences = []
    conditionality_differs = (saved.num_classes is None) != (asked.num_classes is None)
    if conditionality_differs and saved.num_classes is not None:
        differences.append(f"it is a conditional network ({saved.num_classes} classes): add --conditional")
    elif conditionality_differs:
        differences.append("it is an unconditional network: drop --conditional")
    for name in (f.name for f in fields(UNetConfig)):
        old, new = getattr(saved, name), getattr(asked, name)
        if old == new or (name == "num_classes" and conditionality_differs):
            continue
        if name in _ARCHITECTURE_FLAGS:
            how = f"pass {_ARCHITECTURE_FLAGS[name]} {_shown(old)}"
        elif name == "zero_init":
            how = "pass --zero-init" if old else "pass --no-zero-init"
        else:  # no flag: only Python's UNetConfig sets it
            how = f"use UNetConfig({name}={old!r})"
        differences.append(f"{name} {_shown(old)} in the run, {_shown(new)} asked: {how}")
    return DDPMError(
        f"The run in {out_dir} cannot be resumed with another architecture: {'; '.join(differences)}. Resume it "
        f"with its own model settings, or start a new run in another --out folder to train the new architecture."
    )


# A training step's peak memory over what autograd saves for its backward pass: the gradients flowing back
# through the network, the convolutions' workspace and the allocator's rounding. Measured on the CPU (peak
# resident memory of one step, the book's networks, batches of 256 to 4096): 1.05 to 1.4 times the saved
# activations in fp32, and 1.65 to 2.0 times under bf16 autocast, whose backward pass works in fp32.
MEMORY_MARGIN = {"fp32": 1.5, "bf16": 2.5}
MEMORY_OVERHEAD = 256 * 2**20  # libraries' own buffers and the batch's inputs: a fixed allowance


def activation_bytes_per_image(
    model: UNet, schedule: NoiseSchedule, config: TrainConfig, image_shape: tuple[int, ...]
) -> int:
    """The bytes that one more image adds to what a training step keeps for its backward pass.

    Runs the real network's forward pass and loss on one and on two blank images, with the run's
    memory format and precision, and counts the storage of every tensor autograd saves
    (``saved_tensors_hooks``); the difference leaves out what does not grow with the batch, such as
    the weights. Draws nothing from any random generator, so a run's results do not change.
    """
    device = next(model.parameters()).device
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.precision == "bf16"
                else contextlib.nullcontext())

    def saved_bytes(batch: int) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: Tensor) -> Tensor:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
            return tensor

        x0 = torch.zeros(batch, *image_shape, device=device).contiguous(memory_format=memory_format)
        t = torch.full((batch,), schedule.num_steps, device=device)
        labels = torch.zeros(batch, dtype=torch.long, device=device) if model.config.num_classes else None
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
            loss = per_sample_loss(model, schedule, x0, t, x0, labels).float().mean()
        del loss  # frees the graph and what it saved
        return sum(storages.values())

    return max(0, saved_bytes(2) - saved_bytes(1))


def available_memory(device: torch.device) -> int | None:
    """The bytes a training step on ``device`` can still allocate, or None where that cannot be read (MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # What this process's caching allocator holds but does not use is free to it as well.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            fields_kb = {line.split(":")[0]: int(line.split()[1]) for line in meminfo if line.count(":") == 1}
        available = fields_kb["MemAvailable"] * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return None
    headroom = _cgroup_headroom()  # a container's memory limit can be far below the machine's free memory
    return available if headroom is None else min(available, headroom)


def _cgroup_headroom() -> int | None:
    """How far this container's memory use is below its limit (cgroup v2, then v1); None without a limit."""
    for limit_file, usage_file, stat_file, cache_key in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
         "inactive_file"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
         "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"),
    ):
        try:
            with open(limit_file) as f:
                limit_text = f.read().strip()
            if limit_text == "max" or int(limit_text) >= 2**60:  # no limit
                return None
            with open(usage_file) as f:
                usage = int(f.read())
            with open(stat_file) as f:  # the page cache it could drop counts as free
                cache = next((int(line.split()[1]) for line in f if line.split()[0] == cache_key), 0)
        except (OSError, ValueError, IndexError):
            continue
        return max(0, int(limit_text) - (usage - cache))
    return None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _check_memory(
    model: UNet,
    schedule: NoiseSchedule,
    config: TrainConfig,
    device: torch.device,
    images: Tensor,
    ranks: distributed.Ranks,
    resume: bool,
    out_dir: Path,
) -> None:
    """Refuse, before the first step, a batch whose training step would not fit in the device's free memory."""
    available = available_memory(device)
    if available is None:
        return
    n = images.shape[0]
    local_batch = math.ceil(min(config.batch_size, n) / ranks.world_size)
    saved = activation_bytes_per_image(model, schedule, config, tuple(images.shape[1:]))
    per_image = MEMORY_MARGIN[config.precision] * saved
    # The gradients and Adam's two moments, which the first step allocates, beside the weights already there.
    fixed = MEMORY_OVERHEAD + 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    sharing = ranks.world_size if device.type == "cpu" else 1  # processes on one machine share its memory
    needed = sharing * (fixed + per_image * local_batch)
    if needed <= available:
        return
    where = "this machine's memory" if device.type == "cpu" else f"{device} ({device_description(device)})"
    per_process = int((available / sharing - fixed) // per_image) if per_image else 0
    fits = per_process * ranks.world_size  # the largest global batch that fits
    if fits >= ranks.world_size:
        power = 2 ** int(math.log2(fits))
        fits = power if power % ranks.world_size == 0 else fits // ranks.world_size * ranks.world_size
    message = (
        f"A training step with --batch-size {config.batch_size} needs about {_size(needed)} of memory "
        f"(about {_size(per_image)} per image), but only {_size(available)} of {where} are free. "
    )
    if fits < ranks.world_size:
        advice = ("Not even one image per step fits: free memory (close other programs), or train a smaller network "
                  "(--channels).")
    elif resume:
        advice = (f"A resumed run keeps the batch size it was started with: free memory (close other programs) and "
                  f"resume again, or start a new run in another --out folder with --batch-size {fits} or less, "
                  f"which fits.")
    else:
        advice = f"Pass --batch-size {fits} or less, which fits."
    raise DDPMError(f"{message}{advice} Nothing was trained or saved in {out_dir}.")


def _save_epoch(
    folder: RunFolder,
    epoch: int,
    model: UNet,
    ema_state: dict[str, Tensor] | None,
    optimizer: torch.optim.Optimizer,
    generator_states: list[Tensor],
    config: TrainConfig,
    result: TrainResult,
) -> None:
    metadata = {
        "epoch": epoch,
        "loss_history": result.loss_history,
        "seed": config.seed,
        "wall_time_s": round(result.wall_time_s, 2),
        "device": result.device,
        "train_config": asdict(config),
        "schedule": {"num_steps": config.num_steps, "beta_start": config.beta_start, "beta_end": config.beta_end},
        "versions": library_versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    save_weights(folder.epoch_file(epoch), model, metadata, ema_state)
    save_weights(folder.weights, model, metadata, ema_state)
    # The resume state carries the weights too, so it is consistent on its own
    # even if a crash falls between the two writes.
    state = {
        "epoch": epoch,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "generator": generator_states[0],  # noise shard 0: a single process's only generator
        "generators": generator_states,  # every noise shard's, so any number of processes can resume
        "noise_shards": len(generator_states),
        "torch_rng": torch.get_rng_state(),
        "ema": {k: v.detach().cpu() for k, v in ema_state.items()} if ema_state is not None else {},
        "loss_history": list(result.loss_history),
        "wall_time_s": result.wall_time_s,
        "model_config": model.config.to_dict(),
        "train_config": asdict(config),
    }
    save_resume_state(folder.resume, state)
