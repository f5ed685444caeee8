"""Data-parallel training under torchrun: one process per device, gradients averaged by PyTorch's DDP.

``torchrun --nproc-per-node N -m ddpm_core train ...`` starts N copies of the ordinary command and
tells each its place through the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...).
``train`` reads it with ``ranks_from_env`` and, when N > 1:

- joins the process group (NCCL on CUDA, one GPU per process; Gloo on the CPU) after a
  rendezvous (``rendezvous.py``) that waits at most ``DDPM_RENDEZVOUS_TIMEOUT`` seconds
  (default 300) for every process to arrive, and then says which ones did not;
- splits every global batch of ``batch_size`` images into N equal parts, one per process, so
  the batch the optimiser sees is the configured one; the epoch's order still depends only on
  (seed, epoch), and every process computes the same permutation;
- draws t, eps and the dropped labels of each part from that part's own generator, seeded by
  (seed, part) with ``shard_seed`` (``run_seeds.py``). The parts are called noise shards: a single process can
  draw several of them (``train(..., noise_shards=N)``), which is how one process reproduces
  an N-process run, and how a run resumes on a different number of processes;
- lets ``DistributedDataParallel`` average the gradients, so every process takes the same step;
- writes checkpoints, logs and progress bars from rank 0 only.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ddpm_core.training import rendezvous
from ddpm_core.training.describe import short
from ddpm_core.training.run_seeds import derive_seed
from ddpm_core.utils.errors import DDPMError

TIMEOUT = datetime.timedelta(minutes=10)  # how long a collective waits for a silent process
RENDEZVOUS_TIMEOUT_S = 300.0  # how long the processes wait for each other at the start; DDPM_RENDEZVOUS_TIMEOUT
MIN_RENDEZVOUS_TIMEOUT_S = 1.0  # below it, process 0 can time out connecting to the store it hosts itself
MAX_RENDEZVOUS_TIMEOUT_S = 7 * 24 * 3600.0  # a week: longer than any queue; the store's timedelta overflows at 1e14
MAX_PROCESSES = 4096  # WORLD_SIZE at most: each process draws its own noise shard, which a resume state keeps
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # one label of a host name
TORCHRUN = "torchrun --nproc-per-node N -m ddpm_core train"  # followed by the command's own options


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun launch; the default is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None  # where process 0 (or torchrun's agent) holds the rendezvous
    master_port: int | None = None
    rendezvous_timeout: float = RENDEZVOUS_TIMEOUT_S
    torchrun: bool = False  # started by torchrun, whose agent stops every process when one fails
    agent_store: bool = False  # torchrun's agent hosts the rendezvous store: every process is its client
    attempt: int = 0  # torchrun's restart count, which keeps the keys of a restarted group apart

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def launch_command(self) -> str:
        """The torchrun command that starts this many processes, before the command's own options."""
        return TORCHRUN.replace("N", str(self.world_size))

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    def rendezvous(self) -> tuple[str, int]:
        """MASTER_ADDR and MASTER_PORT, which a parallel run needs; refused with advice when missing."""
        missing = [name for name, value in (("MASTER_ADDR", self.master_addr), ("MASTER_PORT", self.master_port))
                   if value is None]
        if missing:
            raise DDPMError(
                f"WORLD_SIZE={self.world_size} asks for a parallel run, whose processes meet at the address of "
                f"process 0, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. torchrun "
                f"sets them, with RANK, WORLD_SIZE and LOCAL_RANK, in every process it starts: run "
                f"`{self.launch_command}` followed by this command's options. To start the "
                f"processes by hand instead, give each the same MASTER_ADDR (the host of RANK=0, e.g. 127.0.0.1) "
                f"and MASTER_PORT (a free port, 1 to 65535, e.g. 29500); to train in one process, unset WORLD_SIZE "
                f"and RANK."
            )
        return self.master_addr, self.master_port  # type: ignore[return-value]


