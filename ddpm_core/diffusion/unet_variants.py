"""The UNet of chapter 3 with the features of later chapters, each added around it.

    ConditionalUNet      eps_theta(x_t, t, y): a class label added to the time embedding (chapter 9)
    add_self_attention   single-head self-attention after the blocks of chosen resolutions (chapter 7)
    predict_eps_from     a last convolution that predicts v or x_0, turned into eps (chapter 7)
    build_unet           the network that a ``UNetConfig`` describes, built from these

None of them changes ``UNet.forward``. The label enters through the time embedding, which every
residual block already reads; attention runs as a forward hook after a block, and the conversion
to eps as a forward hook after the whole network. The weights keep the names they had when these
features were options of the UNet itself (``class_embed``, ``down_attention.N``, ``up_attention.N``),
so every checkpoint loads as before.

References:
    Ho and Salimans (2022), "Classifier-Free Diffusion Guidance", https://arxiv.org/abs/2207.12598.
    Salimans and Ho (2022), "Progressive Distillation for Fast Sampling of Diffusion Models" (the
    v prediction), https://arxiv.org/abs/2202.00512.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddpm_core.diffusion.unet import UNet, UNetConfig


class ConditionalUNet(UNet):
    """eps_theta(x_t, t, y): the UNet of chapter 3, told the class y through its time embedding.

    A learned embedding of the class label y is added to the timestep embedding, so every residual
    block reads "which digit" where it reads "which noise level" (Ho and Salimans 2022). The table has
    one row more than there are classes: the last row is "no class" (``null_label``), the label a
    training image gets when its label is dropped, so one network learns eps_theta(x_t, t, y) and the
    unconditional eps_theta(x_t, t) together.
    """

    def __init__(self, config: UNetConfig) -> None:
        if config.num_classes is None:
            raise ValueError("A ConditionalUNet needs its number of classes: UNetConfig(num_classes=10), say.")
        super().__init__(replace(config, num_classes=None))
        self.config = config
        # Created last, so a conditional network starts from the same weights as the unconditional one.
        # One row per class and a last one for "no class": (num_classes + 1) x time_embed_dim weights.
        self.class_embed = nn.Embedding(config.num_classes + 1, config.time_embed_dim)

    @property
    def null_label(self) -> int:
        """The label that means "no class": the embedding's last row."""
        return self.config.num_classes

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """eps_theta(x_t, t, y) for ``labels`` y (B,); without labels, the unconditional prediction."""
        if labels is None:  # every image gets "no class"
            labels = torch.full_like(t, self.null_label, dtype=torch.long)
        label_emb = self.class_embed(labels)  # (B,) -> (B, time_embed_dim)
        # For this call, what every residual block reads of t is the time embedding plus the label's.
        added = self.time_embed.register_forward_hook(lambda module, inputs, time_emb: time_emb + label_emb)
        try:
            return super().forward(x, t)
        finally:
            added.remove()


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions, with a residual sum (Ho et al. 2020, appendix B).

    GroupNorm, then 1x1 projections to queries, keys and values; every position
    attends to every other, so a stroke at one corner can shape the opposite one.
    """

    def __init__(self, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, height * width).transpose(2, 3).unbind(1)  # (B, HW, C)
        h = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(C)) v
        return x + self.proj(h.transpose(1, 2).reshape(b, c, height, width))


class _Then:
    """A forward hook that passes a block's output on through ``module``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, block: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        return self.module(output)


def add_self_attention(model: UNet, resolutions: tuple[int, ...]) -> None:
    """Follow the residual blocks of ``model`` at ``resolutions`` (28, 14 or 7), down and up, by self-attention.

    The layers are ``model.down_attention[level]`` and ``model.up_attention[i]`` (the i-th up block), an
    identity at the other levels; each runs as a forward hook on its block, so ``UNet.forward`` is unchanged.
    """
    widths = [block.conv1.out_channels for block in model.down_blocks]

    def attention(level: int) -> nn.Module:
        wanted = 28 // 2**level in resolutions
        return SelfAttention(widths[level], model.config.num_groups) if wanted else nn.Identity()

    model.down_attention = nn.ModuleList(attention(level) for level in range(len(widths)))
    model.up_attention = nn.ModuleList(attention(level) for level in reversed(range(len(widths))))
    for blocks, layers in ((model.down_blocks, model.down_attention), (model.up_blocks, model.up_attention)):
        for block, layer in zip(blocks, layers, strict=True):
            if isinstance(layer, SelfAttention):
                block.register_forward_hook(_Then(layer))


class _EpsFrom:
    """A forward hook that turns the network's prediction of v or x_0 into eps, with its ``alpha_bars``."""

    def __init__(self, prediction: str) -> None:
        self.prediction = prediction

    def __call__(self, model: nn.Module, args: tuple, kwargs: dict[str, Any], out: Tensor) -> Tensor:
        x = args[0] if args else kwargs["x"]
        t = args[1] if len(args) > 1 else kwargs["t"]
        # x_t = a x_0 + s eps with a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t); t may come as floats
        alpha_bar = model.alpha_bars.to(x.device)[t.long() - 1].view(-1, 1, 1, 1)
        a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
        if self.prediction == "v":  # v = a eps - s x_0, so eps = a v + s x_t
            return a * out + s * x
        return (x - a * out) / s  # x_0 predicted: eps = (x_t - a x_0) / s


def predict_eps_from(model: UNet, prediction: str, alpha_bars: Tensor | None) -> None:
    """Make ``model``, whose last convolution predicts ``prediction`` ("v" or "x0"), return eps.

    The velocity v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans and Ho 2022) or x_0
    itself is turned into eps with the schedule's ``alpha_bars``, so the loss and the samplers see
    eps_theta in every case; only what the network has to represent changes. With min-SNR weights the
    three losses are one and the same (Hang et al. 2023).
    """
    if alpha_bars is None:
        raise ValueError(f"a UNet that predicts {prediction} needs the schedule's alpha_bars "
                         f"(NoiseSchedule.alpha_bars) to return eps.")
    # Not saved with the weights: the checkpoint's schedule rebuilds them.
    model.register_buffer("alpha_bars", alpha_bars.detach().float().clone(), persistent=False)
    model.register_forward_hook(_EpsFrom(prediction), with_kwargs=True)


def build_unet(config: UNetConfig | None = None, alpha_bars: Tensor | None = None) -> UNet:
    """The network that ``config`` describes: chapter 3's ``UNet``, or a ``ConditionalUNet`` for ``num_classes``,
    with self-attention and a v or x_0 prediction added where the configuration asks for them.

    ``alpha_bars`` (``NoiseSchedule.alpha_bars``) are needed by a network that predicts v or x_0.
    """
    config = config or UNetConfig()
    config.validate()
    core = replace(config, attention=(), prediction="eps")
    model = UNet(core) if config.num_classes is None else ConditionalUNet(core)
    if config.attention:
        add_self_attention(model, config.attention)
    if config.prediction != "eps":
        predict_eps_from(model, config.prediction, alpha_bars)
    model.config = config
    return model
