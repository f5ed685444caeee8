"""Timestep sliders over a sampling trajectory, for the book and for JupyterLab.

A sampling trajectory (``ddpm_core.diffusion.sampling.Trajectory``) is shown with a slider over its
captured timesteps, from t = T at the left end to t = 0 at the right, so dragging right
denoises. Next to x_t it shows the model's estimate of the final image, the predicted x_0 of
Ho et al. 2020, eq. (15). Two forms exist:

- ``StaticTrajectorySlider``: self-contained HTML and JavaScript with every frame embedded as a
  PNG data URI. It needs no kernel and no network, so it keeps working in the static book built
  from stored notebook outputs. Its markup and script are the package data files
  ``templates/trajectory_slider.html`` and ``templates/trajectory_slider.js``.
- ``trajectory_widget``: ipywidgets, redrawn by the kernel, for live use in JupyterLab.

``show_trajectory`` picks between them (see its docstring). ``StaticValueSlider``,
``value_widget`` and ``show_values`` do the same for a slider over the settings of any
other parameter, such as the guidance scale w of classifier-free guidance.
"""

from __future__ import annotations

import base64
import json
import os
import re
import uuid
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from string import Template
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddpm_core.book.viz import trajectory_grids
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.images import make_grid, png_bytes

if TYPE_CHECKING:
    import ipywidgets

    from ddpm_core.diffusion.seeds import Trajectory

LIVE_ENV = "DDPM_LIVE_WIDGETS"
PLAY_FRAME_MS = 60  # delay between frames when the slider plays


@cache
def _template(name: str) -> Template:
    return Template(files("ddpm_core.book").joinpath("templates", name).read_text(encoding="utf-8").rstrip("\n"))


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise DDPMError(f"scale must be a positive integer (screen pixels per image pixel), got {scale!r}.")


class StaticTrajectorySlider:
    """A trajectory slider as self-contained HTML: frames embedded as PNG data URIs, no kernel, no network.

    As a cell's result it is stored in the notebook as text/html, which the book renders as a
    working slider. The range input runs over frame indices 0..K-1 with ``data-timesteps`` listing
    the timestep of each, so its left end is t = T and its right end t = 0; each image carries the
    ``data-t`` of the frame it shows. Every instance gets its own element ids, so several sliders
    can share a page. The range input carries ``data-lm-suppress-shortcuts`` so that JupyterLab's
    keyboard shortcuts leave its arrow keys to it.

    Args:
        trajectory: a trajectory returned by ``ddpm_core.diffusion.sampling.sample``.
        samples: which samples to show: all (None), the first ``samples`` (an int), or these indices.
        scale: screen pixels per image pixel; the browser upscales the small PNGs without smoothing,
            and shrinks both pictures alike where the page is too narrow to show them side by side.
        columns: samples per row of each picture (default: up to 4).
        element_id: id of the outer element (letters, digits, ``-``, ``_``); default a random one.
    """

    def __init__(
        self,
        trajectory: Trajectory,
        samples: int | Sequence[int] | None = None,
        scale: int = 3,
        columns: int | None = None,
        element_id: str | None = None,
    ) -> None:
        _check_scale(scale)
        if element_id is None:
            element_id = f"ddpm-trajectory-{uuid.uuid4().hex[:12]}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", element_id):
            raise DDPMError(
                f"element_id must start with a letter and hold only letters, digits, '-' and '_', got {element_id!r}."
            )
        xt, x0_pred = trajectory_grids(trajectory, samples, columns)
        frames = {
            "timesteps": [int(t) for t in trajectory.timesteps],
            "xt": [base64.b64encode(png_bytes(grid)).decode("ascii") for grid in xt],
            "x0_pred": [base64.b64encode(png_bytes(grid)).decode("ascii") for grid in x0_pred],
        }
        self.element_id = element_id
        self.timesteps = frames["timesteps"]
        self.html = _template("trajectory_slider.html").substitute(
            id=element_id,
            max_index=len(self.timesteps) - 1,
            timesteps=json.dumps(self.timesteps, separators=(",", ":")),
            t_first=self.timesteps[0],
            width=xt.shape[2] * scale,
            height=xt.shape[1] * scale,
            controls_width=max(2 * xt.shape[2] * scale + 24, 360),
            xt_first=frames["xt"][0],
            x0_first=frames["x0_pred"][0],
            frames=json.dumps(frames, separators=(",", ":")),
            script=_template("trajectory_slider.js").substitute(id=element_id, frame_ms=PLAY_FRAME_MS) + "\n",
        )

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"StaticTrajectorySlider(id={self.element_id!r}, {len(self.timesteps)} frames, {len(self.html)} chars)"


