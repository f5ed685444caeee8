"""The sample sets that the chapters measure: named once, generated once, stored small.

Chapters 6 to 9 judge thousands of generated digits. Generating them takes far longer than
measuring them, so each set is defined here once, by name, and stored in ``book/samples/`` as
8-bit images: 1,000 digits take under a megabyte. A chapter asks for a set by its name,

    record = load_samples("ddpm1000")

and gets the stored set when it is there and was made from today's checkpoint with today's
definition; otherwise the set is generated and stored. Two chapters that measure the same
samples name the same set, so they cannot drift apart.

Three modes:
- by default, stored sets are read and a missing or out-of-date set is generated and stored;
- ``DDPM_REGENERATE=1`` (``make execute``) generates every set again from its checkpoint;
- quick mode (``DDPM_QUICK=1``, the tests) generates a few samples of each set into the scratch
  folder and never touches ``book/samples/``.

A set that captures its trajectory keeps, per captured timestep, the judge's reading of the
predicted x_0 of every sample (``SampleRecord.readings``), which is what the chapters measure
about trajectories, instead of the images themselves.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddpm_core.book import BOOK_MODEL, CONDITIONAL_MODEL, REFERENCE_MODEL, REPO, output_dir, quick_mode
from ddpm_core.errors import DDPMError
from ddpm_core.files import atomic_write, sha256_of

REGENERATE_ENV = "DDPM_REGENERATE"
STORE = REPO / "book" / "samples"
EPOCHS_FOLDER = "runs/mnist-15ep/epochs"  # written by `make train`; read only to generate again


def regenerate_mode() -> bool:
    """True when ``$DDPM_REGENERATE`` is set to a true value: every sample set is generated again."""
    return os.environ.get(REGENERATE_ENV, "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class SampleSet:
    """How one set of samples is made: the checkpoint, the sampler and the seeds.

    Sample i uses seed ``seed + i``. ``labels`` asks a conditional model for digits: "cycle"
    (sample i asks for i mod 10) or "rows" (the first tenth asks for 0, the next for 1, ...).
    ``judge_every_10`` captures the trajectory every 10 timesteps and keeps the judge's reading of
    the predicted x_0 there. ``quick`` holds the settings that quick mode changes (fewer samples,
    and for the slow sampler a short DDIM run).
    """

    what: str
    num_samples: int
    checkpoint: str = BOOK_MODEL
    ema: bool = False
    seed: int = 0
    sampler: str = "ddpm"
    steps: int = 50
    eta: float = 0.0
    variance: str = "beta"
    labels: str | None = None
    guidance: float = 1.0
    judge_every_10: bool = False
    quick: dict[str, Any] = field(default_factory=dict)

    def in_quick_mode(self) -> SampleSet:
        return replace(self, **({"num_samples": 16} | self.quick), quick={})

    def definition(self) -> dict[str, Any]:
        """Everything that decides the samples, as stored beside them (``what`` and ``quick`` do not)."""
        settings = asdict(self)
        for key in ("what", "quick"):
            settings.pop(key)
        return settings

    def requested(self) -> Tensor | None:
        """The digit each sample asks for, (N,), or None for an unconditional set."""
        n = self.num_samples
        if self.labels is None:
            return None
        if self.labels == "cycle":
            return torch.arange(n) % 10
        if self.labels == "rows":
            return torch.arange(10).repeat_interleave(n // 10)
        raise DDPMError(f"labels must be None, 'cycle' or 'rows', got {self.labels!r}.")


@dataclass
class SampleRecord:
    """A generated set as the chapters use it.

    ``samples`` (N, 1, 28, 28) are in [-1, 1] (stored as 8-bit images, so within 1/255 of the
    sampler's output, clipped to [-1, 1]); ``seconds`` is the sampling wall time with ``threads``
    CPU threads; ``trained`` holds the checkpoint's epoch and epoch-mean losses. With a judged
    trajectory, ``readings[k, n]`` is the digit the judge reads in sample n's predicted x_0 at
    ``timesteps[k]`` (largest first, 0 last: the finished sample).
    """

    samples: Tensor
    seconds: float
    threads: int
    requested: Tensor | None = None
    timesteps: list[int] | None = None
    readings: Tensor | None = None
    trained: dict[str, Any] = field(default_factory=dict)


_SLOW = {"num_samples": 16, "sampler": "ddim", "steps": 10}  # quick mode's stand-in for DDPM-1000 runs


def _sets() -> dict[str, SampleSet]:
    sets = {
        "ddpm1000": SampleSet("the book's model, DDPM-1000, raw weights, seeds 0-999, judged every 10 steps",
                              1000, judge_every_10=True, quick={"num_samples": 16}),
        "ddpm1000_ema": SampleSet("the book's model, DDPM-1000, EMA weights, seeds 0-255", 256, ema=True,
                                  quick={"num_samples": 8}),
        "ddpm1000_posterior": SampleSet("the book's model, DDPM-1000 with the posterior variance, seeds 0-255",
                                        256, variance="posterior", quick={"num_samples": 8}),
        "reference_ddpm1000": SampleSet("the reference recipe's model, DDPM-1000, seeds 0-999", 1000,
                                        checkpoint=REFERENCE_MODEL, quick={"num_samples": 16}),
        "ddpm1000_256": SampleSet("the book's model, DDPM-1000, seeds 0-255, timed as one run", 256,
                                  quick={"num_samples": 16}),
        "unconditional_ddim100": SampleSet("the book's model, DDIM-100, seeds 0-499", 500, sampler="ddim",
                                           steps=100, quick={"num_samples": 20, "steps": 10}),
        "guidance_grid": SampleSet("the conditional model, DDPM-1000, row d asks for digit d, seeds 10000-10079",
                                   80, checkpoint=CONDITIONAL_MODEL, seed=10_000, labels="rows", guidance=2.0,
                                   quick={"num_samples": 40, "sampler": "ddim", "steps": 10}),
        "guidance_lockin": SampleSet("the conditional model, DDPM-1000, sample i asks for i mod 10, seeds "
                                     "30000-30099, judged every 10 steps", 100, checkpoint=CONDITIONAL_MODEL,
                                     seed=30_000, labels="cycle", guidance=2.0, judge_every_10=True,
                                     quick={"num_samples": 10, "sampler": "ddim", "steps": 20}),
        "unconditional_lockin": SampleSet("the book's model, DDPM-1000, seeds 30000-30099, judged every 10 steps",
                                          100, seed=30_000, judge_every_10=True,
                                          quick={"num_samples": 10, "sampler": "ddim", "steps": 20}),
    }
    for epoch in (1, 2, 4, 7, 10):
        sets[f"epoch{epoch:02d}"] = SampleSet(
            f"the book's run after epoch {epoch}, DDPM-1000, seeds 0-255", 256,
            checkpoint=f"{EPOCHS_FOLDER}/epoch_{epoch:03d}.safetensors", quick=_SLOW | {"num_samples": 8})
    for eta, step_counts in ((0.0, (10, 20, 50, 100, 250)), (0.5, (50,)), (1.0, (10, 20, 50, 100, 250))):
        for steps in step_counts:
            sets[f"ddim{steps}_eta{eta:g}"] = SampleSet(
                f"the book's model, DDIM-{steps} with eta {eta:g}, seeds 0-255", 256, sampler="ddim", steps=steps,
                eta=eta, quick={"num_samples": 16, "steps": min(steps, 50)})
    for steps in (10, 20, 50, 100):
        sets[f"dpm{steps}"] = SampleSet(f"the book's model, DPM-Solver++(2M) in {steps} steps, seeds 0-255", 256,
                                        sampler="dpm", steps=steps, quick={"num_samples": 16})
    for w in (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0):
        sets[f"guidance_w{w:g}"] = SampleSet(
            f"the conditional model, DDIM-100, guidance w = {w:g}, sample i asks for i mod 10, seeds 0-499", 500,
            checkpoint=CONDITIONAL_MODEL, sampler="ddim", steps=100, labels="cycle", guidance=w,
            quick={"num_samples": 20, "steps": 10})
    return sets


SAMPLE_SETS: dict[str, SampleSet] = _sets()


def sample_set(name: str, **changes: Any) -> SampleSet:
    """The definition of the set called ``name``, with ``changes`` to its settings (a chapter's chosen
    guidance scale, say), as quick mode shrinks it when it is on."""
    if name not in SAMPLE_SETS:
        raise DDPMError(f"There is no sample set called {name!r}. The sets are defined in "
                        f"ddpm_core/sample_sets.py: {', '.join(SAMPLE_SETS)}.")
    unknown = set(changes) - set(SAMPLE_SETS[name].definition())
    if unknown:
        raise DDPMError(f"{sorted(unknown)} are not settings of a sample set; the settings are "
                        f"{', '.join(SAMPLE_SETS[name].definition())}.")
    spec = replace(SAMPLE_SETS[name], **changes)
    return spec.in_quick_mode() if quick_mode() else spec


def stored_path(name: str) -> Path:
    """Where the set ``name`` is kept: ``book/samples/`` in full mode, the scratch folder in quick mode."""
    folder = output_dir("scratch/samples") if quick_mode() else STORE
    return folder / f"{name}.npz"


def load_samples(name: str, progress: bool = True, **changes: Any) -> SampleRecord:
    """The set ``name`` (with ``changes`` to its settings, as ``sample_set``): read from its file when that
    was made from today's checkpoint and definition, else generated (with a progress bar) and stored.
    ``DDPM_REGENERATE=1`` always generates. In quick mode, a stored full set that is up to date (or whose
    checkpoint is not there: the epoch checkpoints of a fresh clone) gives its first few samples."""
    spec = sample_set(name, **changes)
    path = stored_path(name)
    checkpoint = REPO / spec.checkpoint
    if quick_mode() and (STORE / path.name).exists():
        full, stored = read_record(STORE / path.name)
        full_spec = replace(SAMPLE_SETS[name], **changes)
        if not checkpoint.exists() or (stored["definition"] == full_spec.definition()
                                       and stored["checkpoint_sha256"] == sha256_of(checkpoint)):
            return _first(full, spec.num_samples)
    if path.exists() and not regenerate_mode():
        record, stored = read_record(path)
        if stored["definition"] == spec.definition() and (
            not checkpoint.exists() or stored["checkpoint_sha256"] == sha256_of(checkpoint)
        ):
            return record
        print(f"{path.name} was made from another checkpoint or definition: generating it again.")
    if not checkpoint.exists():
        raise DDPMError(
            f"The sample set {name!r} ({spec.what}) is not stored in {path.parent}, and the checkpoint "
            f"it is generated from, {checkpoint}, is missing. "
            + ("Run `make train` to write the epoch checkpoints. " if EPOCHS_FOLDER in spec.checkpoint else "")
            + "A fresh clone of the book stores every set; `git checkout book/samples` restores them."
        )
    record = generate_set(spec, checkpoint, progress=progress)
    write_record(path, record, spec, sha256_of(checkpoint))
    return read_record(path)[0]


def _first(record: SampleRecord, n: int) -> SampleRecord:
    """The first ``n`` samples of a record, with their labels and trajectory readings."""
    return replace(record, samples=record.samples[:n],
                   requested=None if record.requested is None else record.requested[:n],
                   readings=None if record.readings is None else record.readings[:, :n])


def generate_set(spec: SampleSet, checkpoint: Path, progress: bool = True) -> SampleRecord:
    """Generate the set that ``spec`` defines from ``checkpoint``."""
    from ddpm_core.checkpoint import load_checkpoint, read_metadata
    from ddpm_core.classifier import load_classifier
    from ddpm_core.ddim import ddim_timesteps
    from ddpm_core.evaluation import generate
    from ddpm_core.metrics import read_trajectory

    loaded = load_checkpoint(checkpoint, use_ema=spec.ema)
    capture = None
    if spec.judge_every_10:
        num_steps = loaded.schedule.num_steps  # T, then every 10th step down to 0, or the steps DDIM visits
        capture = list(range(num_steps, -1, -10)) if spec.sampler == "ddpm" else ddim_timesteps(num_steps,
                                                                                                  spec.steps) + [0]
    requested = spec.requested()
    generated = generate(loaded, spec.num_samples, seed=spec.seed, sampler=spec.sampler, steps=spec.steps,
                         eta=spec.eta, capture=capture, progress=progress, variance=spec.variance,
                         labels=requested, guidance=spec.guidance)
    metadata = read_metadata(checkpoint)
    trained = {"epoch": metadata.get("epoch"), "loss_history": metadata.get("loss_history")}
    record = SampleRecord(generated.samples, generated.seconds, generated.threads, requested, trained=trained)
    if generated.trajectory is not None:
        record.timesteps = generated.trajectory.timesteps
        record.readings = read_trajectory(generated.trajectory, load_classifier())
    return record


def to_uint8(images: Tensor) -> np.ndarray:
    """Images in [-1, 1] as 8-bit grey levels (clipped to [-1, 1] first)."""
    return ((images.detach().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def from_uint8(pixels: np.ndarray) -> Tensor:
    return torch.from_numpy(pixels.astype(np.float32)) / 127.5 - 1


def write_record(path: Path, record: SampleRecord, spec: SampleSet, checkpoint_sha256: str) -> None:
    """Store ``record`` in a compressed ``.npz`` file, with its definition and the checkpoint's hash."""
    meta = {"what": spec.what, "definition": spec.definition(), "checkpoint_sha256": checkpoint_sha256,
            "seconds": record.seconds, "threads": record.threads, "timesteps": record.timesteps,
            "trained": record.trained}
    arrays = {"samples": to_uint8(record.samples), "meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    if record.requested is not None:
        arrays["requested"] = record.requested.to(torch.uint8).numpy()
    if record.readings is not None:
        arrays["readings"] = record.readings.to(torch.uint8).numpy()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()), needed_bytes=buffer.tell())


