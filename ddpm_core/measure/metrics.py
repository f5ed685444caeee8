"""Measuring generated digits with the MNIST classifier of ``classifier.py`` as the judge.

    frechet_distance     the Frechet distance between real and generated features (Heusel et al. 2017),
                         with the classifier's 128-d penultimate layer in place of Inception-v3
    classifier_scores    confident fraction, class histogram and the Inception Score (Salimans et al. 2016)
    nearest_neighbours   pixel-space nearest training images, to look for memorisation
    read_trajectory      the digit the classifier reads in each predicted x_0 of a sampling trajectory
    lock_in_timesteps    at which timestep of the reverse process a sample's digit is decided
                         (lock_in_from_readings: the same from stored readings)
    conditional_scores   for samples asked to be given digits: how often they are, how good, how varied
    inception_score      the Inception Score of a set of class probabilities (used by classifier_scores)
    mean_pairwise_distance  the mean distance between features, how varied a set of samples is
    random_subset        a seeded random subset of real images, the reference set of every comparison
    evaluate_samples     all of the above for one set of samples

``ddpm_core.measure.tables`` prints the results as a table; ``ddpm_core.measure.corruption`` damages
real images by a known amount, to calibrate the numbers.

The Frechet distance here lives in the classifier's feature space, so its
values are comparable with each other (same classifier, same sample count) but
not with the Inception FIDs that papers report. Like FID it is biased upwards
at small sample counts (Chong & Forsyth 2020): compare only numbers measured
on equally many images.

Images are (N, 1, 28, 28) floats in [-1, 1] throughout, the data range of ``data.py``.

MNIST's test set is ordered: its first 5,000 digits are cleaner and easier
than its last 5,000 (LeCun et al., the MNIST database page), and the two halves
are measurably apart in feature space, so a reference set must be a random
subset of the test set, never its first N images.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ddpm_core.diffusion.seeds import Trajectory
from ddpm_core.measure.classifier import NUM_CLASSES, MNISTClassifier, predict_features, predict_logits
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.extras import require


def check_images(images: Tensor, name: str, minimum: int = 1) -> None:
    """Refuse anything but a batch of at least ``minimum`` MNIST-shaped images, (N, 1, 28, 28)."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise DDPMError(f"{name} must have shape (N, 1, 28, 28), got {tuple(images.shape)}.")
    if len(images) < minimum:
        raise DDPMError(f"{name} must hold at least {minimum} images, got {len(images)}.")


class ClassifierFeatures(nn.Module):
    """The classifier's penultimate layer as a torchmetrics feature extractor: (B, 1, 28, 28) -> (B, 128)."""

    def __init__(self, classifier: MNISTClassifier) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        # torchmetrics reads the feature width from this attribute instead of probing with a dummy image.
        self.num_features = classifier.num_features

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.classifier.features(x.to(next(self.classifier.parameters()).device)).cpu()


def frechet_distance(
    real_images: Tensor, fake_images: Tensor, classifier: MNISTClassifier, batch_size: int = 1000
) -> float:
    """The Frechet distance between Gaussians fitted to the classifier features of two image sets.

    d^2 = ||mu_r - mu_f||^2 + Tr(Sigma_r + Sigma_f - 2 (Sigma_r Sigma_f)^(1/2)), the closed form of
    Dowson & Landau 1982 used by FID (Heusel et al. 2017). torchmetrics' ``FrechetInceptionDistance``
    computes it with ``classifier.features`` as its custom feature extractor; it accumulates the
    statistics in float64 and takes the trace of the square root from the eigenvalues of
    Sigma_r Sigma_f, so no hand-written matrix square root is needed.

    Args:
        real_images, fake_images: (N, 1, 28, 28) in [-1, 1], at least 2 images each.
        classifier: the judge, e.g. ``load_classifier()``.
        batch_size: images per forward pass.
    """
    require(("torchmetrics.image.fid",), "frechet_distance")
    from torchmetrics.image.fid import FrechetInceptionDistance
    check_images(real_images, "real_images", minimum=2)
    check_images(fake_images, "fake_images", minimum=2)
    # normalize only affects torchmetrics' own Inception network; a custom extractor gets the images as given.
    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=True)
    for images, real in ((real_images, True), (fake_images, False)):
        for start in range(0, len(images), batch_size):
            metric.update(images[start : start + batch_size], real=real)
    return float(metric.compute())


