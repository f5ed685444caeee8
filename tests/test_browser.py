"""The timestep slider of the generation chapter, driven in headless Chromium.

The page is the built book's ``_build/html/book/05_generation.html`` (or ``$DDPM_BOOK_HTML``);
if it is not built, a page with two sliders of a synthetic trajectory stands in, unless
``$DDPM_REQUIRE_BOOK=1`` demands the book. The page is served over loopback http; the tests
press keys, drag the thumb and click Play, and check that each image shows the embedded frame
of the timestep on the label.
"""

import base64
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from ddpm_core.book.slider import trajectory_slider_html
from ddpm_core.book.viz import trajectory_grids
from ddpm_core.diffusion.seeds import Trajectory

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
BOOK_ENV = "DDPM_BOOK_HTML"
REQUIRE_BOOK_ENV = "DDPM_REQUIRE_BOOK"
BOOK_PAGE = Path("_build/html/book/05_generation.html")
PNG_PREFIX = "data:image/png;base64,"
STANDALONE_TIMESTEPS = list(range(1000, -1, -25))
STANDALONE_SAMPLES = [0, 2, 5]


@dataclass
class Page:
    url: str
    trajectory: Trajectory | None  # the trajectory of the first slider, known only on the standalone page


def _site_root(page: Path) -> Path:
    """The folder to serve: the nearest one above the page with Sphinx's ``_static``, so assets load."""
    for folder in page.parents:
        if (folder / "_static").is_dir():
            return folder
    return page.parent


@pytest.fixture(scope="module")
def page(serve, synthetic_trajectory, tmp_path_factory) -> Page:
    book = Path(os.environ.get(BOOK_ENV, BOOK_PAGE))
    book = book if book.is_absolute() else REPO / book
    if book.is_file():
        root = _site_root(book)
        return Page(f"{serve(root)}/{book.relative_to(root).as_posix()}", None)
    if os.environ.get(REQUIRE_BOOK_ENV) == "1":
        pytest.fail(f"{book} does not exist but ${REQUIRE_BOOK_ENV}=1 requires it: build the book first (make book).")
    trajectory = synthetic_trajectory(STANDALONE_TIMESTEPS, num_samples=6)
    sliders = [
        trajectory_slider_html(trajectory, samples=STANDALONE_SAMPLES),
        trajectory_slider_html(synthetic_trajectory(STANDALONE_TIMESTEPS, num_samples=2, seed=1), scale=4),
    ]
    root = tmp_path_factory.mktemp("slider-page")
    (root / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>Trajectory sliders</title></head><body>{''.join(sliders)}</body></html>"
    )
    return Page(f"{serve(root)}/index.html", trajectory)


def _sliders(driver) -> list:
    from selenium.webdriver.common.by import By

    sliders = driver.find_elements(By.CSS_SELECTOR, ".ddpm-trajectory")
    assert sliders, "the page holds no trajectory slider (no element with class ddpm-trajectory)"
    return sliders


def _part(slider, role: str):
    from selenium.webdriver.common.by import By

    return slider.find_element(By.CSS_SELECTOR, f'[data-role="{role}"]')


def _frames(driver, slider) -> dict:
    return driver.execute_script("return JSON.parse(arguments[0].textContent);", _part(slider, "frames"))


def _shown(slider) -> dict:
    """What a slider shows now: its position, its label and, per panel, the timestep and frame of the image."""
    state = {"index": int(_part(slider, "range").get_attribute("value")), "label": _part(slider, "label").text}
    for role in ("xt", "x0-pred"):
        image = _part(slider, role)
        state[role] = (int(image.get_attribute("data-t")), image.get_attribute("src"))
    return state


def _assert_shows_frame(slider, frames: dict, k: int) -> None:
    t = frames["timesteps"][k]
    state = _shown(slider)
    assert state["index"] == k
    assert state["label"] == f"t = {t}"
    assert state["xt"] == (t, PNG_PREFIX + frames["xt"][k])
    assert state["x0-pred"] == (t, PNG_PREFIX + frames["x0_pred"][k])


def _decode(data_uri: str) -> np.ndarray:
    assert data_uri.startswith(PNG_PREFIX)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri[len(PNG_PREFIX) :]))))


def _assert_no_console_errors(driver, url: str) -> None:
    """No error in the console, except failed loads from other hosts, which the test browser cannot
    reach, and of /favicon.ico, which the browser asks for on its own."""
    origin = urlparse(url).netloc

    def counts(entry: dict) -> bool:
        if entry.get("source") == "network":  # message: "<url> - Failed to load resource: ..."
            failed = urlparse(entry["message"].split(" ", 1)[0])
            return failed.netloc == origin and failed.path != "/favicon.ico"
        return True

    errors = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE" and counts(entry)]
    assert errors == []


