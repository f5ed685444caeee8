"""How the processes of a parallel run meet before they train: the rendezvous at MASTER_ADDR:MASTER_PORT.

torch's env:// rendezvous would wait up to the collectives' timeout without a word, and, in process
0, for ever when its peers never connect. ``meet`` instead lets every process count itself in on a
TCP store (hosted by process 0, or by torchrun's agent), has process 0 say once that it waits, and
stops a process whose peers do not all arrive within ``Ranks.rendezvous_timeout`` seconds with a
message naming the missing ranks. Each process also leaves its host and process ids there, so that
rank 0 can later tell which of its peers have ended (``distributed.stopped_peers``).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import time
from typing import TYPE_CHECKING

import torch.distributed as dist

from ddpm_core.utils.errors import DDPMError

if TYPE_CHECKING:
    from ddpm_core.training.distributed import Ranks

ANNOUNCE_AFTER_S = 1.0  # rank 0 says that it waits once the others are this late: they usually start together
POLL_S = 0.05

# Where the processes of this run live, as each wrote it at the rendezvous: (host, parent's pid, pid) by rank.
PEERS: dict[int, tuple[str, int, int]] = {}


def meet(ranks: Ranks) -> dist.Store:
    """Meet the other processes at MASTER_ADDR:MASTER_PORT within ``ranks.rendezvous_timeout`` seconds."""
    address, port = ranks.rendezvous()
    where = f"{address}:{port}"
    deadline = time.monotonic() + ranks.rendezvous_timeout
    if ranks.main and not ranks.agent_store:  # process 0 hosts the store, as torch's env:// rendezvous does
        store = _host_store(ranks, address, port)
    else:  # torchrun's agent hosts the store (TORCHELASTIC_USE_AGENT_STORE), or process 0 does
        store = _join_store(ranks, address, port, deadline)
    if ranks.agent_store:  # the agent's store outlives a restarted group: keep each attempt's keys apart
        store = dist.PrefixStore(f"/worker/attempt_{ranks.attempt}", store)
    try:
        _count_in(store, ranks, where, deadline)
    except RuntimeError as error:  # the store went away (a DistError): the process that held it stopped
        holder = "torchrun's agent" if ranks.agent_store else "process 0"
        raise DDPMError(
            f"Process {ranks.rank} of {ranks.world_size} lost the rendezvous at {where} before every process had "
            f"joined: {holder}, which holds it, stopped ({_first_line(error)}). Its own message says why; start "
            f"every process again."
        ) from None
    return store


def _host_store(ranks: Ranks, address: str, port: int) -> dist.Store:
    timeout = datetime.timedelta(seconds=ranks.rendezvous_timeout)
    try:
        return dist.TCPStore(address, port, ranks.world_size, is_master=True, timeout=timeout, wait_for_workers=False)
    except (RuntimeError, ValueError) as error:
        raise DDPMError(
            f"Process 0 cannot hold the rendezvous on port {port} ({_first_line(error)}). Choose a free port "
            f"with MASTER_PORT (the same in every process), or, under torchrun, with its --master-port option."
        ) from None


def _join_store(ranks: Ranks, address: str, port: int, deadline: float) -> dist.Store:
    _wait_until_reachable(ranks, address, port, deadline)
    try:
        return dist.TCPStore(address, port, ranks.world_size, is_master=False,
                             timeout=datetime.timedelta(seconds=max(1.0, deadline - time.monotonic())))
    except (RuntimeError, ValueError) as error:
        raise DDPMError(
            f"Process {ranks.rank} of {ranks.world_size} could not join the rendezvous at {address}:{port} "
            f"({_first_line(error)}). Check that MASTER_ADDR and MASTER_PORT name the host and port of "
            f"process 0 (torchrun sets both), and that process 0 runs."
        ) from None


def _wait_until_reachable(ranks: Ranks, address: str, port: int, deadline: float) -> None:
    """Wait until something listens at address:port: a plain socket, because a failing TCPStore client logs
    pages of C++ stack for every try."""
    try:
        socket.getaddrinfo(address, port)
    except (OSError, UnicodeError) as error:  # UnicodeError: a name the resolver's IDNA encoding refuses
        raise DDPMError(
            f"MASTER_ADDR={address} is no host this machine can find ({getattr(error, 'strerror', None) or error}). "
            f"Set it to the name or IP address of the machine of process 0 (127.0.0.1 when all processes run on "
            f"this one)."
        ) from None
    announced = False
    started = time.monotonic()
    while True:
        try:
            with socket.create_connection((address, port), timeout=min(1.0, ranks.rendezvous_timeout)):
                return
        except OSError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise DDPMError(
                f"Process {ranks.rank} of {ranks.world_size} waited {ranks.rendezvous_timeout:g} s for process 0 "
                f"to open the rendezvous at {address}:{port}, in vain. Start process 0 (RANK=0) with the same "
                f"MASTER_ADDR, MASTER_PORT and WORLD_SIZE={ranks.world_size}, or start every process at once with "
                f"`{ranks.launch_command}` followed by this command's options. To wait "
                f"longer, set DDPM_RENDEZVOUS_TIMEOUT (seconds)."
            )
        if not announced and now - started >= min(ANNOUNCE_AFTER_S, ranks.rendezvous_timeout / 2):
            print(f"process {ranks.rank}: waiting up to {ranks.rendezvous_timeout:g} s for process 0 to open the "
                  f"rendezvous at {address}:{port}", file=sys.stderr, flush=True)
            announced = True
        time.sleep(min(0.2, max(0.0, deadline - now)))


def _count_in(store: dist.Store, ranks: Ranks, where: str, deadline: float) -> None:
    """Add this process to the store's count and wait until all ``world_size`` have arrived, or refuse."""
    if store.add(f"ddpm_core/rank{ranks.rank}", 1) > 1:
        raise DDPMError(
            f"Two processes of this run have RANK={ranks.rank}: each process needs its own RANK, 0 to "
            f"{ranks.world_size - 1}. torchrun numbers them itself; started by hand, give each another RANK."
        )
    store.set(f"ddpm_core/process{ranks.rank}", f"{socket.gethostname()} {os.getppid()} {os.getpid()}")
    joined = store.add("ddpm_core/joined", 1)
    started, announced = time.monotonic(), False
    while joined < ranks.world_size:
        now = time.monotonic()
        if now >= deadline:
            raise DDPMError(_missing_processes(store, ranks, joined, where))
        if ranks.main and not announced and now - started >= min(ANNOUNCE_AFTER_S, ranks.rendezvous_timeout / 2):
            others = ranks.world_size - 1
            print(f"waiting up to {ranks.rendezvous_timeout:g} s for the other "
                  f"{'process' if others == 1 else f'{others} processes'} to join at {where}",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(POLL_S)
        joined = store.add("ddpm_core/joined", 0)
    if ranks.main:
        for rank in range(ranks.world_size):
            host, parent, pid = store.get(f"ddpm_core/process{rank}").decode().rsplit(" ", 2)
            PEERS[rank] = (host, int(parent), int(pid))


def _missing_processes(store: dist.Store, ranks: Ranks, joined: int, where: str) -> str:
    missing = [r for r in range(ranks.world_size) if not store.check([f"ddpm_core/process{r}"])]
    names = ", ".join(str(r) for r in missing)
    what = (f"Only {joined} of the {ranks.world_size} processes joined the rendezvous at {where} within "
            f"{ranks.rendezvous_timeout:g} s; missing: RANK {names}.")
    if ranks.torchrun:
        advice = ("torchrun started them, so they failed or are still starting: look above for their messages. "
                  "On a slow machine, set DDPM_RENDEZVOUS_TIMEOUT to more seconds.")
    else:
        which = f"RANK={names}" if len(missing) == 1 else f"RANK set to each of {names}"
        advice = (f"Start the missing process{'es' if len(missing) > 1 else ''} with this command, the same "
                  f"MASTER_ADDR, MASTER_PORT and WORLD_SIZE={ranks.world_size}, and {which}; or start every process "
                  f"at once with `{ranks.launch_command}` followed by this command's "
                  f"options. To wait longer, set DDPM_RENDEZVOUS_TIMEOUT (seconds).")
    return f"{what} {advice}"


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
