"""``python -m ddpm_core sample``: generate digits from a checkpoint into a PNG grid or a ``.npy`` array.

The sampler and its options come from ``ddpm_core.diffusion.samplers`` (``--sampler ddim --steps 50``
is DDIM with the book's eta = 1); a conditional checkpoint is asked for digits with ``--label`` or
``--labels`` by the rules of ``ddpm_core.diffusion.conditioning``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import Tensor

from ddpm_core.app import flags
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError, NonFiniteOutputError
from ddpm_core.utils.files import check_free_space, check_output_file

DEFAULT_NUM_SAMPLES = 32
WHAT = "samples (.png: an image grid; .npy: uint8 images, N x 28 x 28)"


def add_parser(commands: argparse._SubParsersAction) -> None:
    sampling = commands.add_parser("sample", help="generate digits from a checkpoint")
    flags.add_checkpoint(sampling)
    sampling.add_argument("--num-samples", type=arguments.sample_count, default=None,
                          help=f"number of images (default {DEFAULT_NUM_SAMPLES}, or one per --labels entry)")
    sampling.add_argument("--seed", type=arguments.seed_int, default=0, help="sample i uses seed S+i (default 0)")
    sampling.add_argument("--out", type=arguments.file_path, required=True,
                          help="output file: .png (a grid) or .npy (uint8 N x 28 x 28)")
    sampling.add_argument("--force", action="store_true", help="replace an existing file (or link) at --out")
    flags.add_sampler(sampling, ("steps", "eta", "variance", "noise_scale"))
    sampling.add_argument("--ema", action="store_true", help="use the EMA weights")
    label_group = sampling.add_mutually_exclusive_group()
    label_group.add_argument("--label", type=arguments.non_negative_int, default=None,
                             help="conditional models: the digit every sample should be, e.g. 7")
    label_group.add_argument("--labels", type=arguments.label_list, default=None,
                             help="conditional models: one digit per sample, e.g. 0,1,2,3 (repeated to --num-samples)")
    sampling.add_argument("--guidance", type=arguments.guidance_weight, default=None,
                          help=f"conditional models: classifier-free guidance w, 0..{arguments.MAX_GUIDANCE:g}; 0 "
                               "unconditional (no label needed), 1 conditional (default 1)")
    flags.add_device_and_progress(sampling)


def run(args: argparse.Namespace) -> int:
    from ddpm_core.diffusion.conditioning import COMMAND_LINE, sampling_labels
    from ddpm_core.diffusion.samplers import generate
    from ddpm_core.training.checkpoint import load_checkpoint
    from ddpm_core.utils.device import keep_freed_memory, resolve_device

    check_output_file(args.out, (".png", ".npy"), force=args.force, example="samples.png", what=WHAT)
    options = flags.sampler_options(args)
    requested = _requested_labels(args)
    check_free_space(args.out, _output_bytes(args.num_samples, args.out))
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device), use_ema=args.ema)
    if next(loaded.model.parameters()).device.type == "cpu":
        keep_freed_memory()  # a quarter of each CPU step is page faults otherwise
    labels = sampling_labels(loaded.model.config.num_classes, requested, args.guidance, args.num_samples,
                             COMMAND_LINE, source=f"The checkpoint {loaded.path}")
    guidance = 1.0 if args.guidance is None else args.guidance
    images, _ = generate(loaded.model, loaded.schedule, args.sampler, num_samples=args.num_samples, seed=args.seed,
                         progress=not args.no_progress, labels=labels, guidance=guidance, **options)
    _check_finite(images, loaded.path, args)
    _write(images, args.out)
    print(f"wrote {args.num_samples} samples to {args.out}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C."""
    return (f"interrupted: nothing was written to {args.out}; run the same command again "
            f"(the same --seed gives the same samples)")


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
    args.num_samples = args.num_samples or DEFAULT_NUM_SAMPLES
    if args.label is not None:
        return [args.label] * args.num_samples
    return None


def _output_bytes(num_samples: int, out: Path) -> int:
    """About the size of ``_write``'s file: uint8 images in a .npy, or the uncompressed grey pixels of
    ``save_grid``'s PNG (8 images a row, 2 pixels between them, each pixel drawn 2 x 2), its own estimate."""
    if out.suffix.lower() == ".npy":
        return num_samples * 28 * 28 + 4096
    columns, rows = min(num_samples, 8), -(-num_samples // 8)
    return (columns * 30 + 2) * (rows * 30 + 2) * 2 * 2 + 4096


def _check_finite(images: Tensor, path: object, args: argparse.Namespace) -> None:
    """Refuse NaN or inf samples; when a setting far from its default was given, name it as the first suspect."""
    from ddpm_core.training.finite_samples import check_finite_samples

    settings = [f"{flag} {value:g}" for flag, value in (("--noise-scale", args.noise_scale),
                ("--guidance", args.guidance)) if value not in (None, 0.0, 1.0)]
    try:
        check_finite_samples(images, path)
    except NonFiniteOutputError:
        if not settings:
            raise
        raise NonFiniteOutputError(
            f"The samples became non-finite (NaN or inf) with {' and '.join(settings)}, so nothing was written. "
            f"Run again with a value closer to the default (--noise-scale 1, --guidance 1) to tell whether the "
            f"setting or the checkpoint {path} is the cause."
        ) from None


def _write(images: Tensor, out: Path) -> None:
    """``images`` as a PNG grid, or as uint8 (N, 28, 28) in a ``.npy`` file, written atomically."""
    import numpy as np

    from ddpm_core.utils.files import atomic_write
    from ddpm_core.utils.images import save_grid, to_uint8

    if out.suffix.lower() != ".npy":
        save_grid(images, out)
        return
    array = to_uint8(images)[:, 0].numpy()

    def write_npy(tmp: str) -> None:
        with open(tmp, "wb") as file:  # a file object: np.save adds no second ".npy" to the name
            np.save(file, array)

    atomic_write(out, write_npy, needed_bytes=array.nbytes + 4096)
