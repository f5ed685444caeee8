"""The command line: ``python -m ddpm_core {train,sample,evaluate,export} ...``.

Bad arguments and unusable inputs print one paragraph saying what was wrong
and how to fix it, and exit with status 2; a model that produces NaN or inf
exits with status 1; Ctrl-C prints one line saying what was saved and how to
go on, and exits with status 130. Everything that can be checked before the
work starts (numbers, output paths, the run lock) is checked first.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import warnings
from pathlib import Path

from ddpm_core.utils import arguments
from ddpm_core.utils.arguments import SAMPLERS
from ddpm_core.utils.errors import DDPMError, DiskFullError, NonFiniteOutputError
from ddpm_core.utils.files import check_output_file

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
DDIM_STEPS, DDIM_ETA = 50, 0.0
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default auto)"

def add_settings(parser: argparse.ArgumentParser, config_type: type, book_defaults: object) -> None:
    """One flag per field of ``config_type`` that has a help text (``recipe.setting``), with its parser or choices
    from the field; a bool becomes --flag/--no-flag. A flag not given leaves its field to ``--recipe``."""
    for setting in dataclasses.fields(config_type):
        meta = setting.metadata
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


def build_parser() -> argparse.ArgumentParser:
    from ddpm_core.diffusion.unet import UNetConfig
    from ddpm_core.training.recipe import BOOK, RECIPES, TrainConfig

    parser = argparse.ArgumentParser(prog="python -m ddpm_core", description="Train and sample a DDPM on MNIST.")
    commands = parser.add_subparsers(dest="command", required=True)

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
    train.add_argument("--device", type=arguments.device_name, default="auto", help=DEVICE_HELP)
    add_settings(train, TrainConfig, BOOK)
    add_settings(train, UNetConfig, UNetConfig())
    train.add_argument("--conditional", action="store_true",
                       help="train eps_theta(x_t, t, y) on the digits' labels, for classifier-free guidance")
    train.add_argument("--p-uncond", type=arguments.unit_interval, default=None,
                       help="with --conditional: share of labels dropped to 'no class' (default 0.1)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sampling = commands.add_parser("sample", help="generate digits from a checkpoint")
    sampling.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    sampling.add_argument("--num-samples", type=arguments.sample_count, default=None,
                      help="number of images (default 32, or one per --labels entry)")
    sampling.add_argument("--seed", type=arguments.seed_int, default=0, help="sample i uses seed S+i (default 0)")
    sampling.add_argument("--out", type=arguments.file_path, required=True,
                      help="output file: .png (a grid) or .npy (uint8 N x 28 x 28)")
    sampling.add_argument("--force", action="store_true", help="replace an existing file (or link) at --out")
    sampling.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                          help="ddpm (all T steps), ddim, or dpm (DPM-Solver++(2M))")
    sampling.add_argument("--steps", type=arguments.positive_int, default=None,
                          help="DDIM or DPM-Solver++ steps, 1..T (default 50)")
    sampling.add_argument("--eta", type=arguments.unit_interval, default=None,
                          help="DDIM stochasticity, 0..1 (default 0)")
    sampling.add_argument("--variance", choices=("beta", "posterior"), default="beta", help="sigma_t^2 (default beta)")
    sampling.add_argument("--noise-scale", type=arguments.noise_scale, default=1.0,
                      help=f"scale of the fresh noise, 0..{arguments.MAX_NOISE_SCALE:g} (default 1.0)")
    sampling.add_argument("--ema", action="store_true", help="use the EMA weights")
    label_group = sampling.add_mutually_exclusive_group()
    label_group.add_argument("--label", type=arguments.non_negative_int, default=None,
                       help="conditional models: the digit every sample should be, e.g. 7")
    label_group.add_argument("--labels", type=arguments.label_list, default=None,
                       help="conditional models: one digit per sample, e.g. 0,1,2,3 (repeated to --num-samples)")
    sampling.add_argument("--guidance", type=arguments.guidance_weight, default=None,
                      help=f"conditional models: classifier-free guidance w, 0..{arguments.MAX_GUIDANCE:g}; 0 "
                           "unconditional (no label needed), 1 conditional (default 1)")
    sampling.add_argument("--device", type=arguments.device_name, default="auto", help=DEVICE_HELP)
    sampling.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate = commands.add_parser("evaluate", help="sample from a checkpoint and print quality metrics")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    evaluate.add_argument("--num-samples", type=arguments.sample_count, default=1000,
                          help="number of samples (default 1000)")
    evaluate.add_argument("--seed", type=arguments.seed_int, default=0, help="sample i uses seed S+i (default 0)")
    evaluate.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                          help="ddpm (all T steps), ddim, or dpm (DPM-Solver++(2M))")
    evaluate.add_argument("--steps", type=arguments.positive_int, default=None,
                          help="DDIM or DPM-Solver++ steps (default 50)")
    evaluate.add_argument("--eta", type=arguments.unit_interval, default=None, help="DDIM stochasticity (default 0)")
    evaluate.add_argument("--ema", action="store_true", help="use the EMA weights")
    evaluate.add_argument("--guidance", type=arguments.guidance_weight, default=None,
                          help="conditional models: guidance w; sample i asks for digit i mod 10 (default 1)")
    evaluate.add_argument("--classifier", type=Path, default=None, help="judge weights (default: the packaged ones)")
    evaluate.add_argument("--device", type=arguments.device_name, default="auto", help=DEVICE_HELP)
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    export = commands.add_parser(
        "export", help="export eps_theta(x_t, t) to ONNX, checked against PyTorch with ONNX Runtime"
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    export.add_argument("--out", type=arguments.file_path, required=True,
                        help="the .onnx file; the schedule and provenance go beside it in a .json of the same name")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument("--seeds", type=arguments.export_seed_count, default=0,
                        help=f"also write seeds.json beside it: x_T of seeds 0..N-1 as the samplers draw them "
                             f"(at most {arguments.MAX_EXPORT_SEEDS:,})")
    export.add_argument("--force", action="store_true", help="replace existing files that export did not write")
    return parser


def _ddim_options(args: argparse.Namespace) -> None:
    """Refuse --steps and --eta without --sampler ddim, and --steps without ddim or dpm (the DDPM sampler always
    runs all T steps; DPM-Solver++ has no eta); fill defaults."""
    if args.sampler == "dpm" and args.eta is not None:
        raise DDPMError("--eta applies only to the DDIM sampler; DPM-Solver++ (--sampler dpm) is deterministic given "
                        "x_T. Drop --eta, or use --sampler ddim.")
    given = [flag for flag, value in (("--steps", args.steps), ("--eta", args.eta)) if value is not None]
    if given and args.sampler == "ddpm":
        verb = "apply" if len(given) > 1 else "applies"
        raise DDPMError(
            f"{' and '.join(given)} {verb} only to the DDIM sampler, but --sampler is {args.sampler}, which runs all "
            f"of the schedule's steps. Add --sampler ddim, or drop {' and '.join(given)}."
        )
    args.steps = DDIM_STEPS if args.steps is None else args.steps
    args.eta = DDIM_ETA if args.eta is None else args.eta


def _evaluate(args: argparse.Namespace) -> int:
    from ddpm_core.measure.evaluation import evaluate_checkpoint
    from ddpm_core.measure.metrics import format_metrics_table

    _ddim_options(args)
    result = evaluate_checkpoint(
        args.checkpoint,
        num_samples=args.num_samples,
        seed=args.seed,
        sampler=args.sampler,
        steps=args.steps,
        eta=args.eta,
        use_ema=args.ema,
        device=args.device,
        classifier_path=args.classifier,
        progress=not args.no_progress,
        guidance=args.guidance,
    )
    print(format_metrics_table([result]))
    if "accuracy" in result:
        print(f"asked for digit i mod 10: {result['accuracy']:.1%} judged as asked; within-digit diversity "
              f"{result['diversity_mean']:.3f} of real digits'; per-digit Frechet {result['class_frechet_mean']:.1f}")
    print(f"sampling took {result['sampling_seconds']:.1f} s; Frechet distance against a fixed random set of "
          f"{result['num_real']} MNIST test images; NN: distance to the nearest of the 60,000 training images")
    return 0


def _export(args: argparse.Namespace) -> int:
    from ddpm_core.app.export import check_outputs, export_onnx, write_seed_noise

    paths = check_outputs(args.out, args.seeds, args.force)  # before the checkpoint is even loaded
    try:
        report = export_onnx(args.checkpoint, args.out, use_ema=args.ema)
    except OSError as error:
        raise DDPMError(f"Cannot write the export next to {args.out}: {error}. Choose another output path.") from None
    print(f"wrote {report.onnx_path} ({report.onnx_bytes / 1e6:.2f} MB) and {report.json_path}; ONNX Runtime matches "
          f"PyTorch to {report.max_abs_difference:.1e} at batch sizes {list(report.checked_batches)} and t in "
          f"{list(report.checked_timesteps)}")
    if args.seeds:
        seeds = write_seed_noise(list(range(args.seeds)), paths["seeds"])
        print(f"wrote {seeds}: x_T of seeds 0 to {args.seeds - 1}")
    return 0


def _resume_command(argv: list[str], resume: bool = True) -> str:
    """The command line ``argv`` with --resume (to continue a run), or without it (to start the run again)."""
    # argparse also takes an unambiguous prefix of --resume, such as --res.
    options = [a for a in argv if not (len(a) > 2 and a.startswith("--") and "--resume".startswith(a))]
    return shlex.join(["python", "-m", "ddpm_core", *options, *(["--resume"] if resume else [])])


def train_configs(args: argparse.Namespace) -> tuple:
    """The ``TrainConfig`` and ``UNetConfig`` that parsed ``train`` arguments ask for: ``--recipe``, with each
    flag given replacing its setting."""
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
    model_config = dataclasses.replace(UNetConfig(), num_classes=10 if args.conditional else None, **{
        f.name: given[f.name] for f in dataclasses.fields(UNetConfig) if f.name in given and "help" in f.metadata})
    try:
        model_config.validate(check_size=True)
    except ValueError as error:
        raise DDPMError(f"Unusable architecture options: {error}") from None
    return config, model_config


def _train_command(args: argparse.Namespace, argv: list[str]) -> int:
    from ddpm_core.training import distributed
    from ddpm_core.training.loop import train
    from ddpm_core.training.run_folder import RunFolder

    config, model_config = train_configs(args)
    try:
        result = train(args.out, config, model_config, resume=args.resume, device=args.device,
                       progress=not args.no_progress)
    except DiskFullError as error:
        folder = RunFolder(args.out)
        epoch = folder.saved_epoch()
        free = f"Free at least {error.needed_bytes / 1e6:.1f} MB there"
        if epoch is not None:
            raise DDPMError(
                f"The disk is full: {error} The run's last checkpoint in {args.out} (epoch {epoch}) is intact. "
                f"{free}, then continue with `{_resume_command(argv)}`."
            ) from None
        # No checkpoint to continue from: --resume would be refused, so the advice is the command without it.
        leftovers = folder.run_files()
        moved = f", move {folder.describe(leftovers)} out of {args.out}" if leftovers else ""
        raise DDPMError(
            f"The disk is full: {error} No epoch had been saved, so there is nothing to continue in {args.out}. "
            f"{free}{moved}, then start again with `{_resume_command(argv, resume=False)}`."
        ) from None
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


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from ddpm_core.diffusion.ddim import ddim_sample
    from ddpm_core.diffusion.dpm_solver import dpm_solver_sample
    from ddpm_core.diffusion.sampling import sample
    from ddpm_core.training.checkpoint import check_finite_samples, load_checkpoint
    from ddpm_core.utils.device import resolve_device
    from ddpm_core.utils.files import atomic_write
    from ddpm_core.utils.images import save_grid, to_uint8

    check_output_file(args.out, (".png", ".npy"), force=args.force, example="samples.png",
                      what="samples (.png: an image grid; .npy: uint8 images, N x 28 x 28)")
    _ddim_options(args)
    labels = _requested_labels(args)
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), use_ema=args.ema)
    labels = _check_conditioning(args, loaded, labels)
    guided = {"labels": labels, "guidance": 1.0 if args.guidance is None else args.guidance}
    if args.sampler == "ddim":
        images, _ = ddim_sample(loaded.model, loaded.schedule, num_samples=args.num_samples, seed=args.seed,
                                steps=args.steps, eta=args.eta, progress=not args.no_progress, **guided)
    elif args.sampler == "dpm":
        images, _ = dpm_solver_sample(loaded.model, loaded.schedule, num_samples=args.num_samples, seed=args.seed,
                                      steps=args.steps, progress=not args.no_progress, **guided)
    else:
        images, _ = sample(
            loaded.model,
            loaded.schedule,
            num_samples=args.num_samples,
            seed=args.seed,
            variance=args.variance,
            noise_scale=args.noise_scale,
            progress=not args.no_progress,
            **guided,
        )
    settings = [f"{flag} {value:g}" for flag, value, usual in (("--noise-scale", args.noise_scale, 1.0),
                ("--guidance", args.guidance, None)) if value not in (usual, 0.0, 1.0)]
    try:
        check_finite_samples(images, loaded.path)
    except NonFiniteOutputError:
        if not settings:
            raise
        raise NonFiniteOutputError(  # the user's setting, not the weights, is the first suspect
            f"The samples became non-finite (NaN or inf) with {' and '.join(settings)}, so nothing was written. "
            f"Run again with a value closer to the default (--noise-scale 1, --guidance 1) to tell whether the "
            f"setting or the checkpoint {loaded.path} is the cause."
        ) from None
    if args.out.suffix.lower() == ".npy":
        array = to_uint8(images)[:, 0].numpy()

        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as file:  # a file object: np.save adds no second ".npy" to the name
                np.save(file, array)

        atomic_write(args.out, write_npy, needed_bytes=array.nbytes + 4096)
    else:
        save_grid(images, args.out)
    print(f"wrote {args.num_samples} samples to {args.out}")
    return 0


def _requested_labels(args: argparse.Namespace) -> list[int] | None:
    """The class of each sample from --label or --labels (repeated to --num-samples), or None; fills --num-samples."""
    if args.labels is not None:
        if args.num_samples is not None and len(args.labels) > args.num_samples:
            raise DDPMError(
                f"--labels lists {len(args.labels)} classes but --num-samples is {args.num_samples}, so "
                f"{len(args.labels) - args.num_samples} of them would never be drawn. Pass --num-samples "
                f"{len(args.labels)} (or more; the list repeats), or shorten --labels."
            )
        args.num_samples = args.num_samples or len(args.labels)
        return [args.labels[i % len(args.labels)] for i in range(args.num_samples)]
    args.num_samples = args.num_samples or 32
    if args.label is not None:
        return [args.label] * args.num_samples
    return None


def _check_conditioning(args: argparse.Namespace, loaded, labels: list[int] | None) -> list[int] | None:
    """The labels to sample with, by the rules of ``ddpm_core.diffusion.conditioning``, in the command line's words."""
    from ddpm_core.diffusion.conditioning import COMMAND_LINE, sampling_labels

    resolved = sampling_labels(loaded.model.config.num_classes, labels, args.guidance, args.num_samples,
                               COMMAND_LINE, source=f"The checkpoint {loaded.path}")
    return resolved.tolist() if resolved is not None else None


