"""ddpm_core: a denoising diffusion probabilistic model (Ho et al. 2020) for MNIST, from scratch.

The package is five layers, one folder each, every layer importing only the ones below it
(``make layers`` checks the order):

    book/  app/   the book's helpers (listings, grids, sliders, sample sets, the bug gallery)
                  and the command line (python -m ddpm_core train | sample | evaluate | export)
    measure/      the MNIST judge, the metrics, and the evaluation of a checkpoint
    training/     the training loop, its recipe, MNIST, checkpoints and run folders, torchrun
    diffusion/    the maths: the noise schedule, the UNet, the objective and the samplers
    utils/        errors, atomic files, the device, progress bars

A reader who wants the idea reads ``diffusion/``; the names below are the ones a user needs.
"""

from ddpm_core.diffusion.ddim import ddim_sample
from ddpm_core.diffusion.sampling import sample
from ddpm_core.diffusion.schedule import NoiseSchedule
from ddpm_core.diffusion.seeds import Trajectory
from ddpm_core.diffusion.unet import UNet, UNetConfig, count_parameters
from ddpm_core.training.checkpoint import LoadedModel, load_checkpoint, read_metadata
from ddpm_core.training.data import load_mnist
from ddpm_core.training.loop import TrainResult, train
from ddpm_core.training.recipe import TrainConfig
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import VERSION as __version__  # noqa: F401

__all__ = [
    "DDPMError",
    "LoadedModel",
    "NoiseSchedule",
    "TrainConfig",
    "TrainResult",
    "Trajectory",
    "UNet",
    "UNetConfig",
    "count_parameters",
    "ddim_sample",
    "load_checkpoint",
    "load_mnist",
    "read_metadata",
    "sample",
    "train",
]
