"""``python -m ddpm_core train``: train the UNet on MNIST, with a checkpoint after every epoch.

``--recipe`` picks the settings (``ddpm_core.training.recipe``); each flag given replaces one of
them, and every setting is checked before the run folder is touched. Under torchrun every process
runs this command, and rank 0 reports for all of them (``ddpm_core.training.signals``). A single
process stopped by SIGTERM says, as on Ctrl-C, what is saved and how to go on, and exits with 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ddpm_core.app import flags
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError, DiskFullError

if TYPE_CHECKING:  # for the annotations; the functions below import what they use where they use it
    from ddpm_core.diffusion.unet import UNetConfig
    from ddpm_core.training.loop import TrainResult
    from ddpm_core.training.recipe import TrainConfig


def add_parser(commands: argparse._SubParsersAction) -> None:
    from ddpm_core.app.unet_options import UNET_OPTIONS
    from ddpm_core.diffusion.unet import UNetConfig
    from ddpm_core.training.recipe import BOOK, RECIPES, TrainConfig

    train = commands.add_parser(
        "train",
        help="train the UNet, with a checkpoint after every epoch",
        description="Train the UNet on MNIST, with a checkpoint after every epoch. --recipe book (the default) is "
        "the recipe chosen by the book's measured ablations; --recipe reference is the reference run's (Adam at "
        "2e-4, constant, no clipping, uniform weights: Algorithm 1 as the paper states it). Each flag below "
        "changes one setting of the recipe.",
    )
    train.add_argument("--recipe", choices=tuple(RECIPES), default="book",
                       help="the settings every flag not given takes (default book)")
    train.add_argument("--out", type=arguments.folder, default=Path("runs/mnist"),
                       help="output folder (default runs/mnist)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--device", type=arguments.device_name, default="auto", help=flags.DEVICE_HELP)
    add_settings(train, TrainConfig, BOOK)
    add_settings(train, UNetConfig, UNetConfig(), UNET_OPTIONS)
    train.add_argument("--conditional", action="store_true",
                       help="train eps_theta(x_t, t, y) on the digits' labels, for classifier-free guidance")
    train.add_argument("--p-uncond", type=arguments.unit_interval, default=None,
                       help="with --conditional: share of labels dropped to 'no class' (default 0.1)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_settings(parser: argparse.ArgumentParser, config_type: type, book_defaults: object,
                 table: dict[str, dict] | None = None) -> None:
    """One flag per field of ``config_type`` that has a help text (``recipe.setting``, or its entry in ``table``),
    with its parser or choices; a bool becomes --flag/--no-flag. A flag not given leaves its field to ``--recipe``."""
    for setting in dataclasses.fields(config_type):
        meta = setting.metadata if table is None else table.get(setting.name, {})
        if "help" not in meta:
            continue
        flag, default = "--" + setting.name.replace("_", "-"), getattr(book_defaults, setting.name)
        shown = ",".join(map(str, default)) or "none" if isinstance(default, tuple) else default
        shown = "none" if shown is None else shown
        options: dict = {"default": argparse.SUPPRESS, "help": f"{meta['help']} (book: {shown})"}
        if meta.get("choices"):
            options["choices"] = meta["choices"]
        elif setting.type in ("bool", bool):
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = getattr(arguments, meta["parse"])
        parser.add_argument(flag, **options)


def resume_command(argv: list[str], resume: bool = True) -> str:
    """The command line ``argv`` with --resume (to continue a run), or without it (to start the run again)."""
    # argparse also takes an unambiguous prefix of --resume, such as --res.
    options = [a for a in argv if not (len(a) > 2 and a.startswith("--") and "--resume".startswith(a))]
    return shlex.join(["python", "-m", "ddpm_core", *options, *(["--resume"] if resume else [])])


def train_configs(args: argparse.Namespace) -> tuple:
    """The ``TrainConfig`` and ``UNetConfig`` that parsed ``train`` arguments ask for: ``--recipe``, with each
    flag given replacing its setting."""
    from ddpm_core.app.unet_options import UNET_OPTIONS
    from ddpm_core.diffusion.conditioning import MNIST_CLASSES
    from ddpm_core.diffusion.unet import UNetConfig
    from ddpm_core.training.recipe import RECIPES, TrainConfig

    if args.p_uncond is not None and not args.conditional:
        raise DDPMError(
            "--p-uncond applies only to a conditional network, which drops that share of labels to learn the "
            "unconditional prediction too. Add --conditional, or drop --p-uncond."
        )
    given = vars(args)
    config = dataclasses.replace(RECIPES[args.recipe], **{
        f.name: given[f.name] for f in dataclasses.fields(TrainConfig) if f.name in given and "help" in f.metadata})
    if args.p_uncond is not None:
        config = dataclasses.replace(config, p_uncond=args.p_uncond)
    model_config = dataclasses.replace(UNetConfig(), num_classes=MNIST_CLASSES if args.conditional else None, **{
        f.name: given[f.name] for f in dataclasses.fields(UNetConfig) if f.name in given and f.name in UNET_OPTIONS})
    try:
        model_config.validate(check_size=True)
    except ValueError as error:
        raise DDPMError(f"Unusable architecture options: {error}") from None
    config.validate()  # here, before ``train`` takes the run folder's lock (it creates the folder)
    return config, model_config


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ddpm_core.training import distributed
    from ddpm_core.training.run_folder import RunFolder
    from ddpm_core.training.signals import EXIT_TERMINATED, Terminated, sigterm_raises

    config, model_config = train_configs(args)
    args.epochs = config.epochs  # --epochs or the recipe's, which the lines on Ctrl-C and SIGTERM name
    with sigterm_raises() as reported_here:
        try:
            result = _train(args, argv, config, model_config)
        except Terminated:
            if not reported_here:  # torchrun's: rank 0 reports it for every process (ddpm_core.app.cli)
                raise
            from ddpm_core.app.cli import _close_progress_bars

            _close_progress_bars()
            print(interrupted(args, argv, "stopped by SIGTERM"), file=sys.stderr, flush=True)
            return EXIT_TERMINATED
    if not distributed.ranks_from_env().main:  # under torchrun, rank 0 reports for every process
        return 0
    if args.no_progress:  # the bar's per-epoch lines were off: list the epochs here
        for epoch, loss in enumerate(result.loss_history, start=1):
            print(f"epoch {epoch}/{config.epochs}: mean loss {loss:.4f}")
    losses = ", ".join(f"{loss:.4f}" for loss in result.loss_history)
    print(f"trained {len(result.loss_history)} epochs on {result.device} in {result.wall_time_s:.0f} s")
    print(f"epoch mean losses: {losses}")
    print(f"checkpoint: {RunFolder(args.out).weights}")
    return 0


def _train(args: argparse.Namespace, argv: list[str], config: TrainConfig, model_config: UNetConfig) -> TrainResult:
    """``train`` as the flags ask; a full disk is reported with what is saved and the command that goes on."""
    from ddpm_core.training.loop import train
    from ddpm_core.training.run_folder import RunFolder

    try:
        return train(args.out, config, model_config, resume=args.resume, device=args.device,
                     progress=not args.no_progress)
    except DiskFullError as error:
        folder = RunFolder(args.out)
        epoch = folder.saved_epoch()
        free = f"Free at least {error.needed_bytes / 1e6:.1f} MB there"
        if epoch is not None:
            raise DDPMError(
                f"The disk is full: {error} The run's last checkpoint in {args.out} (epoch {epoch}) is intact. "
                f"{free}, then continue with `{resume_command(argv)}`."
            ) from None
        # No checkpoint to continue from: --resume would be refused, so the advice is the command without it.
        leftovers = folder.run_files()
        moved = f", move {folder.describe(leftovers)} out of {args.out}" if leftovers else ""
        raise DDPMError(
            f"The disk is full: {error} No epoch had been saved, so there is nothing to continue in {args.out}. "
            f"{free}{moved}, then start again with `{resume_command(argv, resume=False)}`."
        ) from None


def interrupted(args: argparse.Namespace, argv: list[str], what: str = "interrupted") -> str:
    """The line printed on Ctrl-C (or, with ``what``, on SIGTERM): what is on disk and how to go on."""
    from ddpm_core.training.recipe import RECIPES
    from ddpm_core.training.run_folder import RunFolder

    folder = RunFolder(args.out)
    epoch = folder.saved_epoch()
    if epoch is None:
        leftovers = folder.run_files()  # a first checkpoint cut short, if anything
        if leftovers:
            return (f"{what} before the first epoch was saved: {args.out} holds "
                    f"{folder.describe(leftovers)} but nothing to continue from; move those out of it, then "
                    f"start again with `{resume_command(argv, resume=False)}`")
        return (f"{what} before the first epoch was saved: nothing was saved in {args.out}; "
                f"start again with `{resume_command(argv, resume=False)}`")
    planned = getattr(args, "epochs", None) or RECIPES[args.recipe].epochs  # --epochs, if given
    return (f"{what}: epoch {epoch} of {planned} is saved in {args.out}; "
            f"continue with `{resume_command(argv)}`")
