"""How the processes of a torchrun launch end: rank 0 reports for every process, the others stay silent.

torchrun runs the same command in every process and shows what each prints, so a refusal that all of
them meet would be printed once per process, and torchrun's SIGTERM to the survivors of a failed
process would end them without a word. ``Torchrun`` makes rank 0 print one message and every other
process end with its status silently; ``stopped_message`` is rank 0's line when torchrun ends it.
A single process stopped by SIGTERM (``kill``, a batch system's time limit) reports like Ctrl-C, through
``sigterm_raises``, and ends with the status a shell shows for SIGTERM, 143.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ddpm_core.training import distributed
from ddpm_core.training.run_folder import RunFolder
from ddpm_core.utils.errors import DDPMError

EXIT_USAGE = 2  # what argparse exits with for a command line it refuses
EXIT_TERMINATED = 143  # 128 + SIGTERM, what torchrun and a shell report for a process ended by SIGTERM
QUIET_GRACE_S = 10.0  # how long a process other than rank 0 waits, after a refusal, for torchrun to end it


class Terminated(BaseException):
    """Raised in rank 0 by the SIGTERM with which torchrun ends a launch once one of its processes has ended, and
    in a single process by a SIGTERM during training (``sigterm_raises``).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way takes it for a failure,
    and every ``finally`` and atomic write on the way cleans up as it does for Ctrl-C.
    """


@contextlib.contextmanager
def sigterm_raises() -> Iterator[bool]:
    """In this block a SIGTERM raises ``Terminated``, as Ctrl-C raises KeyboardInterrupt, where it would otherwise
    end the process without a word; yields whether it does. Under torchrun ``Torchrun.watch`` has a handler of
    its own in place, and Python takes signals in its main thread only: both are left alone."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield False
        return

    def on_sigterm(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one report: a second SIGTERM does not cut it short
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield True
    finally:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:  # once raised, SIGTERM stays ignored until the report
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Torchrun:
    """The reports of one process of a torchrun launch: rank 0 prints, the others end with its status."""

    def __init__(self, ranks: distributed.Ranks) -> None:
        self.ranks = ranks
        self.status: int | None = None  # decided and reported: a SIGTERM now only ends the process with it
        self._previous: object = None

    def watch(self) -> None:
        """From here on, torchrun's SIGTERM raises ``Terminated`` in rank 0 and ends the other processes."""
        if threading.current_thread() is threading.main_thread():  # Python takes signals in its main thread only
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._previous = self._previous or previous

    def close(self) -> None:
        """Give SIGTERM back, unless a report was made: then a late SIGTERM still ends the process silently."""
        if self._previous is not None and self.status is None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        if self.status is not None or not self.ranks.main:
            sys.stdout.flush()
            sys.stderr.flush()
            # Nothing to clean up: only rank 0 writes, and it has made its report.
            os._exit(EXIT_TERMINATED if self.status is None else self.status)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one report; torchrun sends SIGKILL if it never comes
        raise Terminated

    def report(self, status: int, message: str, wait: bool = True) -> int:
        """Rank 0 prints ``message``; another process leaves it to rank 0 (see ``quiet``)."""
        if self.ranks.main:
            self.status = status  # first: a SIGTERM from here on waits for the line, then ends with this status
            print(message, file=sys.stderr, flush=True)
            return status
        return self.quiet(status, message if wait else "")

    def quiet(self, status: int, message: str) -> int:
        """End a process other than rank 0 with ``status``, silently when rank 0 reports the same refusal.

        Every process checks the same command, so rank 0 refuses it too, and torchrun then ends this one with
        SIGTERM. Leaving at once instead could let torchrun end rank 0 before it has printed its message; if
        rank 0 goes on (a refusal of this process alone), ``message`` is printed after the grace period.
        """
        self.status = status
        self.watch()
        if status and message:
            time.sleep(QUIET_GRACE_S)
            print(f"process {self.ranks.rank} of {self.ranks.world_size}: {message}", file=sys.stderr, flush=True)
        return status

    def parse(self, parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
        """``parser.parse_args`` in silence outside rank 0; None, with ``status`` set, when it ends the process."""
        if self.ranks.main:
            return parser.parse_args(argv)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                return parser.parse_args(argv)
        except SystemExit as exit_:  # argparse's error or --help, which rank 0 prints
            code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
            self.quiet(code, err.getvalue().strip())
            return None


def torchrun_ranks() -> distributed.Ranks | None:
    """This process's ranks when torchrun started it for a parallel run, else None."""
    try:
        ranks = distributed.ranks_from_env()
    except DDPMError:  # refused up front by ``train``, in every process
        return None
    return ranks if ranks.torchrun and ranks.distributed else None


def check_launch() -> None:
    """Refuse an unusable parallel launch (RANK, WORLD_SIZE, MASTER_ADDR, ...) before anything is read or written."""
    ranks = distributed.ranks_from_env()
    if ranks.distributed:
        ranks.rendezvous()


def stopped_message(out: Path, epochs: int, argv: list[str], ranks: distributed.Ranks) -> str:
    """Rank 0's line when torchrun ends the training run in ``out``: which process ended, if known, what is
    saved and how to go on."""
    lost = distributed.stopped_peers()
    if lost:
        names = " and ".join(str(rank) for rank in lost)
        cause = (f"process{'es' if len(lost) > 1 else ''} {names} of {ranks.world_size} ended, so torchrun stopped "
                 f"this one too (its report below says how {'they' if len(lost) > 1 else 'it'} ended)")
    else:
        cause = ("torchrun stopped this process (SIGTERM), as it does when another process of the run has ended or "
                 "when torchrun itself is stopped; its report below names the process that failed")
    epoch = RunFolder(out).saved_epoch()
    options = [*argv, "--resume"] if epoch is not None and "--resume" not in argv else argv
    nodes = ranks.world_size // ranks.local_world_size
    launcher = ["torchrun", "--nproc-per-node", str(ranks.local_world_size)]
    command = shlex.join([*launcher, *(["--nnodes", str(nodes)] if nodes > 1 else []), "-m", "ddpm_core", *options])
    where = " on every machine, with the rendezvous options used before" if nodes > 1 else ""
    if epoch is None:
        return (f"stopped: {cause}. No epoch had finished, so nothing was saved in {out}; start again with "
                f"`{command}`{where}.")
    return (f"stopped: {cause}. The last checkpoint in {out} (epoch {epoch} of {epochs}) is intact; "
            f"continue with `{command}`{where}.")
