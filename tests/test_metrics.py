"""Numbers of `pix2pixhd_tf.evaluation.metrics` on hand-made and synthetic inputs."""

import math

import numpy as np
import pytest
from scipy import linalg, ndimage

from pix2pixhd_tf.evaluation import metrics

# ----------------------------------------------------------------------------------------------------
# Segmentation scores.


def test_confusion_matrix_and_scores_on_a_hand_made_example():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 3]])
    predictions = np.array([[0, 1, 1, 1], [2, 0, 3, 1]])
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = 1  # pixel (0,0)
    expected[0, 1] = 1  # (0,1)
    expected[1, 1] = 2  # (0,2), (0,3)
    expected[2, 2] = 1  # (1,0)
    expected[2, 0] = 1  # (1,1); (1,2) is void 255 and ignored
    expected[3, 1] = 1  # (1,3)
    np.testing.assert_array_equal(confusion, expected)

    scores = metrics.segmentation_scores(confusion)
    assert scores.num_pixels == 7
    assert scores.pixel_accuracy == pytest.approx(4 / 7)
    # IoU = TP / (GT + pred - TP): class 0: 1/(2+2-1), class 1: 2/(2+4-2), class 2: 1/(2+1-1), class 3: 0/(1+0-0).
    np.testing.assert_allclose(scores.per_class_iou, [1 / 3, 1 / 2, 1 / 2, 0.0])
    assert scores.mean_iou == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    np.testing.assert_allclose(scores.per_class_accuracy, [1 / 2, 1.0, 1 / 2, 0.0])
    # Where each class goes wrong: class 1 has no errors; class 3's one pixel is read as 1.
    assert metrics.most_confused(confusion) == [(1, 0.5), None, (0, 0.5), (1, 1.0)]


def test_absent_classes_are_left_out_of_the_mean_and_ignore_index_works():
    labels = np.array([0, 0, 1, 1, 4])
    predictions = np.array([0, 0, 1, 0, 2])
    confusion = metrics.confusion_matrix(labels, predictions, num_classes=4, ignore_index=4)
    scores = metrics.segmentation_scores(confusion)
    # Classes 2 and 3 are in neither GT nor prediction: no IoU, not in the mean.
    assert math.isnan(scores.per_class_iou[2]) and math.isnan(scores.per_class_iou[3])
    assert scores.mean_iou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.to_dict()["per_class_iou"][2] is None

    # A class predicted but absent from the ground truth has IoU 0 and counts.
    scores = metrics.segmentation_scores(metrics.confusion_matrix([0, 0], [0, 1], num_classes=2))
    np.testing.assert_allclose(scores.per_class_iou, [0.5, 0.0])
    assert scores.mean_iou == pytest.approx(0.25)


def test_confusion_matrix_rejects_bad_predictions_and_shapes():
    with pytest.raises(ValueError, match="same shape"):
        metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        metrics.confusion_matrix(np.zeros(4, int), np.array([0, 1, 2, 3]), 3)


# ----------------------------------------------------------------------------------------------------
# FID.


def _random_covariance(rng, dim):
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    sigma1, sigma2 = _random_covariance(rng, 6), _random_covariance(rng, 6)
    covmean = linalg.sqrtm(sigma1 @ sigma2).real
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean)
    assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(direct, rel=1e-9)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(closed_form)


def test_fid_on_features_identical_singular_and_shifted():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((500, 8))
    assert metrics.frechet_inception_distance(features, features) == pytest.approx(0.0, abs=1e-9)
    # Fewer samples than dimensions (singular covariances) stays finite and non-negative.
    few = rng.standard_normal((5, 32))
    assert 0.0 <= metrics.frechet_inception_distance(few, few + 0.1) < np.inf
    # A shift by 1 in every dimension adds d to the distance.
    shifted = metrics.frechet_inception_distance(features, features + 1.0)
    assert shifted == pytest.approx(8.0)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.frechet_inception_distance(features[:1], features)


# ----------------------------------------------------------------------------------------------------
# KID.


def _expected_kernel(mu1, sigma1, mu2, sigma2):
    """E[(x·y/d + 1)^3] for independent x ~ N(mu1, S1), y ~ N(mu2, S2), from Gaussian moments."""
    d = len(mu1)
    a = mu1 @ mu2
    m1 = a
    m2 = np.trace((sigma1 + np.outer(mu1, mu1)) @ (sigma2 + np.outer(mu2, mu2)))
    m3 = (
        a**3
        + 3 * a * (mu1 @ sigma2 @ mu1)
        + 3 * a * (mu2 @ sigma1 @ mu2 + np.trace(sigma1 @ sigma2))
        + 6 * mu1 @ sigma2 @ sigma1 @ mu2
    )
    return 1 + 3 * m1 / d + 3 * m2 / d**2 + m3 / d**3


