"""The training loop: Algorithm 1 over the epochs, with everything a real run needs around it.

``objective.train_step`` is lines 2 to 5 of Algorithm 1 for one batch x_0, which the loop draws
in the epoch's order. ``train`` runs it over the epochs (lines 1 and 6) and attaches, around it and
never inside it:

- the recipe (``recipe.RecipeHooks``): the learning-rate schedule, gradient clipping and the
  moving average of the weights, on the optimiser's step, and the loss weights w(t);
- the machine: channels-last activations, bfloat16 autocast (``precision="bf16"``), and under
  torchrun DistributedDataParallel with each process's share of the batch and of the noise shards
  (see ``distributed.py``);
- a conditional network's labels, a share of them dropped to "no class" (``objective.LabelDropout``);
- the run folder (``run_folder.py``): one run per folder under a lock, and after every epoch the
  weights (``checkpoint.py``) and the resume state (``resume.py``), each written atomically.

Resumption is exact: the data order of epoch ``e`` depends only on (seed, e) (``run_seeds.py``), and
the generators that draw t and eps are saved with the optimiser, so a run interrupted after any
epoch and resumed ends with the same weights as the run straight through (on the CPU). A
constant-rate run may also be resumed with more epochs; a cosine-decay run only with the epochs it
was planned for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_core.diffusion.conditioning import training_labels
from ddpm_core.diffusion.objective import LabelDropout, TimestepWeights, noise_shards, train_step
from ddpm_core.diffusion.unet import UNet, UNetConfig
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training import distributed
from ddpm_core.training.checkpoint import save_weights
from ddpm_core.training.checkpoint_metadata import run_metadata
from ddpm_core.training.data import load_mnist
from ddpm_core.training.describe import short
from ddpm_core.training.lock import holds_run_lock
from ddpm_core.training.memory import check_step_memory
from ddpm_core.training.recipe import RecipeHooks, TrainConfig, timestep_weights
from ddpm_core.training.resume import check_resume, load_resume_state, restore, resume_state, save_resume_state
from ddpm_core.training.resume_checks import MAX_NOISE_SHARDS
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.training.run_seeds import derive_seed
from ddpm_core.utils.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.progress import EpochProgress


@dataclass
class TrainResult:
    """What ``train`` returns: where the run is, its losses and its time."""

    out_dir: Path
    loss_history: list[float] = field(default_factory=list)  # mean loss of each epoch, epoch 1 first
    wall_time_s: float = 0.0  # training time summed over all sessions of this run
    device: str = ""


class Network:
    """eps_theta as each training step calls it: through DistributedDataParallel, which averages the processes'
    gradients, when processes share the batch, and under bfloat16 autocast with ``precision="bf16"``."""

    def __init__(self, model: UNet, config: TrainConfig, ranks: distributed.Ranks, device: torch.device) -> None:
        self.null_label = getattr(model, "null_label", None)
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
    return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(seed, "data order", epoch)))


@dataclass
class _Run:
    """One process's part of a training run: what every epoch reads and updates."""

    folder: RunFolder
    config: TrainConfig
    ranks: distributed.Ranks
    device: torch.device
    images: Tensor  # in [-1, 1], (N, C, H, W)
    labels: Tensor | None  # (N,), for a conditional network
    model: UNet
    optimizer: torch.optim.Optimizer
    generators: list[torch.Generator]  # one per noise shard this process draws (one, alone)
    ema_state: dict[str, Tensor] | None
    result: TrainResult
    resumed: bool
    start_epoch: int = 0  # the epochs already done


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
    _check_noise_shards(noise_shards)
    out_dir = Path(out_dir)
    ranks = distributed.ranks_from_env()
    _check_batch_split(config, ranks)
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if ranks.distributed:
        device = distributed.start(ranks, device)
        progress = progress and ranks.main
    try:
        run = _start(out_dir, config, model_config, resume, device, images, labels, noise_shards, ranks)
        if run.start_epoch < config.epochs:
            _train_epochs(run, progress)
        return run.result
    except Exception as error:
        if ranks.distributed and distributed.lost_peer(error):
            raise _lost_contact(out_dir, ranks, error) from None
        raise
    finally:
        if ranks.distributed:
            distributed.stop()


def _check_noise_shards(noise_shards: int | None) -> None:
    if noise_shards is not None and not (isinstance(noise_shards, int) and not isinstance(noise_shards, bool)
                                         and 1 <= noise_shards <= MAX_NOISE_SHARDS):
        raise DDPMError(f"noise_shards must be a whole number from 1 to {MAX_NOISE_SHARDS:,} (one per process of the "
                        f"run it stands for), got {short(noise_shards)}.")


