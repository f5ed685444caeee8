"""The noise-prediction network eps_theta(x_t, t): a small UNet for 28x28 images.

The design follows the UNet of Ho et al. 2020 (appendix B), itself after
PixelCNN++ and Ronneberger et al. 2015, cut down to MNIST's size:

    x_t (B, 1, 28, 28) --conv_in--> 28x28 --down--> 14x14 --down--> 7x7
                                                                      |
                                                                    middle
                                                                      |
    eps (B, 1, 28, 28) <--conv_out-- 28x28 <--up-- 14x14 <--up------ 7x7

Each resolution has one residual block on the way down and one on the way up;
the up block sees the down block's output through a skip connection
(concatenated channels). Every residual block receives the timestep through a
sinusoidal embedding (Vaswani et al. 2017) passed through a small MLP, so one
set of weights serves all 1000 noise levels. Normalisation is GroupNorm
(Wu and He 2018), as in the paper. The default configuration is the book's
network, with exactly 324,705 trainable parameters.

This file is that network, the one chapter 3 builds. Three options of ``UNetConfig`` change how
its parameters are spent, for the comparisons of the chapter "What makes the digits sharp": a
learned strided convolution instead of max pooling, zero initialisation of each residual
branch's last convolution, and dropout inside the residual blocks. The features of later chapters
are added around it, in ``unet_variants``: the class label of a conditional network
(``ConditionalUNet``), self-attention after the blocks of chosen resolutions, and a last
convolution that predicts v or x_0 instead of eps. ``unet_variants.build_unet(config)`` builds the
network that any configuration describes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOWNSAMPLES = ("maxpool", "conv")
PREDICTIONS = ("eps", "v", "x0")
# Far beyond any network that fits 28x28 digits, far below what would exhaust a machine's memory.
MAX_WIDTH = 1024
MAX_EMBED_DIM = 4096
MAX_PARAMETERS = 50_000_000
MAX_CLASSES = 1000


@dataclass(frozen=True)
class UNetConfig:
    image_channels: int = 1  # MNIST is greyscale
    channels: tuple[int, ...] = (32, 32, 48)  # the widths at 28x28, 14x14 and 7x7: 324,705 weights in all
    time_freq_dim: int = 16  # number of sinusoidal features of t (8 frequencies, sin and cos)
    time_embed_dim: int = 64  # the MLP's width: what every residual block reads of t
    num_groups: int = 8  # GroupNorm's groups; divides every width
    # Self-attention after the blocks of these resolutions (Ho et al. use 16x16); none in the book's network.
    attention: tuple[int, ...] = ()
    downsample: str = "maxpool"  # 2x2 max pooling, no weights; "conv": a learned 3x3 convolution, stride 2
    zero_init: bool = False  # start each residual branch, and the output, at zero (Goyal et al. 2017)
    dropout: float = 0.0  # before each residual block's second convolution; Ho et al. use 0.1 on CIFAR-10
    prediction: str = "eps"  # what the last convolution predicts: eps, v or x0; the network always returns eps
    num_classes: int | None = None  # None: unconditional; 10: eps_theta(x_t, t, y) for the digits 0..9

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        """The configuration of a dictionary from ``to_dict`` (lists for tuples, as JSON stores them); a field
        it lacks takes its default."""
        tuples = {name: tuple(data[name]) for name in ("channels", "attention") if name in data}
        return cls(**{**data, **tuples})

    def validate(self, check_size: bool = False) -> None:
        """Refuse (``ValueError``, with the reason) a configuration that cannot build a network or is implausibly
        large for 28x28 digits; ``check_size`` also counts its parameters, on the meta device (no memory)."""
        if not 1 <= self.image_channels <= 4:
            raise ValueError(f"image_channels must lie in 1..4, got {self.image_channels}")
        if not 1 <= len(self.channels) <= 3:
            raise ValueError(f"channels needs 1 to 3 widths (for 28, 14 and 7 pixels), got {len(self.channels)}")
        if not all(1 <= width <= MAX_WIDTH for width in self.channels):
            raise ValueError(f"every width in channels must lie in 1..{MAX_WIDTH}, got {list(self.channels)}")
        if not (2 <= self.time_freq_dim <= MAX_EMBED_DIM and self.time_freq_dim % 2 == 0):
            raise ValueError(f"time_freq_dim must be even and lie in 2..{MAX_EMBED_DIM}, got {self.time_freq_dim}")
        if not 1 <= self.time_embed_dim <= MAX_EMBED_DIM:
            raise ValueError(f"time_embed_dim must lie in 1..{MAX_EMBED_DIM}, got {self.time_embed_dim}")
        if self.num_groups < 1:
            raise ValueError(f"num_groups must be positive, got {self.num_groups}")
        if self.num_classes is not None and not isinstance(self.num_classes, bool) and not (
                1 <= self.num_classes <= MAX_CLASSES):
            raise ValueError(f"num_classes must lie in 1..{MAX_CLASSES} or be None, got {self.num_classes}")
        if self.downsample not in DOWNSAMPLES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLES}, got {self.downsample!r}.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        sizes = [28 // 2**level for level in range(len(self.channels))]
        for resolution in self.attention:
            if resolution not in sizes:
                raise ValueError(f"attention at {resolution}x{resolution} needs one of the resolutions {sizes}.")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or self.num_classes < 1):
            raise ValueError(f"num_classes must be a positive number of classes or None, got {self.num_classes!r}.")
        for width in self.channels:
            if width % self.num_groups:
                raise ValueError(f"num_groups={self.num_groups} must divide every width, not {width}.")
        if check_size:
            # The network of any configuration is unet_variants' to build; that module builds on this one.
            from ddpm_core.diffusion.unet_variants import build_unet

            with torch.device("meta"):  # shapes only: no memory is allocated
                parameters = sum(p.numel() for p in build_unet(replace(self, prediction="eps")).parameters())
            if parameters > MAX_PARAMETERS:
                raise ValueError(f"that network has {parameters:,} parameters, more than the {MAX_PARAMETERS:,} "
                                 f"allowed")


class SinusoidalTimeEmbedding(nn.Module):
    """Map integer timesteps to sin/cos features at geometrically spaced frequencies.

    The frequencies of Vaswani et al. 2017, section 3.5, with the sines first and
    the cosines after them (as in Ho et al.'s code), not interleaved:
    emb[i] = sin(t / 10000^(i/h)) and emb[h + i] = cos(t / 10000^(i/h)) for
    i < h = d/2. Nearby timesteps get nearby vectors, and the network can read
    both coarse and fine differences in t.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(
                f"The sinusoidal embedding needs an even width, got {dim}."
            )
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        i = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(10000.0) * i / half)  # 1 / 10000^(i/h)
        angles = t.float()[:, None] * freqs[None, :]  # (B,) -> (B, dim/2)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the timestep, GroupNorm -> SiLU -> (dropout,
    if set) -> conv, plus a skip connection from the input."""

    def __init__(self, in_channels: int, out_channels: int, time_embed_dim: int,
                 num_groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_embed_dim, out_channels)
        self.norm2 = nn.GroupNorm(num_groups, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        # A 1x1 convolution only where the widths differ, so the sum is defined.
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor, time_emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_in, H, W) -> (B, C_out, H, W)
        # In-place sums save a tensor allocation each; safe for autograd, which
        # needs no conv output.
        h += self.time_proj(time_emb)[:, :, None, None]  # one shift per channel, from t
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h += self.skip(x)
        return h


class Downsample(nn.Module):
    """Halve the resolution: (B, C, H, W) -> (B, C, H/2, W/2).

    "maxpool" is the original UNet's 2x2 max pooling, with no weights (the residual
    block after it learns what to keep); "conv" is a learned 3x3 convolution with
    stride 2, as in Ho et al. 2020.
    """

    def __init__(self, channels: int, kind: str = "maxpool") -> None:
        super().__init__()
        if kind == "maxpool":
            self.halve = nn.MaxPool2d(2)
        else:
            self.halve = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.halve(x)


class Upsample(nn.Module):
    """Double the resolution: (B, C, H, W) -> (B, C, 2H, 2W), by a learned 4x4
    transposed convolution with stride 2.

    Kernel 4 with stride 2 covers every output pixel with the same number of
    taps, which avoids the checkerboard pattern of kernel 3 (Odena et al. 2016).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """eps_theta(x_t, t): predicts the noise in x_t. Input and output are (B, C, 28, 28).

    The network of chapter 3. A configuration with a feature of a later chapter (``num_classes``,
    ``attention``, or a ``prediction`` other than eps) is built by ``unet_variants.build_unet``.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        config = config or UNetConfig()
        config.validate()
        _refuse_later_features(config, type(self).__name__)
        self.config = config
        widths = config.channels
        base = widths[0]

        self.time_embed = nn.Sequential(
            SinusoidalTimeEmbedding(config.time_freq_dim),
            nn.Linear(config.time_freq_dim, config.time_embed_dim),
            nn.SiLU(),
            nn.Linear(config.time_embed_dim, config.time_embed_dim),
        )
        self.conv_in = nn.Conv2d(config.image_channels, base, 3, padding=1)

        def block(c_in: int, c_out: int) -> ResidualBlock:
            return ResidualBlock(c_in, c_out, config.time_embed_dim, config.num_groups, config.dropout)

        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        previous = base
        for level, width in enumerate(widths):
            self.down_blocks.append(block(previous, width))
            if level < len(widths) - 1:
                self.downsamples.append(Downsample(width, config.downsample))
            previous = width

        self.middle = block(widths[-1], widths[-1])

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up_blocks.append(block(previous + width, width))  # + width: the skip connection
            if level > 0:
                self.upsamples.append(Upsample(width))
            previous = width

        self.norm_out = nn.GroupNorm(config.num_groups, base)
        self.conv_out = nn.Conv2d(base, config.image_channels, 3, padding=1)
        if config.zero_init:
            # Each residual block starts as the identity and the network predicts eps = 0 at first;
            # the gradients still reach these weights (Goyal et al. 2017; Dhariwal and Nichol 2021).
            for module in [*self.down_blocks, self.middle, *self.up_blocks]:
                nn.init.zeros_(module.conv2.weight)
                nn.init.zeros_(module.conv2.bias)
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        time_emb = self.time_embed(t)  # (B,) -> (B, time_embed_dim)
        h = self.conv_in(x)  # (B, 1, 28, 28) -> (B, C0, 28, 28)
        skips = []
        for level, down_block in enumerate(self.down_blocks):
            h = down_block(h, time_emb)
            skips.append(h)
            if level < len(self.downsamples):
                h = self.downsamples[level](h)  # (B, C, H, W) -> (B, C, H/2, W/2)
        h = self.middle(h, time_emb)
        for level, up_block in enumerate(self.up_blocks):
            # (B, C + C_skip, H, W) -> (B, C, H, W)
            h = up_block(torch.cat([h, skips.pop()], dim=1), time_emb)
            if level < len(self.upsamples):
                h = self.upsamples[level](h)  # (B, C, H, W) -> (B, C, 2H, 2W)
        # (B, C0, 28, 28) -> (B, 1, 28, 28)
        return self.conv_out(F.silu(self.norm_out(h)))


def _refuse_later_features(config: UNetConfig, built_by: str) -> None:
    later = {"num_classes": config.num_classes is not None, "attention": bool(config.attention),
             "prediction": config.prediction != "eps"}
    asked = [name for name, on in later.items() if on]
    if asked:
        raise ValueError(
            f"{built_by}(config) builds the network of chapter 3, which has no {' or '.join(asked)}: build this "
            f"configuration with ddpm_core.diffusion.unet_variants.build_unet(config), which adds "
            f"{'them' if len(asked) > 1 else 'it'}."
        )


def count_parameters(model: nn.Module) -> int:
    """The number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
