"""Export eps_theta(x_t, t) to ONNX, for the book's live panel and any other runtime.

``export_onnx`` writes two files side by side:

- ``NAME.onnx``: the network as an ONNX graph with inputs ``x`` (float32, (B, C, H, W)) and ``t``
  (float32, (B,): the timestep 1..T, which the UNet's sinusoidal embedding reads as a float),
  output ``eps`` (float32, (B, C, H, W)), and a dynamic batch dimension B;
- ``NAME.json``: what a sampler needs besides the network, so that no runtime re-derives it by
  hand: the schedule's arrays (betas, alphas, alpha_bars, the posterior variance, and alpha_bar in
  float64 as DDIM computes it), the image shape, and where the weights came from (the checkpoint's
  SHA-256), with the largest difference between ONNX Runtime and PyTorch that the export measured.

Before anything is written, ONNX Runtime (Python) runs the graph on random inputs at several batch
sizes and timesteps next to PyTorch; a graph whose outputs differ by more than ``tolerance`` is
refused. With ``seeds``, ``seeds.json`` beside them holds x_T of seeds 0..N-1: the live panel reads
``model.onnx``, ``model.json`` and ``seeds.json`` from one folder. Every file is written to a
temporary name first, and none is moved into place before all are complete, so a failed or
interrupted export leaves any earlier files untouched.

ONNX and ONNX Runtime are optional dependencies (the ``export`` extra), checked before any work.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ddpm_core.diffusion.conditioning import require_unconditional
from ddpm_core.diffusion.seeds import initial_noise
from ddpm_core.training.checkpoint import LoadedModel, load_checkpoint
from ddpm_core.utils.arguments import MAX_EXPORT_SEEDS
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.extras import require
from ddpm_core.utils.files import (
    MAX_JSON_BYTES,
    check_free_space,
    check_output_file,
    parse_json,
    read_small_file,
    sha256_of,
    write_files,
)

FORMAT = "ddpm-core-onnx/1"
SEED_KEYS = {"seeds", "image_shape", "x_T"}  # the keys of the seeds file, which recognise it
SEEDS_FILE = "seeds.json"  # beside the graph, whatever its name: the live panel fetches this name
# x_T of one seed is 784 float32 in base64 (4/3 of 3,136 bytes), and its number in the list.
MAX_SEEDS_FILE_BYTES = MAX_EXPORT_SEEDS * (4 * 784 * 4 // 3 + 16) + 4096
OPSET = 17
TOLERANCE = 1e-4
CHECK_BATCHES = (1, 3, 16)
CHECK_TIMESTEPS = (1, 2, 10, 250, 500, 999)


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and measured."""

    onnx_path: Path
    json_path: Path
    max_abs_difference: float  # ONNX Runtime against PyTorch, over every checked input
    checked_batches: tuple[int, ...]
    checked_timesteps: tuple[int, ...]
    onnx_bytes: int
    seeds_path: Path | None = None  # x_T of the seeds, when asked for


class _EpsilonGraph(nn.Module):
    """eps_theta(x, t) with t as float32, the signature of the exported graph."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model(x, t)


def schedule_arrays(loaded: LoadedModel) -> dict[str, list[float]]:
    """The schedule's arrays, index t - 1 for timestep t, as the samplers of this package use them."""
    schedule = loaded.schedule
    return {
        "betas": schedule.betas.tolist(),
        "alphas": schedule.alphas.tolist(),
        "alpha_bars": schedule.alpha_bars.tolist(),  # float32, as ddpm_step and predict_x0 read them
        "alpha_bars_f64": schedule.alpha_bars_f64.tolist(),  # as ddim_step
        "posterior_variance": schedule.posterior_variance.tolist(),
    }