def trajectory_slider_html(
    trajectory: Trajectory,
    samples: int | Sequence[int] | None = None,
    scale: int = 3,
    columns: int | None = None,
    element_id: str | None = None,
) -> str:
    """The HTML of a ``StaticTrajectorySlider`` (same arguments), to embed in a page."""
    return StaticTrajectorySlider(trajectory, samples, scale, columns, element_id).html


def trajectory_widget(
    trajectory: Trajectory,
    samples: int | Sequence[int] | None = None,
    scale: int = 3,
    columns: int | None = None,
) -> ipywidgets.VBox:
    """A live ipywidgets slider over the captured timesteps, x_t and predicted x_0 side by side.

    The slider's options are the timesteps, largest first, so its left end is t = T; a ``Play``
    button is linked to its index in the browser. The kernel redraws the two ``Image`` widgets
    from PNG bytes, upscaled ``scale`` times, on every move. Arguments as for ``StaticTrajectorySlider``.
    """
    import ipywidgets as widgets

    _check_scale(scale)
    xt, x0_pred = trajectory_grids(trajectory, samples, columns)
    timesteps = [int(t) for t in trajectory.timesteps]
    slider = widgets.SelectionSlider(
        options=timesteps,
        value=timesteps[0],
        description="t",
        continuous_update=True,
        layout=widgets.Layout(width="420px"),
    )
    play = widgets.Play(min=0, max=len(timesteps) - 1, step=1, value=0, interval=PLAY_FRAME_MS)
    widgets.jslink((play, "value"), (slider, "index"))
    images = [widgets.Image(value=png_bytes(grids[0], scale), format="png") for grids in (xt, x0_pred)]

    def redraw(change: dict) -> None:
        k = timesteps.index(change["new"])
        for image, grids in zip(images, (xt, x0_pred), strict=True):
            image.value = png_bytes(grids[k], scale)

    slider.observe(redraw, names="value")
    titles = [widgets.HTMLMath(value=r"$x_t$"), widgets.HTMLMath(value=r"predicted $x_0$")]
    panels = [widgets.VBox([title, image]) for title, image in zip(titles, images, strict=True)]
    return widgets.VBox([widgets.HBox([play, slider]), widgets.HBox(panels)])


def show_trajectory(
    trajectory: Trajectory,
    samples: int | Sequence[int] | None = None,
    scale: int = 3,
    columns: int | None = None,
    live: bool | None = None,
) -> StaticTrajectorySlider | ipywidgets.VBox:
    """The trajectory slider for a notebook cell: end a cell with it to display it.

    Returns the static HTML slider unless ``live`` is true, then the ipywidgets slider of
    ``trajectory_widget``. ``live`` defaults to ``$DDPM_LIVE_WIDGETS``, which ``make lab`` sets.
    So the notebooks executed for the book store the static slider, which works in the built
    book and in Jupyter alike; a widget would be stored only as a reference to kernel state that
    the book does not have. In JupyterLab started by ``make lab`` the kernel draws the frames.
    Other arguments as for ``StaticTrajectorySlider``.
    """
    if live is None:
        live = os.environ.get(LIVE_ENV, "").lower() in ("1", "true", "yes")
    if live:
        return trajectory_widget(trajectory, samples, scale, columns)
    return StaticTrajectorySlider(trajectory, samples, scale, columns)


VALUE_PLAY_MS = 400  # a slider over a handful of settings plays slower than one over timesteps


def _value_label(value: float) -> str:
    return f"{value:g}"