def _interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The one line printed on Ctrl-C: what is on disk and how to go on."""
    if args.command == "train":
        from ddpm_core.training.run_folder import RunFolder

        folder = RunFolder(args.out)
        epoch = folder.saved_epoch()
        if epoch is None:
            leftovers = folder.run_files()  # a first checkpoint cut short, if anything
            if leftovers:
                return (f"interrupted before the first epoch was saved: {args.out} holds "
                        f"{folder.describe(leftovers)} but nothing to continue from; move those out of it, then "
                        f"start again with `{_resume_command(argv, resume=False)}`")
            return (f"interrupted before the first epoch was saved: nothing was saved in {args.out}; "
                    f"start again with `{_resume_command(argv, resume=False)}`")
        return (f"interrupted: epoch {epoch} of {args.epochs} is saved in {args.out}; "
                f"continue with `{_resume_command(argv)}`")
    if args.command == "sample":
        return (f"interrupted: nothing was written to {args.out}; run the same command again "
                f"(the same --seed gives the same samples)")
    return "interrupted: nothing was written; run the same command again to evaluate"


def _close_progress_bars() -> None:
    """Clear the bars an interrupted loop left open, so the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


_EXIT_TERMINATED = 143  # 128 + SIGTERM, what torchrun and a shell report for a process ended by SIGTERM
_QUIET_GRACE_S = 10.0  # how long a process other than rank 0 waits, after a refusal, for torchrun to end it


