"""Distribution metrics against closed forms and constructed cases: FD, KID, precision/recall/density/coverage, histograms."""
from __future__ import annotations

import numpy as np
import pytest

from ddpm.evaluation.metrics import (class_histogram, color_histograms, frechet_distance, kernel_distance,
                                     label_histogram, precision_recall_density_coverage, total_variation)


def moment_matched(n: int, mean: np.ndarray, var: np.ndarray, seed: int) -> np.ndarray:
    """n samples whose sample mean and (ddof=1) covariance are exactly ``mean`` and diag(``var``)."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance = I
    return z * np.sqrt(var) + mean


def closed_form_fd(mu1, var1, mu2, var2) -> float:
    """‖μ1 - μ2‖² + Σ (√σ1² - √σ2²)² for two Gaussians with diagonal covariances."""
    return float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum())


MU = np.array([1.0, -2.0, 0.5, 0.0, 1.5, -1.0])  # |μ|² = 8.5
VAR1 = np.array([1.0, 4.0, 9.0, 0.25, 1.0, 2.0])
VAR2 = np.array([4.0, 1.0, 1.0, 1.0, 0.25, 2.0])  # Σ(√σ1 - √σ2)² = 1 + 1 + 4 + 0.25 + 0.25 + 0 = 6.5


# ---- Fréchet distance ------------------------------------------------------------------------
@pytest.mark.filterwarnings("error::DeprecationWarning")  # SciPy 1.18 removes sqrtm's `disp`: no deprecated calls
@pytest.mark.parametrize("case", ["mean shift, identity covariances", "different diagonal covariances", "both"])
def test_frechet_distance_of_moment_matched_gaussians_equals_the_closed_form(case):
    zero, one = np.zeros(6), np.ones(6)
    mu2, var1, var2 = {"mean shift, identity covariances": (MU, one, one),
                       "different diagonal covariances": (zero, VAR1, VAR2),
                       "both": (MU, VAR1, VAR2)}[case]
    real, fake = moment_matched(500, zero, var1, seed=0), moment_matched(400, mu2, var2, seed=1)
    expected = closed_form_fd(zero, var1, mu2, var2)
    # the sample moments are exact, so only linear-algebra round-off remains
    assert frechet_distance(real, fake) == pytest.approx(expected, rel=1e-8, abs=1e-9)


def test_frechet_distance_from_plain_gaussian_samples_approaches_the_closed_form():
    rng = np.random.default_rng(0)
    n = 20_000
    shifted = frechet_distance(rng.standard_normal((n, 6)), rng.standard_normal((n, 6)) + MU)
    # sampling error: the cross term 2μ·(μ̂ - μ) has std 2|μ|√(2/n) ≈ 0.06; 0.25 is four of those
    assert shifted == pytest.approx(8.5, abs=0.25)
    diagonal = frechet_distance(rng.standard_normal((n, 6)) * np.sqrt(VAR1), rng.standard_normal((n, 6)) * np.sqrt(VAR2))
    assert diagonal == pytest.approx(6.5, abs=0.25)


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(2).standard_normal((300, 8)) @ np.random.default_rng(3).standard_normal((8, 8))
    assert abs(frechet_distance(x, x)) < 1e-8


def test_frechet_distance_is_finite_when_a_covariance_is_singular():
    rng = np.random.default_rng(4)
    real = rng.standard_normal((200, 8))
    fake = rng.standard_normal((5, 8))  # 5 samples in 8 dims: rank-4 covariance, as with few generated images
    fd = frechet_distance(real, fake)
    assert np.isfinite(fd) and fd > 0


# ---- kernel inception distance ---------------------------------------------------------------
def test_kernel_distance_is_near_zero_for_one_distribution_and_clearly_positive_when_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((1000, 8)), rng.standard_normal((1000, 8))
    same_mean, same_std = kernel_distance(x, y, num_subsets=10, subset_size=200)
    shifted_mean, shifted_std = kernel_distance(x, y + 0.5, num_subsets=10, subset_size=200)
    assert abs(same_mean) < 0.02  # unbiased MMD²: zero in expectation; measured |mean| ≈ 0.003
    assert same_std > 0 and shifted_std > 0  # the spread over subsets is returned, not dropped
    assert shifted_mean > 0.5 and shifted_mean > 5 * shifted_std  # measured ≈ 1.1 ± 0.1


def test_kernel_distance_with_one_subset_has_zero_spread_and_is_reproducible_by_seed():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((100, 4)), rng.standard_normal((100, 4)) + 1
    assert kernel_distance(x, y, num_subsets=1, subset_size=50)[1] == 0.0
    assert kernel_distance(x, y, num_subsets=3, subset_size=50, seed=7) == kernel_distance(x, y, num_subsets=3,
                                                                                          subset_size=50, seed=7)


# ---- precision / recall / density / coverage -------------------------------------------------
def blobs(centres: np.ndarray, per_mode: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.standard_normal((per_mode, centres.shape[1])) for c in centres])


CENTRES = 20 * np.eye(4)  # four well-separated unit-variance modes in 4-d


def test_identical_sets_have_precision_recall_coverage_and_density_one():
    real = blobs(CENTRES, 100, seed=0)
    prdc = precision_recall_density_coverage(real, real.copy())
    # every sample lies in its own ball; each ball holds itself and its k-1 strictly nearer neighbours: density = k/k
    assert prdc == pytest.approx({"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}, abs=1e-6)


def test_far_apart_sets_score_zero_on_every_manifold_metric():
    real = blobs(CENTRES, 100, seed=0)
    prdc = precision_recall_density_coverage(real, real + 100.0)
    assert prdc == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapse_onto_half_the_modes_halves_recall_and_coverage_but_keeps_precision():
    real = blobs(CENTRES, 200, seed=0)
    full = precision_recall_density_coverage(real, blobs(CENTRES, 200, seed=1))
    collapsed = precision_recall_density_coverage(real, blobs(CENTRES[:2], 200, seed=2))
    assert full["recall"] > 0.9 and full["coverage"] > 0.9  # a second sample of the same law covers it
    # real samples of the two missing modes are 20σ from any fake: at most half can be recalled or covered
    assert 0.4 < collapsed["recall"] <= 0.5 and 0.4 < collapsed["coverage"] <= 0.5  # measured 0.48
    assert collapsed["precision"] > 0.9  # every fake still looks real (measured 0.97)
    assert collapsed["density"] == pytest.approx(full["density"], abs=0.15)


# ---- histograms ------------------------------------------------------------------------------
def test_class_histogram_counts_the_most_probable_class_of_each_sample():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1]])
    np.testing.assert_allclose(class_histogram(probs), [0.25, 0.25, 0.5])
    np.testing.assert_allclose(class_histogram(probs, num_classes=5), [0.25, 0.25, 0.5, 0.0, 0.0])


def test_label_histogram_is_the_share_of_each_label():
    np.testing.assert_allclose(label_histogram(np.array([[0], [2], [2], [3]]), 4), [0.25, 0.0, 0.5, 0.25])


def test_total_variation_is_half_the_l1_distance_between_histograms():
    assert total_variation([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    assert total_variation([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) == pytest.approx(0.5)
    assert total_variation([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)  # disjoint supports: the maximum
    assert total_variation(np.array([0.2, 0.3, 0.5]), [0.3, 0.3, 0.4]) == pytest.approx(0.1)


def test_color_histograms_sum_to_one_per_channel():
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    hist = color_histograms(images, bins=32)
    assert hist.shape == (3, 32)
    np.testing.assert_allclose(hist.sum(1), 1.0)


def test_color_histograms_put_a_constant_image_in_one_bin_per_channel():
    image = np.empty((2, 3, 4, 4), dtype=np.uint8)
    image[:, 0], image[:, 1], image[:, 2] = 0, 255, 100  # bins of width 8: 0, 31 and 12
    hist = color_histograms(image, bins=32)
    expected = np.zeros((3, 32))
    expected[0, 0] = expected[1, 31] = expected[2, 12] = 1.0
    np.testing.assert_array_equal(hist, expected)
