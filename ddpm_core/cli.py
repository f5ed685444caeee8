"""The command line: ``python -m ddpm_core {train,sample,evaluate} ...``.

Bad arguments and unusable inputs print one paragraph saying what was wrong
and how to fix it, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_core.errors import DDPMError

EXIT_USAGE = 2


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
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
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _width_list(text: str) -> tuple[int, ...]:
    widths = _int_list(text)
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths such as 32,32,48, got {text!r}")
    return widths


def _resolution_list(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    return _int_list(text)


def _fraction(strict: bool):
    """An argparse type for a number in [0, 1], or in (0, 1) when ``strict``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
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

    train = commands.add_parser("train", help="train the UNet, with a checkpoint after every epoch")
    train.add_argument("--epochs", type=_positive_int, default=15, help="total epochs (default 15)")
    train.add_argument("--batch-size", type=_positive_int, default=128, help="images per step (default 128)")
    train.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    train.add_argument("--out", type=Path, default=Path("runs/mnist"), help="output folder (default runs/mnist)")
    train.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    train.add_argument("--seed", type=int, default=0, help="seed for weights, data order and noise (default 0)")
    train.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    train.add_argument("--subset", type=_positive_int, default=None, help="train on the first N images only")
    train.add_argument("--ema-decay", type=_decay, default=None, help="keep an EMA of the weights (e.g. 0.999)")
    train.add_argument("--warmup-steps", type=_non_negative_int, default=0, help="linear warm-up steps (default 0)")
    train.add_argument("--lr-decay", choices=("constant", "cosine"), default="constant",
                       help="learning rate after the warm-up (default constant)")
    train.add_argument("--grad-clip", type=_positive_float, default=None, help="clip the gradient norm (e.g. 1.0)")
    train.add_argument("--ema-warmup", action="store_true", help="EMA decay min(decay, (1+n)/(10+n)) at step n")
    train.add_argument("--loss-weighting", choices=("uniform", "min_snr"), default="uniform",
                       help="uniform (L_simple) or min_snr (default uniform)")
    train.add_argument("--min-snr-gamma", type=_positive_float, default=5.0, help="gamma of min_snr (default 5)")
    train.add_argument("--channels", type=_width_list, default=None, help="widths at 28, 14 and 7, e.g. 32,32,48")
    train.add_argument("--time-embed-dim", type=_positive_int, default=None, help="timestep embedding width")
    train.add_argument("--attention", type=_resolution_list, default=None, help="attention resolutions, e.g. 7 or 7,14")
    train.add_argument("--downsample", choices=("maxpool", "conv"), default=None, help="maxpool or conv")
    train.add_argument("--zero-init", action="store_true", default=None, help="zero the last conv of each block")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    samp = commands.add_parser("sample", help="generate digits from a checkpoint")
    samp.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    samp.add_argument("--num-samples", type=_positive_int, default=32, help="number of images (default 32)")
    samp.add_argument("--seed", type=int, default=0, help="sample i uses seed S+i (default 0)")
    samp.add_argument("--out", type=Path, required=True, help="output file: .png (a grid) or .npy (uint8 N x 28 x 28)")
    samp.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ddpm (1000 steps) or ddim")
    samp.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps, 1..T (default 50)")
    samp.add_argument("--eta", type=_unit_interval, default=0.0, help="DDIM stochasticity, 0..1 (default 0)")
    samp.add_argument("--variance", choices=("beta", "posterior"), default="beta", help="sigma_t^2 (default beta)")
    samp.add_argument("--noise-scale", type=float, default=1.0, help="scale of the fresh noise (default 1.0)")
    samp.add_argument("--ema", action="store_true", help="use the EMA weights")
    samp.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    samp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    evaluate = commands.add_parser("evaluate", help="sample from a checkpoint and print quality metrics")
    evaluate.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")
    evaluate.add_argument("--num-samples", type=_positive_int, default=1000, help="number of samples (default 1000)")
    evaluate.add_argument("--seed", type=int, default=0, help="sample i uses seed S+i (default 0)")
    evaluate.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="ddpm (1000 steps) or ddim")
    evaluate.add_argument("--steps", type=_positive_int, default=50, help="DDIM steps (default 50)")
    evaluate.add_argument("--eta", type=_unit_interval, default=0.0, help="DDIM stochasticity (default 0)")
    evaluate.add_argument("--ema", action="store_true", help="use the EMA weights")
    evaluate.add_argument("--classifier", type=Path, default=None, help="judge weights (default: the committed ones)")
    evaluate.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or mps (default auto)")
    evaluate.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    from ddpm_core.evaluation import evaluate_checkpoint
    from ddpm_core.metrics import format_metrics_table

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
    )
    print(format_metrics_table([result]))
    print(f"sampling took {result['sampling_seconds']:.1f} s; Frechet distance against the first "
          f"{result['num_real']} MNIST test images; NN: distance to the nearest of the 60,000 training images")
    return 0


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from ddpm_core.training import TrainConfig, train
    from ddpm_core.unet import UNetConfig

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
    )
    changes = {"channels": args.channels, "time_embed_dim": args.time_embed_dim, "attention": args.attention,
               "downsample": args.downsample, "zero_init": args.zero_init}
    try:
        model_config = dataclasses.replace(UNetConfig(), **{k: v for k, v in changes.items() if v is not None})
        model_config.validate()
    except ValueError as error:
        raise DDPMError(f"Unusable architecture options: {error}") from None
    result = train(args.out, config, model_config, resume=args.resume, device=args.device,
                   progress=not args.no_progress)
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

    from ddpm_core.checkpoint import load_checkpoint
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
    if args.noise_scale < 0:
        raise DDPMError(f"--noise-scale must be >= 0, got {args.noise_scale}.")
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), use_ema=args.ema)
    if args.sampler == "ddim":
        images, _ = ddim_sample(loaded.model, loaded.schedule, num_samples=args.num_samples, seed=args.seed,
                                steps=args.steps, eta=args.eta, progress=not args.no_progress)
    else:
        images, _ = sample(
            loaded.model,
            loaded.schedule,
            num_samples=args.num_samples,
            seed=args.seed,
            variance=args.variance,
            noise_scale=args.noise_scale,
            progress=not args.no_progress,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".npy":
        np.save(args.out, to_uint8(images)[:, 0].numpy())
    else:
        save_grid(images, args.out)
    print(f"wrote {args.num_samples} samples to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "evaluate":
            return _evaluate(args)
        return _sample(args)
    except DDPMError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