class _Terminated(BaseException):
    """Raised in rank 0 by the SIGTERM with which torchrun ends a launch once one of its processes has ended.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way takes it for a failure.
    """


class _Torchrun:
    """How a process that torchrun started ends: rank 0 reports for every process, the others stay silent.

    torchrun runs the same command in every process and shows what each prints, so a refusal that all of them
    meet would be printed once per process, and torchrun's SIGTERM to the survivors of a failed process would
    end them without a word. Here rank 0 prints one message, and every other process ends with its status
    silently.
    """

    def __init__(self, ranks) -> None:
        self.ranks = ranks
        self.status: int | None = None  # decided and reported: a SIGTERM now only ends the process with it
        self._previous: object = None

    def watch(self) -> None:
        """From here on, torchrun's SIGTERM raises ``_Terminated`` in rank 0 and ends the other processes."""
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # Python takes signals in its main thread only
            previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._previous = self._previous or previous

    def close(self) -> None:
        """Give SIGTERM back, unless a report was made: then a late SIGTERM still ends the process silently."""
        import signal

        if self._previous is not None and self.status is None:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum, frame) -> None:
        import signal

        if self.status is not None or not self.ranks.main:
            sys.stdout.flush()
            sys.stderr.flush()
            # Nothing to clean up: only rank 0 writes, and it has made its report.
            os._exit(_EXIT_TERMINATED if self.status is None else self.status)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one report; torchrun sends SIGKILL if it never comes
        raise _Terminated

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
            import time

            time.sleep(_QUIET_GRACE_S)
            print(f"process {self.ranks.rank} of {self.ranks.world_size}: {message}", file=sys.stderr, flush=True)
        return status

    def parse(self, parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | None:
        """``parser.parse_args`` in silence outside rank 0; None, with ``status`` set, when it ends the process."""
        import contextlib
        import io

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


def _torchrun_ranks():
    """This process's ranks when torchrun started it for a parallel run, else None."""
    from ddpm_core.training import distributed

    try:
        ranks = distributed.ranks_from_env()
    except DDPMError:  # refused up front by ``train``, in every process
        return None
    return ranks if ranks.torchrun and ranks.distributed else None


def _check_launch() -> None:
    """Refuse an unusable parallel launch (RANK, WORLD_SIZE, MASTER_ADDR, ...) before anything is read or written."""
    from ddpm_core.training import distributed

    ranks = distributed.ranks_from_env()
    if ranks.distributed:
        ranks.rendezvous()


def _stopped_by_torchrun(args: argparse.Namespace, argv: list[str], ranks) -> str:
    """Rank 0's line when torchrun ends it: which process ended, if known, what is saved and how to go on."""
    from ddpm_core.training import distributed
    from ddpm_core.training.run_folder import RunFolder

    lost = distributed.stopped_peers()
    if lost:
        names = " and ".join(str(rank) for rank in lost)
        cause = (f"process{'es' if len(lost) > 1 else ''} {names} of {ranks.world_size} ended, so torchrun stopped "
                 f"this one too (its report below says how {'they' if len(lost) > 1 else 'it'} ended)")
    else:
        cause = ("torchrun stopped this process (SIGTERM), as it does when another process of the run has ended or "
                 "when torchrun itself is stopped; its report below names the process that failed")
    epoch = RunFolder(args.out).saved_epoch()
    options = [*argv, "--resume"] if epoch is not None and "--resume" not in argv else argv
    nodes = ranks.world_size // ranks.local_world_size
    launcher = ["torchrun", "--nproc-per-node", str(ranks.local_world_size)]
    command = shlex.join([*launcher, *(["--nnodes", str(nodes)] if nodes > 1 else []), "-m", "ddpm_core", *options])
    where = " on every machine, with the rendezvous options used before" if nodes > 1 else ""
    if epoch is None:
        return (f"stopped: {cause}. No epoch had finished, so nothing was saved in {args.out}; start again with "
                f"`{command}`{where}.")
    return (f"stopped: {cause}. The last checkpoint in {args.out} (epoch {epoch} of {args.epochs}) is intact; "
            f"continue with `{command}`{where}.")


def _run(args: argparse.Namespace, argv: list[str], torchrun: _Torchrun | None) -> int:
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
                    _check_launch()
                    return _train_command(args, argv)
                if args.command == "evaluate":
                    return _evaluate(args)
                if args.command == "export":
                    return _export(args)
                return _sample(args)
            except DDPMError as error:
                return report(error.exit_code, f"error: {error}")
            except KeyboardInterrupt:  # Ctrl-C reaches every process: none need wait for rank 0
                _close_progress_bars()
                return report(EXIT_INTERRUPTED, _interrupted(args, argv), wait=False)
        except _Terminated:  # only in rank 0 under torchrun, see _Torchrun
            _close_progress_bars()
            return report(_EXIT_TERMINATED, _stopped_by_torchrun(args, argv, torchrun.ranks))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ranks = _torchrun_ranks()
    if ranks is None:
        return _run(parser.parse_args(argv), argv, None)
    torchrun = _Torchrun(ranks)
    try:
        args = torchrun.parse(parser, argv)
        return torchrun.status if args is None else _run(args, argv, torchrun)  # type: ignore[return-value]
    finally:
        torchrun.close()
