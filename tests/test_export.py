"""The ONNX export behind the live panel: the round trip through ONNX Runtime, the refusals of the
command line, the JavaScript sampler against the package's, and the shipped files against the
committed checkpoint."""

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ddpm_core import NoiseSchedule
from ddpm_core.app.cli import main
from ddpm_core.app.export import compare_with_torch, export_onnx, initial_noise, onnx_bytes
from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.unet_variants import build_unet
from ddpm_core.training.checkpoint import load_checkpoint, save_weights
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import sha256_of
from tests.helpers import REPO, TINY_CONFIG, tiny_model, tiny_schedule

onnxruntime = pytest.importorskip("onnxruntime")

LIVE = REPO / "book" / "_static" / "live"
BOOK_CHECKPOINT = REPO / "book" / "checkpoints" / "ddpm_mnist.safetensors"


@pytest.fixture
def tiny_checkpoint(tmp_path):
    path = tmp_path / "tiny.safetensors"
    schedule = tiny_schedule()
    meta = {"epoch": 1, "schedule": {"num_steps": schedule.num_steps, "beta_start": schedule.beta_start,
                                     "beta_end": schedule.beta_end}}
    save_weights(path, tiny_model(), meta)
    return path


@pytest.mark.slow
def test_the_exported_graph_matches_pytorch_at_every_batch_size(tiny_checkpoint, tmp_path):
    report = export_onnx(tiny_checkpoint, tmp_path / "tiny.onnx")
    assert report.max_abs_difference < 1e-4
    session = onnxruntime.InferenceSession(str(report.onnx_path), providers=["CPUExecutionProvider"])
    model = load_checkpoint(tiny_checkpoint).model
    for batch in (1, 2, 7):  # the batch dimension is dynamic: sizes the export never traced
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        t = torch.randint(1, 21, (batch,)).float()
        (eps,) = session.run(["eps"], {"x": x.numpy(), "t": t.numpy()})
        with torch.no_grad():
            expected = model(x, t)
        assert eps.shape == (batch, 1, 28, 28)
        assert np.abs(eps - expected.numpy()).max() < 1e-4
    meta = json.loads(report.json_path.read_text())
    schedule = tiny_schedule()
    assert meta["num_steps"] == 20 and len(meta["betas"]) == 20
    assert meta["alpha_bars"] == schedule.alpha_bars.tolist()
    assert meta["checkpoint"]["sha256"] == sha256_of(tiny_checkpoint)
    assert meta["onnx_sha256"] == hashlib.sha256(report.onnx_path.read_bytes()).hexdigest()