def _open(browser, page: Page):
    browser.get(page.url)
    return _sliders(browser)


def test_sliders_start_at_t_max_with_unique_ids(browser, page):
    sliders = _open(browser, page)
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('.ddpm-trajectory, .ddpm-trajectory [id]'), e => e.id);"
    )
    assert len(ids) == len(set(ids)) == 7 * len(sliders)
    for slider in sliders:
        frames = _frames(browser, slider)
        range_input = _part(slider, "range")
        assert json.loads(range_input.get_attribute("data-timesteps")) == frames["timesteps"]
        assert (frames["timesteps"][0], frames["timesteps"][-1]) == (1000, 0)
        assert (range_input.get_attribute("min"), range_input.get_attribute("max")) == ("0", str(len(frames["xt"]) - 1))
        _assert_shows_frame(slider, frames, 0)
    _assert_no_console_errors(browser, page.url)


def test_arrow_keys_step_towards_t_0_and_swap_both_images(browser, page):
    from selenium.webdriver.common.keys import Keys

    slider = _open(browser, page)[0]
    frames = _frames(browser, slider)
    range_input = _part(slider, "range")
    range_input.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    _assert_shows_frame(slider, frames, 3)
    if page.trajectory is not None:
        grids_xt, grids_x0 = trajectory_grids(page.trajectory, samples=STANDALONE_SAMPLES)
        assert np.array_equal(_decode(_shown(slider)["xt"][1]), grids_xt[3].numpy())
        assert np.array_equal(_decode(_shown(slider)["x0-pred"][1]), grids_x0[3].numpy())
    range_input.send_keys(Keys.END)
    _assert_shows_frame(slider, frames, len(frames["xt"]) - 1)
    range_input.send_keys(Keys.ARROW_LEFT)
    _assert_shows_frame(slider, frames, len(frames["xt"]) - 2)
    range_input.send_keys(Keys.HOME)
    _assert_shows_frame(slider, frames, 0)
    _assert_no_console_errors(browser, page.url)


def test_dragging_the_thumb_to_the_right_end_shows_t_0(browser, page):
    from selenium.webdriver.common.action_chains import ActionChains

    sliders = _open(browser, page)
    slider = sliders[0]
    frames = _frames(browser, slider)
    others_before = [_shown(other) for other in sliders[1:]]
    range_input = _part(slider, "range")
    width = range_input.size["width"]
    thumb_offset = -width // 2 + 6  # the thumb sits at the left end, t = 1000; offsets count from the centre
    ActionChains(browser).move_to_element_with_offset(range_input, thumb_offset, 0).click_and_hold().move_by_offset(
        width // 3, 0
    ).move_by_offset(width, 0).release().perform()
    _assert_shows_frame(slider, frames, len(frames["xt"]) - 1)
    assert [_shown(other) for other in sliders[1:]] == others_before  # the other sliders did not move
    final = _decode(_shown(slider)["xt"][1])
    assert final.dtype == np.uint8 and final.ndim == 2
    if page.trajectory is not None:
        assert np.array_equal(final, trajectory_grids(page.trajectory, samples=STANDALONE_SAMPLES)[0][-1].numpy())
    _assert_no_console_errors(browser, page.url)


def test_images_are_drawn_large_and_pixelated(browser, page):
    slider = _open(browser, page)[0]
    for role in ("xt", "x0-pred"):
        image = _part(slider, role)
        natural_width = browser.execute_script("return arguments[0].naturalWidth;", image)
        assert natural_width > 0
        assert image.size["width"] >= 2 * natural_width
        assert image.value_of_css_property("image-rendering") == "pixelated"
    _assert_no_console_errors(browser, page.url)


def test_play_runs_to_t_0_and_pause_stops_it(browser, page):
    slider = _open(browser, page)[0]
    frames = _frames(browser, slider)
    play, range_input = _part(slider, "play"), _part(slider, "range")
    last = len(frames["xt"]) - 1

    def wait_for_index(at_least: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while int(range_input.get_attribute("value")) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)

    play.click()
    wait_for_index(1, seconds=5)
    play.click()
    paused = _shown(slider)["index"]
    assert 1 <= paused < last
    time.sleep(0.5)
    _assert_shows_frame(slider, frames, paused)
    play.click()
    wait_for_index(last, seconds=30)
    _assert_shows_frame(slider, frames, last)
    assert play.text.endswith("Play")
    _assert_no_console_errors(browser, page.url)


