"""Draw the overview figure of the book's first page: the whole method on one picture.

Top: the forward process q turns a digit into noise over t = 0..T, drawn with the book's schedule
(linear betas from 1e-4 to 0.02, T = 1000) and the closed form x_t = sqrt(alpha_bar_t) x_0 +
sqrt(1 - alpha_bar_t) eps, on a digit drawn with a few strokes (no data set is read). Below it: the
network eps_theta, training (Algorithm 1) and sampling (Algorithm 2), each box with the chapter
that teaches it. The picture is made to be read at 700 pixels wide.

``python -m tools.overview_figure`` writes ``book/figures/overview.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from ddpm_core.utils.files import atomic_write, check_writable  # noqa: E402
from ddpm_core.utils.scripts import run_script  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "book" / "figures" / "overview.png"

T = 1000
SHOWN_T = (0, 150, 300, 500, 1000)
# colours of the four parts: forward process, network, training, sampling
FORWARD, NETWORK, TRAINING, SAMPLING = "#4c72b0", "#8172b2", "#dd8452", "#55a868"
TEXT = "#222222"


def alpha_bars() -> np.ndarray:
    """alpha_bar_t for t = 1..T of the book's linear schedule (chapter 1)."""
    betas = np.linspace(1e-4, 0.02, T, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def stroke_digit(size: int = 28) -> np.ndarray:
    """A '2' drawn as a thick polyline on a size x size grid, values in [-1, 1] like MNIST's."""
    angles = np.linspace(np.pi * 1.05, np.pi * 2.25, 40)
    arc = np.stack([14 + 6.5 * np.cos(angles), 10 + 5.5 * np.sin(angles)], axis=1)
    diagonal = np.linspace(arc[-1], (7.5, 21.5), 30)
    base = np.linspace((7.5, 21.5), (21, 21.5), 30)
    points = np.concatenate([arc, diagonal, base])
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.min(np.hypot(xx[..., None] - points[:, 0], yy[..., None] - points[:, 1]), axis=-1)
    ink = np.clip(1.6 - distance, 0.0, 1.0)
    return ink * 2.0 - 1.0


def noised(x0: np.ndarray, t: int, eps: np.ndarray, bars: np.ndarray) -> np.ndarray:
    if t == 0:
        return x0
    bar = bars[t - 1]
    return np.sqrt(bar) * x0 + np.sqrt(1.0 - bar) * eps


def box(ax, x, y, w, h, colour, title, lines, step=0.054):
    """A rounded box at (x, y) (lower left), a bold title on top and lines of text under it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.005,rounding_size=0.015",
                                facecolor=colour + "1f", edgecolor=colour, linewidth=1.6))
    ax.text(x + w / 2, y + h - 0.025, title, ha="center", va="top", fontsize=11,
            fontweight="bold", color=colour)
    top = y + h - 0.085
    for i, line in enumerate(lines):
        ax.text(x + 0.014, top - i * step, line, ha="left", va="top", fontsize=10, color=TEXT)


def arrow(ax, start, end, colour, text=""):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=colour,
                                 linewidth=1.6, shrinkA=0, shrinkB=0))
    if text:
        ax.text((start[0] + end[0]) / 2, start[1] + 0.015, text, ha="center", va="bottom",
                fontsize=9, color=colour)


def draw() -> plt.Figure:
    width, height = 7.0, 5.4
    fig = plt.figure(figsize=(width, height), dpi=200)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")

    # The forward process: five frames of one digit, t = 0 .. T.
    bars = alpha_bars()
    x0 = stroke_digit()
    eps = np.random.default_rng(0).standard_normal(x0.shape)
    frame, gap, left = 0.11, 0.0825, 0.07
    frame_height = frame * width / height
    bottom = 0.93 - frame_height
    ax.text(0.5, 0.985, r"Forward process $q$: noise added over $t = 0, \dots, T$  (chapter 1)",
            ha="center", va="top", fontsize=11, fontweight="bold", color=FORWARD)
    for i, t in enumerate(SHOWN_T):
        x = left + i * (frame + gap)
        image = fig.add_axes((x, bottom, frame, frame_height))
        image.imshow(np.clip(noised(x0, t, eps, bars), -1, 1), cmap="gray", vmin=-1, vmax=1)
        image.set_xticks([])
        image.set_yticks([])
        label = "$x_0$" if t == 0 else ("$x_T$" if t == T else f"$x_{{{t}}}$")
        ax.text(x + frame / 2, bottom - 0.012, label, ha="center", va="top", fontsize=10.5, color=TEXT)
        if i + 1 < len(SHOWN_T):
            y_high, y_low = bottom + 0.68 * frame_height, bottom + 0.32 * frame_height
            arrow(ax, (x + frame + 0.012, y_high), (x + frame + gap - 0.012, y_high), FORWARD)
            arrow(ax, (x + frame + gap - 0.012, y_low), (x + frame + 0.012, y_low), SAMPLING)
    ax.text(0.5, bottom - 0.07, r"$x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$"
            "  in one step, for any $t$  (chapter 1)", ha="center", va="top", fontsize=10.5,
            color=FORWARD)
    ax.text(0.5, bottom - 0.125, r"reverse process $p_\theta$ (green): undo it step by step"
            "  (chapter 2)", ha="center", va="top", fontsize=10.5, color=SAMPLING)

    # Training, the network, sampling.
    low, tall = 0.135, 0.465
    box(ax, 0.01, low, 0.28, tall, TRAINING, "Training: Algorithm 1", [
        r"$x_0$: a training digit",
        r"$t \sim \mathrm{Uniform}\{1,\dots,T\}$",
        r"$\epsilon \sim \mathcal{N}(0, I)$",
        r"$x_t$ by the closed form",
        r"step on $\Vert\epsilon - \epsilon_\theta(x_t, t)\Vert^2$",
        "derived: chapter 2",
        "run, 15 epochs: chapter 4",
    ])
    box(ax, 0.375, low + 0.12, 0.25, tall - 0.24, NETWORK, r"Network $\epsilon_\theta(x_t, t)$", [
        "a UNet that predicts",
        r"the noise $\epsilon$ in $x_t$",
        "chapter 3",
    ])
    box(ax, 0.71, low, 0.28, tall, SAMPLING, "Sampling: Algorithm 2", [
        r"$x_T \sim \mathcal{N}(0, I)$",
        r"for $t = T, \dots, 1$:",
        r"  $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$",
        r"  with fresh $z \sim \mathcal{N}(0, I)$",
        r"return $x_0$",
        "derived: chapter 2",
        "32 digits: chapter 5",
    ])
    middle = low + tall / 2
    arrow(ax, (0.295, middle), (0.368, middle), TRAINING, "learns")
    arrow(ax, (0.632, middle), (0.703, middle), SAMPLING, "used by")

    # What the later chapters add.
    ax.text(0.5, 0.095, "Then: judge the samples (chapter 6), make them sharp (chapter 7),",
            ha="center", va="top", fontsize=10.5, color=TEXT)
    ax.text(0.5, 0.045, "sample 20 times faster with DDIM (chapter 8), ask for a digit (chapter 9).",
            ha="center", va="top", fontsize=10.5, color=TEXT)
    return fig


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.overview_figure", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    check_writable(OUTPUT, OUTPUT.name)
    fig = draw()
    # atomically: a killed run leaves the committed figure as it was
    atomic_write(OUTPUT, lambda tmp: fig.savefig(tmp, format="png", dpi=200, metadata={"Software": None}))
    plt.close(fig)
    print(f"wrote {OUTPUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