def test_a_graph_that_disagrees_is_refused_and_earlier_files_survive(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    monkeypatch.setattr("ddpm_core.app.export.compare_with_torch", lambda *args, **kwargs: 3e-3)
    with pytest.raises(DDPMError, match="disagree by 3.00e-03 .*nothing was written"):
        export_onnx(tiny_checkpoint, out)
    assert out.read_bytes() == b"an earlier export" and not out.with_suffix(".json").exists()


@pytest.mark.slow
def test_the_comparison_sees_a_wrong_graph(tiny_checkpoint):
    model = load_checkpoint(tiny_checkpoint).model
    other = tiny_model(seed=1)  # the graph of other weights
    graph = onnx_bytes(other, (1, 28, 28))
    assert compare_with_torch(model, graph, (1, 28, 28), 20) > 1e-2


@pytest.mark.slow
def test_the_command_line_exports_and_refuses_bad_input(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "live" / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--seeds", "3"]) == 0
    assert "ONNX Runtime matches PyTorch" in capsys.readouterr().out
    seeds = json.loads((out.parent / "seeds.json").read_text())
    noise = np.frombuffer(base64.b64decode(seeds["x_T"]), dtype="<f4").reshape(3, 1, 28, 28)
    assert np.array_equal(noise, initial_noise([0, 1, 2]).numpy())

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    conditional = tmp_path / "conditional.safetensors"
    save_weights(conditional, build_unet(dataclasses.replace(TINY_CONFIG, num_classes=10)), {"epoch": 1})
    cases = [
        (["--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out)], "No checkpoint at"),
        (["--checkpoint", str(corrupt), "--out", str(out)], "truncated or corrupt"),
        (["--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "model.onx")], "should end in .onnx"),
        (["--checkpoint", str(tiny_checkpoint), "--out", str(corrupt / "model.onnx")], "is a file, not a folder"),
        (["--checkpoint", str(conditional), "--out", str(out)], "class-conditional model"),
    ]
    before = out.read_bytes()
    for args, message in cases:
        assert main(["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.startswith("error: "), err
    assert out.read_bytes() == before  # nothing already saved was touched


def test_the_shipped_model_is_the_committed_checkpoint():
    """Fails when book/checkpoints/ddpm_mnist.safetensors changes without `make live-model`."""
    meta = json.loads((LIVE / "model.json").read_text())
    assert meta["checkpoint"]["sha256"] == sha256_of(BOOK_CHECKPOINT), "run make live-model"
    assert meta["onnx_sha256"] == sha256_of(LIVE / "model.onnx")
    loaded = load_checkpoint(BOOK_CHECKPOINT, use_ema=meta["checkpoint"]["use_ema"])
    graph = (LIVE / "model.onnx").read_bytes()
    assert compare_with_torch(loaded.model, graph, (1, 28, 28), 1000, batches=(1, 4)) < 1e-4
    assert meta["alpha_bars"] == loaded.schedule.alpha_bars.tolist()
    assert meta["betas"] == loaded.schedule.betas.tolist()
    seeds = json.loads((LIVE / "seeds.json").read_text())
    noise = np.frombuffer(base64.b64decode(seeds["x_T"]), dtype="<f4").reshape(-1, 1, 28, 28)
    assert seeds["seeds"] == list(range(32))
    assert np.array_equal(noise, initial_noise(seeds["seeds"]).numpy())


NODE_SCRIPT = r"""
const S = require(process.argv[2]);
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const eps = async (x, t) => x.map(v => 0.3 * v + 0.002 * t);  // the toy network of the Python side
(async () => {
  const out = {};
  for (const [name, options] of Object.entries(input.runs)) {
    options.initial = Float32Array.from(input.initial);
    const result = await S.run(input.schedule, eps, options);
    out[name] = {samples: Array.from(result.samples), timesteps: result.frames.timesteps};
  }
  out.taus = [];
  for (var steps = 1; steps <= 1000; steps++) { out.taus.push(S.ddimTimesteps(1000, steps)); }
  const g = new S.Gaussian(7), draws = [];
  for (let i = 0; i < 20000; i++) draws.push(g.normal());
  out.draws = draws;
  console.log(JSON.stringify(out));
})();
"""


def test_the_javascript_sampler_is_the_package_sampler(tmp_path):
    """sampler.js against ddpm_step and ddim_step on a toy network, from the same x_T."""
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI must run the JavaScript sampler's test: apt-get install nodejs npm.")
        pytest.skip("node is not installed")
    from ddpm_core.diffusion.ddim import ddim_timesteps

    schedule = NoiseSchedule()
    initial = initial_noise([5, 6])

    def toy(x, t):
        return 0.3 * x + 0.002 * t.float()[:, None, None, None]

    meta = {"image_shape": [1, 28, 28], "num_steps": 1000, "betas": schedule.betas.tolist(),
            "alphas": schedule.alphas.tolist(), "alpha_bars": schedule.alpha_bars.tolist(),
            "alpha_bars_f64": torch.cumprod(1.0 - schedule.betas.double(), 0).tolist()}
    runs = {"ddim": {"sampler": "ddim", "steps": 25, "eta": 0.0, "seeds": [5, 6]},
            "ddpm": {"sampler": "ddpm", "noiseScale": 0.0, "seeds": [5, 6]}}
    script = tmp_path / "run.js"
    script.write_text(NODE_SCRIPT)
    done = subprocess.run([node, str(script), str(LIVE / "sampler.js")], capture_output=True, text=True,
                          input=json.dumps({"schedule": meta, "initial": initial.flatten().tolist(), "runs": runs}),
                          timeout=120, check=True)
    out = json.loads(done.stdout)

    # The package's samplers draw x_T as each seed's first draw: the x_T handed to the JavaScript.
    ddim, _ = ddim_sample(toy, schedule, seeds=[5, 6], steps=25, eta=0.0, progress=False)
    ddpm, _ = sample(toy, schedule, seeds=[5, 6], noise_scale=0.0, progress=False)
    js_ddim = torch.tensor(out["ddim"]["samples"]).view(2, 1, 28, 28)
    js_ddpm = torch.tensor(out["ddpm"]["samples"]).view(2, 1, 28, 28)
    # The toy network drives x far outside [-1, 1] (|x| up to about 190): relative float32 tolerances.
    torch.testing.assert_close(js_ddim, ddim, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(js_ddpm, ddpm, rtol=1e-4, atol=1e-4)  # 1,000 steps, two orders of rounding
    assert out["ddim"]["timesteps"] == ddim_timesteps(1000, 25) + [0]
    assert out["ddpm"]["timesteps"] == list(range(1000, 0, -10)) + [0]
    # every step count, including those whose linspace hits a half exactly (S = 3, 59, ...)
    assert out["taus"] == [ddim_timesteps(1000, steps) for steps in range(1, 1001)]
    draws = np.array(out["draws"])  # the page's Gaussian: mean 0, variance 1, no visible skew
    assert abs(draws.mean()) < 0.03 and abs(draws.var() - 1) < 0.04 and abs((draws**3).mean()) < 0.06