class StaticValueSlider:
    """A slider over the settings of one parameter, such as the guidance scale w: a grid of images
    per setting, embedded as PNG data URIs, so it works in the static book with no kernel.

    The same idea as ``StaticTrajectorySlider``, for anything that is not a timestep: frame k
    shows ``images[k]``, made with ``values[k]``, and the label reads "``symbol`` = value".

    Args:
        images: (K, N, C, H, W) in [-1, 1]: N images for each of the K settings.
        values: the K settings, in slider order (left end first).
        symbol: the parameter's name on the label, e.g. "w".
        caption: the line above the picture.
        columns: images per row of each grid (default: up to 8).
        scale: screen pixels per image pixel.
        element_id: id of the outer element; default a random one.
    """

    def __init__(
        self,
        images: Tensor,
        values: Sequence[float],
        symbol: str = "w",
        caption: str = "samples",
        columns: int | None = None,
        scale: int = 2,
        element_id: str | None = None,
    ) -> None:
        import html

        _check_scale(scale)
        if images.dim() != 5 or len(images) != len(values) or len(values) < 1:
            raise DDPMError(
                f"images must have shape (K, N, C, H, W) with K = len(values) = {len(values)} settings, "
                f"got {tuple(images.shape)}."
            )
        element_id = element_id or f"ddpm-values-{uuid.uuid4().hex[:12]}"
        columns = min(images.shape[1], 8) if columns is None else columns
        grids = torch.stack([make_grid(frame, nrow=columns) for frame in images])
        labels = [_value_label(v) for v in values]
        frames = {"labels": labels, "images": [base64.b64encode(png_bytes(g)).decode("ascii") for g in grids]}
        self.element_id, self.labels = element_id, labels
        text = {"symbol": html.escape(symbol), "caption": html.escape(caption)}
        self.html = _template("value_slider.html").substitute(
            id=element_id,
            max_index=len(labels) - 1,
            values=html.escape(json.dumps(labels, separators=(",", ":"))),
            name=html.escape(f"{symbol}, the setting shown"),
            first=labels[0],
            width=grids.shape[2] * scale,
            height=grids.shape[1] * scale,
            controls_width=max(grids.shape[2] * scale, 360),
            image_first=frames["images"][0],
            frames=json.dumps(frames, separators=(",", ":")),
            script=_template("value_slider.js").substitute(id=element_id, frame_ms=VALUE_PLAY_MS, **text) + "\n",
            **text,
        )

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return f"StaticValueSlider(id={self.element_id!r}, {len(self.labels)} frames, {len(self.html)} chars)"


def value_widget(
    images: Tensor, values: Sequence[float], symbol: str = "w", caption: str = "samples",
    columns: int | None = None, scale: int = 2,
) -> ipywidgets.VBox:
    """The live ipywidgets form of ``StaticValueSlider`` (same arguments): the kernel redraws the grid."""
    import ipywidgets as widgets

    _check_scale(scale)
    columns = min(images.shape[1], 8) if columns is None else columns
    grids = [make_grid(frame, nrow=columns) for frame in images]
    labels = [_value_label(v) for v in values]
    slider = widgets.SelectionSlider(options=labels, value=labels[0], description=symbol,
                                     layout=widgets.Layout(width="420px"))
    play = widgets.Play(min=0, max=len(labels) - 1, step=1, value=0, interval=VALUE_PLAY_MS)
    widgets.jslink((play, "value"), (slider, "index"))
    image = widgets.Image(value=png_bytes(grids[0], scale), format="png")
    slider.observe(lambda change: setattr(image, "value", png_bytes(grids[labels.index(change["new"])], scale)),
                   names="value")
    return widgets.VBox([widgets.HBox([play, slider]), widgets.HTML(value=caption), image])


def show_values(
    images: Tensor, values: Sequence[float], symbol: str = "w", caption: str = "samples",
    columns: int | None = None, scale: int = 2, live: bool | None = None,
) -> StaticValueSlider | ipywidgets.VBox:
    """The slider over settings for a notebook cell, static or live as ``show_trajectory`` decides."""
    if live is None:
        live = os.environ.get(LIVE_ENV, "").lower() in ("1", "true", "yes")
    if live:
        return value_widget(images, values, symbol, caption, columns, scale)
    return StaticValueSlider(images, values, symbol, caption, columns, scale)
