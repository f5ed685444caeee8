"""Pictures for the book: image grids, source listings, trajectories and timestep sliders.

A sampling trajectory (``ddpm_core.sampling.Trajectory``) is shown with a slider over its
captured timesteps, from t = T at the left end to t = 0 at the right, so dragging right
denoises. Next to x_t it shows the model's estimate of the final image, the predicted x_0 of
Ho et al. 2020, eq. (15). Two forms exist:

- ``StaticTrajectorySlider``: self-contained HTML and JavaScript with every frame embedded as a
  PNG data URI. It needs no kernel and no network, so it keeps working in the static book built
  from stored notebook outputs.
- ``trajectory_widget``: ipywidgets, redrawn by the kernel, for live use in JupyterLab.

``show_trajectory`` picks between them (see its docstring).
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ddpm_core.data import to_uint8
from ddpm_core.errors import DDPMError

if TYPE_CHECKING:
    import ipywidgets

    from ddpm_core.sampling import Trajectory

QUICK_ENV = "DDPM_QUICK"
SCRATCH_ENV = "DDPM_SCRATCH"
LIVE_ENV = "DDPM_LIVE_WIDGETS"
PLAY_FRAME_MS = 60  # delay between frames when the slider plays


def quick_mode() -> bool:
    """True when ``$DDPM_QUICK`` is set to a true value: the book's chapters then shrink data,
    epochs and samples so that the tests can run them in minutes."""
    return os.environ.get(QUICK_ENV, "").lower() in ("1", "true", "yes")


def output_dir(full_mode_dir: str | Path) -> Path:
    """Where a chapter writes its artefacts: ``full_mode_dir`` in full mode; in quick mode a
    scratch folder (``$DDPM_SCRATCH``, default ``scratch/``) so that a quick run never
    overwrites a committed checkpoint or figure."""
    if quick_mode():
        path = Path(os.environ.get(SCRATCH_ENV, "scratch")) / Path(full_mode_dir).name
    else:
        path = Path(full_mode_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def show_source(obj: object):
    """Display the real source of a function or class from ``ddpm_core``, highlighted.

    The book shows code this way, never as a pasted copy, so text and code cannot drift apart.
    """
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> Tensor:
    """Tile (N, 1, H, W) images in [-1, 1] into one uint8 (H', W') array, ``nrow`` images per row."""
    from torchvision.utils import make_grid as tv_make_grid

    grid = tv_make_grid((images.clamp(-1, 1) + 1) / 2, nrow=nrow, padding=padding, pad_value=1.0)
    return to_uint8(grid[0] * 2 - 1)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, scale: int = 2) -> None:
    """Save images in [-1, 1] as a PNG grid, each pixel drawn ``scale`` x ``scale``."""
    from PIL import Image

    grid = make_grid(images, nrow=nrow)
    image = Image.fromarray(grid.numpy(), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    image.save(path)


def _sample_indices(num_samples: int, samples: int | Sequence[int] | None) -> list[int]:
    if samples is None:
        return list(range(num_samples))
    indices = list(range(samples)) if isinstance(samples, int) else [int(i) for i in samples]
    if not indices or min(indices) < 0 or max(indices) >= num_samples:
        raise DDPMError(
            f"samples must pick at least one of the trajectory's {num_samples} samples: a count from 1 to "
            f"{num_samples}, or indices in 0..{num_samples - 1}; got {samples!r}."
        )
    return indices


def trajectory_grids(
    trajectory: Trajectory, samples: int | Sequence[int] | None = None, columns: int | None = None
) -> tuple[Tensor, Tensor]:
    """The pictures a trajectory slider shows: one grid per captured timestep, of x_t and of predicted x_0.

    A frame is ``make_grid`` of the chosen samples, ``columns`` per row (default: up to 4): a pixel
    is ``round((clamp(x, -1, 1) + 1) * 127.5)`` as in ``ddpm_core.data.to_uint8``, and a 2-pixel
    white border separates the samples.

    Args:
        trajectory: a trajectory returned by ``ddpm_core.sampling.sample``.
        samples: which samples to show: all (None), the first ``samples`` (an int), or these indices.
        columns: samples per row of a grid.

    Returns:
        Two uint8 tensors (K, H', W'), for x_t and for predicted x_0; frame k is at ``trajectory.timesteps[k]``.
    """
    indices = _sample_indices(trajectory.xt.shape[1], samples)
    columns = min(len(indices), 4) if columns is None else columns
    if columns < 1:
        raise DDPMError(f"columns must be a positive integer, got {columns}.")
    xt = torch.stack([make_grid(frame[indices], nrow=columns) for frame in trajectory.xt])
    x0_pred = torch.stack([make_grid(frame[indices], nrow=columns) for frame in trajectory.x0_pred])
    return xt, x0_pred


def _png(grid: Tensor, scale: int = 1) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(grid.numpy()), mode="L")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise DDPMError(f"scale must be a positive integer (screen pixels per image pixel), got {scale!r}.")


_SLIDER_TEMPLATE = Template(
    """<div class="ddpm-trajectory" id="$id" style="font-family: sans-serif; margin: 0.5em 0;">
