"""Checkpoints written before a field of the network's configuration existed.

A weights file stores the ``UNetConfig`` it was trained with (``model_config`` in its metadata).
A field that a file lacks was added to the package after the file was written, so the network
that wrote it did not have the feature: it had no self-attention, pooled with max pooling, started
its branches from random weights, used no dropout, predicted eps and took no class label. The
committed checkpoints of the book lack some of these fields: ``reference_recipe`` all six,
``ddpm_mnist`` the last three, ``ddpm_mnist_conditional`` ``dropout`` and ``prediction``.
The checkpoint loader reads every stored configuration through ``with_legacy_defaults``.
"""

from __future__ import annotations

from typing import Any

# A stored configuration that lacks one of these fields describes a network without that feature.
LEGACY_DEFAULTS: dict[str, Any] = {"attention": (), "downsample": "maxpool", "zero_init": False, "num_classes": None,
                                   "dropout": 0.0, "prediction": "eps"}


def with_legacy_defaults(model_config: dict[str, Any]) -> dict[str, Any]:
    """A stored ``model_config`` with each field it lacks set to what that field's absence meant."""
    return {**LEGACY_DEFAULTS, **model_config}
