"""The command line: ``python -m ddpm_core {train,sample,evaluate,export} ...``, its parser and dispatch.

Each command is a module of its own (``train_command``, ``sample_command``, ``evaluate_command``,
``export_command``): its flags (``add_parser``), its work (``run``) and its line on Ctrl-C
(``interrupted``); the flags that several commands share are in ``flags``.

Bad arguments and unusable inputs print one paragraph saying what was wrong
and how to fix it, and exit with status 2; a model that produces NaN or inf
exits with status 1; Ctrl-C prints one line saying what was saved and how to
go on, and exits with status 130. Everything that can be checked before the
work starts (numbers, output paths, the run lock) is checked first.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import TYPE_CHECKING

from ddpm_core.app import evaluate_command, export_command, sample_command, train_command
from ddpm_core.utils.errors import DDPMError

if TYPE_CHECKING:
    from ddpm_core.training.signals import Torchrun

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
COMMANDS = {"sample": sample_command, "evaluate": evaluate_command, "export": export_command}  # train: see _run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm_core", description="Train and sample a DDPM on MNIST.")
    commands = parser.add_subparsers(dest="command", required=True)

    train_command.add_parser(commands)
    sample_command.add_parser(commands)
    evaluate_command.add_parser(commands)
    export_command.add_parser(commands)
    return parser


def _interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The one line printed on Ctrl-C: what is on disk and how to go on."""
    if args.command == "train":
        return train_command.interrupted(args, argv)
    return COMMANDS[args.command].interrupted(args)


def _close_progress_bars() -> None:
    """Clear the bars an interrupted loop left open, so the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _run(args: argparse.Namespace, argv: list[str], torchrun: Torchrun | None) -> int:
    from ddpm_core.training.signals import EXIT_TERMINATED, Terminated, check_launch, stopped_message

    def report(status: int, message: str, wait: bool = True) -> int:
        if torchrun is None:
            print(message, file=sys.stderr)
            return status
        return torchrun.report(status, message, wait)

    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            try:
                if args.command == "train":
                    if torchrun is not None:
                        torchrun.watch()
                    check_launch()
                    return train_command.run(args, argv)
                return COMMANDS[args.command].run(args)
            except DDPMError as error:
                return report(error.exit_code, f"error: {error}")
            except KeyboardInterrupt:  # Ctrl-C reaches every process: none need wait for rank 0
                _close_progress_bars()
                return report(EXIT_INTERRUPTED, _interrupted(args, argv), wait=False)
        except Terminated:  # only in rank 0 under torchrun, see ddpm_core.training.signals
            _close_progress_bars()
            return report(EXIT_TERMINATED, stopped_message(args.out, args.epochs, argv, torchrun.ranks))


def main(argv: list[str] | None = None) -> int:
    from ddpm_core.training.signals import Torchrun, torchrun_ranks

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ranks = torchrun_ranks()
    if ranks is None:
        return _run(parser.parse_args(argv), argv, None)
    torchrun = Torchrun(ranks)
    try:
        args = torchrun.parse(parser, argv)
        return torchrun.status if args is None else _run(args, argv, torchrun)  # type: ignore[return-value]
    finally:
        torchrun.close()