def read_record(path: Path) -> tuple[SampleRecord, dict[str, Any]]:
    """The record stored at ``path`` and its metadata (definition, checkpoint hash)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(stored["meta"].tobytes().decode())
            record = SampleRecord(
                samples=from_uint8(stored["samples"]),
                seconds=float(meta["seconds"]),
                threads=int(meta["threads"]),
                requested=torch.from_numpy(stored["requested"]).long() if "requested" in stored else None,
                timesteps=meta["timesteps"],
                readings=torch.from_numpy(stored["readings"]).long() if "readings" in stored else None,
                trained=meta.get("trained", {}),
            )
    except (OSError, ValueError, KeyError) as error:
        raise DDPMError(f"{path} is not a readable sample set ({error}). Delete it, and the chapter generates "
                        f"it again, or restore it with `git checkout {path.name}` in book/samples.") from None
    return record, meta


def status(name: str) -> str:
    """Whether the set ``name`` is stored and made from today's checkpoint and definition."""
    spec, path = SAMPLE_SETS[name], STORE / f"{name}.npz"
    if not path.exists():
        return "missing"
    _, meta = read_record(path)
    checkpoint = REPO / spec.checkpoint
    if meta["definition"] != spec.definition():
        return "another definition"
    if checkpoint.exists() and meta["checkpoint_sha256"] != sha256_of(checkpoint):
        return "another checkpoint"
    return "stored"


