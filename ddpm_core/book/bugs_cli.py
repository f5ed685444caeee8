"""``python -m ddpm_core.book.bugs_cli``: list the book's bugs, or train the short runs of the training bugs.

    python -m ddpm_core.book.bugs_cli                  each bug, when it strikes and what it does
    python -m ddpm_core.book.bugs_cli train [NAMES]    two epochs with each training bug, and without one
    python -m ddpm_core.book.bugs_cli losses WEIGHTS   a run's held-out loss by timestep, as JSON

The bugs themselves are in ``ddpm_core.book.bugs``; ``train`` runs ``losses`` in the copy of the
repository that holds the bug, so a run is measured by the code it trained with.
"""

from __future__ import annotations

import argparse
import json

from ddpm_core.book.bugs import BUGS, CORRECT, check_training_outputs, held_out_losses, train_with, training_run
from ddpm_core.book.checkout import require_checkout
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script

PROG = "python -m ddpm_core.book.bugs_cli"


def main(argv: list[str] | None = None) -> int:
    """List the bugs; ``train [NAMES]`` trains the short runs of the training bugs (and the run without a bug)
    that the chapter samples."""
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=main.__doc__)
    parser.add_argument("command", nargs="?", choices=("list", "train", "losses"), default="list")
    parser.add_argument("names", nargs="*", help="training bugs to train, or 'correct' (default: all and 'correct')")
    parser.add_argument("--epochs", type=arguments.positive_int, default=2, help="epochs of each run (default 2)")
    args = parser.parse_args(argv)
    if args.command == "losses":
        if len(args.names) != 1 or not args.names[0].strip():
            parser.error("losses takes one weights file, such as runs/bugs/correct/model.safetensors")
        print(json.dumps(held_out_losses(args.names[0])))
        return 0
    if args.command == "list":
        if args.names:
            parser.error(f"list takes no names, got {' '.join(args.names)}")
        for entry in BUGS:
            print(f"{entry.name:<24} {entry.stage:<9} {entry.what}")
        return 0
    training = [entry.name for entry in BUGS if entry.stage == "training"]
    names = args.names or [CORRECT, *training]
    unknown = sorted(set(names) - {CORRECT, *training})
    if unknown:
        raise DDPMError(f"{unknown} are not training bugs; they are {', '.join(training)} and {CORRECT!r}.")
    # A training bug runs in a copy of the git checkout; every run and the losses file are written into it.
    require_checkout(f"{PROG} train", git=any(name != CORRECT for name in names))
    check_training_outputs(names)
    for name in dict.fromkeys(names):
        print(f"training {name} for {args.epochs} epochs into {training_run(name)}", flush=True)
        train_with(name, args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
