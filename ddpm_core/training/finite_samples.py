"""The check that a model's samples are finite, before anything is written or scored.

Damaged or diverged weights produce NaN or inf, which would be written as black images or crash the
Fréchet distance's matrix square root. The sample command and the evaluation call
``check_finite_samples`` on what a loaded checkpoint drew, and refuse it naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddpm_core.training.run_folder import EPOCHS_DIR
from ddpm_core.utils.errors import NonFiniteOutputError


def check_finite_samples(images: torch.Tensor, path: str | Path | None) -> None:
    """Raise ``NonFiniteOutputError`` unless every value of ``images``, drawn from the model in ``path``, is finite."""
    bad = ~torch.isfinite(images).flatten(1).all(dim=1)
    if bad.any():
        source = f"The model in {path}" if path is not None else "The model"
        raise NonFiniteOutputError(
            f"{source} produced non-finite values (NaN or inf) in {int(bad.sum())} of {len(images)} samples, "
            f"so nothing was written. Its weights are damaged or diverged: use an earlier epoch's file from "
            f"the same run (in its {EPOCHS_DIR}/ folder) or train again."
        )
