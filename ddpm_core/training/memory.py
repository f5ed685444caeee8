"""Will a training step fit? The memory one step needs, estimated before the first one is taken.

A batch too large for the machine would otherwise end in a raw allocation error, or the kernel's
out-of-memory killer, minutes into a run. ``check_step_memory`` measures what autograd saves for
the backward pass of the real network on one and on two blank images, scales it to the batch, and
compares it with the memory the device has free, so the run is refused at once with the batch size
that fits.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
from torch import Tensor

from ddpm_core.diffusion.objective import per_sample_loss
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import UNet
from ddpm_core.training.distributed import Ranks
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.utils.device import device_description
from ddpm_core.utils.errors import DDPMError

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
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
            loss = per_sample_loss(model, schedule, x0, t, x0).mean()  # a conditional network: "no class"
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


def check_step_memory(
    model: UNet,
    schedule: NoiseSchedule,
    config: TrainConfig,
    device: torch.device,
    images: Tensor,
    ranks: Ranks,
    resume: bool,
    out_dir: Path,
) -> None:
    """Refuse, before the first step, a batch whose training step would not fit in the device's free memory."""
    available = available_memory(device)
    if available is None:
        return
    local_batch = math.ceil(min(config.batch_size, images.shape[0]) / ranks.world_size)
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
    raise DDPMError(
        f"A training step with --batch-size {config.batch_size} needs about {_size(needed)} of memory "
        f"(about {_size(per_image)} per image), but only {_size(available)} of {where} are free. "
        f"{_advice(per_process * ranks.world_size, ranks.world_size, resume)} Nothing was trained or saved in "
        f"{out_dir}."
    )


def _advice(fits: int, world_size: int, resume: bool) -> str:
    """What to do when the batch does not fit, where ``fits`` global images would (a power of two if it can be)."""
    if fits < world_size:
        return ("Not even one image per step fits: free memory (close other programs), or train a smaller network "
                "(--channels).")
    power = 2 ** int(math.log2(fits))
    fits = power if power % world_size == 0 else fits // world_size * world_size
    if resume:
        return (f"A resumed run keeps the batch size it was started with: free memory (close other programs) and "
                f"resume again, or start a new run in another --out folder with --batch-size {fits} or less, "
                f"which fits.")
    return f"Pass --batch-size {fits} or less, which fits."
