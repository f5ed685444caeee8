"""Sample-quality metrics: Frechet distance, classifier scores, nearest neighbours and lock-in timesteps."""

from __future__ import annotations

import math

import pytest
import torch

from ddpm_core.diffusion.seeds import Trajectory
from ddpm_core.measure.classifier import MNISTClassifier, predict_features, predict_logits
from ddpm_core.measure.corruption import corrupt
from ddpm_core.measure.metrics import (
    classifier_scores,
    evaluate_samples,
    frechet_distance,
    inception_score,
    lock_in_timesteps,
    nearest_neighbours,
    random_subset,
)
from ddpm_core.measure.tables import format_metrics_table
from ddpm_core.training.data import load_mnist
from ddpm_core.utils.errors import DDPMError
from tests.helpers import needs_mnist


@pytest.fixture(scope="module")
def held_out_images(mnist_test) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = mnist_test
    return images[:2000], labels[:2000]


@pytest.fixture(scope="module")
def train_images() -> torch.Tensor:
    images, _ = load_mnist(train=True, subset=5000, download=False)
    return images


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


@needs_mnist
def test_frechet_distance_of_a_set_with_itself_is_near_zero(classifier, held_out_images):
    images = held_out_images[0][:500]
    assert abs(frechet_distance(images, images, classifier)) < 1e-3


@needs_mnist
def test_frechet_distance_matches_the_closed_form_on_the_classifier_features(classifier, held_out_images):
    real, fake = held_out_images[0][:400], corrupt(held_out_images[0][400:800], "blur", 1.0)
    f_r, f_f = predict_features(classifier, real).double(), predict_features(classifier, fake).double()
    mu_r, mu_f = f_r.mean(0), f_f.mean(0)
    sigma_r, sigma_f = torch.cov(f_r.T), torch.cov(f_f.T)
    # Tr((S_r S_f)^(1/2)) = Tr((S_r^(1/2) S_f S_r^(1/2))^(1/2)), computed with symmetric eigendecompositions only.
    root_r = _symmetric_sqrt(sigma_r)
    cross = _symmetric_sqrt(root_r @ sigma_f @ root_r).trace()
    expected = ((mu_r - mu_f) ** 2).sum() + sigma_r.trace() + sigma_f.trace() - 2 * cross
    assert frechet_distance(real, fake, classifier) == pytest.approx(expected.item(), rel=1e-3)


@needs_mnist
def test_frechet_distance_grows_with_corruption(classifier, held_out_images):
    real, other = held_out_images[0][:500], held_out_images[0][500:1000]
    distances = [frechet_distance(real, corrupt(other, "noise", s), classifier) for s in (0.0, 0.1, 0.3, 0.6)]
    # Measured with the committed classifier: 13.6, 16.3, 59.5 and 250.9 for noise 0, 0.1, 0.3 and 0.6.
    assert distances == sorted(distances)
    assert distances[3] > 5 * distances[0]


def test_frechet_distance_needs_two_images_per_set():
    one, two = torch.zeros(1, 1, 28, 28), torch.zeros(2, 1, 28, 28)
    with pytest.raises(DDPMError, match="at least 2 images"):
        frechet_distance(two, one, MNISTClassifier())


def test_inception_score_bounds():
    confident = torch.full((1000, 10), 1e-6)
    confident[torch.arange(1000), torch.arange(1000) % 10] = 1 - 9e-6  # confident, 100 images per class
    one_class = torch.full((1000, 10), 1e-6)
    one_class[:, 3] = 1 - 9e-6
    uncertain = torch.full((1000, 10), 0.1)
    assert inception_score(confident) == pytest.approx(10.0, rel=1e-3)
    assert inception_score(one_class) == pytest.approx(1.0, abs=1e-6)
    assert inception_score(uncertain) == pytest.approx(1.0, abs=1e-6)


@needs_mnist
def test_classifier_scores_of_real_test_digits_are_confident_and_balanced(classifier, held_out_images):
    scores = classifier_scores(held_out_images[0][:1000], classifier)
    assert scores["num_images"] == 1000
    assert sum(scores["class_counts"]) == 1000
    assert torch.equal(scores["labels"], predict_logits(classifier, held_out_images[0][:1000]).argmax(1))
    assert scores["confident_fraction"] > 0.95
    assert scores["inception_score"] > 9.0
    assert scores["class_ratio"] < 1.6  # the first 1,000 test labels run from 85 to 126 per digit


@needs_mnist
def test_nearest_neighbour_of_a_training_image_is_itself(train_images):
    picks = torch.tensor([0, 17, 2500, 4999])
    distances, indices = nearest_neighbours(train_images[picks], train_images, batch_size=3)
    assert distances.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.equal(indices, picks)


def test_nearest_neighbours_agree_with_brute_force():
    generator = torch.Generator().manual_seed(0)
    queries = torch.rand(7, 1, 28, 28, generator=generator) * 2 - 1
    reference = torch.rand(50, 1, 28, 28, generator=generator) * 2 - 1
    distances, indices = nearest_neighbours(queries, reference, batch_size=4)
    brute = ((queries.flatten(1)[:, None] - reference.flatten(1)[None]) ** 2).sum(-1).sqrt()
    assert torch.equal(indices, brute.argmin(1))
    assert torch.allclose(distances, brute.min(1).values, atol=1e-5)


