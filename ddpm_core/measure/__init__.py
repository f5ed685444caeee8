"""Measuring samples: the MNIST judge, the metrics, and the evaluation of a checkpoint.

    classifier        the MNIST judge (its weights ship in weights/)
    train_classifier  training the judge, and its command line
    metrics           Frechet distance, confident share, class balance, nearest neighbours
    tables            the metrics of several sets of samples as a plain-text table
    corruption        real images blurred or noised by a known amount, to calibrate the metrics
    evaluation        sample from a checkpoint and score it

May import: ``ddpm_core.training``, ``ddpm_core.diffusion`` and ``ddpm_core.utils``.
"""
