"""The package's samplers by name, each with its own options and their defaults, and one ``generate``.

    ddpm   the ancestral sampler, all T steps: Ho et al. 2020, Algorithm 2 (``sampling.sample``)
    ddim   DDIM on a subsequence of the T steps: Song, Meng and Ermon 2021 (``ddim.ddim_sample``)
    dpm    DPM-Solver++(2M), second order: Lu et al. 2022 (``dpm_solver.dpm_solver_sample``)

Every sampler takes the same seeds (``num_samples`` and ``seed``, or ``seeds``), ``labels`` and
``guidance``, ``capture``, ``progress``, ``batch_size`` and ``image_shape``, and returns the
samples x_0 and the captured ``Trajectory``. The options only some samplers take (the variance of
the ancestral step, DDIM's eta, the number of steps) are listed in ``SAMPLERS`` with their
defaults, once: the command line, the evaluation and the book's sample sets all run a sampler
through ``generate``. DDIM's default is eta = 1, which chapter 8 measures as the better choice
from 20 to 100 steps; eta = 0 is the deterministic sampler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.dpm_solver import dpm_solver_sample
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import NoisePredictor, Trajectory
from ddpm_core.utils.errors import DDPMError


@dataclass(frozen=True)
class Sampler:
    """One sampler: the function that runs it, the options that not every sampler takes, and its names."""

    name: str
    run: Callable[..., tuple[Tensor, Trajectory | None]]
    defaults: Mapping[str, Any]  # its own options, each with the value it takes when not given
    called: str  # its name in a sentence, as in "the DDIM sampler"
    description: str  # one line, for help texts
    title: str  # how a table names a run, filled from the options and the schedule's T ("num_steps")

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults, replaced by the options ``given`` (an option given as None takes its default)."""
        return {**self.defaults, **{key: value for key, value in given.items() if value is not None}}

    def label(self, num_steps: int, **options: Any) -> str:
        """The run's name in a table, such as "DDIM-50 eta=1", for a schedule of ``num_steps`` steps."""
        return self.title.format(num_steps=num_steps, **self.options(options))


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler("ddpm", sample, {"variance": "beta", "noise_scale": 1.0}, "DDPM",
                    "DDPM, all T steps of Algorithm 2 (Ho et al. 2020)", "DDPM-{num_steps}"),
    "ddim": Sampler("ddim", ddim_sample, {"steps": 50, "eta": 1.0, "timesteps": None}, "DDIM",
                    "DDIM on a subsequence of the T steps (Song et al. 2021)", "DDIM-{steps} eta={eta:g}"),
    "dpm": Sampler("dpm", dpm_solver_sample, {"steps": 50, "timesteps": None}, "DPM-Solver++",
                   "DPM-Solver++(2M), second order, deterministic given x_T (Lu et al. 2022)",
                   "DPM-Solver++ {steps}"),
}
DEFAULT_SAMPLER = "ddpm"


def sampler_named(name: str) -> Sampler:
    """The sampler called ``name``."""
    if name not in SAMPLERS:
        raise DDPMError(f"sampler must be one of {', '.join(SAMPLERS)}, got {name!r}.")
    return SAMPLERS[name]


def samplers_taking(option: str) -> list[Sampler]:
    """The samplers that take ``option``, such as "eta"; empty for an option every sampler takes."""
    return [sampler for sampler in SAMPLERS.values() if option in sampler.defaults]


def foreign_options(name: str, given: Mapping[str, Any]) -> list[str]:
    """The options in ``given`` (those not None) that belong to other samplers than ``name``."""
    own = sampler_named(name).defaults
    return [key for key, value in given.items() if value is not None and samplers_taking(key) and key not in own]


def check_options(name: str, options: Mapping[str, Any]) -> Sampler:
    """The sampler called ``name``, after refusing the options in ``options`` that belong to other samplers."""
    chosen = sampler_named(name)
    foreign = foreign_options(name, options)
    if foreign:
        owners = "; ".join(f"{key}= is an option of {' and '.join(s.name for s in samplers_taking(key))}"
                           for key in foreign)
        raise DDPMError(f"The {name} sampler ({chosen.description}) does not take {' or '.join(foreign)}: "
                        f"{owners}. Drop {' and '.join(foreign)}, or choose a sampler that takes them.")
    return chosen


def generate(
    model: NoisePredictor,
    schedule: NoiseSchedule,
    sampler: str = DEFAULT_SAMPLER,
    num_samples: int | None = None,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    **options: Any,
) -> tuple[Tensor, Trajectory | None]:
    """Run the sampler called ``sampler``: sample i starts from seed ``seed + i`` (or ``seeds[i]``).

    ``options`` are the sampler's own (``SAMPLERS[sampler].defaults``; one not given, or given as
    None, takes its default) and those every sampler takes (``labels``, ``guidance``, ``capture``,
    ``progress``, ...). An option of another sampler is refused. Returns the samples x_0,
    (N, C, H, W), unclipped, and the ``Trajectory`` of the captured timesteps (or None).
    """
    chosen = check_options(sampler, options)
    specific = {key: options.pop(key) for key in list(options) if samplers_taking(key)}
    own = chosen.options({key: value for key, value in specific.items() if key in chosen.defaults})
    return chosen.run(model, schedule, num_samples=num_samples, seed=seed, seeds=seeds, **own, **options)
