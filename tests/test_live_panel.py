"""The live generation panel of the built book, driven in headless Chromium with the network blocked.

The page is ``_build/html/book/05_generation.html`` served over loopback http. The panel must load the
exported network with onnxruntime-web in a worker, reproduce PyTorch's DDIM digit from a shipped x_T,
show a progress bar that advances and a Cancel that stops, leave a timestep slider over the run that agrees
with the progress text (t = 0 at the end), and refuse an empty or out-of-range field without starting a run.
Without a built book with the runtime these tests skip, except under ``$DDPM_REQUIRE_BOOK=1`` (CI).
"""

import os
import time

import numpy as np
import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.browser

SITE = REPO / "_build" / "html"
PAGE = "book/05_generation.html"
RUNTIME = SITE / "_static" / "ort" / "ort.wasm.min.js"


@pytest.fixture(scope="module")
def site():
    if not (SITE / PAGE).is_file() or not RUNTIME.is_file():
        reason = f"the book with the live panel's runtime is not built ({SITE / PAGE}, {RUNTIME}): run make book"
        if os.environ.get("DDPM_REQUIRE_BOOK") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return SITE


@pytest.fixture
def panel(browser, serve, site):
    """The panel of chapter 5, ready to generate, with every request outside the book's server refused."""
    base = serve(site)
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["https://*", "ws://*", "wss://*"]})
    browser.get(f"{base}/{PAGE}")
    _wait(browser, lambda: _state(browser) not in (None, "loading"), 60, "the panel to load")
    assert _state(browser) == "ready", _text(browser, "message")
    requested = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    outside = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert outside == [], f"the page requests files from other hosts: {outside}"
    yield browser
    browser.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


def _state(browser):
    return browser.execute_script("var r = document.querySelector('div.ddpm-live'); return r && r.dataset.state;")


def _part(browser, role):
    return browser.execute_script(f"return document.querySelector('div.ddpm-live [data-role=\"{role}\"]');")


def _text(browser, role):
    return _part(browser, role).get_attribute("textContent")


def _wait(browser, condition, seconds, what):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}; message: {_text(browser, 'message')}")


def _choose(browser, **values):
    """Set the panel's fields as a reader would, firing the events its listeners wait for."""
    for role, value in values.items():
        element = _part(browser, role)
        if isinstance(value, bool):
            browser.execute_script("arguments[0].checked = arguments[1];", element, value)
        else:
            browser.execute_script("arguments[0].value = arguments[1];", element, str(value))
        browser.execute_script("arguments[0].dispatchEvent(new Event('change'));", element)


