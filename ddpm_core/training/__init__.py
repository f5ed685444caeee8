"""The machinery that trains a network: the loop around Algorithm 1 and everything a real run needs.

    loop          the training loop: epochs, the recipe's additions, checkpoints per epoch
    recipe        the training recipe (optimiser, warm-up, decay, clipping, EMA, loss weights) and its defaults
    data          MNIST as tensors in [-1, 1]
    checkpoint    saving and loading models and the resume state
    run_folder    the layout of a run's output folder
    lock          one training run per output folder
    distributed   data-parallel training under torchrun
    memory        the check that a training step fits in memory

May import: ``ddpm_core.diffusion`` and ``ddpm_core.utils``.
"""