def main(argv: list[str] | None = None) -> int:
    """``python -m ddpm_core.sample_sets``: list the sets and their state; with names (or ``all``), generate
    those that are missing or out of date (``--force``: every one named)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ddpm_core.sample_sets", description=main.__doc__)
    parser.add_argument("names", nargs="*", help="sets to generate, or 'all'")
    parser.add_argument("--force", action="store_true", help="generate even the sets that are up to date")
    args = parser.parse_args(argv)
    if not args.names:
        for name, spec in SAMPLE_SETS.items():
            print(f"{name:<22} {status(name):<18} {spec.what}")
        return 0
    names = list(SAMPLE_SETS) if args.names == ["all"] else args.names
    try:
        for name in names:
            sample_set(name)  # refuses an unknown name before anything is generated
        for name in names:
            if args.force or status(name) != "stored":
                spec = SAMPLE_SETS[name]
                print(f"{name}: {spec.what}", flush=True)
                record = generate_set(spec, REPO / spec.checkpoint)
                write_record(STORE / f"{name}.npz", record, spec, sha256_of(REPO / spec.checkpoint))
                print(f"  {len(record.samples)} samples in {record.seconds:.0f} s, stored in book/samples/{name}.npz",
                      flush=True)
    except DDPMError as error:
        print(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
