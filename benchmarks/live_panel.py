"""The live panel's speed: the book's network in the browser (onnxruntime-web) against PyTorch.

Serves the built book (``make book``) over loopback http, opens chapter 5 in headless Chromium and
drives its panel. For each browser variant it reports milliseconds per network call (batch 1 and
16, timed inside the panel's worker after 20 warm-up calls), and the wall time of one digit with
DDIM-50 and with DDPM-1000 as the panel reports it. PyTorch runs the same call (same weights,
batch and input shape) in this process, so every ratio is taken in one run on one machine.

Variants (all the WebAssembly SIMD build, the only CPU build onnxruntime-web ships):

    1 thread, graph optimisation "all"       what a reader gets from any static host (the default)
    1 thread, optimisation "basic"/"disabled" what ONNX Runtime's graph rewrites are worth
    2 threads, cross-origin isolated         served with COOP/COEP headers, which enable threads
    1 thread, optimisation "all", again      the first row repeated last, to show what the order costs

Run from the repository root after ``make book``:

    python -m benchmarks.live_panel
    python -m benchmarks.live_panel --quick
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks._common import positive_int, print_table
from ddpm_core.training.checkpoint import load_checkpoint
from ddpm_core.utils.arguments import folder
from ddpm_core.utils.device import device_description, keep_freed_memory
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script

PAGE = "book/05_generation.html"
CHECKPOINT = Path("book/checkpoints/ddpm_mnist.safetensors")


class Handler(http.server.SimpleHTTPRequestHandler):
    isolated = False

    def end_headers(self) -> None:
        if self.isolated:  # cross-origin isolation: SharedArrayBuffer, so WebAssembly threads
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve(root: Path, isolated: bool) -> str:
    handler = type("IsolatedHandler" if isolated else "PlainHandler", (Handler,), {"isolated": isolated})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def start_browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(600)
    return driver


def open_panel(driver, url: str) -> dict:
    driver.get(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = driver.execute_script("var r = document.querySelector('div.ddpm-live'); return r && r.dataset.state;")
        if state not in (None, "loading"):
            break
        time.sleep(0.1)
    message = driver.execute_script("return document.querySelector('div.ddpm-live [data-role=message]').textContent;")
    if state != "ready":
        raise SystemExit(f"the panel at {url} is {state}: {message}")
    return {"isolated": driver.execute_script("return window.crossOriginIsolated;"), "message": message}


def browser_ms_per_call(driver, batch: int, calls: int) -> float:
    return driver.execute_async_script(
        "var done = arguments[arguments.length - 1];"
        "document.querySelector('div.ddpm-live').ddpmLive.bench(arguments[0], arguments[1]).then(done);",
        batch, calls)


def browser_digit_seconds(driver, sampler: str, steps: int) -> float:
    script = """
      var root = document.querySelector('div.ddpm-live'), done = arguments[arguments.length - 1];
      var set = function (role, value) { var e = root.querySelector('[data-role="' + role + '"]');
        if (typeof value === 'boolean') { e.checked = value; } else { e.value = value; }
        e.dispatchEvent(new Event('change')); };
      set('sampler', arguments[0]); set('steps', arguments[1]); set('eta', 0); set('noise-scale', 1);
      set('grid', false); set('seed', 7);
      var watch = new MutationObserver(function () {
        if (root.dataset.state === 'done') { watch.disconnect(); done(root.ddpmLive.result.seconds); }
      });
      watch.observe(root, {attributes: true, attributeFilter: ['data-state']});
      root.querySelector('[data-role=generate]').click();
    """
    return driver.execute_async_script(script, sampler, steps)


def torch_ms_per_call(model, batch: int, calls: int, threads: int) -> float:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(x, torch.full((batch,), 500.0))  # warm-up
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for i in range(calls):
                    model(x, torch.full((batch,), float(1000 - i)))
                best = min(best, (time.perf_counter() - start) / calls * 1000)
        return best
    finally:
        torch.set_num_threads(previous)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_panel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=folder, default=Path("_build/html"), help="the built book (default _build/html)")
    parser.add_argument("--calls", type=positive_int, default=50, help="network calls per timing (default 50)")
    parser.add_argument("--quick", action="store_true", help="few calls, DDIM-10 for the wall time, no DDPM-1000")
    args = parser.parse_args(argv)
    if not (args.site / "_static" / "ort" / "ort.wasm.min.js").is_file():
        raise DDPMError(f"{args.site} has no live panel runtime: run make book (with npm installed) first.")
    calls = 5 if args.quick else args.calls
    keep_freed_memory()
    model = load_checkpoint(CHECKPOINT).model.eval()
    variants = [
        ("1 thread, optimisation all (default)", False, {}),
        ("1 thread, optimisation basic", False, {"live-optimization": "basic"}),
        ("1 thread, optimisation disabled", False, {"live-optimization": "disabled"}),
        ("2 threads, cross-origin isolated", True, {"live-threads": "2"}),
        ("1 thread, optimisation all, again", False, {}),  # the first row again: does the order matter?
    ]
    if args.quick:
        variants = variants[:1]
    plain, isolated = serve(args.site, False), serve(args.site, True)
    ms_torch = {(b, n): torch_ms_per_call(model, b, calls, n) for b in (1, 16) for n in (1, 2)}
    rows, digits = [], []
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as profile:
        driver = start_browser(profile)
        try:
            for name, cross_origin, query in variants:
                base = isolated if cross_origin else plain
                url = f"{base}/{PAGE}" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
                state = open_panel(driver, url)
                if cross_origin and not state["isolated"]:
                    raise DDPMError(f"{url} is not cross-origin isolated; threads stay off")
                one = browser_ms_per_call(driver, 1, calls)
                sixteen = browser_ms_per_call(driver, 16, max(calls // 4, 2))
                rows.append([name, f"{one:.2f}", f"{one / ms_torch[1, 1]:.2f}", f"{one / ms_torch[1, 2]:.2f}",
                             f"{sixteen:.1f}", f"{sixteen / ms_torch[16, 1]:.2f}", f"{sixteen / ms_torch[16, 2]:.2f}"])
                ddim_steps = 10 if args.quick else 50
                ddim = browser_digit_seconds(driver, "ddim", ddim_steps)
                ddpm = None if args.quick or "basic" in name or "disabled" in name or "again" in name else \
                    browser_digit_seconds(driver, "ddpm", 50)
                digits.append([name, f"{ddim:.2f}", "-" if ddpm is None else f"{ddpm:.1f}"])
                print(f"measured: {name}", flush=True)
        finally:
            driver.quit()
        # the same Chromium started once more would reuse the profile: nothing else to clean
    print(f"\ndevice: {device_description(torch.device('cpu'))}; {calls} calls per timing")
    print(f"PyTorch {torch.__version__}, same weights and shapes, this process (best of 3):")
    print_table(["PyTorch", "ms/call, batch 1", "ms/call, batch 16"],
                [[f"{n} thread{'s' if n > 1 else ''}", f"{ms_torch[1, n]:.2f}", f"{ms_torch[16, n]:.1f}"]
                 for n in (1, 2)])
    print("\nonnxruntime-web (WebAssembly SIMD) in headless Chromium, in the panel's worker; ratios against PyTorch "
          "with 1 and 2 threads:")
    print_table(["variant", "ms/call, batch 1", "x PyTorch 1t", "x PyTorch 2t", "ms/call, batch 16", "x PyTorch 1t",
                 "x PyTorch 2t"], rows)
    print(f"\none digit in the browser, as the panel reports it (DDIM-{10 if args.quick else 50}, eta 0; DDPM-1000):")
    print_table(["variant", f"DDIM-{10 if args.quick else 50} s", "DDPM-1000 s"], digits)


if __name__ == "__main__":
    raise SystemExit(run_script(main))
