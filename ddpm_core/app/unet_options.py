"""The command line's architecture flags: the fields of ``UNetConfig`` that ``python -m ddpm_core train`` sets.

One entry per flag, under the name of the field it sets (``--time-embed-dim`` sets ``time_embed_dim``):
its help text and how its value is read, either a parser of ``ddpm_core.utils.arguments`` ("parse")
or a tuple of "choices"; a field of type bool becomes ``--flag``/``--no-flag``. The other fields have
no flag of their own: ``image_channels`` and ``time_freq_dim`` stay the book's, and ``num_classes`` is
set by ``--conditional``.
"""

from __future__ import annotations

from typing import Any

from ddpm_core.diffusion.unet import DOWNSAMPLES, PREDICTIONS

UNET_OPTIONS: dict[str, dict[str, Any]] = {
    "channels": {"help": "widths at 28x28, 14x14 and 7x7 pixels, e.g. 32,32,48", "parse": "width_list"},
    "time_embed_dim": {"help": "width of the MLP that turns the sinusoidal features of t into the embedding",
                       "parse": "positive_int"},
    "num_groups": {"help": "GroupNorm's groups; must divide every width", "parse": "positive_int"},
    "attention": {"help": "resolutions whose blocks are followed by self-attention, e.g. 7 or 7,14, or none",
                  "parse": "resolution_list"},
    "downsample": {"help": "maxpool (no weights) or conv (3x3, stride 2)", "choices": DOWNSAMPLES},
    "zero_init": {"help": "start each residual branch and the output convolution at zero"},
    "dropout": {"help": "dropout rate before each residual block's second convolution (Ho et al. use 0.1)",
                "parse": "dropout_rate"},
    "prediction": {"help": "what the last convolution predicts: eps, v or x0 (the network still returns eps)",
                   "choices": PREDICTIONS},
}
