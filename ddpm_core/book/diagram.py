"""The UNet drawn from the module itself, with the shape of every block's output.

``trace_unet`` pushes one dummy image through a ``UNet`` with forward hooks and records the
shape that each stage receives and returns, so the drawing cannot disagree with the code.
``draw_unet`` draws the U from that trace: the down path on the left, the middle block at the
bottom, the up path on the right, the skip connections as arrows across, and the time
embedding entering every residual block. Shapes are written height x width x channels, the
order a reader says them in ("28x28x32"); the tensors themselves are (B, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ddpm_core.diffusion.unet import Downsample, ResidualBlock, UNet, Upsample
from ddpm_core.diffusion.unet_variants import SelfAttention

if TYPE_CHECKING:
    import matplotlib.axes
    import matplotlib.figure

TRACED = (ResidualBlock, Downsample, Upsample, SelfAttention)
TRACED_NAMES = ("time_embed", "conv_in", "conv_out")


@dataclass(frozen=True)
class Stage:
    """One traced module: its name in the UNet and the shapes of one image in and out."""

    name: str
    input_shape: tuple[int, ...]  # (C, H, W), or (features,) for the time embedding
    output_shape: tuple[int, ...]

    @property
    def shape(self) -> str:
        """The output as the diagram writes it: "28×28×32" (height × width × channels)."""
        return shape_label(self.output_shape)


def shape_label(shape: tuple[int, ...]) -> str:
    """(C, H, W) as "H×W×C"; a vector's length as it is."""
    if len(shape) == 3:
        channels, height, width = shape
        return f"{height}×{width}×{channels}"
    return "×".join(str(size) for size in shape)


def trace_unet(model: UNet | None = None) -> dict[str, Stage]:
    """Run one dummy image through ``model`` (default ``UNet(UNetConfig())``) and record every stage.

    The stages are the residual blocks, the down- and upsamplers, the self-attention layers,
    ``conv_in``, ``conv_out`` and ``time_embed``, keyed by their names in the module
    ("down_blocks.0", "middle", ...), in the order the forward pass runs them.
    """
    model = model if model is not None else UNet()
    stages: dict[str, Stage] = {}

    def record(name: str):
        def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            stages[name] = Stage(name, tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, TRACED) or name in TRACED_NAMES
    ]
    parameter = next(model.parameters())
    x = torch.zeros(1, model.config.image_channels, 28, 28, device=parameter.device, dtype=parameter.dtype)
    t = torch.ones(1, dtype=torch.long, device=parameter.device)
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for handle in hooks:
            handle.remove()
    return stages


# Colours of the drawing: the data path, the skips, the time embedding and the boxes.
DATA = "#333333"
SKIP = "#2a7f62"
TIME = "#d9822b"
BLOCK = "#dbe9f6"
MIDDLE = "#e4dcf1"
ENDS = "#eeeeee"
TIME_BOX = "#fbe3c9"

BOX_WIDTH, BOX_HEIGHT = 2.6, 0.56  # in the axes' units: the canvas is 10 wide, one unit per level
DOWN_X, UP_X, MIDDLE_X = 2.2, 7.8, 5.0
BUS_LEFT, BUS_RIGHT = 0.3, 9.7  # where the time embedding's lines run down the sides


def draw_unet(model: UNet | None = None, ax: matplotlib.axes.Axes | None = None) -> matplotlib.figure.Figure:
    """Draw ``model`` (default ``UNet(UNetConfig())``) as a U, every box labelled with its traced shape.

    Without ``ax`` the figure is 6.88 inches wide, 688 pixels at 100 dpi: the width of the book's
    column, so its text is read at the size it is drawn.
    """
    import matplotlib.pyplot as plt

    model = model if model is not None else UNet()
    levels = len(model.down_blocks)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.88, 0.8 * (levels + 2.6)))
    else:
        fig = ax.figure
    drawing = _Drawing(ax, model, trace_unet(model))
    drawing.ends()
    for level in range(levels):
        drawing.level(level)
    drawing.middle()
    bus = drawing.time_embedding()
    ax.set_xlim(0, 10)
    ax.set_ylim(bus - 0.45, drawing.top + 0.4)
    ax.axis("off")
    fig.tight_layout(pad=0.2)
    return fig


