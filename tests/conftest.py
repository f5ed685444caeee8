"""Shared fixtures: tiny trained runs, a synthetic trajectory, headless Chromium and a loopback web server."""

import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ddpm_core import NoiseSchedule, TrainConfig, train
from ddpm_core.diffusion.seeds import Trajectory
from tests.helpers import TINY_CONFIG

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
    # Every host but the loopback server fails to resolve, so a page behaves the same with or without internet.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


@pytest.fixture(scope="session")
def synthetic_trajectory() -> Callable[..., Trajectory]:
    """Make a trajectory without a model: ring-shaped 'digits' x_0, x_t drawn from q(x_t | x_0)
    (Ho et al. 2020, eq. (4)) and a predicted x_0 that fades from the mean image to x_0."""

    def make(timesteps: list[int], num_samples: int, seed: int = 0) -> Trajectory:
        generator = torch.Generator().manual_seed(seed)
        rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        radius = ((rows - 13.5) ** 2 + (cols - 13.5) ** 2).sqrt()
        x0 = torch.stack([torch.where((radius - 4 - i % 8).abs() < 1.5, 1.0, -1.0) for i in range(num_samples)])
        x0 = x0[:, None]  # (N, 1, 28, 28)
        schedule = NoiseSchedule()
        xt, x0_pred = [], []
        for t in timesteps:
            alpha_bar = schedule.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0)
            eps = torch.randn(x0.shape, generator=generator)
            xt.append(alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)
            x0_pred.append(alpha_bar.sqrt() * x0 + (1 - alpha_bar.sqrt()) * x0.mean(0))
        return Trajectory(list(timesteps), torch.stack(xt), torch.stack(x0_pred))

    return make


def _unavailable(reason: str) -> None:
    """Skip a browser test that cannot run here, but fail it on CI, which must run it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} CI must run the browser tests: apt-get install -y chromium chromium-driver.")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium driven through the system chromedriver (selenium never downloads one)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -r requirements.txt).")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        _unavailable(f"chromium or chromedriver is not on PATH (found: {chromium}, {chromedriver}).")
    with tempfile.TemporaryDirectory(prefix="ddpm-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        try:
            yield driver
        finally:
            driver.quit()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[Path], str]]:
    """Serve a folder over http://127.0.0.1:<free port>; returns the base URL."""
    servers = []

    def start(root: Path) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished one-epoch run of the tiny network on random images, with a 20-step schedule and no EMA."""
    folder = tmp_path_factory.mktemp("tiny_run")
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    train(folder, TrainConfig(epochs=1, batch_size=32, num_steps=20, ema_decay=None), TINY_CONFIG, images=images,
          device="cpu", progress=False)
    return folder


@pytest.fixture(scope="session")
def slow_run(tmp_path_factory) -> Path:
    """The tiny network with the full 1000-step schedule: sampling takes long enough to be interrupted."""
    folder = tmp_path_factory.mktemp("slow_run")
    images = torch.rand(32, 1, 28, 28) * 2 - 1
    train(folder, TrainConfig(epochs=1, batch_size=32), TINY_CONFIG, images=images, device="cpu", progress=False)
    return folder


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="session")
def classifier():
    """The packaged MNIST judge, loaded once for the whole session."""
    from ddpm_core.measure.classifier import load_classifier

    return load_classifier()


@pytest.fixture(scope="session")
def mnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's 10,000 test images in [-1, 1] and their labels (tests that use it are marked needs_mnist)."""
    from ddpm_core import load_mnist

    return load_mnist(train=False, download=False)
