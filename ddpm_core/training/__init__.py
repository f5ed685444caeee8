"""The machinery that trains a network: the loop around Algorithm 1 and everything a real run needs.

    loop                 the training loop: epochs, the recipe's additions, checkpoints per epoch
    recipe               the training recipe (optimiser, warm-up, decay, clipping, EMA, loss weights) and its defaults
    run_seeds            the seeds a run derives from its one seed: data order and noise shards
    data                 MNIST as tensors in [-1, 1]
    checkpoint           saving and loading a run's weights files
    checkpoint_metadata  the JSON document that describes a weights file, written and checked
    legacy               what the fields a stored network config lacks meant
    safetensors_guard    the safetensors header, read and checked before any weight is mapped
    describe             files and folders in words, for the messages that refuse them
    finite_samples       the check that a model's samples are finite
    resume               the resume state: written each epoch, read, and restored
    resume_checks        what a resume state must hold: every entry's type, shape and range
    run_folder           the layout of a run's output folder
    lock                 one training run per output folder
    distributed          data-parallel training under torchrun
    rendezvous           how the processes of a parallel run meet before they train
    signals              how the processes of a torchrun launch end and report
    memory               the check that a training step fits in memory

May import: ``ddpm_core.diffusion`` and ``ddpm_core.utils``.
"""