<div style="display: flex; align-items: center; gap: 0.75em; flex-wrap: wrap; max-width: ${controls_width}px;">
<button type="button" id="$id-play" data-role="play" style="min-width: 6em;">&#9654; Play</button>
<input type="range" id="$id-range" data-role="range" min="0" max="$max_index" step="1" value="0" \
data-timesteps="$timesteps" aria-label="timestep t" aria-valuetext="t = $t_first" data-lm-suppress-shortcuts="true" \
style="flex: 1 1 12em; min-width: 8em;">
<output id="$id-label" data-role="label" for="$id-range" \
style="min-width: 5.5em; font-size: 1.1em; font-variant-numeric: tabular-nums;">t = $t_first</output>
</div>
<div style="display: flex; gap: 1.5em; align-items: flex-start; margin-top: 0.5em;">
<div style="flex: 0 1 ${width}px; min-width: 0;">
<div style="font-size: 1.1em; margin-bottom: 0.25em;"><i>x</i><sub><i>t</i></sub></div>
<img id="$id-xt" data-role="xt" data-t="$t_first" alt="x_t at t = $t_first" width="$width" height="$height" \
style="image-rendering: pixelated; width: 100%; height: auto;" src="data:image/png;base64,$xt_first"></div>
<div style="flex: 0 1 ${width}px; min-width: 0;">
<div style="font-size: 1.1em; margin-bottom: 0.25em;">predicted <i>x</i><sub>0</sub></div>
<img id="$id-x0-pred" data-role="x0-pred" data-t="$t_first" alt="predicted x_0 at t = $t_first" width="$width" \
height="$height" style="image-rendering: pixelated; width: 100%; height: auto;" \
src="data:image/png;base64,$x0_first"></div>
</div>
<script type="application/json" id="$id-frames" data-role="frames">$frames</script>
<script>
(function () {
  var root = document.getElementById("$id");
  function part(role) { return root.querySelector('[data-role="' + role + '"]'); }
  var frames = JSON.parse(part("frames").textContent);
  var range = part("range"), label = part("label"), play = part("play");
  var panels = [[part("xt"), frames.xt, "x_t"], [part("x0-pred"), frames.x0_pred, "predicted x_0"]];
  var timer = null;
  function show(k) {
    var t = frames.timesteps[k];
    label.textContent = "t = " + t;
    range.setAttribute("aria-valuetext", label.textContent);
    panels.forEach(function (panel) {
      panel[0].src = "data:image/png;base64," + panel[1][k];
      panel[0].setAttribute("data-t", t);
      panel[0].alt = panel[2] + " at t = " + t;
    });
  }
  function stop() {
    clearInterval(timer);
    timer = null;
    play.innerHTML = "&#9654; Play";
  }
  range.addEventListener("input", function () { show(Number(range.value)); });
  play.addEventListener("click", function () {
    if (timer !== null) { stop(); return; }
    if (Number(range.value) >= Number(range.max)) { range.value = 0; show(0); }
    play.innerHTML = "&#10074;&#10074; Pause";
    timer = setInterval(function () {
      var k = Number(range.value) + 1;
      range.value = k;
      show(k);
      if (k >= Number(range.max)) { stop(); }
    }, $frame_ms);
  });
})();
</script>
</div>"""
)


class StaticTrajectorySlider:
    """A trajectory slider as self-contained HTML: frames embedded as PNG data URIs, no kernel, no network.

    As a cell's result it is stored in the notebook as text/html, which the book renders as a
    working slider. The range input runs over frame indices 0..K-1 with ``data-timesteps`` listing
    the timestep of each, so its left end is t = T and its right end t = 0; each image carries the
    ``data-t`` of the frame it shows. Every instance gets its own element ids, so several sliders
    can share a page. The range input carries ``data-lm-suppress-shortcuts`` so that JupyterLab's
    keyboard shortcuts leave its arrow keys to it.

    Args:
        trajectory: a trajectory returned by ``ddpm_core.sampling.sample``.
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
            "xt": [base64.b64encode(_png(grid)).decode("ascii") for grid in xt],
            "x0_pred": [base64.b64encode(_png(grid)).decode("ascii") for grid in x0_pred],
        }
        self.element_id = element_id
        self.timesteps = frames["timesteps"]
        self.html = _SLIDER_TEMPLATE.substitute(
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
            frame_ms=PLAY_FRAME_MS,
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
    images = [widgets.Image(value=_png(grids[0], scale), format="png") for grids in (xt, x0_pred)]

    def redraw(change: dict) -> None:
        k = timesteps.index(change["new"])
        for image, grids in zip(images, (xt, x0_pred), strict=True):
            image.value = _png(grids[k], scale)

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
