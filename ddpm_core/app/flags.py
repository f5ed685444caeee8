"""The flags that several commands share: the checkpoint, the device, the progress bar and the sampler.

The sampler flags are read from the registry of ``ddpm_core.diffusion.samplers``: ``--sampler``
lists its samplers, and each sampler option (``--steps``, ``--eta``, ``--variance``,
``--noise-scale``) shows the default of the samplers that take it. A flag left out takes that
default; a flag that the chosen sampler does not take is refused before any work starts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ddpm_core.diffusion.samplers import DEFAULT_SAMPLER, SAMPLERS, foreign_options, samplers_taking
from ddpm_core.diffusion.sampling import VARIANCES
from ddpm_core.utils import arguments
from ddpm_core.utils.errors import DDPMError

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps (default auto)"

# The flag of each sampler option, how argparse reads it, and what it sets.
SAMPLER_FLAGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "steps": ("--steps", {"type": arguments.positive_int}, "network evaluations, 1..T"),
    "eta": ("--eta", {"type": arguments.unit_interval}, "stochasticity, 0 (deterministic) to 1"),
    "variance": ("--variance", {"choices": VARIANCES}, "sigma_t^2, beta_t or the posterior variance"),
    "noise_scale": ("--noise-scale", {"type": arguments.noise_scale},
                    f"scale of the fresh noise, 0..{arguments.MAX_NOISE_SCALE:g}"),
}


def add_checkpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, required=True, help="model.safetensors or a training folder")


def add_device_and_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=arguments.device_name, default="auto", help=DEVICE_HELP)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def add_sampler(parser: argparse.ArgumentParser, options: tuple[str, ...]) -> None:
    """``--sampler`` and a flag for each of the sampler ``options``, with the registry's defaults as help."""
    listed = "; ".join(f"{name}: {sampler.description}" for name, sampler in SAMPLERS.items())
    parser.add_argument("--sampler", choices=tuple(SAMPLERS), default=DEFAULT_SAMPLER,
                        help=f"{listed} (default {DEFAULT_SAMPLER})")
    for option in options:
        flag, reading, what = SAMPLER_FLAGS[option]
        takers = samplers_taking(option)
        defaults = [_shown(sampler.defaults[option]) for sampler in takers]
        shown = defaults[0] if len(set(defaults)) == 1 else ", ".join(
            f"{sampler.name} {default}" for sampler, default in zip(takers, defaults, strict=True))
        parser.add_argument(flag, default=None, **reading,
                            help=f"{' and '.join(s.name for s in takers)} only: {what} (default {shown})")


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sampler_options(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler options that the flags give (a flag left out is absent: the sampler's default), after
    refusing the flags that the chosen ``--sampler`` does not take."""
    given = {option: getattr(args, option) for option in SAMPLER_FLAGS
             if getattr(args, option, None) is not None}
    foreign = foreign_options(args.sampler, given)
    if foreign:
        raise DDPMError(_foreign_message(args.sampler, foreign))
    return given


def _foreign_message(name: str, foreign: list[str]) -> str:
    """Which samplers take the ``foreign`` options, in the command line's words, and what to do instead."""
    flags = [SAMPLER_FLAGS[option][0] for option in foreign]
    clauses = []
    for option, flag in zip(foreign, flags, strict=True):
        takers = samplers_taking(option)
        clauses.append(f"{flag} applies only to " + " and to ".join(f"the {s.called} sampler" for s in takers)
                       + f" (--sampler {' or '.join(s.name for s in takers)})")
    dropped = " and ".join(flags)
    suggested = [s.name for s in SAMPLERS.values() if all(option in s.defaults for option in foreign)]
    remedy = f"Add --sampler {suggested[0]}, or drop {dropped}." if suggested else f"Drop {dropped}."
    return f"{'; '.join(clauses)}, but --sampler is {name}: {SAMPLERS[name].description}. {remedy}"