def test_kid_point_masses_match_the_closed_form_exactly():
    x0, y0 = np.array([1.0, 2.0, 0.0]), np.array([0.0, 1.0, 1.0])
    x, y = np.tile(x0, (10, 1)), np.tile(y0, (12, 1))
    k = lambda p, q: (p @ q / 3 + 1) ** 3
    expected = k(x0, x0) + k(y0, y0) - 2 * k(x0, y0)
    result = metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
    assert result.mean == pytest.approx(expected)
    assert result.subset_size == 10


def test_kid_identical_near_zero_and_shifted_matches_gaussian_closed_form():
    rng = np.random.default_rng(2)
    d, n = 4, 2000
    x = rng.standard_normal((n, d))
    same = rng.standard_normal((n, d))
    mu2 = np.full(d, 0.5)
    y = rng.standard_normal((n, d)) + mu2
    identical = metrics.kernel_inception_distance(x, same, num_subsets=5, subset_size=1000)
    assert abs(identical.mean) < 0.01

    eye, zero = np.eye(d), np.zeros(d)
    expected = (
        _expected_kernel(zero, eye, zero, eye)
        + _expected_kernel(mu2, eye, mu2, eye)
        - 2 * _expected_kernel(zero, eye, mu2, eye)
    )
    shifted = metrics.kernel_inception_distance(x, y, num_subsets=5, subset_size=1000)
    assert expected > 0.1
    assert shifted.mean == pytest.approx(expected, rel=0.1)
    # Determinism with a seed.
    again = metrics.kernel_inception_distance(x, y, num_subsets=5, subset_size=1000)
    assert again == shifted


# ----------------------------------------------------------------------------------------------------
# SWD.


def _scenes(seed, count=6, height=64, width=128):
    """Smooth random colour fields with sharp horizontal stripes: structure at every pyramid level."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = ndimage.zoom(rng.uniform(0, 255, (height // 8, width // 8, 3)), (8, 8, 1), order=1)
        image[::4] += 40
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def test_laplacian_pyramid_shapes_and_reconstruction():
    image = _scenes(0, count=1, height=40, width=72)[0][:, :70]
    shapes = metrics.pyramid_shapes(40, 70, min_size=10)
    assert shapes == [(40, 70), (20, 35), (10, 18)]
    levels = metrics.laplacian_pyramid(image, len(shapes))
    assert [lvl.shape[:2] for lvl in levels] == shapes
    # The pyramid is invertible: upsample-and-add gives the image back.
    reconstructed = levels[-1]
    for level in levels[-2::-1]:
        reconstructed = metrics._pyramid_up(reconstructed, level.shape[:2]) + level
    np.testing.assert_allclose(reconstructed, image, atol=1e-3)


def test_swd_orders_identical_sharp_blurred_and_noise():
    reference = _scenes(0)
    other_sharp = _scenes(1)
    blurred = ndimage.gaussian_filter(other_sharp.astype(np.float32), (0, 1.5, 1.5, 0)).round().astype(np.uint8)
    noise = np.random.default_rng(3).integers(0, 256, reference.shape, dtype=np.uint8)
    config = metrics.SWDConfig(num_projections=64)

    identical = metrics.multiscale_swd(reference, reference, config)
    sharp = metrics.multiscale_swd(other_sharp, reference, config)
    blur = metrics.multiscale_swd(blurred, reference, config)
    noisy = metrics.multiscale_swd(noise, reference, config)
    assert list(identical.levels) == ["64x128", "32x64", "16x32"]
    assert identical.mean < 1e-6
    assert sharp.mean < blur.mean < noisy.mean
    # Blur shows up at the finest level.
    assert blur.levels["64x128"] > 5 * sharp.levels["64x128"]


def test_swd_is_deterministic_with_a_seed_and_handles_unequal_set_sizes():
    a, b = _scenes(0, count=4), _scenes(1, count=3)
    config = metrics.SWDConfig(num_projections=32, num_repeats=2, seed=5)
    first = metrics.multiscale_swd(a, b, config)
    assert metrics.multiscale_swd(a, b, config) == first
    other_seed = metrics.multiscale_swd(a, b, metrics.SWDConfig(num_projections=32, num_repeats=2, seed=6))
    assert other_seed.mean != first.mean
    assert other_seed.mean == pytest.approx(first.mean, rel=0.5)


def test_swd_rejects_small_and_mixed_images():
    with pytest.raises(ValueError, match="min_size"):
        metrics.multiscale_swd(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
    descriptors = metrics.SWDDescriptors(metrics.SWDConfig())
    descriptors.add(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="pyramid levels"):
        descriptors.add(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="patch_size"):
        metrics.SWDConfig(min_size=4)
