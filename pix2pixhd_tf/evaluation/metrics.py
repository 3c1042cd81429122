"""Numerics of the evaluation: segmentation scores, FID, KID and multi-scale SWD.

Everything here is plain NumPy/SciPy on arrays that are already in memory (label maps, predictions,
feature vectors, uint8 images); reading folders, running networks and writing reports live in
`pix2pixhd_tf.evaluation.protocol`.

- Segmentation score (pix2pixHD, Table 1): a confusion matrix over the valid pixels, then pixel accuracy
  and intersection-over-union per class. Ground-truth labels outside ``[0, num_classes)`` (Cityscapes'
  void 255) and, optionally, one ``ignore_index`` are not counted. A class that appears neither in the
  ground truth nor in the prediction has no IoU (NaN, ``None`` in JSON) and is left out of the mean; a
  class that is predicted but absent from the ground truth has IoU 0 and counts.
- FID (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to two feature sets.
- KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y / d + 1)³``, averaged over random subsets (100 subsets of at most 1000 samples by default,
  the sizes used by torch-fidelity and StyleGAN2-ADA).
- SWD (Karras et al. 2018, "Progressive Growing of GANs", appendix D): sliced Wasserstein distance between
  7×7 patch descriptors drawn from each level of a Laplacian pyramid, per level and averaged, ×1e3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage

# ----------------------------------------------------------------------------------------------------
# Segmentation scores.


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Counts of (ground truth, prediction) pairs over the valid pixels.

    Args:
      labels: ground-truth class ids, any shape, integer.
      predictions: predicted class ids, same shape as `labels`.
      num_classes: number of classes C; ground-truth ids outside [0, C) are ignored.
      ignore_index: one more ground-truth id to ignore (e.g. 0, "unlabeled"), or None.

    Returns:
      int64 array [C, C]; rows are ground truth, columns predictions.

    Raises:
      ValueError: if the shapes differ or a prediction at a valid pixel lies outside [0, C).
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must have the same shape")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    labels = labels.reshape(-1).astype(np.int64)
    predictions = predictions.reshape(-1).astype(np.int64)
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid &= labels != ignore_index
    labels, predictions = labels[valid], predictions[valid]
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(
            f"predicted class ids must lie in [0, {num_classes}); got values in "
            f"[{predictions.min()}, {predictions.max()}]"
        )
    counts = np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclasses.dataclass(frozen=True)
class SegmentationScores:
    """Scores derived from one confusion matrix; NaN marks a class without a defined value.

    Attributes:
      pixel_accuracy: correctly labelled valid pixels / valid pixels.
      mean_accuracy: mean over classes present in the ground truth of (correct pixels / class pixels).
      mean_iou: mean of `per_class_iou` over the classes where it is defined.
      per_class_iou: [C] TP / (TP + FP + FN); NaN where the class is in neither GT nor prediction.
      per_class_accuracy: [C] TP / (TP + FN); NaN where the class is absent from the ground truth.
      num_pixels: number of valid pixels counted.
      confusion: [C, C] the counts they come from (rows GT, columns prediction), for `most_confused`.
    """

    pixel_accuracy: float
    mean_accuracy: float
    mean_iou: float
    per_class_iou: np.ndarray
    per_class_accuracy: np.ndarray
    num_pixels: int
    confusion: np.ndarray

    def to_dict(self) -> dict:
        """JSON-ready values (NaN becomes None)."""
        return {
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "mean_accuracy": _json_float(self.mean_accuracy),
            "mean_iou": _json_float(self.mean_iou),
            "per_class_iou": [_json_float(v) for v in self.per_class_iou],
            "per_class_accuracy": [_json_float(v) for v in self.per_class_accuracy],
            "num_pixels": int(self.num_pixels),
            "confusion": self.confusion.astype(np.int64).tolist(),
        }


def segmentation_scores(confusion: np.ndarray) -> SegmentationScores:
    """Pixel accuracy and IoU from a confusion matrix (rows GT, columns prediction).

    Args:
      confusion: [C, C] counts, e.g. summed `confusion_matrix` results over a data set.

    Returns:
      The `SegmentationScores`; every value is NaN when the matrix is all zeros.

    Raises:
      ValueError: if `confusion` is not square.
    """
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion must be a square matrix, got shape {counts.shape}")
    confusion = counts.astype(np.float64)
    true_positive = np.diag(confusion)
    gt_count = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    union = gt_count + predicted_count - true_positive
    total = confusion.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class_iou = np.where(union > 0, true_positive / union, np.nan)
        per_class_accuracy = np.where(gt_count > 0, true_positive / gt_count, np.nan)
        pixel_accuracy = true_positive.sum() / total if total > 0 else math.nan
    return SegmentationScores(
        pixel_accuracy=float(pixel_accuracy),
        mean_accuracy=_nanmean(per_class_accuracy),
        mean_iou=_nanmean(per_class_iou),
        per_class_iou=per_class_iou,
        per_class_accuracy=per_class_accuracy,
        num_pixels=int(total),
        confusion=counts,
    )


def most_confused(confusion: np.ndarray) -> list[tuple[int, float] | None]:
    """Per ground-truth class, the wrong class its pixels are most often given, and that share of the class.

    Says *where* a segmentation score is lost (e.g. vegetation read as building), which IoU alone hides.
    None for a class absent from the ground truth or without errors.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    wrong = confusion * (1 - np.eye(len(confusion)))
    out: list[tuple[int, float] | None] = []
    for row, total in zip(wrong, confusion.sum(axis=1)):
        target = int(row.argmax())
        out.append((target, float(row[target] / total)) if total > 0 and row[target] > 0 else None)
    return out


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------------------------------
# FID.


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of a feature set, in float64.

    Args:
      features: [N, D] with N >= 2.

    Returns:
      (mu [D], sigma [D, D]).

    Raises:
      ValueError: if `features` is not 2-D or has fewer than 2 rows.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need a [N, D] feature array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = |mu1 − mu2|² + tr(S1) + tr(S2) − 2 tr((S1 S2)^½). The last trace is computed as the sum of the
    square roots of the eigenvalues of the symmetric PSD matrix S1^½ S2 S1^½, which has the same spectrum
    as S1 S2; this needs no complex arithmetic and stays stable for singular covariances (fewer samples
    than dimensions), where `scipy.linalg.sqrtm(S1 @ S2)` can fail.

    Args:
      mu1, mu2: means [D].
      sigma1, sigma2: covariances [D, D], symmetric PSD.

    Returns:
      The distance, clipped at 0 against round-off.

    Raises:
      ValueError: if the shapes disagree.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes disagree: mu1 {mu1.shape}, mu2 {mu2.shape}, sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    sqrt_sigma1 = _psd_sqrt(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    trace_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean
    return max(float(value), 0.0)


def frechet_inception_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets ([N1, D] and [N2, D], N >= 2 each).

    Raises:
      ValueError: see `gaussian_statistics` and `frechet_distance`.
    """
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


# ----------------------------------------------------------------------------------------------------
# KID.


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x·y / d + 1)³ for all pairs of rows: [N, D] × [M, D] -> [N, M] (float64)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    base = x @ y.T / x.shape[1] + 1.0
    return base * base * base  # much faster than ** 3, which goes through pow()


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD² with `polynomial_kernel` (diagonals of k(x, x) and k(y, y) excluded).

    Args:
      x: [M, D], M >= 2.
      y: [N, D], N >= 2.

    Returns:
      The estimate (can be slightly negative when the distributions are equal).

    Raises:
      ValueError: if a set has fewer than 2 rows or the feature sizes differ.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"need [M, D] and [N, D] features with M, N >= 2; got {x.shape} and {y.shape}")
    m, n = len(x), len(y)
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


@dataclasses.dataclass(frozen=True)
class KIDResult:
    """KID over random subsets: mean and standard deviation of the per-subset MMD² estimates."""

    mean: float
    std: float
    num_subsets: int
    subset_size: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> KIDResult:
    """KID: `mmd2_unbiased` averaged over `num_subsets` random subsets of each set.

    Each subset draws min(subset_size, N1, N2) rows without replacement from each set, independently.

    Args:
      features1: [N1, D].
      features2: [N2, D].
      num_subsets: number of subsets (100 in torch-fidelity and StyleGAN2-ADA).
      subset_size: largest subset size (1000 there).
      seed: seed of the subset draws.

    Returns:
      The `KIDResult` (`subset_size` is the size actually used).

    Raises:
      ValueError: if a set has fewer than 2 rows, the feature sizes differ, or a count is not positive.
    """
    features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    if features1.ndim != 2 or features2.ndim != 2 or min(len(features1), len(features2)) < 2:
        raise ValueError(f"KID needs [N, D] features with N >= 2, got {features1.shape} and {features2.shape}")
    size = min(subset_size, len(features1), len(features2))
    rng = np.random.default_rng(seed)
    estimates = np.array(
        [
            mmd2_unbiased(
                features1[rng.choice(len(features1), size, replace=False)],
                features2[rng.choice(len(features2), size, replace=False)],
            )
            for _ in range(num_subsets)
        ]
    )
    return KIDResult(float(estimates.mean()), float(estimates.std()), num_subsets, size)


# ----------------------------------------------------------------------------------------------------
# Multi-scale sliced Wasserstein distance.

# The 5×5 binomial filter of Burt & Adelson's pyramid is the outer product of this 1-D kernel.
_BINOMIAL_5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0


@dataclasses.dataclass(frozen=True)
class SWDConfig:
    """Parameters of the multi-scale SWD; defaults are those of Karras et al. (2018), appendix D.

    Attributes:
      patch_size: side of the square neighbourhood per descriptor (7, so 7·7·3 = 147 dimensions).
      patches_per_image: descriptors drawn at random positions of each level of each image (128).
      min_size: the pyramid keeps halving while the shorter side of a level is at least this (16).
      num_projections: random directions per repeat (128; the paper's "512 projections" are
        4 repeats of 128 in its reference code).
      num_repeats: repeats with fresh directions, averaged (4).
      seed: seed of the patch positions and of the directions; two sets described with the same
        seed use the same positions for images of the same size, so identical sets give exactly 0.
    """

    patch_size: int = 7
    patches_per_image: int = 128
    min_size: int = 16
    num_projections: int = 128
    num_repeats: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.patch_size < 1 or self.patches_per_image < 1 or self.num_projections < 1 or self.num_repeats < 1:
            raise ValueError(f"SWD sizes and counts must be positive: {self}")
        if self.min_size < self.patch_size:
            raise ValueError(f"min_size ({self.min_size}) must be at least patch_size ({self.patch_size})")


def pyramid_shapes(height: int, width: int, min_size: int = 16) -> list[tuple[int, int]]:
    """(height, width) of each Laplacian level: halve (rounding up) while the shorter side >= min_size.

    Raises:
      ValueError: if the image is smaller than `min_size` on its shorter side.
    """
    if min(height, width) < min_size:
        raise ValueError(f"an image of {height}x{width} is smaller than the SWD min_size {min_size}; lower min_size")
    shapes = []
    while min(height, width) >= min_size:
        shapes.append((height, width))
        height, width = (height + 1) // 2, (width + 1) // 2
    return shapes


def _blur(image: np.ndarray, gain: float = 1.0) -> np.ndarray:
    kernel = _BINOMIAL_5 * gain
    image = ndimage.convolve1d(image, kernel, axis=0, mode="mirror")
    return ndimage.convolve1d(image, kernel, axis=1, mode="mirror")


def _pyramid_down(image: np.ndarray) -> np.ndarray:
    return _blur(image)[::2, ::2]


def _pyramid_up(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = image.shape[:2]
    upsampled = np.zeros((2 * height, 2 * width) + image.shape[2:], image.dtype)
    upsampled[::2, ::2] = image
    # Gain 2 per axis restores the mean lost to the inserted zeros.
    return _blur(upsampled, gain=2.0)[: shape[0], : shape[1]]


def laplacian_pyramid(image: np.ndarray, num_levels: int) -> list[np.ndarray]:
    """Laplacian pyramid with the 5×5 binomial filter (mirror borders), finest level first.

    Args:
      image: [H, W, C] (any numeric dtype; computed in float32).
      num_levels: number of levels; the last one is the low-pass residual.

    Returns:
      `num_levels` float32 arrays; level i has shape ceil(H / 2^i) × ceil(W / 2^i) × C.
    """
    gaussian = np.asarray(image, np.float32)
    levels = []
    for _ in range(num_levels - 1):
        smaller = _pyramid_down(gaussian)
        levels.append(gaussian - _pyramid_up(smaller, gaussian.shape[:2]))
        gaussian = smaller
    levels.append(gaussian)
    return levels


def sample_patches(level: np.ndarray, num_patches: int, patch_size: int, rng: np.random.Generator) -> np.ndarray:
    """`num_patches` patch_size² neighbourhoods at uniformly random positions fully inside `level`.

    Args:
      level: [H, W, C], H and W >= patch_size.
      num_patches: how many to draw (with replacement of positions).
      patch_size: side of the square patch.
      rng: source of the positions.

    Returns:
      float32 [num_patches, patch_size, patch_size, C].
    """
    height, width = level.shape[:2]
    tops = rng.integers(0, height - patch_size + 1, size=num_patches)
    lefts = rng.integers(0, width - patch_size + 1, size=num_patches)
    offsets = np.arange(patch_size)
    rows = (tops[:, None] + offsets)[:, :, None]
    cols = (lefts[:, None] + offsets)[:, None, :]
    return level[rows, cols]


class SWDDescriptors:
    """Collects per-level patch descriptors of a set of images, one image at a time.

    All images of one set must give the same number of pyramid levels (in practice: the same size).

    Example:
      real = SWDDescriptors(config)
      for image in images:
          real.add(image)
    """

    def __init__(self, config: SWDConfig = SWDConfig()):
        self.config = config
        self.level_shapes: list[tuple[int, int]] | None = None
        self.num_images = 0
        self._rng = np.random.default_rng(config.seed)
        self._patches: list[list[np.ndarray]] = []

    def add(self, image: np.ndarray) -> None:
        """Adds the descriptors of one [H, W, C] image (uint8 0..255 or float on the same scale).

        Raises:
          ValueError: if the image is not [H, W, C], too small, or has another level count than the
            first image of the set.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"SWD expects [H, W, C] images, got shape {image.shape}")
        shapes = pyramid_shapes(image.shape[0], image.shape[1], self.config.min_size)
        if self.level_shapes is None:
            self.level_shapes = shapes
            self._patches = [[] for _ in shapes]
        elif len(shapes) != len(self.level_shapes):
            raise ValueError(
                f"an image of {image.shape[0]}x{image.shape[1]} gives {len(shapes)} pyramid levels, the first image "
                f"of this set ({self.level_shapes[0][0]}x{self.level_shapes[0][1]}) gave {len(self.level_shapes)}; "
                "resize the images to one size"
            )
        for patches, level in zip(self._patches, laplacian_pyramid(image, len(shapes))):
            patches.append(sample_patches(level, self.config.patches_per_image, self.config.patch_size, self._rng))
        self.num_images += 1

    def finalize(self) -> list[np.ndarray]:
        """Per level: descriptors [N·patches_per_image, patch_size²·C], each channel normalised.

        As in the reference code, every channel is normalised to zero mean and unit standard deviation
        over all descriptors and positions of its level, for this set alone.

        Raises:
          ValueError: if no image was added.
        """
        if not self.num_images:
            raise ValueError("no images were added to this SWD descriptor set")
        result = []
        for patches in self._patches:
            desc = np.concatenate(patches, axis=0)
            desc = desc - desc.mean(axis=(0, 1, 2), keepdims=True)
            std = desc.std(axis=(0, 1, 2), keepdims=True)
            desc = desc / np.where(std > 0, std, 1.0)
            result.append(desc.reshape(desc.shape[0], -1).astype(np.float32))
        return result


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, num_projections: int, num_repeats: int, rng: np.random.Generator
) -> float:
    """Sliced Wasserstein-1 distance between two descriptor sets.

    Each repeat draws `num_projections` random unit directions, projects both sets, and averages the
    1-D Wasserstein distances |sorted(a·v) − sorted(b·v)|; the repeats are averaged. With sets of
    different sizes the two quantile functions are compared at max(N_a, N_b) evenly spaced quantiles
    (with equal sizes this is exactly the sorted-difference form).

    Args:
      a: [N_a, D].
      b: [N_b, D].
      num_projections: directions per repeat.
      num_repeats: repeats.
      rng: source of the directions.

    Returns:
      The distance (in descriptor units).

    Raises:
      ValueError: if the descriptor sizes differ.
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"descriptor sets must be [N, D] with the same D, got {a.shape} and {b.shape}")
    size = max(len(a), len(b))
    quantiles = (np.arange(size) + 0.5) / size
    index_a = np.minimum((quantiles * len(a)).astype(np.int64), len(a) - 1)
    index_b = np.minimum((quantiles * len(b)).astype(np.int64), len(b) - 1)
    results = []
    for _ in range(num_repeats):
        directions = rng.standard_normal((a.shape[1], num_projections)).astype(np.float32)
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        projected_a = np.sort(a @ directions, axis=0)[index_a]
        projected_b = np.sort(b @ directions, axis=0)[index_b]
        results.append(np.abs(projected_a - projected_b).mean())
    return float(np.mean(results))


@dataclasses.dataclass(frozen=True)
class SWDResult:
    """SWD ×1e3 per pyramid level (keyed "HxW", finest first) and their mean."""

    levels: dict[str, float]
    mean: float

    def to_dict(self) -> dict:
        return {"levels": dict(self.levels), "mean": self.mean}


def swd_from_descriptors(
    descriptors_a: Sequence[np.ndarray],
    descriptors_b: Sequence[np.ndarray],
    level_shapes: Sequence[tuple[int, int]],
    config: SWDConfig = SWDConfig(),
) -> SWDResult:
    """SWD ×1e3 per level between two finalised descriptor sets (see `SWDDescriptors.finalize`).

    Args:
      descriptors_a: per level [N_a, D].
      descriptors_b: per level [N_b, D].
      level_shapes: (height, width) per level, used to name the levels.
      config: projection counts and seed.

    Returns:
      The `SWDResult`.

    Raises:
      ValueError: if the level counts differ.
    """
    if not (len(descriptors_a) == len(descriptors_b) == len(level_shapes)):
        raise ValueError(
            f"the two sets have {len(descriptors_a)} and {len(descriptors_b)} pyramid levels; "
            "resize both to one image size"
        )
    rng = np.random.default_rng([config.seed, 1])
    levels = {
        f"{h}x{w}": 1e3 * sliced_wasserstein(a, b, config.num_projections, config.num_repeats, rng)
        for (h, w), a, b in zip(level_shapes, descriptors_a, descriptors_b)
    }
    return SWDResult(levels=levels, mean=float(np.mean(list(levels.values()))))


def multiscale_swd(
    images_a: Iterable[np.ndarray], images_b: Iterable[np.ndarray], config: SWDConfig = SWDConfig()
) -> SWDResult:
    """Multi-scale SWD ×1e3 between two image sets ([N, H, W, C] arrays or iterables of [H, W, C]).

    Raises:
      ValueError: if a set is empty, an image is too small, or the sets give different level counts.
    """
    collected = []
    for images in (images_a, images_b):
        descriptors = SWDDescriptors(config)
        for image in images:
            descriptors.add(image)
        collected.append(descriptors)
    a, b = collected
    return swd_from_descriptors(a.finalize(), b.finalize(), a.level_shapes, config)