class _Drawing:
    """The U on one set of axes: level 0 (28x28) at the top, the middle block at y = 0, x_t and eps above."""

    def __init__(self, ax: matplotlib.axes.Axes, model: UNet, stages: dict[str, Stage]) -> None:
        self.ax, self.model, self.stages = ax, model, stages
        self.levels = len(model.down_blocks)
        self.top = self.levels + 1.0  # the row of x_t and eps, above the first level

    def row(self, level: int) -> float:
        return float(self.levels - level)

    def box(self, x: float, y: float, name: str, shape: str, colour: str, width: float = BOX_WIDTH) -> None:
        import matplotlib.pyplot as plt

        self.ax.add_patch(plt.Rectangle((x - width / 2, y - BOX_HEIGHT / 2), width, BOX_HEIGHT, facecolor=colour,
                                        edgecolor=DATA, linewidth=0.8, zorder=2))
        self.ax.text(x, y + 0.1, name, ha="center", va="center", fontsize=8, color="#444444", zorder=3)
        self.ax.text(x, y - 0.12, shape, ha="center", va="center", fontsize=10, fontweight="bold", zorder=3)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], colour: str = DATA, style: str = "-",
              width: float = 1.2) -> None:
        self.ax.annotate("", xy=end, xytext=start, zorder=1,
                         arrowprops={"arrowstyle": "-|>", "color": colour, "lw": width, "linestyle": style,
                                     "shrinkA": 0, "shrinkB": 0, "mutation_scale": 10})

    def note(self, x: float, y: float, text: str, ha: str, colour: str = DATA) -> None:
        self.ax.text(x, y, text, ha=ha, va="center", fontsize=8, color=colour, zorder=3)

    def block_name(self, name: str, attention: str) -> str:
        return f"{name} + attention" if attention in self.stages else name

    def ends(self) -> None:
        """Input and output, and the convolutions that lift the image to the first width and back."""
        stages, top, half = self.stages, self.top, BOX_HEIGHT / 2
        self.box(DOWN_X, top, "input $x_t$", shape_label(stages["conv_in"].input_shape), ENDS)
        self.box(UP_X, top, r"output $\epsilon_\theta(x_t, t)$", stages["conv_out"].shape, ENDS)
        self.arrow((DOWN_X, top - half), (DOWN_X, self.row(0) + half))
        self.note(DOWN_X + 0.15, (top + self.row(0)) / 2, f"conv_in → {stages['conv_in'].shape}", "left")
        self.arrow((UP_X, self.row(0) + half), (UP_X, top - half))
        self.note(UP_X - 0.15, (top + self.row(0)) / 2, f"norm, SiLU, conv_out → {stages['conv_out'].shape}", "right")

    def level(self, level: int) -> None:
        """One resolution: its down and up blocks, the skip between them, and the way to the level below."""
        y, half, levels = self.row(level), BOX_HEIGHT / 2, self.levels
        down = self.stages[f"down_blocks.{level}"]
        up_index = levels - 1 - level  # the up block that reads this level's skip
        up = self.stages[f"up_blocks.{up_index}"]
        self.box(DOWN_X, y, self.block_name(down.name, f"down_attention.{level}"), down.shape, BLOCK)
        skip_channels = down.output_shape[0]
        from_below = up.input_shape[0] - skip_channels
        self.box(UP_X, y, self.block_name(up.name, f"up_attention.{up_index}")
                 + f" ({from_below} + {skip_channels} in)", up.shape, BLOCK)
        # The skip connection: this level's output, concatenated to what the up block gets from below.
        self.arrow((DOWN_X + BOX_WIDTH / 2, y), (UP_X - BOX_WIDTH / 2, y), SKIP, "--")
        self.note(MIDDLE_X, y + 0.13, f"skip {down.shape}", "center", SKIP)
        if level < levels - 1:  # the resolution halves on the way down and doubles on the way up
            below = self.row(level + 1)
            halve = self.stages[f"downsamples.{level}"]
            kind = "max-pool" if self.model.config.downsample == "maxpool" else "strided conv"
            self.arrow((DOWN_X, y - half), (DOWN_X, below + half))
            self.note(DOWN_X + 0.15, (y + below) / 2, f"{kind} → {halve.shape}", "left")
            double = self.stages[f"upsamples.{up_index - 1}"]
            self.arrow((UP_X, below + half), (UP_X, y - half))
            self.note(UP_X - 0.15, (y + below) / 2, f"up-conv → {double.shape}", "right")

    def middle(self) -> None:
        """The middle block at the bottom of the U, between the deepest down and up blocks."""
        half, deepest = BOX_HEIGHT / 2, self.row(self.levels - 1)
        self.box(MIDDLE_X, 0.0, "middle", self.stages["middle"].shape, MIDDLE)
        self.arrow((DOWN_X, deepest - half), (MIDDLE_X - BOX_WIDTH / 2, 0.0))
        self.arrow((MIDDLE_X + BOX_WIDTH / 2, 0.0), (UP_X, deepest - half))

    def time_embedding(self) -> float:
        """The time embedding, entering every residual block: down the sides, and up into the middle block.
        Returns the height of its box, the lowest row of the drawing."""
        bus, half, time = -1.05, BOX_HEIGHT / 2, self.stages["time_embed"]
        label = "class + " if getattr(self.model, "class_embed", None) is not None else ""  # a conditional UNet
        self.box(MIDDLE_X, bus, f"{label}time embedding of t",
                 f"{self.model.config.time_freq_dim} sin/cos → MLP → {time.shape}", TIME_BOX, width=3.4)
        self.arrow((MIDDLE_X, bus + half), (MIDDLE_X, -half), TIME, width=1.0)
        for side, x_bus, x_box in ((-1, BUS_LEFT, DOWN_X - BOX_WIDTH / 2), (1, BUS_RIGHT, UP_X + BOX_WIDTH / 2)):
            self.ax.plot([MIDDLE_X + side * 1.7, x_bus, x_bus], [bus, bus, self.row(0)], color=TIME, lw=1.0, zorder=1)
            for level in range(self.levels):
                self.arrow((x_bus, self.row(level)), (x_box, self.row(level)), TIME, width=1.0)
        self.note(BUS_LEFT - 0.12, (self.row(0) + bus) / 2, "t into every residual block", "center", TIME)
        self.ax.texts[-1].set_rotation(90)
        return bus
