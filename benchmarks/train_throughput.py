"""Training throughput of the default UNet: images per second, FLOPs, and how close it gets to matmul speed.

One training step is what ``ddpm_core.training.loop.train`` does per batch: draw x_t by eq. (4) of Ho et
al. 2020, the eps-MSE loss of eq. (14), backward, and one Adam step (lr 2e-4). It runs on a fixed
pool of random batches already on the device, so data loading is not timed, and it skips the loss
read-out of the training loop, so a GPU is not synchronised after every step.

The table has one row per variant: memory format (NCHW or channels_last), precision (fp32 or bf16
autocast), the number of CPU threads and, on the CPU, whether freed memory is kept for reuse (as
``train`` does, see ``ddpm_core.utils.device.keep_freed_memory``) or returned to the kernel as glibc does
by default. The model's FLOPs per step are counted with
``torch.utils.flop_counter.FlopCounterMode`` (forward and backward; convolutions and matrix
products only, so GroupNorm, SiLU and the Adam update are not in the count), which turns images/s
into GFLOP/s; a square matrix product of the same dtype, timed in the same process, gives the
speed the hardware reaches on the easiest possible workload, and the last column is the fraction
of it that training achieves.

When ``diffusers`` is installed, a ``diffusers.UNet2DModel`` of about the same size (same
parameter count to within 5 %, same FLOPs to within 1 %) is trained with the same batch, loss and
optimiser, alternating with ours, and the ratio of their speeds is printed.

Run from the repository root (see benchmarks/README.md):

    python -m benchmarks.train_throughput --device auto
    python -m benchmarks.train_throughput --quick
    python -m benchmarks.train_throughput --ddp-only   # the data-parallel rows alone

On the CPU a last table times data-parallel training (``--processes``, default 2): that many Gloo
processes of one thread each, each training its part of the global batch with the gradients
all-reduced by ``DistributedDataParallel``, against one process with 1 thread and with all of them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks._common import DEVICE_HELP, batch_size, device_name, positive_int, print_table, thread_counts
from ddpm_core.diffusion.objective import per_sample_loss
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.unet import UNet, count_parameters
from ddpm_core.utils.arguments import bounded_int
from ddpm_core.utils.device import device_description, keep_freed_memory, resolve_device
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.scripts import run_script

LR = 2e-4  # as in TrainConfig
POOL = 4  # distinct random batches cycled through, so no step reuses the previous step's inputs
# Data-parallel rows: each Gloo process takes one thread and a share of the batch; 0 or 1 skips them.
process_count = bounded_int(0, 64, "a number of processes")

# A diffusers UNet2DModel close to ours: 337,641 parameters (ours: 324,705, +4.0 %) and 120.9 MFLOP
# per image forward (ours: 121.5). Like ours it has three resolutions (28, 14, 7), GroupNorm with
# 8 groups and no attention; unlike ours it downsamples with strided convolutions and has two
# residual blocks per resolution on the way up.
DIFFUSERS_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(24, 24, 40),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    add_attention=False,
)


@dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool
    bf16: bool
    threads: int
    keep_freed_memory: bool = True


class DiffusersEps(nn.Module):
    """Makes ``UNet2DModel`` answer ``model(x_t, t)`` with the noise estimate, like ours."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t, return_dict=False)[0]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainStep:
    """One optimiser step of eps-MSE training, callable repeatedly on a pool of random batches."""

    def __init__(
        self,
        model: nn.Module,
        schedule: NoiseSchedule,
        device: torch.device,
        batch_size: int,
        channels_last: bool = False,
        bf16: bool = False,
    ) -> None:
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, memory_format=memory_format).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR)
        self.schedule = schedule
        self.device = device
        self.bf16 = bf16
        generator = torch.Generator().manual_seed(0)
        self.batches = []
        for _ in range(POOL):
            x0 = torch.rand((batch_size, 1, 28, 28), generator=generator) * 2 - 1  # images in [-1, 1]
            t = torch.randint(1, schedule.num_steps + 1, (batch_size,), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            self.batches.append(
                (
                    x0.to(device).contiguous(memory_format=memory_format),
                    t.to(device),
                    noise.to(device).contiguous(memory_format=memory_format),
                )
            )
        self.calls = 0

    def __call__(self) -> None:
        x0, t, noise = self.batches[self.calls % POOL]
        self.calls += 1
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = per_sample_loss(self.model, self.schedule, x0, t, noise).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def seconds_per_call(fn: Callable[[], None], calls: int, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - started) / calls


def count_flops(model: nn.Module, schedule: NoiseSchedule, device: torch.device, batch_size: int) -> tuple[int, int]:
    """FLOPs of one training step's forward pass, and of forward + backward (convolutions and matrix products)."""
    x0 = torch.rand((batch_size, 1, 28, 28), device=device) * 2 - 1
    t = torch.randint(1, schedule.num_steps + 1, (batch_size,), device=device)
    noise = torch.randn_like(x0)
    with FlopCounterMode(display=False) as counter:
        loss = per_sample_loss(model, schedule, x0, t, noise).mean()
        forward = counter.get_total_flops()
        loss.backward()
    model.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def matmul_gflops(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...], repeats: int) -> float:
    """Best GFLOP/s of an n x n matrix product (2 n^3 FLOPs) over ``sizes`` and ``repeats`` tries."""
    # A GPU product takes tens of microseconds, so time 20 back to back, not one launch and one sync.
    calls = 20 if device.type == "cuda" else 1
    best = 0.0
    for n in sizes:
        a = torch.randn((n, n), device=device, dtype=dtype)
        b = torch.randn((n, n), device=device, dtype=dtype)
        a @ b  # warm-up: library initialisation and kernel selection
        for _ in range(repeats):
            best = max(best, 2 * n**3 / seconds_per_call(lambda a=a, b=b: a @ b, calls, device) / 1e9)
    return best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", type=device_name, default="auto", help=DEVICE_HELP)
    parser.add_argument("--steps", type=positive_int, default=20, help="timed training steps per variant and round")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed steps before timing each variant")
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds per variant; the best is reported")
    parser.add_argument("--batch-size", type=batch_size, default=128)
    parser.add_argument(
        "--threads",
        type=thread_counts,
        default=None,
        help="comma-separated CPU thread counts for the extra threads rows (default: 1 and the number of cores)",
    )
    parser.add_argument("--no-diffusers", action="store_true", help="skip the comparison with diffusers")
    parser.add_argument("--processes", type=process_count, default=2,
                        help="CPU only: also time data-parallel training in this many Gloo processes of one thread "
                             "each, the global batch split among them (default 2; 0: skip)")
    parser.add_argument("--ddp-only", action="store_true", help="time only the data-parallel rows and their baselines")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run to check that everything works: defaults become --steps 2 --warmup 1 --rounds 1 "
        "--batch-size 16 and small matrices",
    )
    args = parser.parse_args(argv)
    if args.quick:  # smaller defaults; flags given explicitly still win
        parser.set_defaults(steps=2, warmup=1, rounds=1, batch_size=16)
        args = parser.parse_args(argv)
    if args.processes > 1 and args.batch_size % args.processes:
        parser.error(f"--batch-size {args.batch_size} does not split over --processes {args.processes}; "
                     f"pass a batch size that is a multiple of it")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    default_threads = torch.get_num_threads()
    schedule = NoiseSchedule()
    matmul_sizes = (256, 512) if args.quick else (1024, 2048)
    matmul_repeats = 2 if args.quick else 5

    print(f"device: {device} ({device_description(device)})")
    print(f"torch {torch.__version__}, batch size {args.batch_size}, Adam lr {LR}, eps-MSE loss")
    print(f"timing: {args.warmup} warm-up steps, then the best of {args.rounds} rounds of {args.steps} steps\n")

    torch.manual_seed(0)
    forward_flops, flops = count_flops(UNet().to(device), schedule, device, args.batch_size)
    gflop_per_step = flops / 1e9
    print(
        f"our UNet: {count_parameters(UNet()):,} parameters, {gflop_per_step:.2f} GFLOP per training step "
        f"(forward + backward; forward alone {forward_flops / args.batch_size / 1e6:.1f} MFLOP per image)\n"
    )

    variants = [
        Variant("NCHW fp32", channels_last=False, bf16=False, threads=default_threads),
        Variant("channels_last fp32", channels_last=True, bf16=False, threads=default_threads),
        Variant("channels_last bf16 autocast", channels_last=True, bf16=True, threads=default_threads),
    ]
    if device.type == "cpu":
        # First: glibc's adaptive defaults cannot come back once keep_freed_memory has changed them.
        variants.insert(
            0,
            Variant(
                "channels_last fp32, glibc default allocation",
                channels_last=True,
                bf16=False,
                threads=default_threads,
                keep_freed_memory=False,
            ),
        )
        wanted = args.threads or (1, os.cpu_count() or 1)
        for threads in sorted(set(wanted) - {default_threads}):
            variants.append(Variant("channels_last fp32", channels_last=True, bf16=False, threads=threads))

    if args.ddp_only:
        variants = []
    peaks: dict[tuple[torch.dtype, int], float] = {}
    rows = []
    for variant in variants:
        torch.set_num_threads(variant.threads)
        keep_freed_memory(variant.keep_freed_memory)
        dtype = torch.bfloat16 if variant.bf16 else torch.float32
        if (dtype, variant.threads) not in peaks:
            peaks[(dtype, variant.threads)] = matmul_gflops(device, dtype, matmul_sizes, matmul_repeats)
        torch.manual_seed(0)
        step = TrainStep(UNet(), schedule, device, args.batch_size, variant.channels_last, variant.bf16)
        seconds_per_call(step, args.warmup, device)
        seconds = min(seconds_per_call(step, args.steps, device) for _ in range(args.rounds))
        achieved = gflop_per_step / seconds
        peak = peaks[(dtype, variant.threads)]
        rows.append(
            [
                variant.name,
                str(variant.threads) if device.type == "cpu" else "-",
                f"{seconds * 1e3:.1f}",
                f"{args.batch_size / seconds:.0f}",
                f"{achieved:.1f}",
                f"{peak:.1f}",
                f"{100 * achieved / peak:.1f}",
            ]
        )
    torch.set_num_threads(default_threads)
    keep_freed_memory(True)
    if rows:
        print_table(["variant", "threads", "ms/step", "images/s", "GFLOP/s", "matmul GFLOP/s", "% of matmul"], rows)
    if device.type == "cpu" and args.processes > 1:
        compare_data_parallel(schedule, args, default_threads)

    if args.no_diffusers or args.ddp_only:
        return
    try:
        from diffusers import UNet2DModel
    except ImportError:
        print("\ndiffusers is not installed: skipping the comparison (pip install -r benchmarks/requirements.txt).")
        return
    compare_with_diffusers(UNet2DModel, schedule, device, args, gflop_per_step)


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, results) -> None:
    """One Gloo process: its part of each global batch, gradients all-reduced by DDP; rank 0 reports."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    keep_freed_memory()
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        step = TrainStep(UNet(), NoiseSchedule(), torch.device("cpu"), args.batch_size // world, channels_last=True)
        step.model = nn.parallel.DistributedDataParallel(step.model)
        cpu = torch.device("cpu")
        seconds_per_call(step, args.warmup, cpu)
        best = float("inf")
        for _ in range(args.rounds):
            dist.barrier()
            best = min(best, seconds_per_call(step, args.steps, cpu))
        if rank == 0:
            results.put(best)
    finally:
        dist.destroy_process_group()


def compare_data_parallel(schedule: NoiseSchedule, args: argparse.Namespace, default_threads: int) -> None:
    """Data-parallel training in ``args.processes`` Gloo processes against one process, on this CPU."""
    import socket

    import torch.multiprocessing as mp

    world = args.processes  # parse_args made sure that it divides the batch
    cpu = torch.device("cpu")
    single = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        step = TrainStep(UNet(), schedule, cpu, args.batch_size, channels_last=True)
        seconds_per_call(step, args.warmup, cpu)
        single[threads] = min(seconds_per_call(step, args.steps, cpu) for _ in range(args.rounds))
    torch.set_num_threads(default_threads)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    workers = [context.Process(target=_ddp_worker, args=(rank, world, port, args, results)) for rank in range(world)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if any(worker.exitcode for worker in workers):
        raise DDPMError(f"a data-parallel worker failed (exit codes {[w.exitcode for w in workers]}).")
    ddp = results.get()
    rows = [[f"1 process, {n} thread{'s' if n > 1 else ''}", f"{single[n] * 1e3:.1f}",
             f"{args.batch_size / single[n]:.0f}"] for n in sorted(single)]
    rows.append([f"{world} Gloo processes (DDP), 1 thread each", f"{ddp * 1e3:.1f}", f"{args.batch_size / ddp:.0f}"])
    print(f"\ndata-parallel training, channels_last fp32, global batch {args.batch_size} "
          f"({args.batch_size // world} per process):")
    print_table(["variant", "ms/step", "images/s"], rows)
    print(f"scaling efficiency of {world} processes: {single[default_threads] / ddp:.2f} of one process with "
          f"{default_threads} threads, {single[1] / (world * ddp):.2f} of {world} x one process with 1 thread")


def compare_with_diffusers(
    unet2d_class: type, schedule: NoiseSchedule, device: torch.device, args: argparse.Namespace, gflop_ours: float
) -> None:
    """Train ours and a diffusers UNet2DModel of the same size in alternating rounds and compare."""
    torch.manual_seed(0)
    theirs_model = DiffusersEps(unet2d_class(**DIFFUSERS_CONFIG))
    gflop_theirs = count_flops(theirs_model.to(device), schedule, device, args.batch_size)[1] / 1e9
    torch.manual_seed(0)
    ours = TrainStep(UNet(), schedule, device, args.batch_size, channels_last=True)
    theirs = TrainStep(theirs_model, schedule, device, args.batch_size, channels_last=True)
    seconds_per_call(ours, args.warmup, device)
    seconds_per_call(theirs, args.warmup, device)
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for _ in range(args.rounds):  # alternating, so a change in machine load hits both alike
        times["ours"].append(seconds_per_call(ours, args.steps, device))
        times["theirs"].append(seconds_per_call(theirs, args.steps, device))
    ratios = [o / t for o, t in zip(times["ours"], times["theirs"], strict=True)]

    print(
        f"\ncomparison with diffusers.UNet2DModel {DIFFUSERS_CONFIG['block_out_channels']}, channels_last fp32, "
        f"{args.rounds} alternating rounds of {args.steps} steps (best round shown)"
    )
    rows = []
    for name, model, gflop, key in (
        ("ours: ddpm_core UNet", ours.model, gflop_ours, "ours"),
        ("diffusers UNet2DModel", theirs_model, gflop_theirs, "theirs"),
    ):
        seconds = min(times[key])
        rows.append(
            [
                name,
                f"{count_parameters(model):,}",
                f"{gflop:.2f}",
                f"{seconds * 1e3:.1f}",
                f"{args.batch_size / seconds:.0f}",
                f"{gflop / seconds:.1f}",
            ]
        )
    print_table(["model", "parameters", "GFLOP/step", "ms/step", "images/s", "GFLOP/s"], rows)
    print(
        f"speed of theirs relative to ours (images/s, theirs / ours): median over rounds "
        f"{statistics.median(ratios):.2f}, best rounds {min(times['ours']) / min(times['theirs']):.2f}"
    )


if __name__ == "__main__":
    raise SystemExit(run_script(main))