def inception_score(probabilities: Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with p(y) the mean of p(y|x) over the set (Salimans et al. 2016, sec. 4).

    It lies between 1 (every image gets the same class distribution) and the number of classes
    (confident predictions spread evenly over all classes).
    """
    p_y = probabilities.mean(dim=0, keepdim=True)
    kl = (torch.xlogy(probabilities, probabilities) - torch.xlogy(probabilities, p_y)).sum(dim=1)
    return math.exp(kl.mean().item())


def classifier_scores(
    images: Tensor, classifier: MNISTClassifier, confidence: float = 0.9, batch_size: int = 1000
) -> dict[str, Any]:
    """What the classifier makes of a set of images.

    Returns a dict with
        num_images          N
        labels              (N,) predicted digits
        confident_fraction  share of images whose top class probability is >= ``confidence``
        class_counts        list of 10 counts, how many images were predicted as each digit
        class_ratio         most / least frequent digit (inf if a digit never appears); 1.0 is perfectly even
        inception_score     see ``inception_score``; at most 10
    """
    check_images(images, "images")
    probabilities = predict_logits(classifier, images, batch_size).double().softmax(dim=1)
    top, labels = probabilities.max(dim=1)
    counts = torch.bincount(labels, minlength=NUM_CLASSES)
    least = counts.min().item()
    return {
        "num_images": len(images),
        "labels": labels,
        "confident_fraction": (top >= confidence).double().mean().item(),
        "class_counts": counts.tolist(),
        "class_ratio": counts.max().item() / least if least > 0 else math.inf,
        "inception_score": inception_score(probabilities),
    }


@torch.no_grad()
def nearest_neighbours(queries: Tensor, reference: Tensor, batch_size: int = 250) -> tuple[Tensor, Tensor]:
    """The pixel-space L2 distance from each query to its nearest reference image, and that image's index.

    Distances are measured on the [-1, 1] scale of the data (divide by 2 for the [0, 1] scale); two
    MNIST images differ by at most sqrt(784) * 2 = 56. ``torch.cdist`` finds the neighbour with a
    matrix product (fast, but off by about 1e-3 for near-identical images), and the distance to the
    neighbour it found is then recomputed directly, so an image in ``reference`` is at distance 0.

    Args:
        queries: (N, 1, 28, 28), e.g. generated samples.
        reference: (M, 1, 28, 28), e.g. the 60,000 training images.
        batch_size: queries compared at once; memory grows as batch_size * M.

    Returns:
        distances (N,) and indices (N,) into ``reference``.
    """
    check_images(queries, "queries")
    check_images(reference, "reference")
    reference_flat = reference.flatten(1).float()
    distances, indices = [], []
    for start in range(0, len(queries), batch_size):
        query_flat = queries[start : start + batch_size].flatten(1).float()
        index = torch.cdist(query_flat, reference_flat).argmin(dim=1)
        distances.append((query_flat - reference_flat[index]).norm(dim=1))
        indices.append(index)
    return torch.cat(distances), torch.cat(indices)


def read_trajectory(trajectory: Trajectory, classifier: MNISTClassifier) -> Tensor:
    """The digit the classifier reads in every predicted clean image x0_pred of a trajectory: (K, N), one row
    per captured timestep (largest first, as ``trajectory.timesteps``)."""
    x0_pred = trajectory.x0_pred
    if x0_pred.dim() != 5 or len(x0_pred) != len(trajectory.timesteps):
        raise DDPMError(
            f"trajectory.x0_pred must have shape (K, N, 1, 28, 28) with K = {len(trajectory.timesteps)} "
            f"captured timesteps, got {tuple(x0_pred.shape)}."
        )
    num_steps, num_samples = x0_pred.shape[:2]
    return predict_logits(classifier, x0_pred.flatten(0, 1)).argmax(dim=1).view(num_steps, num_samples)


def lock_in_from_readings(timesteps: list[int], readings: Tensor) -> tuple[Tensor, Tensor]:
    """When does the reverse process decide which digit a sample becomes?

    ``readings[k, n]`` is the digit read in sample n's predicted clean image at ``timesteps[k]``
    (largest first; see ``read_trajectory``). The final label is the one at the smallest captured
    timestep (t = 0 if captured: the finished sample).

    Returns:
        agreement (K,): for each captured timestep, the fraction of samples whose label there already
            equals their final label.
        lock_in_t (N,): for each sample, the largest captured t from which on, all the way down, its
            label equals the final label. Its resolution is that of the captured timesteps.
    """
    if readings.dim() != 2 or len(readings) != len(timesteps):
        raise DDPMError(f"readings must have shape (K, N) with K = {len(timesteps)} captured timesteps, "
                        f"got {tuple(readings.shape)}.")
    agrees = readings == readings[-1]
    agreement = agrees.double().mean(dim=1)
    # stable[k, n]: sample n agrees with its final label at step k and at every later (smaller-t) step.
    stable = agrees.flip(0).long().cumprod(dim=0).flip(0).bool()
    first_stable = stable.long().argmax(dim=0)  # the first True; stable[-1] is always True
    lock_in_t = torch.tensor(list(timesteps), dtype=torch.long)[first_stable]
    return agreement, lock_in_t


def lock_in_timesteps(trajectory: Trajectory, classifier: MNISTClassifier) -> tuple[Tensor, Tensor]:
    """``lock_in_from_readings`` of a trajectory, read by ``classifier``: (agreement (K,), lock_in_t (N,))."""
    return lock_in_from_readings(trajectory.timesteps, read_trajectory(trajectory, classifier))


def mean_pairwise_distance(features: Tensor) -> float:
    """The mean Euclidean distance between two different rows of ``features`` (N, D), N >= 2."""
    distances = torch.cdist(features.double(), features.double())
    n = len(features)
    return (distances.sum() / (n * (n - 1))).item()


def conditional_scores(
    samples: Tensor,
    requested: Tensor,
    real_images: Tensor,
    real_labels: Tensor,
    classifier: MNISTClassifier,
    confidence: float = 0.9,
    seed: int = 0,
) -> dict[str, Any]:
    """What the judge makes of samples that were asked to be given digits.

    Args:
        samples: generated images (N, 1, 28, 28) in [-1, 1] (clipped here).
        requested: the digit each sample was asked to be, (N,).
        real_images, real_labels: held-out real digits and their labels, e.g. MNIST's test set.
        classifier: the judge.
        confidence: the top probability that counts as confident.
        seed: chooses the random real subsets.

    Returns a dict with
        accuracy              share of samples the judge reads as the requested digit
        confident_fraction    share whose top class probability is >= ``confidence``
        frechet_distance      against a random subset of ``len(samples)`` real images
        class_frechet         {digit: Frechet distance of that digit's samples to all real images of
                              the digit}; biased upwards at small counts, so compare equal counts only
        class_frechet_real    the same for a random subset of as many real digits as there are
                              samples (against the rest of that digit's real images): the floor
        diversity             {digit: mean pairwise feature distance among that digit's samples divided by
                              the same among as many random real images of the digit}; 1 is as varied as
                              real handwriting, below 1 more alike
        diversity_mean        the mean of ``diversity`` over the digits
    """
    check_images(samples, "samples", minimum=2)
    samples = samples.clamp(-1.0, 1.0)
    requested = torch.as_tensor(requested, dtype=torch.long)
    if requested.shape != (len(samples),):
        raise DDPMError(
            f"requested must hold one digit per sample, shape ({len(samples)},), got {tuple(requested.shape)}."
        )
    probabilities = predict_logits(classifier, samples).double().softmax(dim=1)
    top, predicted = probabilities.max(dim=1)
    per_digit = _per_digit_scores(samples, requested, real_images, real_labels, classifier, seed)
    return {
        "num_samples": len(samples),
        "accuracy": (predicted == requested).double().mean().item(),
        "confident_fraction": (top >= confidence).double().mean().item(),
        "frechet_distance": frechet_distance(random_subset(real_images, len(samples), seed), samples, classifier),
        **per_digit,
        "diversity_mean": sum(per_digit["diversity"].values()) / len(per_digit["diversity"]),
    }


def _per_digit_scores(samples: Tensor, requested: Tensor, real_images: Tensor, real_labels: Tensor,
                      classifier: MNISTClassifier, seed: int) -> dict[str, dict[int, float]]:
    """``class_frechet``, ``class_frechet_real`` and ``diversity`` of ``conditional_scores``, digit by digit."""
    features = predict_features(classifier, samples)
    generator = torch.Generator().manual_seed(seed)
    class_frechet, class_frechet_real, diversity = {}, {}, {}
    for digit in requested.unique().tolist():
        mine = requested == digit
        real = real_images[real_labels == digit]
        if mine.sum() < 2 or len(real) < 2 * int(mine.sum()):
            raise DDPMError(f"digit {digit} needs at least 2 samples and twice as many real images as samples.")
        order = torch.randperm(len(real), generator=generator)
        held, rest = real[order[: int(mine.sum())]], real[order[int(mine.sum()) :]]
        class_frechet[digit] = frechet_distance(real, samples[mine], classifier)
        class_frechet_real[digit] = frechet_distance(rest, held, classifier)
        diversity[digit] = mean_pairwise_distance(features[mine]) / mean_pairwise_distance(
            predict_features(classifier, held)
        )
    return {"class_frechet": class_frechet, "class_frechet_real": class_frechet_real, "diversity": diversity}


def random_subset(images: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` of ``images`` chosen at random without replacement (in their original order); all if fewer."""
    if len(images) <= n:
        return images
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return images[index.sort().values]


def evaluate_samples(
    samples: Tensor,
    real_images: Tensor,
    real_train_images: Tensor,
    classifier: MNISTClassifier,
    batch_size: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics of an unconditional sampler for one set of samples: Frechet distance, classifier scores and
    memorisation (lock-in needs a trajectory and conditional_scores labels, so they are separate).

    A fixed random subset of ``len(samples)`` of the ``real_images`` (held-out test images; all of
    them if fewer) is the reference for the Frechet distance and for memorisation: a model that
    copies its training set puts its samples much closer to training images than unseen test
    digits are. The subset is random, not the first N, because MNIST's test set is ordered.

    Args:
        samples: generated images, (N, 1, 28, 28) in [-1, 1] (clipped here).
        real_images: held-out real images, e.g. MNIST's test set.
        real_train_images: the images the model was trained on, e.g. MNIST's training set.
        classifier: the judge.
        seed: chooses the subset of ``real_images``.

    Returns:
        num_samples, num_real, frechet_distance, confident_fraction, inception_score, class_ratio,
        class_counts, train_nn_median, train_nn_min (nearest-training-image distances of the samples)
        and real_train_nn_median, real_train_nn_min (the same for the real held-out images).
    """
    check_images(samples, "samples", minimum=2)
    check_images(real_images, "real_images", minimum=2)
    samples = samples.clamp(-1.0, 1.0)
    real = random_subset(real_images, len(samples), seed)
    scores = classifier_scores(samples, classifier, batch_size=batch_size)
    sample_nn, _ = nearest_neighbours(samples, real_train_images)
    real_nn, _ = nearest_neighbours(real, real_train_images)
    return {
        "num_samples": len(samples),
        "num_real": len(real),
        "frechet_distance": frechet_distance(real, samples, classifier, batch_size),
        "confident_fraction": scores["confident_fraction"],
        "inception_score": scores["inception_score"],
        "class_ratio": scores["class_ratio"],
        "class_counts": scores["class_counts"],
        "train_nn_median": sample_nn.median().item(),
        "train_nn_min": sample_nn.min().item(),
        "real_train_nn_median": real_nn.median().item(),
        "real_train_nn_min": real_nn.min().item(),
    }
