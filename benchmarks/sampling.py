"""Sampling speed: our ancestral sampler against diffusers' DDPMScheduler and against bare network calls, and DDIM.

Rows of the table, all on the same model, batch and device:

    bare network calls   T calls of model(x, t) on one fixed batch, no sampler at all: the floor
    ours, DDPM-T         ddpm_core.diffusion.sampling.sample, T steps (Ho et al. 2020, Algorithm 2)
    ... glibc default    the same with glibc's default allocation, which page-faults on every large
                         tensor (CPU only; see ddpm_core.utils.device.keep_freed_memory, on in every other row).
                         It runs before the others, since glibc's adaptive defaults cannot be restored.
    diffusers, DDPM-T    the same model stepped by diffusers.DDPMScheduler (linear betas 1e-4..0.02)
    ours, DDIM-S         ddpm_core.diffusion.ddim.ddim_sample, S steps, eta = 0 (Song et al. 2021)

The variances are matched: our ``variance="posterior"`` (sigma_t^2 = beta_tilde_t, Ho et al. 2020,
eq. (7)) is diffusers' ``variance_type="fixed_small"``, and our ``"beta"`` is its ``"fixed_large"``.
diffusers is given one CPU generator per sample, seeded as ours, so both samplers draw the same
x_T and the same z and should give the same images up to rounding; the largest difference is
printed as a check that the comparison is like for like. diffusers counts timesteps from 0, so its
timestep k is our t = k + 1.

Timing does not depend on the weights, so without ``--checkpoint`` an untrained model is used.

Run from the repository root (see benchmarks/README.md):

    python -m benchmarks.sampling --device auto
    python -m benchmarks.sampling --quick
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor

from benchmarks._common import DEVICE_HELP, device_name, positive_int, print_table, sample_count, schedule_steps
from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import UNet
from ddpm_core.training.checkpoint import load_checkpoint
from ddpm_core.utils.arguments import file_path
from ddpm_core.utils.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script

DIFFUSERS_VARIANCE = {"posterior": "fixed_small", "beta": "fixed_large"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Tensor | None], device: torch.device) -> tuple[float, Tensor | None]:
    """Wall-clock seconds of ``fn()`` (waiting for the GPU to finish), and its result."""
    synchronize(device)
    started = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - started, result


@torch.no_grad()
def bare_calls(model: UNet, x: Tensor, t_batches: list[Tensor]) -> None:
    for t_batch in t_batches:
        model(x, t_batch)


@torch.no_grad()
def diffusers_sample(model: UNet, scheduler, seeds: list[int]) -> Tensor:
    """The DDPM loop of diffusers' pipelines, with our model and one generator per sample."""
    from diffusers.utils.torch_utils import randn_tensor

    device = next(model.parameters()).device
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    x = randn_tensor((len(seeds), model.config.image_channels, 28, 28), generator=generators, device=device)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    for k in scheduler.timesteps:
        t_batch = torch.full((len(seeds),), int(k) + 1, device=device, dtype=torch.long)  # their k is our t - 1
        eps_pred = model(x, t_batch)
        x = scheduler.step(eps_pred, k, x, generator=generators).prev_sample
    return x.cpu()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sampling", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint", type=file_path, default=None, help="a model.safetensors or training folder (default: untrained)"
    )
    parser.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    parser.add_argument("--num-samples", type=sample_count, default=32, help="batch of samples generated together")
    parser.add_argument(
        "--steps", type=schedule_steps, default=None,
        help="T of the DDPM samplers (default: 1000, or the checkpoint's T)",
    )
    parser.add_argument("--ddim-steps", type=schedule_steps, default=50, help="S of the DDIM sampler")
    parser.add_argument("--variance", choices=sorted(DIFFUSERS_VARIANCE), default="posterior")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="interleaved rounds of all samplers; each one's fastest run is reported",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--no-diffusers", action="store_true", help="skip the diffusers row")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run to check that everything works: defaults become --num-samples 4 --ddim-steps 5 "
        "and, without a checkpoint, --steps 20",
    )
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        parser.set_defaults(num_samples=4, ddim_steps=5, **({} if args.checkpoint else {"steps": 20}))
        args = parser.parse_args(argv)
    return args


