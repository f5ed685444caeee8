"""The training loop: Algorithm 1 over the epochs, with everything a real run needs around it.

``objective.train_step`` is lines 3 to 5 of Algorithm 1 for one batch. ``train`` runs it over the
epochs (lines 1, 2 and 6) and attaches, around it and never inside it:

- the recipe (``recipe.RecipeHooks``): the learning-rate schedule, gradient clipping and the
  moving average of the weights, on the optimiser's step, and the loss weights w(t);
- the machine: channels-last activations, bfloat16 autocast (``precision="bf16"``), and under
  torchrun DistributedDataParallel with each process's share of the batch (see ``distributed.py``);
- the run folder (``run_folder.py``): one run per folder under a lock, a checkpoint after every
  epoch, written atomically, and exact resumption.

Resumption is exact: the data order of epoch ``e`` depends only on (seed, e), and the generators
that draw t and eps are saved with the optimiser, so a run interrupted after any epoch and resumed
ends with the same weights as the run straight through (on the CPU). A constant-rate run may also
be resumed with more epochs; a cosine-decay run only with the epochs it was planned for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_core.diffusion.conditioning import training_labels
from ddpm_core.diffusion.objective import TimestepWeights, train_step
from ddpm_core.diffusion.unet import UNet, UNetConfig
from ddpm_core.training import distributed
from ddpm_core.training.checkpoint import load_resume_state, save_resume_state, save_weights
from ddpm_core.training.data import load_mnist
from ddpm_core.training.lock import holds_run_lock
from ddpm_core.training.memory import check_step_memory
from ddpm_core.training.recipe import LEGACY_TRAIN_DEFAULTS, RecipeHooks, TrainConfig, timestep_weights
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import library_versions
from ddpm_core.utils.progress import EpochProgress


@dataclass
class TrainResult:
    out_dir: Path
    loss_history: list[float] = field(default_factory=list)  # mean loss of each epoch, epoch 1 first
    wall_time_s: float = 0.0  # training time summed over all sessions of this run
    device: str = ""


class Network:
    """eps_theta as each training step calls it: through DistributedDataParallel, which averages the processes'
    gradients, when processes share the batch, and under bfloat16 autocast with ``precision="bf16"``."""

    def __init__(self, model: UNet, config: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> None:
        self.null_label = model.null_label
        self._module: torch.nn.Module = model
        if ranks.distributed:
            device_ids = [device] if device.type == "cuda" else None
            self._module = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        self._bf16 = config.precision == "bf16"
        self._device_type = device.type

    def __call__(self, *inputs: Tensor) -> Tensor:
        if not self._bf16:
            return self._module(*inputs)
        with torch.autocast(self._device_type, dtype=torch.bfloat16):  # the loss meets it in fp32
            return self._module(*inputs)


def scaled(weights: TimestepWeights | None, batch_share: float) -> TimestepWeights | None:
    """The loss weights times ``batch_share``: under torchrun a process's part of the last batch can be smaller than
    the others', and DDP averages the processes' gradients as if the parts were equal; weighting each part by
    its share (its size times the number of processes over the batch's) gives the whole batch's mean."""
    if batch_share == 1.0:
        return weights
    return lambda t: batch_share * (weights(t) if weights is not None else torch.ones(t.shape, device=t.device))


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
    batch, DDP averages their gradients, and rank 0 alone writes (see ``ddpm_core.training.distributed``).

    Args:
        out_dir: folder for ``model.safetensors``, ``epochs/`` and ``resume.pt``.
        config: the training settings (default: the book's recipe, ``TrainConfig()``).
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
        return _train_in_folder(out_dir, config, model_config, resume, device, images, progress, labels, noise_shards,
                                ranks)
    except Exception as error:
        if ranks.distributed and distributed.lost_peer(error):
            epoch = RunFolder(out_dir).saved_epoch()
            saved = f"its last checkpoint (epoch {epoch})" if epoch else "no checkpoint yet"
            raise DDPMError(
                f"Process {ranks.rank} of {ranks.world_size} lost contact with the others: another process stopped "
                f"or hung ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {out_dir} "
                f"holds {saved}, intact; find the failed process in torchrun's report above, then start the same "
                f"command again{' with --resume' if epoch else ' (without --resume: there is nothing to resume)'}."
            ) from None
        raise
    finally:
        if ranks.distributed:
            distributed.stop()


def _train_in_folder(
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
        keep_freed_memory()  # no page fault per freed activation; see ddpm_core.utils.device
    folder = RunFolder(out_dir)
    folder.check_start(resume)
    if ranks.main:  # the folder is accepted: what a killed write of the package left here can go (nothing else)
        folder.remove_own_temporaries()
    images, labels = _training_data(config, model_config, images, labels)
    schedule = config.schedule()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format

    torch.manual_seed(config.seed)  # the initial weights, the same in every process
    model = UNet(model_config, schedule.alpha_bars).to(device=device, memory_format=memory_format)
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
        _check_resume(folder, state, config, model_config)
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

    check_step_memory(model, schedule, config, device, images, ranks, resume, out_dir)
    steps_per_epoch = math.ceil(images.shape[0] / config.batch_size)
    hooks = RecipeHooks(optimizer, model, config, steps_per_epoch * config.epochs, ema_state,
                        step=start_epoch * steps_per_epoch)
    network = Network(model, config, ranks, device)
    weights = timestep_weights(config, schedule)

    def step(x0: Tensor, batch_labels: Tensor | None, batch_share: float) -> Tensor:
        x0 = x0.to(device).contiguous(memory_format=memory_format)
        return train_step(network, schedule, optimizer, x0, generators, scaled(weights, batch_share),
                          batch_labels.to(device) if batch_labels is not None else None, config.p_uncond)

    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            model.train()
            started = time.perf_counter()
            total, seen = _run_epoch(step, images, labels, config, epoch, steps_per_epoch, ranks, progress, out_dir)
            generator_states = [g.get_state() for g in generators]
            if ranks.distributed:  # the epoch's mean over all processes, and every shard's generator for rank 0
                total, seen = distributed.all_sum([total, seen], device)
                generator_states = [s for states in distributed.gather(generator_states) for s in states]
            result.loss_history.append(total / seen)
            result.wall_time_s += time.perf_counter() - started
            if ranks.main:
                _save_first_or_next(folder, epoch, resume, model, ema_state, optimizer, generator_states, config,
                                    result)
            if ranks.distributed:
                distributed.barrier()  # no process runs ahead of the checkpoint
            if progress:
                tqdm.write(f"epoch {epoch}/{config.epochs}: mean loss {result.loss_history[-1]:.4f} "
                           f"({result.wall_time_s:.0f} s so far)")
    finally:
        hooks.remove()
    return result


def _run_epoch(
    step: Callable[[Tensor, Tensor | None, float], Tensor],
    images: Tensor,
    labels: Tensor | None,
    config: TrainConfig,
    epoch: int,
    steps_per_epoch: int,
    ranks: distributed.Ranks,
    progress: bool,
    out_dir: Path,
) -> tuple[float, int]:
    """One pass over the images in the epoch's order: the summed loss of this process's images and their count."""
    order = _epoch_order(config.seed, epoch, images.shape[0])
    epoch_progress = EpochProgress(steps_per_epoch, f"epoch {epoch}/{config.epochs}", progress)
    for index in range(steps_per_epoch):
        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
        local = batch.tensor_split(ranks.world_size)[ranks.rank]  # this process's part (all, alone)
        x0 = images[local]  # line 2 of Algorithm 1
        loss = step(x0, labels[local] if labels is not None else None, len(local) * ranks.world_size / len(batch))
        if not torch.isfinite(loss):
            epoch_progress.close()
            if epoch > 1:
                saved = f"The last good checkpoint in {out_dir} (epoch {epoch - 1}) was kept unchanged."
            else:
                saved = f"Nothing was saved in {out_dir}: no epoch had finished."
            raise DDPMError(
                f"Training stopped: the loss became {loss.item()} at epoch {epoch}, step {index + 1}. {saved} "
                f"Check the data for NaN or inf values, or start a new run with a lower learning rate (--lr) "
                f"in another folder; a resumed run keeps its learning rate and would diverge again."
            )
        epoch_progress.add(loss.item(), len(local))
    epoch_progress.close()
    return epoch_progress.total, epoch_progress.seen


def _training_data(
    config: TrainConfig, model_config: UNetConfig, images: Tensor | None, labels: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The images (MNIST's training set unless given) cut to ``config.subset``, and their labels if the network
    is conditional."""
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
    return images, training_labels(labels, images.shape[0], model_config.num_classes)


def _check_resume(folder: RunFolder, state: dict, config: TrainConfig, model_config: UNetConfig) -> None:
    """Refuse to resume a run with another architecture, fewer epochs or other settings than its own."""
    out_dir = folder.path
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
    requested = {k: v for k, v in asdict(config).items() if k != "epochs"}
    if saved != requested:
        changed = ", ".join(f"{k}: {saved.get(k)} -> {requested.get(k)}" for k in requested
                            if saved.get(k) != requested.get(k))
        raise DDPMError(
            f"The run in {out_dir} was started with other settings ({changed}). Only --epochs may change "
            f"on --resume; start a new run in another folder to change the rest."
        )


def _save_first_or_next(folder: RunFolder, epoch: int, resume: bool, *saved: object) -> None:
    try:
        _save_epoch(folder, epoch, *saved)
    except BaseException:
        if not resume and epoch == 1 and not folder.resume.exists():
            # The folder held no run's files when this one started, so what the unfinished first checkpoint
            # wrote is this run's own: remove it, so the folder is as it was and the same command works again.
            for path in (folder.epoch_file(1), folder.weights):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
        raise


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
