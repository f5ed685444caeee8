"""The benchmark scripts run from the repository root and print their tables (timings are not asserted)."""

import subprocess
import sys

import pytest

from tests.helpers import REPO


def run_module(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_sampling_benchmark_prints_every_row():
    out = run_module("benchmarks.sampling", "--quick", "--no-diffusers")
    for row in ("bare network calls x 20", "ours, DDPM-20 (sample)", "ours, DDIM-5 (eta=0)"):
        assert row in out
    assert "DDIM-5 speed-up over ours, DDPM-20:" in out
    if "device: cpu" in out:
        assert "ours, DDPM-20, glibc default allocation" in out
        assert "keeping freed memory:" in out


@pytest.mark.slow
def test_training_benchmark_prints_every_variant():
    out = run_module("benchmarks.train_throughput", "--quick", "--no-diffusers", "--threads", "1")
    assert "GFLOP per training step" in out
    if "device: cpu" in out:  # the data-parallel rows: two Gloo processes against one
        assert "2 Gloo processes (DDP), 1 thread each" in out and "scaling efficiency of 2 processes" in out
    for row in ("NCHW fp32", "channels_last fp32", "channels_last bf16 autocast"):
        assert row in out
    if "device: cpu" in out:
        assert "channels_last fp32, glibc default allocation" in out


@pytest.mark.slow
def test_sampling_benchmark_refuses_a_step_count_that_contradicts_the_checkpoint():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.sampling", "--checkpoint", "book/checkpoints/ddpm_mnist.safetensors",
         "--steps", "50", "--no-diffusers"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "differs from the checkpoint's T=1000" in result.stderr


@pytest.mark.slow
def test_recipe_cost_benchmark_times_every_candidate_at_the_same_parameter_count():
    from ablations.candidates import CANDIDATES

    out = run_module("benchmarks.recipe_cost", "--quick")
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in CANDIDATES]
    assert [row[0] for row in rows] == list(CANDIDATES)
    assert all(row[1] == "324,705" for row in rows)
    assert rows[0][0] == "reference" and rows[0][3] == "1.000"  # the baseline is its own ratio
    conditional = [line.split() for line in out.splitlines() if line.startswith("conditional")]
    assert len(conditional) == 1 and conditional[0][1] == "325,409"  # + the 11 x 64 label table


def test_live_panel_benchmark_prints_the_browser_and_pytorch_rows():
    import os

    import pytest

    if not (REPO / "_build" / "html" / "_static" / "ort" / "ort.wasm.min.js").is_file():
        if os.environ.get("DDPM_REQUIRE_BOOK") == "1":
            pytest.fail("the book with the live panel's runtime is not built: run make book")
        pytest.skip("the book with the live panel's runtime is not built (make book)")
    out = run_module("benchmarks.live_panel", "--quick")
    assert "1 thread, optimisation all (default)" in out
    assert "ms/call, batch 16" in out and "x PyTorch 2t" in out and "DDIM-10 s" in out


@pytest.mark.slow
def test_training_time_writes_its_estimate_with_the_machine_and_the_method(tmp_path):
    import json

    out = run_module("benchmarks.training_time", "--steps", "3", "--out", str(tmp_path / "t.json"))
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["measured_steps"] == 3 and result["full_run_steps"] == 15 * 469
    assert result["estimated_minutes"] == pytest.approx(result["seconds_per_step"] * 7035 / 60, rel=1e-2)
    assert result["machine"] and result["threads"] >= 1 and "7,035 / 3" in result["method"]
    assert f"{result['estimated_minutes']:.0f} minutes" in out


def test_the_book_reads_one_training_time():
    import json

    from ddpm_core.book.chapter import training_time

    stored = json.loads((REPO / "book" / "results" / "training_time.json").read_text())
    assert training_time()["estimated_minutes"] == stored["estimated_minutes"]