CHAPTERS = sorted(p.stem for p in (REPO / "book").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="module")
def book_root() -> Path:
    root = REPO / "_build" / "html"
    if not (root / "book" / f"{CHAPTERS[0]}.html").is_file():
        if os.environ.get(REQUIRE_BOOK_ENV) == "1":
            pytest.fail(f"{root} holds no built chapters but ${REQUIRE_BOOK_ENV}=1 requires them: run make book.")
        pytest.skip("the book is not built (make book)")
    return root


@pytest.fixture
def offline_browser(browser):
    """The browser with every request to another host refused, as for a reader without a network."""
    browser.execute_cdp_cmd("Network.enable", {})
    # Every CDN and launch service is on https; the book is served over http from 127.0.0.1.
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["https://*"]})
    yield browser
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_reads_offline(offline_browser, serve, book_root, chapter):
    """Typeset maths with the network blocked, every request to the book's own server, code cells that fit
    their column at a desktop width, and exercise solutions that open on a click."""
    from selenium.webdriver.common.by import By

    offline_browser.set_window_size(1440, 900)
    base = serve(book_root)
    offline_browser.get(f"{base}/book/{chapter}.html")
    deadline = time.monotonic() + 20
    typeset = 0
    while time.monotonic() < deadline and not typeset:
        typeset = offline_browser.execute_script("return document.querySelectorAll('mjx-container').length;")
        time.sleep(0.2)
    assert typeset > 0, f"{chapter}: no formula was typeset by MathJax with the network blocked"
    requested = offline_browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);"
    )
    outside = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert outside == [], f"{chapter} requests files from other hosts: {outside}"
    overflowing = offline_browser.execute_script(
        "return Array.from(document.querySelectorAll('div.cell_input pre'))"
        ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent.slice(0, 60));"
    )
    assert overflowing == [], f"{chapter}: code wider than its column: {overflowing}"
    solutions = offline_browser.find_elements(By.CSS_SELECTOR, "div.admonition.dropdown")
    assert solutions, f"{chapter}: no exercise solution toggles"
    first = solutions[0]
    assert "toggle-hidden" in first.get_attribute("class"), f"{chapter}: the first solution is not hidden"
    toggle = first.find_element(By.CSS_SELECTOR, "button.toggle-button")
    offline_browser.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", toggle)
    time.sleep(0.5)
    assert "toggle-hidden" not in first.get_attribute("class"), f"{chapter}: the first solution did not open"


GUIDANCE_PAGE = Path("_build/html/book/09_guidance.html")


@pytest.fixture(scope="module")
def value_page(serve, tmp_path_factory) -> str:
    """The built guidance chapter, or a page with one synthetic slider over w where it is not built."""
    import torch

    from ddpm_core.book.slider import StaticValueSlider

    book = REPO / GUIDANCE_PAGE
    if book.is_file():
        root = _site_root(book)
        return f"{serve(root)}/{book.relative_to(root).as_posix()}"
    if os.environ.get(REQUIRE_BOOK_ENV) == "1":
        pytest.fail(f"{book} does not exist but ${REQUIRE_BOOK_ENV}=1 requires it: build the book first (make book).")
    frames = torch.rand(5, 10, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    root = tmp_path_factory.mktemp("value-page")
    slider = StaticValueSlider(frames, [0, 0.5, 1, 3, 20], symbol="w", columns=10).html
    (root / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>Guidance slider</title></head><body>{slider}</body></html>"
    )
    return f"{serve(root)}/index.html"


def test_the_guidance_slider_steps_through_every_w_and_plays_to_the_end(browser, value_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(value_page)
    slider = browser.find_element(By.CSS_SELECTOR, ".ddpm-value-slider")
    frames = browser.execute_script("return JSON.parse(arguments[0].textContent);", _part(slider, "frames"))
    labels, image, label = frames["labels"], _part(slider, "image"), _part(slider, "label")
    assert label.text == f"w = {labels[0]}" and labels[0] == "0"
    assert image.get_attribute("src") == PNG_PREFIX + frames["images"][0]
    _part(slider, "range").click()
    _part(slider, "range").send_keys(Keys.HOME)
    for k in range(1, len(labels)):
        _part(slider, "range").send_keys(Keys.ARROW_RIGHT)
        assert label.text == f"w = {labels[k]}"
        assert image.get_attribute("data-value") == labels[k]
        assert image.get_attribute("src") == PNG_PREFIX + frames["images"][k]
    _part(slider, "range").send_keys(Keys.HOME)
    _part(slider, "play").click()
    deadline = time.monotonic() + 0.4 * len(labels) + 5
    while label.text != f"w = {labels[-1]}" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert label.text == f"w = {labels[-1]}"
    assert _decode(image.get_attribute("src")).shape[1] > 10 * 28  # ten digits side by side
    _assert_no_console_errors(browser, value_page)
