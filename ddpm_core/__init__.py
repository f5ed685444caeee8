"""ddpm_core: a denoising diffusion probabilistic model (Ho et al. 2020) for MNIST, from scratch.

The modules, one idea each:

    schedule    the noise schedule and the closed forms of the forward process
    unet        the noise-prediction network eps_theta(x_t, t)
    sampling    the reverse process: ancestral sampling (Algorithm 2)
    ddim        fast sampling with DDIM (Song, Meng and Ermon 2021)
    training    the simple loss and the training loop (Algorithm 1)
    data        MNIST as tensors in [-1, 1]
    checkpoint  saving and loading models
    viz         grids, trajectories and timestep sliders for the book
    classifier  the MNIST judge used to measure samples
    metrics     Frechet distance, confidence, Inception Score, nearest neighbours
    evaluation  sample from a checkpoint and score it (python -m ddpm_core evaluate)
"""

__version__ = "0.1.0"

from ddpm_core.checkpoint import LoadedModel, load_checkpoint, read_metadata
from ddpm_core.data import load_mnist
from ddpm_core.ddim import ddim_sample
from ddpm_core.errors import DDPMError
from ddpm_core.sampling import Trajectory, sample
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.training import TrainConfig, TrainResult, train
from ddpm_core.unet import UNet, UNetConfig, count_parameters

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