def _assert_ddim_reproduces_pytorch(browser, seed: int) -> None:
    from ddpm_core import load_checkpoint
    from ddpm_core.diffusion.ddim import ddim_sample
    from ddpm_core.utils.images import to_uint8

    _choose(browser, sampler="ddim", steps=10, eta=0, seed=seed, **{"book-noise": True, "grid": False})
    _part(browser, "generate").click()
    _wait(browser, lambda: _state(browser) == "done", 60, "DDIM-10 to finish")
    got = np.array(browser.execute_script(
        "return Array.from(document.querySelector('div.ddpm-live').ddpmLive.result.uint8);"))
    loaded = load_checkpoint(REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors")
    expected, _ = ddim_sample(loaded.model, loaded.schedule, seeds=[seed], steps=10, eta=0.0, progress=False)
    expected = to_uint8(expected).flatten().numpy().astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 2  # 2/255 per pixel
    assert (expected > 128).sum() > 50  # a digit, not a blank


def test_ddim_from_a_shipped_seed_reproduces_pytorch(panel):
    _assert_ddim_reproduces_pytorch(panel, seed=3)


def test_the_panel_runs_in_a_page_opened_from_disk(browser, site):
    """file:// pages may not fetch or start a worker from a file: the panel uses file-mode.js instead."""
    browser.get((site / PAGE).as_uri())
    _wait(browser, lambda: _state(browser) not in (None, "loading"), 90, "the panel to load from disk")
    assert _state(browser) == "ready", _text(browser, "message")
    _assert_ddim_reproduces_pytorch(browser, seed=5)


def test_ddpm_shows_progress_and_cancel_stops_it(panel):
    _choose(panel, sampler="ddpm", seed=12345, **{"noise-scale": 1, "grid": False})
    _part(panel, "generate").click()
    progress = _part(panel, "progress")
    _wait(panel, lambda: int(float(progress.get_attribute("value"))) >= 5, 30, "the first steps")
    first = int(float(progress.get_attribute("value")))
    _wait(panel, lambda: int(float(progress.get_attribute("value"))) >= first + 20, 30, "the progress bar to advance")
    assert progress.get_attribute("max") == "1000"
    assert "of 1000, t = " in _text(panel, "progress-text")
    _part(panel, "cancel").click()
    _wait(panel, lambda: _state(panel) == "cancelled", 10, "Cancel to stop the run")
    stopped = int(float(progress.get_attribute("value")))
    time.sleep(1.0)
    assert int(float(progress.get_attribute("value"))) == stopped < 1000
    assert _part(panel, "generate").is_enabled() and not _part(panel, "cancel").is_enabled()
    assert not _part(panel, "slider").is_displayed()  # a cancelled run leaves no slider


def test_after_a_run_the_slider_scrubs_its_frames(panel):
    from selenium.webdriver.common.keys import Keys

    _choose(panel, sampler="ddim", steps=20, eta=0.5, seed=99, **{"grid": True})
    _part(panel, "generate").click()
    _wait(panel, lambda: _state(panel) == "done", 120, "DDIM-20 on 16 digits to finish")
    rng = _part(panel, "range")
    assert _part(panel, "slider").is_displayed()
    assert rng.get_attribute("max") == "20"  # 20 visited timesteps and t = 0
    frames = []
    for k in (0, 10, 20):
        panel.execute_script("arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'));",
                             rng, k)
        frames.append((_text(panel, "label"), panel.execute_script(
            "return arguments[0].toDataURL();", _part(panel, "x0-pred"))))
    assert frames[0][0] == "t = 1000" and frames[-1][0] == "t = 0"
    assert len({image for _, image in frames}) == 3  # each position draws its own frame
    assert _part(panel, "x0-pred").get_attribute("width") == str(4 * 28 + 3 * 2)  # the 4 x 4 grid
    rng.send_keys(Keys.HOME)
    assert _text(panel, "label") == "t = 1000"
    rng.send_keys(Keys.ARROW_RIGHT)
    assert _text(panel, "label") != "t = 1000"
    _part(panel, "play").click()
    _wait(panel, lambda: _text(panel, "label") == "t = 0", 10, "Play to reach t = 0")


def test_ddim_opens_on_the_best_fast_sampler_at_50_calls(panel):
    """DDIM-50 with eta = 1 is the fast sampler closest to DDPM-1000 (RESULTS.md, round two): the default."""
    assert _part(panel, "steps").get_attribute("value") == "50"
    assert float(_part(panel, "eta").get_attribute("value")) == 1.0


def test_bad_settings_get_a_clear_message(panel):
    _choose(panel, sampler="ddim", steps=5)
    _part(panel, "generate").click()
    assert "DDIM steps must be a whole number from 10 to 250" in _text(panel, "message")
    assert _state(panel) == "ready"


@pytest.mark.parametrize("sampler, role, message", [
    ("ddpm", "seed", "The seed must be a whole number"),
    ("ddim", "seed", "The seed must be a whole number"),
    ("ddim", "eta", "eta must lie between 0 and 1"),
    ("ddpm", "noise-scale", "The noise scale must lie between 0 and 1"),
])
def test_an_empty_field_is_refused_not_read_as_zero(panel, sampler, role, message):
    _choose(panel, sampler=sampler, steps=10, seed=3, eta=0.5, **{"noise-scale": 1, "grid": False})
    _choose(panel, **{role: ""})
    text = panel.execute_script("""
        var root = document.querySelector('div.ddpm-live');
        root.querySelector('[data-role="generate"]').click();
        return root.querySelector('[data-role="progress-text"]').textContent;""")
    assert message in _text(panel, "message")
    assert "ddpm-live-error" in _part(panel, "message").get_attribute("class")
    assert _state(panel) == "ready" and text == ""  # no run started
    time.sleep(0.5)
    assert _state(panel) == "ready" and float(_part(panel, "progress").get_attribute("value")) == 0


def test_a_finished_run_ends_at_t_0_in_its_text_and_on_its_slider(panel):
    _choose(panel, sampler="ddim", steps=10, eta=0, seed=7, **{"book-noise": True, "grid": False})
    _part(panel, "generate").click()
    _wait(panel, lambda: _state(panel) == "done", 60, "DDIM-10 to finish")
    assert _text(panel, "label") == "t = 0"
    assert _text(panel, "progress-text").endswith(", t = 0"), _text(panel, "progress-text")
    assert "10" in _text(panel, "progress-text")


def test_a_new_run_starts_its_progress_text_afresh(panel):
    _choose(panel, sampler="ddim", steps=10, eta=0, seed=7, **{"book-noise": True, "grid": False})
    _part(panel, "generate").click()
    _wait(panel, lambda: _state(panel) == "done", 60, "DDIM-10 to finish")
    finished = _text(panel, "progress-text")
    _choose(panel, sampler="ddpm", seed=8, **{"noise-scale": 1})
    # Read in the click's own turn of the event loop, before the worker's first step can arrive.
    text = panel.execute_script("""
        var root = document.querySelector('div.ddpm-live');
        root.querySelector('[data-role="generate"]').click();
        return root.querySelector('[data-role="progress-text"]').textContent;""")
    assert text != finished
    assert text == "step 0 of 1000, t = 1000"
    _part(panel, "cancel").click()
    _wait(panel, lambda: _state(panel) == "cancelled", 10, "Cancel to stop the run")


def test_without_the_runtime_the_panel_says_what_was_left_out(browser, serve, site, tmp_path):
    """The book as `make book` leaves it without npm: everything but _static/ort, linked, not copied."""
    bare = tmp_path / "site"
    (bare / "_static").mkdir(parents=True)
    for entry in site.iterdir():
        if entry.name != "_static":
            (bare / entry.name).symlink_to(entry)
    for entry in (site / "_static").iterdir():
        if entry.name != "ort":
            (bare / "_static" / entry.name).symlink_to(entry)
    browser.get(f"{serve(bare)}/{PAGE}")
    _wait(browser, lambda: _state(browser) not in (None, "loading"), 30, "the panel to give up")
    assert _state(browser) == "missing"
    assert "onnxruntime-web was left out" in _text(browser, "message")
    assert not _part(browser, "generate").is_enabled()
