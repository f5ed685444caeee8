"""Measuring samples: the MNIST judge, the metrics, and the evaluation of a checkpoint.

    classifier    the MNIST judge (its weights ship in weights/)
    metrics       Frechet distance, confident share, class balance, nearest neighbours
    evaluation    sample from a checkpoint and score it

May import: ``ddpm_core.training``, ``ddpm_core.diffusion`` and ``ddpm_core.utils``.
"""