def onnx_bytes(model: nn.Module, image_shape: tuple[int, ...], opset: int = OPSET) -> bytes:
    """The ONNX graph of eps_theta(x, t) with a dynamic batch dimension, as bytes."""
    graph = _EpsilonGraph(model).eval()
    x = torch.randn(2, *image_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0, 10.0])
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its successor
        torch.onnx.export(
            graph,
            (x, t),
            buffer,
            input_names=["x", "t"],
            output_names=["eps"],
            dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return buffer.getvalue()


def compare_with_torch(
    model: nn.Module,
    graph: bytes,
    image_shape: tuple[int, ...],
    num_steps: int,
    batches: tuple[int, ...] = CHECK_BATCHES,
    timesteps: tuple[int, ...] = CHECK_TIMESTEPS,
) -> float:
    """The largest |ONNX Runtime - PyTorch| over random x_t at each batch size and timestep."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch in batches:
        for t in timesteps:
            t = min(t, num_steps)
            x = torch.randn(batch, *image_shape, generator=generator)
            steps = torch.full((batch,), float(t))
            with torch.no_grad():
                expected = model(x, steps)
            (got,) = session.run(["eps"], {"x": x.numpy(), "t": steps.numpy()})
            worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    return worst


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    use_ema: bool = False,
    tolerance: float = TOLERANCE,
    seeds: int = 0,
) -> ExportReport:
    """Export a checkpoint's eps_theta to ``out`` (.onnx), its sampler data to ``out`` with .json, and with
    ``seeds`` x_T of seeds 0..seeds-1 to ``seeds.json`` beside them, all written together.

    Raises DDPMError for a missing onnx or onnxruntime, an unreadable checkpoint, a conditional model (the
    graph takes no labels), an output that cannot be written, or a graph that ONNX Runtime does not
    reproduce to ``tolerance``.
    """
    require(("onnx", "onnxruntime"), "export")
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise DDPMError(f"The exported model's file name should end in .onnx, got {out}.")
    loaded = load_checkpoint(checkpoint, use_ema=use_ema)
    config = loaded.model.config
    require_unconditional(config.num_classes, loaded.path, "the exported graph takes x_t and t only")
    image_shape = (config.image_channels, 28, 28)
    model = loaded.model.float().eval()
    paths = output_paths(out, seeds)
    files = {"seeds": seed_noise_json(list(range(seeds)))} if seeds else {}
    # The graph holds the weights in float32: a disk without room for them stops the export before the check.
    check_free_space(out, 4 * sum(p.numel() for p in model.parameters()) + sum(map(len, files.values())))
    graph = onnx_bytes(model, image_shape)
    difference = compare_with_torch(model, graph, image_shape, loaded.schedule.num_steps)
    if not difference <= tolerance:  # also refuses NaN
        raise DDPMError(
            f"ONNX Runtime and PyTorch disagree by {difference:.2e} (more than {tolerance:g}) on the exported "
            f"graph of {loaded.path}; nothing was written. Check the onnx and onnxruntime versions."
        )
    meta = export_metadata(loaded, use_ema, out.name, graph, difference, tolerance)
    files |= {"graph": graph, "schedule": (json.dumps(meta, indent=1) + "\n").encode()}
    write_files({paths[name]: (_writer(data), len(data)) for name, data in files.items()})
    return ExportReport(out, paths["schedule"], difference, CHECK_BATCHES, CHECK_TIMESTEPS, len(graph),
                        paths.get("seeds"))


def _writer(data: bytes) -> Callable[[str], int]:
    return lambda tmp: Path(tmp).write_bytes(data)


def export_metadata(loaded: LoadedModel, use_ema: bool, onnx_name: str, graph: bytes, difference: float,
                    tolerance: float) -> dict[str, Any]:
    """The ``.json`` beside an exported graph: its inputs and output, the schedule's arrays, the weights it came
    from, and the check against PyTorch that it passed."""
    config = loaded.model.config
    image_shape = (config.image_channels, 28, 28)
    return {
        "format": FORMAT,
        "onnx": onnx_name,
        "inputs": {"x": ["batch", *image_shape], "t": ["batch"]},
        "output": "eps",
        "image_shape": list(image_shape),
        "num_steps": loaded.schedule.num_steps,
        "variance": "beta",
        **schedule_arrays(loaded),
        "checkpoint": {
            "file": Path(loaded.path).name,
            "sha256": sha256_of(loaded.path),
            "use_ema": use_ema,
            "model_config": asdict(config),
        },
        "check": {
            "max_abs_difference": difference,
            "tolerance": tolerance,
            "batches": list(CHECK_BATCHES),
            "timesteps": list(CHECK_TIMESTEPS),
        },
        "onnx_sha256": hashlib.sha256(graph).hexdigest(),
        "opset": OPSET,
        "torch": torch.__version__,
    }


def seed_noise_json(seeds: list[int], image_shape: tuple[int, ...] = (1, 28, 28)) -> bytes:
    """x_T of ``seeds`` as JSON (float32, little-endian, base64), for a runtime without torch's generator."""
    noise = initial_noise(seeds, image_shape).numpy().astype("<f4")
    record = {"seeds": seeds, "image_shape": list(image_shape),
              "x_T": base64.b64encode(noise.tobytes()).decode("ascii")}
    return (json.dumps(record) + "\n").encode()


def _read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON in ``path``, or None for anything else: a missing file, a FIFO, a device, a link, bad JSON."""
    try:
        return parse_json(read_small_file(path, max_bytes, "an earlier export's file"), max_bytes=max_bytes)
    except ValueError:  # DDPMError is one
        return None


def is_own_schedule_file(path: Path) -> bool:
    """Whether ``path`` is a .json that ``export_onnx`` wrote (it carries the export's format key)."""
    meta = _read_json(path)
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def is_own_graph(path: Path) -> bool:
    """Whether ``path`` is a graph that ``export_onnx`` wrote: the .json beside it records its SHA-256."""
    meta = _read_json(path.with_suffix(".json"))
    return (isinstance(meta, dict) and meta.get("format") == FORMAT and path.is_file()
            and meta.get("onnx_sha256") == sha256_of(path))


def is_own_seed_file(path: Path) -> bool:
    """Whether ``path`` is a seeds file that ``write_seed_noise`` wrote."""
    record = _read_json(path, MAX_SEEDS_FILE_BYTES)
    return isinstance(record, dict) and set(record) == SEED_KEYS


def output_paths(out: Path, seeds: int) -> dict[str, Path]:
    """The files an export writes: the graph, its schedule and provenance, and (with ``seeds``) the seeds file."""
    paths = {"graph": out, "schedule": out.with_suffix(".json")}
    if seeds:
        paths["seeds"] = out.with_name(SEEDS_FILE)
    return paths


def check_outputs(out: Path, seeds: int, force: bool) -> dict[str, Path]:
    """Refuse, before any work, outputs that collide or would replace files that export did not write."""
    paths = output_paths(out, seeds)
    if seeds and paths["schedule"].name.lower() == paths["seeds"].name.lower():
        raise DDPMError(
            f"With --seeds, {out} would put the schedule and the seeds in the same file, {paths['seeds']}. "
            f"Give the model another name, such as {out.with_name('model.onnx')}."
        )
    check_output_file(out, (".onnx",), force, "exported model", is_own=is_own_graph, example="model.onnx")
    check_output_file(paths["schedule"], (".json",), force, "schedule and provenance", is_own=is_own_schedule_file)
    if seeds:
        _check_seeds_file(paths["seeds"], force)
    return paths


def _check_seeds_file(path: Path, force: bool) -> None:
    """Refuse what is at the seeds file's path unless export wrote it; the advice names the folder, since
    another --out in the same folder would meet the same file."""
    link = path.is_symlink()
    if link or path.exists():
        regular = path.is_file() and not link
        if regular and is_own_seed_file(path):
            return
        if not (force and (regular or link)):
            what = (f"is a symbolic link (to {os.readlink(path)})" if link else
                    "already exists, and export did not write it" if regular else "is there and is not a file")
            remedy = ", or pass --force to replace it" + (" (the link itself, never its target)" if link else "")
            raise DDPMError(
                f"{path} {what}; nothing was overwritten. With --seeds, export writes {SEEDS_FILE} beside the "
                f"model whatever --out is called (the name the live panel reads): choose an --out in another "
                f"folder, or move {path} away{remedy if regular or link else ''}."
            )
    check_output_file(path, (".json",), force, "seeds", is_own=is_own_seed_file)
