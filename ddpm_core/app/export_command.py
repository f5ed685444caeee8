"""``python -m ddpm_core export``: eps_theta(x_t, t) to ONNX, checked against PyTorch, for the live panel.

The export itself, the files it writes and the optional dependencies it checks are ``ddpm_core.app.export``'s.
"""

from __future__ import annotations

import argparse

from ddpm_core.app import flags
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError


def add_parser(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="export eps_theta(x_t, t) to ONNX, checked against PyTorch with ONNX Runtime"
    )
    flags.add_checkpoint(export)
    export.add_argument("--out", type=arguments.file_path, required=True,
                        help="the .onnx file; the schedule and provenance go beside it in a .json of the same name")
    export.add_argument("--ema", action="store_true", help="export the EMA weights")
    export.add_argument("--seeds", type=arguments.export_seed_count, default=0,
                        help=f"also write seeds.json beside it (always that name: the live panel reads it): x_T of "
                             f"seeds 0..N-1 as the samplers draw them (at most {arguments.MAX_EXPORT_SEEDS:,})")
    export.add_argument("--force", action="store_true", help="replace existing files that export did not write")


def run(args: argparse.Namespace) -> int:
    from ddpm_core.app.export import check_outputs, export_onnx

    check_outputs(args.out, args.seeds, args.force)  # before the checkpoint is even loaded
    try:
        report = export_onnx(args.checkpoint, args.out, use_ema=args.ema, seeds=args.seeds)
    except OSError as error:
        raise DDPMError(f"Cannot write the export next to {args.out} ({error.strerror or error}); nothing was "
                        f"written. Choose an --out in another folder.") from None
    print(f"wrote {report.onnx_path} ({report.onnx_bytes / 1e6:.2f} MB) and {report.json_path}; ONNX Runtime matches "
          f"PyTorch to {report.max_abs_difference:.1e} at batch sizes {list(report.checked_batches)} and t in "
          f"{list(report.checked_timesteps)}")
    if report.seeds_path is not None:
        print(f"wrote {report.seeds_path}: x_T of seeds 0 to {args.seeds - 1}")
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """The line printed on Ctrl-C."""
    return "interrupted: nothing was written; run the same command again to export"