@needs_mnist
def test_lock_in_timesteps_on_a_synthetic_trajectory(classifier, held_out_images):
    images, labels = held_out_images
    predicted = predict_logits(classifier, images).argmax(1)
    # One correctly classified test image per digit stands in for a predicted x_0 of that digit.
    digit = {d: images[((labels == d) & (predicted == d)).nonzero()[0, 0]] for d in (1, 3, 5, 7)}
    timesteps = [1000, 500, 100, 0]
    sequences = [
        (3, 7, 7, 7),  # decided at t = 500
        (7, 7, 1, 7),  # wavers at t = 100, so only the final label counts: t = 0
        (5, 5, 5, 5),  # decided from the start: t = 1000
    ]
    x0_pred = torch.stack([torch.stack([digit[d] for d in column]) for column in zip(*sequences, strict=True)])
    trajectory = Trajectory(timesteps, xt=torch.zeros_like(x0_pred), x0_pred=x0_pred)  # (K=4, N=3, 1, 28, 28)
    agreement, lock_in_t = lock_in_timesteps(trajectory, classifier)
    assert torch.allclose(agreement, torch.tensor([2 / 3, 1.0, 2 / 3, 1.0], dtype=agreement.dtype))
    assert lock_in_t.tolist() == [500, 0, 1000]


def test_corrupt_noise_stays_in_range_and_strength_zero_is_a_copy():
    images = torch.linspace(-1, 1, 784).view(1, 1, 28, 28).repeat(2, 1, 1, 1)
    noised = corrupt(images, "noise", 0.6, seed=1)
    assert noised.min().item() >= -1.0 and noised.max().item() <= 1.0
    assert torch.equal(corrupt(images, "noise", 0.6, seed=1), noised)
    assert torch.equal(corrupt(images, "blur", 0.0), images)


def test_corrupt_blur_spreads_a_dot_into_a_gaussian_of_the_same_mass():
    dot = torch.full((1, 1, 28, 28), -1.0)
    dot[0, 0, 14, 14] = 1.0
    blurred = corrupt(dot, "blur", 1.5)
    mass = (blurred + 1).sum().item()  # brightness above the background -1
    assert mass == pytest.approx(2.0, rel=1e-5)
    profile = blurred[0, 0, 14, 12:17] + 1
    ratio = math.exp(-0.5 * (1 / 1.5) ** 2)  # neighbouring pixels of a Gaussian with sigma = 1.5 pixels
    assert (profile[1] / profile[2]).item() == pytest.approx(ratio, rel=1e-4)
    assert blurred[0, 0, 0, 0].item() == pytest.approx(-1.0, abs=1e-6)  # the background stays dark


def test_corrupt_rejects_an_unknown_kind():
    with pytest.raises(DDPMError, match="kind must be one of"):
        corrupt(torch.zeros(1, 1, 28, 28), "jpeg", 0.5)


@needs_mnist
def test_evaluate_samples_table_shows_the_sample_count_and_memorisation(classifier, held_out_images, train_images):
    images = held_out_images[0]
    real_vs_real = evaluate_samples(images[1000:1300], images[:1000], train_images, classifier)
    copies = evaluate_samples(train_images[:300], images[:1000], train_images, classifier)
    assert (real_vs_real["num_samples"], real_vs_real["num_real"]) == (300, 300)
    # Copies of training images sit at distance 0 from the training set; unseen test digits do not.
    assert copies["train_nn_median"] == 0.0
    assert real_vs_real["train_nn_median"] > 5.0
    assert real_vs_real["real_train_nn_median"] == copies["real_train_nn_median"]
    table = format_metrics_table({"test": real_vs_real, "copies": copies})
    lines = table.splitlines()
    assert len(lines) == 4 and max(len(line) for line in lines) <= 88
    assert "Frechet" in lines[0] and "samples" in lines[0]
    assert lines[2].startswith("test") and " 300 " in lines[2]
    assert lines[3].startswith("copies")
    assert format_metrics_table([real_vs_real]).splitlines()[2].startswith("1 ")
    # too wide for the book's column: turned, one column per set, and every line fits
    names = {"test vs other test (floor)": real_vs_real, "training copies, the first 300": copies}
    turned = format_metrics_table(names).splitlines()
    assert max(len(line) for line in turned) <= 88
    assert turned[0].split() == ["test", "vs", "other", "test", "(floor)", "training", "copies,", "the", "first", "300"]
    assert turned[2].split() == ["samples", "300", "300"] and turned[-1].startswith("test NN median")


def test_random_subset_is_reproducible_and_not_a_prefix():
    images = torch.arange(100.0).view(100, 1, 1, 1).expand(100, 1, 28, 28)
    subset = random_subset(images, 10, seed=0)
    assert torch.equal(subset, random_subset(images, 10, seed=0))
    values = subset[:, 0, 0, 0]
    assert len(values.unique()) == 10 and values.max().item() >= 50  # drawn from the whole set, in order
    assert torch.equal(values, values.sort().values)
    assert random_subset(images, 200) is images
