"""The command line: ``python -m ddpm_core {train,sample,evaluate} ...``.

Bad arguments and unusable inputs print one paragraph saying what was wrong
and how to fix it, and exit with status 2; a model that produces NaN or inf
exits with status 1; Ctrl-C prints one line saying what was saved and how to
go on, and exits with status 130. Everything that can be checked before the
work starts (numbers, output paths, the run lock) is checked first.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
import warnings
from pathlib import Path

from ddpm_core.errors import DDPMError, DiskFullError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 100_000  # 300 MB of float32 images; evaluate's metrics stay within a few GB
DDIM_STEPS, DDIM_ETA = 50, 0.0

# The flags that turn the default recipe into the reference run's (Adam 2e-4, constant, uniform weights).
REFERENCE_FLAGS = (
    "--lr 2e-4 --warmup-steps 0 --lr-decay constant --grad-clip none --no-ema-warmup --loss-weighting uniform"
)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


_positive_int = positive_int


def seed_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_SEED}, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed from 0 to {MAX_SEED} (2**32 - 1), got {value}")
    return value


def _sample_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SAMPLES:
        raise argparse.ArgumentTypeError(
            f"expected at most {MAX_SAMPLES:,} samples, got {value:,}; run the command several times with "
            f"different --seed values for more"
        )
    return value


def _finite_float(text: str, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {value} (not a finite number)")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _label_list(text: str) -> tuple[int, ...]:
    labels = _int_list(text)
    if not labels or min(labels) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated classes such as 0,1,2, got {text!r}")
    return labels


def _width_list(text: str) -> tuple[int, ...]:
    widths = _int_list(text)
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths such as 32,32,48, got {text!r}")
    return widths


def _resolution_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return _int_list(text)


def _optional(parse):
    """An argparse type that also takes "none", for settings that can be switched off."""

    def parse_or_none(text: str):
        return None if text.strip().lower() == "none" else parse(text)

    return parse_or_none


def _fraction(strict: bool):
    """An argparse type for a number in [0, 1], or in (0, 1) when ``strict``."""

    def parse(text: str) -> float:
        value = _finite_float(text, "a number between 0 and 1")
        if strict and not 0.0 < value < 1.0:
            raise argparse.ArgumentTypeError(f"expected a number strictly between 0 and 1 (e.g. 0.999), got {value}")
        if not 0.0 <= value <= 1.0:
            raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
        return value

    return parse


_decay = _fraction(strict=True)
_unit_interval = _fraction(strict=False)


def _device(text: str) -> str:
    from ddpm_core.device import DEVICE_CHOICES

    if text.split(":")[0].lower() not in DEVICE_CHOICES:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm_core", description="Train and sample a DDPM on MNIST.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train the UNet, with a checkpoint after every epoch",
        description="Train the UNet on MNIST, with a checkpoint after every epoch. The defaults are the recipe "
        f"chosen by the book's measured ablations (chapter 7). The reference run's recipe is {REFERENCE_FLAGS}.",
    )
    from ddpm_core.training import TrainConfig
    from ddpm_core.unet import UNetConfig

    # The defaults are the book's recipe: TrainConfig() and UNetConfig().
    tc, uc = TrainConfig(), UNetConfig()
    train.add_argument("--epochs", type=_positive_int, default=tc.epochs, help="total epochs (default %(default)s)")
    train.add_argument("--batch-size", type=_positive_int, default=tc.batch_size,
                       help="images per step (default %(default)s)")
    train.add_argument("--lr", type=_positive_float, default=tc.lr,
                       help="Adam learning rate; the peak rate with --warmup-steps (default %(default)s)")
    train.add_argument("--out", type=Path, default=Path("runs/mnist"), help="output folder (default runs/mnist)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--seed", type=seed_int, default=tc.seed,
                       help="seed for weights, data order and noise (default %(default)s)")
    train.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    train.add_argument("--subset", type=_positive_int, default=None, help="train on the first N images only")
    train.add_argument("--ema-decay", type=_optional(_decay), default=tc.ema_decay,
                       help="decay of the weights' moving average, or none (default %(default)s)")
    train.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction, default=tc.ema_warmup,
                       help="EMA decay min(decay, (1+n)/(10+n)) at step n (default %(default)s)")
    train.add_argument("--warmup-steps", type=_non_negative_int, default=tc.warmup_steps,
                       help="linear learning-rate warm-up steps (default %(default)s)")
    train.add_argument("--lr-decay", choices=("constant", "cosine"), default=tc.lr_decay,
                       help="learning rate after the warm-up (default %(default)s)")
    train.add_argument("--grad-clip", type=_optional(_positive_float), default=tc.grad_clip,
                       help="clip the gradients' norm to this, or none (default %(default)s)")
    train.add_argument("--loss-weighting", choices=("uniform", "min_snr"), default=tc.loss_weighting,
                       help="uniform (L_simple) or min_snr (default %(default)s)")
    train.add_argument("--min-snr-gamma", type=_positive_float, default=tc.min_snr_gamma,
                       help="gamma of min_snr (default %(default)s)")
    train.add_argument("--precision", choices=("fp32", "bf16"), default=tc.precision,
                       help="bf16: the network under bfloat16 autocast, the loss in fp32 (default fp32)")
    train.add_argument("--channels", type=_width_list, default=uc.channels,
                       help="widths at 28, 14 and 7 pixels, e.g. 32,32,48 (default %(default)s)")
    train.add_argument("--time-embed-dim", type=_positive_int, default=uc.time_embed_dim,
                       help="timestep embedding width (default %(default)s)")
    train.add_argument("--attention", type=_resolution_list, default=uc.attention,
                       help="resolutions with self-attention, e.g. 7 or 7,14, or none (default %(default)s)")
    train.add_argument("--downsample", choices=("maxpool", "conv"), default=uc.downsample,
                       help="maxpool or conv (default %(default)s)")
    train.add_argument("--zero-init", action=argparse.BooleanOptionalAction, default=uc.zero_init,
                       help="zero the last convolution of each block (default %(default)s)")
    train.add_argument("--conditional", action="store_true",
                       help="train eps_theta(x_t, t, y) on the digits' labels, for classifier-free guidance")
    train.add_argument("--p-uncond", type=_unit_interval, default=None,
                       help="with --conditional: share of labels dropped to 'no class' (default 0.1)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    samp = commands.add_parser("sample", help="generate digits from a checkpoint")
    samp.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    samp.add_argument("--num-samples", type=_sample_count, default=None,
                      help="number of images (default 32, or one per --labels entry)")
    samp.add_argument("--seed", type=seed_int, default=0, help="sample i uses seed S+i (default 0)")
    samp.add_argument("--out", type=Path, required=True, help="output file: .png (a grid) or .npy (uint8 N x 28 x 28)")
    samp.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ddpm (1000 steps) or ddim")
    samp.add_argument("--steps", type=_positive_int, default=None, help="DDIM steps, 1..T (default 50)")
    samp.add_argument("--eta", type=_unit_interval, default=None, help="DDIM stochasticity, 0..1 (default 0)")
    samp.add_argument("--variance", choices=("beta", "posterior"), default="beta", help="sigma_t^2 (default beta)")
    samp.add_argument("--noise-scale", type=_non_negative_float, default=1.0,
                      help="scale of the fresh noise (default 1.0)")
    samp.add_argument("--ema", action="store_true", help="use the EMA weights")
    asked = samp.add_mutually_exclusive_group()
    asked.add_argument("--label", type=_non_negative_int, default=None,
                       help="conditional models: the digit every sample should be, e.g. 7")
    asked.add_argument("--labels", type=_label_list, default=None,
                       help="conditional models: one digit per sample, e.g. 0,1,2,3 (repeated to --num-samples)")
    samp.add_argument("--guidance", type=_non_negative_float, default=None,
                      help="conditional models: classifier-free guidance w; 0 unconditional, 1 conditional "
                           "(default 1)")
    samp.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    samp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate = commands.add_parser("evaluate", help="sample from a checkpoint and print quality metrics")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    evaluate.add_argument("--num-samples", type=_sample_count, default=1000, help="number of samples (default 1000)")
    evaluate.add_argument("--seed", type=seed_int, default=0, help="sample i uses seed S+i (default 0)")
    evaluate.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ddpm (1000 steps) or ddim")
    evaluate.add_argument("--steps", type=_positive_int, default=None, help="DDIM steps (default 50)")
    evaluate.add_argument("--eta", type=_unit_interval, default=None, help="DDIM stochasticity (default 0)")
    evaluate.add_argument("--ema", action="store_true", help="use the EMA weights")
    evaluate.add_argument("--guidance", type=_non_negative_float, default=None,
                          help="conditional models: guidance w; sample i asks for digit i mod 10 (default 1)")
    evaluate.add_argument("--classifier", type=Path, default=None, help="judge weights (default: the packaged ones)")
    evaluate.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    export = commands.add_parser(
        "export", help="export eps_theta(x_t, t) to ONNX, checked against PyTorch with ONNX Runtime"
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    export.add_argument("--out", type=Path, required=True,
                        help="the .onnx file; the schedule and provenance go beside it in a .json of the same name")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument("--seeds", type=_non_negative_int, default=0,
                        help="also write seeds.json beside it: x_T of seeds 0..N-1 as the samplers draw them")
    return parser


def check_writable(path: Path) -> None:
    """Refuse an output file path that is a folder or lies in a place that cannot be written, before any work."""
    if path.is_dir():
        raise DDPMError(f"The output {path} is a folder; pass a file name inside it, such as {path / 'samples.png'}.")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DDPMError(f"Cannot write {path}: {ancestor} is a file, not a folder. Choose another output path.")
    try:  # a real write: permission bits say nothing for root or on a read-only mount
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise DDPMError(
            f"Cannot write {path}: {ancestor} is not writable ({error.strerror}). Choose another output path."
        ) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise DDPMError(f"Cannot write {path}: the file there is read-only. Choose another output path.")


def check_output_file(path: Path, suffixes: tuple[str, ...], force: bool, what: str) -> None:
    """Refuse to replace an existing file unless ``force``; then check that ``path`` can be written."""
    if path.suffix.lower() not in suffixes:
        raise DDPMError(f"The {what} file {path} should end in {' or '.join(suffixes)}.")
    if path.is_file() and not force:
        raise DDPMError(
            f"{path} already exists; nothing was overwritten. Choose a new --out path, or pass --force to "
            f"replace that file."
        )
    check_writable(path)


def _ddim_options(args: argparse.Namespace) -> None:
    """Refuse --steps and --eta without --sampler ddim (the DDPM sampler always runs all T steps); fill defaults."""
    given = [flag for flag, value in (("--steps", args.steps), ("--eta", args.eta)) if value is not None]
    if given and args.sampler != "ddim":
        verb = "apply" if len(given) > 1 else "applies"
        raise DDPMError(
            f"{' and '.join(given)} {verb} only to the DDIM sampler, but --sampler is {args.sampler}, which runs all "
            f"of the schedule's steps. Add --sampler ddim, or drop {' and '.join(given)}."
        )
    args.steps = DDIM_STEPS if args.steps is None else args.steps
    args.eta = DDIM_ETA if args.eta is None else args.eta


def _evaluate(args: argparse.Namespace) -> int:
    from ddpm_core.evaluation import evaluate_checkpoint
    from ddpm_core.metrics import format_metrics_table

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
    from ddpm_core.export import export_onnx, write_seed_noise

    check_writable(args.out)  # export_onnx refuses a name without .onnx before it loads anything
    check_writable(args.out.with_suffix(".json"))
    if args.seeds:
        check_writable(args.out.with_name("seeds.json"))
    try:
        report = export_onnx(args.checkpoint, args.out, use_ema=args.ema)
    except OSError as error:
        raise DDPMError(f"Cannot write the export next to {args.out}: {error}. Choose another output path.") from None
    print(f"wrote {report.onnx_path} ({report.onnx_bytes / 1e6:.2f} MB) and {report.json_path}; ONNX Runtime matches "
          f"PyTorch to {report.max_abs_difference:.1e} at batch sizes {list(report.checked_batches)} and t in "
          f"{list(report.checked_timesteps)}")
    if args.seeds:
        seeds = write_seed_noise(list(range(args.seeds)), args.out.with_name("seeds.json"))
        print(f"wrote {seeds}: x_T of seeds 0 to {args.seeds - 1}")
    return 0


def _resume_command(argv: list[str]) -> str:
    return shlex.join(["python", "-m", "ddpm_core", *argv, *([] if "--resume" in argv else ["--resume"])])


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    import dataclasses

    from ddpm_core.checkpoint import check_model_config
    from ddpm_core.training import TrainConfig, saved_epoch, train
    from ddpm_core.unet import UNetConfig

    if args.p_uncond is not None and not args.conditional:
        raise DDPMError(
            "--p-uncond applies only to a conditional network, which drops that share of labels to learn the "
            "unconditional prediction too. Add --conditional, or drop --p-uncond."
        )
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        ema_decay=args.ema_decay,
        subset=args.subset,
        warmup_steps=args.warmup_steps,
        lr_decay=args.lr_decay,
        grad_clip=args.grad_clip,
        ema_warmup=args.ema_warmup,
        loss_weighting=args.loss_weighting,
        min_snr_gamma=args.min_snr_gamma,
        p_uncond=TrainConfig.p_uncond if args.p_uncond is None else args.p_uncond,
        precision=args.precision,
    )
    try:
        model_config = dataclasses.replace(UNetConfig(), channels=args.channels, time_embed_dim=args.time_embed_dim,
                                           attention=args.attention, downsample=args.downsample,
                                           zero_init=args.zero_init,
                                           num_classes=10 if args.conditional else None)
        check_model_config(model_config)
    except ValueError as error:
        raise DDPMError(f"Unusable architecture options: {error}") from None
    try:
        result = train(args.out, config, model_config, resume=args.resume, device=args.device,
                       progress=not args.no_progress)
    except DiskFullError as error:
        epoch = saved_epoch(args.out)
        kept = f"epoch {epoch}" if epoch is not None else "no finished epoch yet"
        raise DDPMError(
            f"The disk is full: {error} The run's last checkpoint in {args.out} ({kept}) is intact. Free at "
            f"least {error.needed_bytes / 1e6:.1f} MB there, then continue with `{_resume_command(argv)}`."
        ) from None
    if int(os.environ.get("RANK", "0") or 0) > 0:  # under torchrun, rank 0 reports for every process
        return 0
    if args.no_progress:  # the bar's per-epoch lines were off: list the epochs here
        for epoch, loss in enumerate(result.loss_history, start=1):
            print(f"epoch {epoch}/{config.epochs}: mean loss {loss:.4f}")
    losses = ", ".join(f"{loss:.4f}" for loss in result.loss_history)
    print(f"trained {len(result.loss_history)} epochs on {result.device} in {result.wall_time_s:.0f} s")
    print(f"epoch mean losses: {losses}")
    print(f"checkpoint: {args.out / 'model.safetensors'}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from ddpm_core.checkpoint import check_finite_samples, load_checkpoint
    from ddpm_core.data import to_uint8
    from ddpm_core.ddim import ddim_sample
    from ddpm_core.device import resolve_device
    from ddpm_core.sampling import sample
    from ddpm_core.viz import save_grid

    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".npy"):
        raise DDPMError(
            f"Unknown output extension {args.out.suffix!r} for {args.out}: use .png for an image grid or .npy for "
            f"a uint8 array of shape (N, 28, 28)."
        )
    check_writable(args.out)
    _ddim_options(args)
    labels = _requested_labels(args)
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), use_ema=args.ema)
    _check_conditioning(args, loaded)
    guided = {"labels": labels, "guidance": 1.0 if args.guidance is None else args.guidance}
    if args.sampler == "ddim":
        images, _ = ddim_sample(loaded.model, loaded.schedule, num_samples=args.num_samples, seed=args.seed,
                                steps=args.steps, eta=args.eta, progress=not args.no_progress, **guided)
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
    check_finite_samples(images, loaded.path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(args.out, to_uint8(images)[:, 0].numpy())
    else:
        save_grid(images, args.out)
    print(f"wrote {args.num_samples} samples to {args.out}")
    return 0


def _requested_labels(args: argparse.Namespace) -> list[int] | None:
    """The class of each sample from --label or --labels (repeated to --num-samples), or None; fills --num-samples."""
    if args.labels is not None:
        args.num_samples = args.num_samples or len(args.labels)
        return [args.labels[i % len(args.labels)] for i in range(args.num_samples)]
    args.num_samples = args.num_samples or 32
    if args.label is not None:
        return [args.label] * args.num_samples
    return None


def _check_conditioning(args: argparse.Namespace, loaded) -> None:
    """Refuse labels for an unconditional checkpoint, a conditional one without labels, and unknown classes."""
    num_classes = loaded.model.config.num_classes
    asked = args.label is not None or args.labels is not None
    if num_classes is None and (asked or args.guidance is not None):
        flags = ", ".join(f for f, v in (("--label", args.label), ("--labels", args.labels),
                                         ("--guidance", args.guidance)) if v is not None)
        raise DDPMError(
            f"The checkpoint {loaded.path} is an unconditional model (trained without labels), so {flags} cannot "
            f"apply: it draws whatever digit its noise leads to. Drop {flags}, or pass a checkpoint trained with "
            f"`python -m ddpm_core train --conditional`."
        )
    if num_classes is not None and not asked:
        raise DDPMError(
            f"The checkpoint {loaded.path} is a conditional model: say which digit to draw with --label 7 (every "
            f"sample) or --labels 0,1,2 (one per sample, repeated), and optionally --guidance W (default 1). For "
            f"unconditional samples from it, add --guidance 0."
        )
    requested = args.labels if args.labels is not None else (args.label,)
    if num_classes is not None and asked and max(requested) >= num_classes:
        raise DDPMError(
            f"--label{'s' if args.labels is not None else ''} asks for class {max(requested)}, but the checkpoint "
            f"{loaded.path} knows the classes 0..{num_classes - 1}. Pass labels in that range."
        )


def _interrupted(args: argparse.Namespace, argv: list[str]) -> str:
    """The one line printed on Ctrl-C: what is on disk and how to go on."""
    if args.command == "train":
        from ddpm_core.training import saved_epoch

        epoch = saved_epoch(args.out)
        if epoch is None:
            return (f"interrupted before the first epoch was saved: nothing was saved in {args.out}; "
                    f"start again with `{shlex.join(['python', '-m', 'ddpm_core', *argv])}`")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            if args.command == "train":
                return _train(args, argv)
            if args.command == "evaluate":
                return _evaluate(args)
            if args.command == "export":
                return _export(args)
            return _sample(args)
        except DDPMError as error:
            print(f"error: {error}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            _close_progress_bars()
            print(_interrupted(args, argv), file=sys.stderr)
            return EXIT_INTERRUPTED
