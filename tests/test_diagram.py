"""The UNet diagram of chapter 3: its shapes come from the module, and it reads at the column's width."""

import itertools

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ddpm_core import UNet, UNetConfig  # noqa: E402
from ddpm_core.book.diagram import draw_unet, shape_label, trace_unet  # noqa: E402
from ddpm_core.diffusion.unet_variants import build_unet  # noqa: E402

# The book's network, stage by stage: the shape of one image out of each, height x width x channels.
EXPECTED = {
    "conv_in": "28×28×32",
    "down_blocks.0": "28×28×32",
    "downsamples.0": "14×14×32",
    "down_blocks.1": "14×14×32",
    "downsamples.1": "7×7×32",
    "down_blocks.2": "7×7×48",
    "middle": "7×7×48",
    "up_blocks.0": "7×7×48",
    "upsamples.0": "14×14×48",
    "up_blocks.1": "14×14×32",
    "upsamples.1": "28×28×32",
    "up_blocks.2": "28×28×32",
    "conv_out": "28×28×1",
    "time_embed": "64",
}


def test_shape_label_is_height_width_channels():
    assert shape_label((48, 7, 7)) == "7×7×48"
    assert shape_label((3, 28, 14)) == "28×14×3"
    assert shape_label((64,)) == "64"


def test_trace_records_every_stage_in_the_order_forward_runs_them():
    stages = trace_unet(UNet(UNetConfig()))
    assert {name: stage.shape for name, stage in stages.items()} == EXPECTED
    assert list(stages)[:3] == ["time_embed", "conv_in", "down_blocks.0"]
    assert list(stages)[-1] == "conv_out"
    # the up blocks read the concatenation: what comes from below, then the skip
    assert [stages[f"up_blocks.{i}"].input_shape[0] for i in range(3)] == [96, 80, 64]


def test_trace_leaves_no_hook_behind():
    model = UNet()
    trace_unet(model)
    assert not any(module._forward_hooks for module in model.modules())


def test_trace_follows_the_configuration():
    stages = trace_unet(build_unet(UNetConfig(channels=(16, 24), attention=(14,), downsample="conv")))
    assert stages["down_blocks.1"].shape == "14×14×24"
    assert stages["middle"].shape == "14×14×24"
    assert "down_attention.1" in stages and "down_attention.0" not in stages
    assert "down_blocks.2" not in stages


def texts_of(fig) -> list:
    return [text for ax in fig.axes for text in ax.texts if text.get_text()]


@pytest.fixture(scope="module")
def drawing():
    plt.rcParams["figure.dpi"] = 100
    fig = draw_unet()
    fig.canvas.draw()
    yield fig
    plt.close(fig)


def test_every_box_names_its_traced_shape(drawing):
    words = " ".join(text.get_text() for text in texts_of(drawing))
    for name in ("down_blocks.0", "down_blocks.1", "down_blocks.2", "middle", "up_blocks.0", "up_blocks.1",
                 "up_blocks.2"):
        assert name in words
    for shape in ("28×28×32", "14×14×32", "7×7×48", "14×14×48", "28×28×1", "MLP → 64"):
        assert shape in words
    # the up blocks say what they read: from below plus the skip
    assert "(48 + 48 in)" in words and "(48 + 32 in)" in words and "(32 + 32 in)" in words
    assert words.count("skip ") == 3


def test_the_drawing_fits_the_column_and_its_text_neither_overlaps_nor_leaves_it(drawing):
    width, _ = drawing.get_size_inches() * drawing.dpi
    assert width <= 690, "the book's column is about 688 pixels wide at 1280x800"
    renderer = drawing.canvas.get_renderer()
    boxes = [(text.get_text(), text.get_window_extent(renderer)) for text in texts_of(drawing)]
    figure_box = drawing.bbox
    for text, box in boxes:
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, f"{text!r} leaves the figure"
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, f"{text!r} leaves the figure"
    overlaps = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert not overlaps
    assert min(text.get_fontsize() for text in texts_of(drawing)) >= 8


def test_a_smaller_network_with_attention_is_drawn_too():
    fig = draw_unet(build_unet(UNetConfig(channels=(16, 24), attention=(14,))))
    words = " ".join(text.get_text() for text in texts_of(fig))
    assert "down_blocks.1 + attention" in words and "14×14×24" in words
    plt.close(fig)