_VARIABLES = "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE"
_HOW = (f"torchrun sets these for every process it starts (`{TORCHRUN}` followed by the command's options); to "
        f"train in a single process, unset them (e.g. `env -u RANK -u WORLD_SIZE -u LOCAL_RANK -u LOCAL_WORLD_SIZE "
        f"python -m ddpm_core train ...`).")


def _env(name: str) -> str | None:
    """An environment variable, None when unset or blank (as ``NAME= command`` leaves it)."""
    value = os.environ.get(name, "").strip()
    return value or None


def _env_int(name: str, default: int, lowest: int, highest: int | None = None) -> int:
    text = _env(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise DDPMError(f"{name}={short(text, 80)} is not a whole number. {_VARIABLES} place this process in a "
                        f"parallel run: {_HOW}") from None
    if value < lowest:
        raise DDPMError(f"{name}={value} must be {lowest} or more. {_VARIABLES} place this process in a parallel "
                        f"run: {_HOW}")
    if highest is not None and value > highest:
        raise DDPMError(f"{name}={short(value, 40)} is more than the {highest:,} processes a run may have: every "
                        f"process draws its own share of each batch. Start at most {highest:,}. {_HOW}")
    return value


def ranks_from_env() -> Ranks:
    """This process's place as torchrun describes it in the environment (absent: one process), all checked.

    The one reader of RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, torchrun's own
    variables and DDPM_RENDEZVOUS_TIMEOUT. Refuses values that are no numbers or out of range, and a MASTER_ADDR
    that is no host name or address, with ``DDPMError``;
    a missing MASTER_ADDR or MASTER_PORT is refused by ``Ranks.rendezvous``, only where a rendezvous is needed.
    """
    rank, world_size = _rank_and_world_size()
    local_rank, local_world_size = _local_rank_and_size(world_size)
    parallel = world_size > 1  # one process meets no one: stray rendezvous settings are harmless
    return Ranks(
        rank=rank, world_size=world_size, local_rank=local_rank, local_world_size=local_world_size,
        master_addr=_master_addr() if parallel else None, master_port=_master_port() if parallel else None,
        rendezvous_timeout=_rendezvous_timeout() if parallel else RENDEZVOUS_TIMEOUT_S,
        torchrun=_env("TORCHELASTIC_RUN_ID") is not None,
        agent_store=_env("TORCHELASTIC_USE_AGENT_STORE") == "True",
        attempt=_env_int("TORCHELASTIC_RESTART_COUNT", 0, 0),
    )


def _rank_and_world_size() -> tuple[int, int]:
    world_size = _env_int("WORLD_SIZE", 1, 1, MAX_PROCESSES)
    rank = _env_int("RANK", 0, 0)
    if _env("WORLD_SIZE") is None and rank > 0:
        raise DDPMError(f"RANK={rank} is set but WORLD_SIZE, the number of processes, is not. {_HOW}")
    if world_size > 1 and _env("RANK") is None:
        raise DDPMError(f"WORLD_SIZE={world_size} is set but RANK, this process's number (0 to {world_size - 1}), "
                        f"is not. {_HOW}")
    if rank >= world_size:
        raise DDPMError(f"RANK={rank} does not lie in 0..{world_size - 1}, the ranks of WORLD_SIZE={world_size} "
                        f"processes. {_HOW}")
    return rank, world_size


def _local_rank_and_size(world_size: int) -> tuple[int, int]:
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size, 1)
    if local_world_size > world_size:
        raise DDPMError(f"LOCAL_WORLD_SIZE={local_world_size}, the processes on this machine, exceeds "
                        f"WORLD_SIZE={world_size}, the processes in all. {_HOW}")
    local_rank = _env_int("LOCAL_RANK", 0, 0)
    if local_rank >= local_world_size:
        raise DDPMError(f"LOCAL_RANK={local_rank} does not lie in 0..{local_world_size - 1}, the local ranks of "
                        f"LOCAL_WORLD_SIZE={local_world_size} processes on this machine. {_HOW}")
    return local_rank, local_world_size