def _check_batch_split(config: TrainConfig, ranks: distributed.Ranks) -> None:
    if config.batch_size % ranks.world_size:
        raise DDPMError(
            f"The batch of {config.batch_size} images cannot be split equally over {ranks.world_size} processes: "
            f"choose a --batch-size that {ranks.world_size} divides (the batch is the global one, split across "
            f"the processes), or another number of processes."
        )


def _lost_contact(out_dir: Path, ranks: distributed.Ranks, error: Exception) -> DDPMError:
    epoch = RunFolder(out_dir).saved_epoch()
    saved = f"its last checkpoint (epoch {epoch})" if epoch else "no checkpoint yet"
    return DDPMError(
        f"Process {ranks.rank} of {ranks.world_size} lost contact with the others: another process stopped "
        f"or hung ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). {out_dir} "
        f"holds {saved}, intact; find the failed process in torchrun's report above, then start the same "
        f"command again{' with --resume' if epoch else ' (without --resume: there is nothing to resume)'}."
    )


def _start(
    out_dir: Path,
    config: TrainConfig,
    model_config: UNetConfig,
    resume: bool,
    device: torch.device,
    images: Tensor | None,
    labels: Tensor | None,
    noise_shards: int | None,
    ranks: distributed.Ranks,
) -> _Run:
    """Accept the folder, read the data, and build the network, its optimiser and generators (resumed if asked)."""
    if device.type == "cpu":
        keep_freed_memory()  # no page fault per freed activation; see ddpm_core.utils.device
    folder = RunFolder(out_dir)
    folder.check_start(resume)
    state = load_resume_state(folder.resume) if resume else None  # every entry checked, before the data loads
    if state is not None:
        check_resume(folder, state, config, model_config)
    if ranks.main:  # the folder is accepted: what a killed write of the package left here can go (nothing else)
        folder.remove_own_temporaries()
    images, labels = _training_data(config, model_config, images, labels)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    torch.manual_seed(config.seed)  # the initial weights, the same in every process
    model = build_unet(model_config, config.schedule().alpha_bars).to(device=device, memory_format=memory_format)
    noise_shards = state["noise_shards"] if state is not None else noise_shards or ranks.world_size
    shards = distributed.owned_shards(ranks, noise_shards)
    ema = config.ema_decay is not None
    processes = f" x {ranks.world_size} processes (DDP)" if ranks.distributed else ""
    run = _Run(
        folder, config, ranks, device, images, labels, model, torch.optim.Adam(model.parameters(), lr=config.lr),
        generators=[torch.Generator().manual_seed(distributed.shard_seed(config.seed, j)) for j in shards],
        ema_state={k: v.detach().clone() for k, v in model.state_dict().items()} if ema else None,
        result=TrainResult(out_dir=out_dir, device=device_description(device) + processes),
        resumed=resume,
    )
    if state is not None:
        _resume(run, state, shards.start)
    return run


def _resume(run: _Run, state: dict, first_shard: int) -> None:
    """Continue ``run`` from the resume state ``state``; this process draws the noise shards from ``first_shard``."""
    restore(state, run.model, run.optimizer, run.generators, first_shard)
    if run.ema_state is not None:
        run.ema_state = {k: v.to(run.device) for k, v in state["ema"].items()}
    run.start_epoch = int(state["epoch"])
    run.result.loss_history = list(state["loss_history"])
    run.result.wall_time_s = float(state["wall_time_s"])


def _train_epochs(run: _Run, progress: bool) -> None:
    """The epochs after ``run.start_epoch``, each ending with a checkpoint."""
    config, device, schedule = run.config, run.device, run.config.schedule()
    check_step_memory(run.model, schedule, config, device, run.images, run.ranks, run.resumed, run.folder.path)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    steps_per_epoch = math.ceil(run.images.shape[0] / config.batch_size)
    hooks = RecipeHooks(run.optimizer, run.model, config, steps_per_epoch * config.epochs, run.ema_state,
                        step=run.start_epoch * steps_per_epoch)
    network = Network(run.model, config, run.ranks, device)
    weights = timestep_weights(config, schedule)

    def step(x0: Tensor, batch_labels: Tensor | None, batch_share: float) -> Tensor:
        x0 = x0.to(device).contiguous(memory_format=memory_format)
        with noise_shards(run.generators) as generator:  # one generator, or one standing for this process's shards
            model = network if batch_labels is None else LabelDropout(network, batch_labels, config.p_uncond, generator)
            return train_step(model, schedule, run.optimizer, x0, generator, scaled(weights, batch_share))

    try:
        for epoch in range(run.start_epoch + 1, config.epochs + 1):
            run.model.train()
            started = time.perf_counter()
            total, seen = _run_epoch(step, run, epoch, steps_per_epoch, progress)
            _end_epoch(run, epoch, total, seen, started)
            if progress:
                tqdm.write(f"epoch {epoch}/{config.epochs}: mean loss {run.result.loss_history[-1]:.4f} "
                           f"({run.result.wall_time_s:.0f} s so far)")
    finally:
        hooks.remove()


