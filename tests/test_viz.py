"""Trajectory pictures and sliders: the static HTML slider of the book and the live ipywidgets one."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from ddpm_core import DDPMError
from ddpm_core.book.slider import (
    LIVE_ENV,
    StaticTrajectorySlider,
    show_trajectory,
    trajectory_slider_html,
    trajectory_widget,
)
from ddpm_core.book.viz import trajectory_grids
from ddpm_core.utils.images import to_uint8

TIMESTEPS = [1000, 750, 500, 250, 100, 10, 0]


@pytest.fixture(scope="module")
def trajectory(synthetic_trajectory):
    return synthetic_trajectory(TIMESTEPS, num_samples=6)


def frames_of(html: str) -> dict:
    """The frames a slider embeds: {"timesteps": [...], "xt": [base64 PNG, ...], "x0_pred": [...]}."""
    match = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', html, re.S)
    return json.loads(match.group(1))


def attributes_of(html: str, role: str) -> dict[str, str]:
    tag = re.search(rf'<[a-z]+ [^>]*data-role="{role}"[^>]*>', html).group(0)
    return dict(re.findall(r'([a-z-]+)="([^"]*)"', tag))


def decode(png_base64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64))))


def test_slider_embeds_one_frame_per_timestep_and_panel(trajectory):
    frames = frames_of(trajectory_slider_html(trajectory))
    assert frames["timesteps"] == TIMESTEPS
    assert len(frames["xt"]) == len(frames["x0_pred"]) == 7
    assert len(set(frames["xt"])) == 7  # every timestep has a picture of its own


def test_slider_references_nothing_on_the_network(trajectory):
    html = trajectory_slider_html(trajectory)
    assert "http://" not in html
    assert "https://" not in html
    assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    assert "<link" not in html


def test_element_ids_are_unique_within_and_across_instances(trajectory):
    ids_a = re.findall(r' id="([^"]+)"', trajectory_slider_html(trajectory))
    ids_b = re.findall(r' id="([^"]+)"', trajectory_slider_html(trajectory))
    assert len(ids_a) == len(set(ids_a)) == 7
    assert set(ids_a).isdisjoint(ids_b)
    assert re.findall(r' id="([^"]+)"', trajectory_slider_html(trajectory, element_id="gen-1"))[0] == "gen-1"


def test_element_id_that_would_break_the_html_is_refused(trajectory):
    with pytest.raises(DDPMError, match="element_id"):
        trajectory_slider_html(trajectory, element_id='x" onload="alert(1)')


def test_range_input_runs_from_t_max_at_the_left_to_zero_at_the_right(trajectory):
    html = trajectory_slider_html(trajectory)
    range_input = attributes_of(html, "range")
    assert [range_input[key] for key in ("type", "min", "max", "step")] == ["range", "0", "6", "1"]
    timesteps = json.loads(range_input["data-timesteps"])
    assert (timesteps[int(range_input["min"])], timesteps[int(range_input["max"])]) == (1000, 0)
    assert range_input["value"] == "0"
    assert re.search(r'data-role="label"[^>]*>t = 1000</output>', html)
    frames = frames_of(html)
    for role, panel in (("xt", "xt"), ("x0-pred", "x0_pred")):
        image = attributes_of(html, role)
        assert image["data-t"] == "1000"
        assert image["src"] == "data:image/png;base64," + frames[panel][0]


@pytest.mark.parametrize("k", [0, 3, 6])
def test_embedded_png_holds_the_uint8_pixels_of_its_frame(trajectory, k):
    frames = frames_of(trajectory_slider_html(trajectory, samples=[1, 4]))
    xt = decode(frames["xt"][k])
    x0_pred = decode(frames["x0_pred"][k])
    # two samples side by side with a 2-pixel white border: 2 + 28 + 2 + 28 + 2 wide
    assert xt.shape == x0_pred.shape == (32, 62)
    assert xt.dtype == np.uint8
    assert (xt[0] == 255).all() and (xt[:, 30:32] == 255).all()
    assert np.array_equal(xt[2:30, 2:30], to_uint8(trajectory.xt[k, 1, 0]).numpy())
    assert np.array_equal(xt[2:30, 32:60], to_uint8(trajectory.xt[k, 4, 0]).numpy())
    assert np.array_equal(x0_pred[2:30, 32:60], to_uint8(trajectory.x0_pred[k, 4, 0]).numpy())
    grids_xt, grids_x0 = trajectory_grids(trajectory, samples=[1, 4])
    assert np.array_equal(xt, grids_xt[k].numpy()) and np.array_equal(x0_pred, grids_x0[k].numpy())


def test_images_are_upscaled_by_the_browser_not_in_the_png(trajectory):
    html = trajectory_slider_html(trajectory, samples=4, scale=5)
    image = attributes_of(html, "xt")
    assert decode(frames_of(html)["xt"][0]).shape == (32, 122)  # one row of 4 samples
    assert (image["width"], image["height"]) == ("610", "160")
    assert "image-rendering: pixelated" in image["style"]


def test_grid_layout_follows_samples_and_columns(trajectory):
    xt, x0_pred = trajectory_grids(trajectory)
    assert xt.shape == x0_pred.shape == (7, 62, 122)  # 6 samples, 4 per row: 2 rows
    assert trajectory_grids(trajectory, samples=3, columns=1)[0].shape == (7, 92, 32)


@pytest.mark.parametrize("samples", [0, 7, [6], [-1], []])
def test_samples_outside_the_trajectory_are_refused(trajectory, samples):
    with pytest.raises(DDPMError, match="samples"):
        trajectory_grids(trajectory, samples=samples)


def test_slider_of_101_timesteps_and_8_samples_stays_under_1_5_mb(synthetic_trajectory):
    trajectory = synthetic_trajectory(list(range(1000, -1, -10)), num_samples=8)
    html = trajectory_slider_html(trajectory)
    assert len(frames_of(html)["xt"]) == 101
    assert len(html.encode()) < 1_500_000


def test_widget_builds_without_a_kernel_and_redraws_on_a_move(trajectory):
    ipywidgets = pytest.importorskip("ipywidgets")
    ui = trajectory_widget(trajectory, samples=2, scale=2)
    (controls, panels) = ui.children
    play, slider = controls.children
    assert isinstance(play, ipywidgets.Play) and isinstance(slider, ipywidgets.SelectionSlider)
    assert (slider.options[0], slider.options[-1], slider.value) == (1000, 0, 1000)
    assert (play.min, play.max) == (0, 6)
    images = [panel.children[1] for panel in panels.children]
    slider.value = 10
    grids_xt, grids_x0 = trajectory_grids(trajectory, samples=2)
    for image, grids in zip(images, (grids_xt, grids_x0), strict=True):
        shown = decode(base64.b64encode(image.value).decode())
        assert shown.shape == (2 * 32, 2 * 62)
        assert np.array_equal(shown[::2, ::2], grids[5].numpy())


def test_show_trajectory_is_static_html_unless_live(trajectory, monkeypatch):
    ipywidgets = pytest.importorskip("ipywidgets")
    monkeypatch.delenv(LIVE_ENV, raising=False)
    static = show_trajectory(trajectory)
    assert isinstance(static, StaticTrajectorySlider)
    assert static._repr_html_() == static.html and 'type="range"' in static.html
    monkeypatch.setenv(LIVE_ENV, "1")
    assert isinstance(show_trajectory(trajectory), ipywidgets.VBox)
    assert isinstance(show_trajectory(trajectory, live=False), StaticTrajectorySlider)


def test_slider_markup_and_script_come_from_the_package_data_files(trajectory):
    from importlib.resources import files

    templates = files("ddpm_core.book").joinpath("templates")
    script = templates.joinpath("trajectory_slider.js").read_text(encoding="utf-8")
    html = trajectory_slider_html(trajectory, element_id="probe")
    assert "$" not in html  # every placeholder of both templates is filled
    assert script.replace("$id", "probe").replace("$frame_ms", "60") in html
    assert html.startswith('<div class="ddpm-trajectory" id="probe"')
