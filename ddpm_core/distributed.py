"""Data-parallel training under torchrun: one process per device, gradients averaged by PyTorch's DDP.

``torchrun --nproc-per-node N -m ddpm_core train ...`` starts N copies of the ordinary command and
tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...).
``train`` reads it with ``ranks_from_env`` and, when N > 1:

- joins the process group (NCCL on CUDA, one GPU per process; Gloo on the CPU);
- splits every global batch of ``batch_size`` images into N equal parts, one per process, so
  the batch the optimiser sees is the configured one; the epoch's order still depends only on
  (seed, epoch), and every process computes the same permutation;
- draws t, eps and the dropped labels of each part from that part's own generator, seeded by
  (seed, part) with ``shard_seed``. The parts are called noise shards: a single process can
  draw several of them (``train(..., noise_shards=N)``), which is how one process reproduces
  an N-process run, and how a run resumes on a different number of processes;
- lets ``DistributedDataParallel`` average the gradients, so every process takes the same step;
- writes checkpoints, logs and progress bars from rank 0 only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm_core.errors import DDPMError

TIMEOUT = datetime.timedelta(minutes=10)  # how long a collective waits for a silent process


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch; the default is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0


def ranks_from_env() -> Ranks:
    """RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them (absent: one process)."""
    try:
        ranks = Ranks(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                      int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise DDPMError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers; start parallel training with "
            "`torchrun --nproc-per-node N -m ddpm_core train ...`, which sets them."
        ) from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise DDPMError(f"RANK={ranks.rank} does not lie in 0..WORLD_SIZE-1={ranks.world_size - 1}.")
    return ranks


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group; return this process's device (its own GPU on CUDA, else the CPU)."""
    if device.type == "mps":
        raise DDPMError("Parallel training runs on CUDA (NCCL) or the CPU (Gloo), not on MPS: pass --device cpu.")
    if device.type == "cuda":
        if torch.cuda.device_count() <= ranks.local_rank:
            raise DDPMError(
                f"Process {ranks.rank} wants GPU {ranks.local_rank}, but this machine has "
                f"{torch.cuda.device_count()}: start at most that many processes per node."
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_seed(seed: int, shard: int) -> int:
    """The seed of noise shard ``shard``: shard 0 uses the run's seed itself, as a single process does."""
    return seed if shard == 0 else seed * 1_000_003 + 7_919 * shard


def owned_shards(ranks: Ranks, noise_shards: int) -> range:
    """The noise shards this process draws: an equal, contiguous share of them."""
    if noise_shards % ranks.world_size:
        raise DDPMError(
            f"The run draws its noise in {noise_shards} shards, which {ranks.world_size} processes cannot share "
            f"equally: use a number of processes that divides {noise_shards}."
        )
    per = noise_shards // ranks.world_size
    return range(ranks.rank * per, (ranks.rank + 1) * per)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums of ``values`` over all processes."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather(value: object) -> list[object]:
    """``value`` of every process, in rank order, on every process."""
    values: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    dist.barrier()


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process stopped."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset", "timed out"))