def _run_epoch(
    step: Callable[[Tensor, Tensor | None, float], Tensor], run: _Run, epoch: int, steps_per_epoch: int, progress: bool
) -> tuple[float, int]:
    """One pass over the images in the epoch's order: the summed loss of this process's images and their count."""
    config, ranks, labels = run.config, run.ranks, run.labels
    order = _epoch_order(config.seed, epoch, run.images.shape[0])
    epoch_progress = EpochProgress(steps_per_epoch, f"epoch {epoch}/{config.epochs}", progress)
    for index in range(steps_per_epoch):
        batch = order[index * config.batch_size : (index + 1) * config.batch_size]
        local = batch.tensor_split(ranks.world_size)[ranks.rank]  # this process's part (all, alone)
        x0 = run.images[local]  # line 2 of Algorithm 1
        loss = step(x0, labels[local] if labels is not None else None, len(local) * ranks.world_size / len(batch))
        if not torch.isfinite(loss):
            epoch_progress.close()
            raise _diverged(run.folder.path, loss, epoch, index)
        epoch_progress.add(loss.item(), len(local))
    epoch_progress.close()
    return epoch_progress.total, epoch_progress.seen


def _diverged(out_dir: Path, loss: Tensor, epoch: int, index: int) -> DDPMError:
    if epoch > 1:
        saved = f"The last good checkpoint in {out_dir} (epoch {epoch - 1}) was kept unchanged."
    else:
        saved = f"Nothing was saved in {out_dir}: no epoch had finished."
    return DDPMError(
        f"Training stopped: the loss became {loss.item()} at epoch {epoch}, step {index + 1}. {saved} "
        f"Check the data for NaN or inf values, or start a new run with a lower learning rate (--lr) "
        f"in another --out folder; a resumed run keeps its learning rate and would diverge again."
    )


def _end_epoch(run: _Run, epoch: int, total: float, seen: int, started: float) -> None:
    """Record the epoch's mean loss over all processes and its wall time, and save its checkpoint (rank 0)."""
    generator_states = [g.get_state() for g in run.generators]
    if run.ranks.distributed:  # the epoch's mean over all processes, and every shard's generator for rank 0
        total, seen = distributed.all_sum([total, seen], run.device)
        generator_states = [s for states in distributed.gather(generator_states) for s in states]
    run.result.loss_history.append(total / seen)
    run.result.wall_time_s += time.perf_counter() - started
    if run.ranks.main:
        _save_first_or_next(run, epoch, generator_states)
    if run.ranks.distributed:
        distributed.barrier()  # no process runs ahead of the checkpoint


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


def _save_first_or_next(run: _Run, epoch: int, generator_states: list[Tensor]) -> None:
    try:
        _save_epoch(run, epoch, generator_states)
    except BaseException:
        folder = run.folder
        if not run.resumed and epoch == 1 and not folder.resume.exists():
            # The folder held no run's files when this one started, so what the unfinished first checkpoint
            # wrote is this run's own: remove it, so the folder is as it was and the same command works again.
            for path in (folder.epoch_file(1), folder.weights):
                if path.is_file() and not path.is_symlink():
                    path.unlink()
        raise


def _save_epoch(run: _Run, epoch: int, generator_states: list[Tensor]) -> None:
    result = run.result
    metadata = run_metadata(run.config, epoch, result.loss_history, result.wall_time_s, result.device)
    save_weights(run.folder.epoch_file(epoch), run.model, metadata, run.ema_state)
    save_weights(run.folder.weights, run.model, metadata, run.ema_state)
    # The resume state carries the weights too, so it is consistent on its own
    # even if a crash falls between the two writes.
    state = resume_state(epoch, run.model, run.optimizer, generator_states, run.ema_state, result.loss_history,
                         result.wall_time_s, run.config)
    save_resume_state(run.folder.resume, state)