def model_and_schedule(args: argparse.Namespace, device: torch.device) -> tuple[UNet, NoiseSchedule, str]:
    """The model to time, its schedule and a description of its weights, after checking the step counts."""
    if args.checkpoint:
        loaded = load_checkpoint(args.checkpoint, device=device)
        model, schedule = loaded.model, loaded.schedule
        if args.steps is not None and args.steps != schedule.num_steps:
            raise DDPMError(
                f"--steps {args.steps} differs from the checkpoint's T={schedule.num_steps}; a model samples "
                f"with the schedule it was trained with. Drop --steps, or omit --checkpoint to time an untrained model."
            )
        weights = str(loaded.path)
    else:
        torch.manual_seed(0)
        model = UNet().to(device).eval()
        schedule = NoiseSchedule(num_steps=args.steps or 1000)
        weights = "untrained (timing does not depend on the weights)"
    if args.ddim_steps > schedule.num_steps:
        raise DDPMError(f"--ddim-steps {args.ddim_steps} is more than the schedule's T={schedule.num_steps}: DDIM "
                        f"visits at most every timestep once. Pass --ddim-steps {schedule.num_steps} or fewer.")
    return model, schedule, weights


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, schedule, weights = model_and_schedule(args, device)
    T = schedule.num_steps
    seeds = list(range(args.num_samples))

    print(f"device: {device} ({device_description(device)})")
    print(f"torch {torch.__version__}, model: {weights}")
    print(
        f"{args.num_samples} samples in one batch, T={T}, variance {args.variance!r} "
        f"(diffusers: {DIFFUSERS_VARIANCE[args.variance]!r}), fastest of {args.repeats} run(s)\n"
    )

    x = torch.randn((args.num_samples, model.config.image_channels, 28, 28), device=device)
    t_batches = [torch.full((args.num_samples,), t, device=device, dtype=torch.long) for t in range(T, 0, -1)]
    bare_calls(model, x, t_batches[: min(T, 10)])  # warm-up: library initialisation and kernel selection

    bare, ours, default_alloc, theirs, ddim = (
        f"bare network calls x {T}",
        f"ours, DDPM-{T} (sample)",
        f"ours, DDPM-{T}, glibc default allocation",
        f"diffusers, DDPM-{T} (DDPMScheduler)",
        f"ours, DDIM-{args.ddim_steps} (eta=0)",
    )

    def ours_ddpm() -> Tensor:
        return sample(model, schedule, seeds=seeds, variance=args.variance, progress=False)[0]

    runs: dict[str, tuple[int, Callable[[], Tensor | None]]] = {
        bare: (T, lambda: bare_calls(model, x, t_batches)),
        ours: (T, ours_ddpm),
    }
    if device.type == "cpu":
        runs[default_alloc] = (T, ours_ddpm)
    note = None
    if not args.no_diffusers:
        try:
            from diffusers import DDPMScheduler
        except ImportError:
            note = "diffusers is not installed: no diffusers row (pip install -r benchmarks/requirements.txt)."
        else:
            scheduler = DDPMScheduler(
                num_train_timesteps=T,
                beta_start=schedule.beta_start,
                beta_end=schedule.beta_end,
                beta_schedule="linear",
                variance_type=DIFFUSERS_VARIANCE[args.variance],
                clip_sample=False,  # ours does not clip x0_pred either
            )
            runs[theirs] = (T, lambda: diffusers_sample(model, scheduler, seeds))
    runs[ddim] = (
        args.ddim_steps,
        lambda: ddim_sample(model, schedule, seeds=seeds, steps=args.ddim_steps, eta=0.0, progress=False)[0],
    )

    best = dict.fromkeys(runs, float("inf"))
    results: dict[str, Tensor | None] = {}
    if default_alloc in runs:
        # glibc's adaptive defaults cannot come back once changed, so this row runs first, before any other.
        keep_freed_memory(False)
        for _ in range(args.repeats):
            best[default_alloc] = min(best[default_alloc], timed(ours_ddpm, device)[0])
    keep_freed_memory(True)
    # Interleaved rounds, so a change in machine load hits every sampler alike; the fastest round counts.
    for _ in range(args.repeats):
        for name, (_, fn) in runs.items():
            if name != default_alloc:
                seconds, results[name] = timed(fn, device)
                best[name] = min(best[name], seconds)

    bare_per_call = best[bare] / T
    rows = []
    for name, (calls, _) in runs.items():
        per_call = best[name] / calls
        overhead = 100 * (per_call / bare_per_call - 1)
        rows.append([name, str(calls), f"{best[name]:.2f}", f"{per_call * 1e3:.2f}", f"{overhead:+.1f}"])
    if theirs in results:
        difference = (results[ours] - results[theirs]).abs()
        note = (
            f"same seeds, same noise: largest |ours - diffusers| over the {args.num_samples} samples = "
            f"{difference.max().item():.2e}"
        )
    print_table(["sampler", "network calls", "seconds", "ms/call", "overhead per call vs bare %"], rows)
    if note:
        print(f"\n{note}")
    speed_up = best[ours] / best[ddim]
    print(f"DDIM-{args.ddim_steps} speed-up over ours, DDPM-{T}: {speed_up:.1f}x")
    if default_alloc in best:
        print(f"keeping freed memory: {best[default_alloc] / best[ours]:.2f}x faster than glibc's default allocation")


if __name__ == "__main__":
    raise SystemExit(run_script(main))
