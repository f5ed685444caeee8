"""ddpm_core: a denoising diffusion probabilistic model (Ho et al. 2020) for MNIST, from scratch.

The modules, one idea each:

    schedule    the noise schedule and the closed forms of the forward process
    unet        the noise-prediction network eps_theta(x_t, t)
    sampling    the reverse process: one ancestral step and the sampler (Algorithm 2)
    ddim        fast sampling with DDIM (Song, Meng and Ermon 2021)
    training    the simple loss, one training step and the loop (Algorithm 1)
    data        MNIST as tensors in [-1, 1]
    checkpoint  saving and loading models
    lock        one training run per output folder
    device      the compute device and the CPU's memory allocator
    errors      the exceptions the package raises, with their exit codes
    viz         image grids and the frames of a trajectory
    slider      timestep sliders over a trajectory (static HTML, or live widgets)
    book        helpers for the book's chapters: quick mode, source listings, Colab set-up
    classifier  the MNIST judge used to measure samples (its weights ship in weights/)
    metrics     Frechet distance, confidence, Inception Score, nearest neighbours
    evaluation  sample from a checkpoint and score it (python -m ddpm_core evaluate)
    export      eps_theta to ONNX, checked against PyTorch (python -m ddpm_core export)
    live        the placeholder of the book's in-browser generation panel (book/_static/live/)
    distributed data-parallel training under torchrun (DDP): ranks, noise shards, the process group
    cli         the command line, python -m ddpm_core (train, sample, evaluate, export)
"""

__version__ = "0.1.0"

from ddpm_core.checkpoint import LoadedModel, load_checkpoint, read_metadata
from ddpm_core.data import load_mnist
from ddpm_core.ddim import ddim_sample
from ddpm_core.errors import DDPMError
from ddpm_core.recipe import TrainConfig
from ddpm_core.sampling import sample
from ddpm_core.schedule import NoiseSchedule
from ddpm_core.seeds import Trajectory
from ddpm_core.training import TrainResult, train
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