def _is_host(text: str) -> bool:
    """Whether ``text`` is an IP address or a host name that resolvers accept: dot-separated labels of 1 to 63
    letters, digits, hyphens and underscores, 253 characters at most. Anything else (an empty label, as in
    "a..b", or a label of 64 characters) makes the resolver fail with a UnicodeError instead of an answer."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    name = text[:-1] if text.endswith(".") else text  # a fully qualified name may end with its root's dot
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in name.split("."))


def _master_addr() -> str | None:
    text = _env("MASTER_ADDR")
    if text is None or _is_host(text):
        return text
    raise DDPMError(f"MASTER_ADDR={short(text, 80)} is no host name or IP address: a name is dot-separated labels "
                    f"of 1 to 63 letters, digits and hyphens, 253 characters at most. Set it to the name or IP "
                    f"address of the machine of process 0 (127.0.0.1 when all processes run on this one), the same "
                    f"in every process, or let torchrun set it.")


def _master_port() -> int | None:
    text = _env("MASTER_PORT")
    if text is None:
        return None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise DDPMError(f"MASTER_PORT={text!r} is not a port number: choose a free port from 1 to 65535 (e.g. "
                        f"29500), the same in every process, or let torchrun choose one.")
    return port


def _rendezvous_timeout() -> float:
    text = _env("DDPM_RENDEZVOUS_TIMEOUT")
    if text is None:
        return RENDEZVOUS_TIMEOUT_S
    try:
        timeout = float(text)
    except ValueError:
        timeout = math.nan
    if not (math.isfinite(timeout) and MIN_RENDEZVOUS_TIMEOUT_S <= timeout <= MAX_RENDEZVOUS_TIMEOUT_S):
        raise DDPMError(f"DDPM_RENDEZVOUS_TIMEOUT={short(text, 80)} should be the seconds the processes wait for "
                        f"each other at the start, a number from {MIN_RENDEZVOUS_TIMEOUT_S:g} to "
                        f"{MAX_RENDEZVOUS_TIMEOUT_S:,.0f} (a week; default {RENDEZVOUS_TIMEOUT_S:.0f}).")
    return timeout


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group and return this process's device: its own GPU on
    CUDA, else the CPU."""
    if device.type == "mps":
        raise DDPMError(
            "Parallel training runs on CUDA (NCCL) or the CPU (Gloo), not on MPS: "
            "pass --device cpu."
        )
    if device.type == "cuda":
        if torch.cuda.device_count() <= ranks.local_rank:
            raise DDPMError(
                f"Process {ranks.rank} wants GPU {ranks.local_rank}, but this machine "
                f"has {torch.cuda.device_count()}: start at most that many processes "
                f"per node."
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        store = rendezvous.meet(ranks)
        # the store's timeout from here on, as torch's own env:// rendezvous leaves it
        store.set_timeout(TIMEOUT)
        dist.init_process_group(
            backend,
            store=store,
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=TIMEOUT,
        )
    return device


def stopped_peers() -> list[int]:
    """The ranks of the processes that have ended, among those started by the same torchrun on this machine.

    For rank 0's report when torchrun stops it: torchrun does so when another process has ended, and the one
    that ended first is gone (or a zombie) by then, while the others are still being stopped. Processes on other
    machines, or started by hand, cannot be checked and are left out.
    """
    host, parent = socket.gethostname(), os.getppid()
    return [rank for rank, (h, p, pid) in sorted(rendezvous.PEERS.items())
            if h == host and p == parent and pid != os.getpid() and not _alive(pid)]


def _alive(pid: int) -> bool:
    if not os.path.isdir("/proc/self"):  # no procfs (macOS): a zombie cannot be told from a live process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie has ended, but still answers os.kill
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_seed(seed: int, shard: int) -> int:
    """The seed of noise shard ``shard``: shard 0 uses the run's seed itself, as a single process does."""
    return seed if shard == 0 else derive_seed(seed, "noise shard", shard)


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
