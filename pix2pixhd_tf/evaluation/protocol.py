"""The evaluation protocol: generated images against the real ones of a data set.

What `evaluate` computes (`--metrics`, any of):

- ``seg``: the segmentation score of pix2pixHD's Table 1. A semantic segmentation network runs on every
  generated image and on its real counterpart (the oracle); pixel accuracy and mean IoU against the
  label map are reported for both (see `pix2pixhd_tf.evaluation.metrics` for the IoU conventions).
- ``fid``, ``kid``: from 2048-d InceptionV3 pool features (ImageNet weights; images resized bilinearly to
  299×299 without antialiasing, as TensorFlow's reference FID code does, then `inception_v3.preprocess_input`).
- ``swd``: multi-scale sliced Wasserstein distance on Laplacian-pyramid patches (no network needed); with a
  second real split (`reference_dir`) the report also gives SWD(that split, real) and the ratio
  SWD(generated, real) / SWD(reference, real).

Inputs follow the official layout: real images `{dataroot}/{phase}_img`, label maps `{dataroot}/{phase}_label`
(8-bit class ids), paired by sorted order with their names checked (`pix2pixhd_tf.data.files`). With
``label_nc=0`` they are `{phase}_B` and `{phase}_A`, and ``seg`` is not available. Generated images are the
PNG/JPEG files of `results_dir`; each is matched to its label map by name (`match_samples`): its stem is the
label's stem, or the label's stem followed by `generated_suffix` (default ``_synthesized_image``, what the
official test.py writes). When some files carry the suffix, only those are taken (so the official ``*_input_label`` and
``*_real_image`` files beside them are skipped); otherwise every file must be named exactly like its label.

Segmenters (`load_segmenter`) are a `.keras` file or a SavedModel directory. A SavedModel's
``serving_default`` signature (or its only signature) must take one [N, H, W, 3] tensor, uint8 (0..255) or
float32 (scaled by `input_range`, 0..255 by default), and return [N, H, W, C] logits or probabilities (the
arg-max is taken) or [N, H, W] integer class ids. With several outputs, pass `output_key` or name one of
``logits``, ``probabilities``, ``predictions``, ``class_ids``. `pix2pixhd_tf.evaluation.segmenter` trains and exports one.

Every problem with the inputs raises a `ValueError` subclass naming the file or value and the fix: an
`EvaluationError` (`pix2pixhd_tf.evaluation.readers`, which reads the files) or one of its subclasses here,
a `DatasetError` (`pix2pixhd_tf.data.files`) for the data set's own folders.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from pix2pixhd_tf.data.classes import CITYSCAPES_TRAIN_IDS, CITYSCAPES_TRAIN_NAMES, ClassTable
from pix2pixhd_tf.data.files import DatasetLayout, list_folder_files
from pix2pixhd_tf.evaluation import metrics as metrics_lib
from pix2pixhd_tf.evaluation.readers import EvaluationError, list_images, read_label, read_rgb
from pix2pixhd_tf.evaluation.segmenter import CropToMatch

ALL_METRICS = ("seg", "fid", "kid", "swd")
INCEPTION_SIZE = 299

LABEL_MAPPINGS = ("none", "cityscapes")


class PairingError(EvaluationError):
    """Files that should correspond (label/image, generated/label) do not."""


class ImageSizeError(EvaluationError):
    """An image and its label map (or two image sets) differ in size."""


class SegmenterError(EvaluationError):
    """The segmenter cannot be used with these labels (class count, signature, output shape)."""


# ----------------------------------------------------------------------------------------------------
# Files.


def paired_files(dataroot: str | Path, phase: str, label_nc: int) -> list[tuple[Path, Path]]:
    """(label map, real image) paths of the official layout, paired and checked by `pix2pixhd_tf.data.files`.

    Args:
      dataroot: the data set root.
      phase: the folder prefix (train, val, test).
      label_nc: number of label classes; 0 uses `{phase}_A` / `{phase}_B` instead of `_label` / `_img`.

    Returns:
      The pairs, in sorted order.

    Raises:
      DatasetError: (a `ValueError`) if a folder is missing or empty, the counts or names do not correspond,
        a label map and its image differ in size, or a file is unreadable; the message names the file.
    """
    layout = DatasetLayout(str(dataroot), label_nc, instances=False)
    files = list_folder_files(layout, phase=phase, require_images=True)
    return [(Path(label.path), Path(image.path)) for label, image in zip(files.label, files.image)]


@dataclasses.dataclass(frozen=True)
class Sample:
    """One evaluated image: the label map's stem and the three files."""

    name: str
    label: Path
    real: Path
    generated: Path


def match_samples(
    dataroot: str | Path,
    phase: str,
    results_dir: str | Path,
    *,
    label_nc: int,
    generated_suffix: str = "_synthesized_image",
) -> list[Sample]:
    """Matches every generated image of `results_dir` to its label map and real image by name.

    Labels without a generated image are skipped (the report gives the count evaluated).

    Args:
      dataroot: the data set root.
      phase: the split holding the labels and real images.
      results_dir: folder of generated images.
      label_nc: as in `paired_files`.
      generated_suffix: optional name ending of generated images after the label stem (see module doc).

    Returns:
      The samples, sorted by name.

    Raises:
      DatasetError: for problems with the data set folders (see `paired_files`).
      EmptyFolderError: if `results_dir` is missing or holds no image.
      PairingError: if a generated image matches no label, or two generated images match the same one.
    """
    pairs = {label.stem: (label, image) for label, image in paired_files(dataroot, phase, label_nc)}
    generated = list_images(results_dir)
    if generated_suffix and any(p.stem.endswith(generated_suffix) for p in generated):
        candidates = [(p.stem[: -len(generated_suffix)], p) for p in generated if p.stem.endswith(generated_suffix)]
    else:
        candidates = [(p.stem, p) for p in generated]
    unmatched = [p.name for key, p in candidates if key not in pairs]
    if unmatched:
        example = next(iter(pairs))
        raise PairingError(
            f"{len(unmatched)} generated image(s) in {results_dir} match no label map of {phase}: "
            f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}. Name each like its label map "
            f"(e.g. {example}.png or {example}{generated_suffix or '_synthesized_image'}.png; the ending is "
            "--generated_suffix) and keep other files out of the folder"
        )
    samples: dict[str, Sample] = {}
    for key, path in candidates:
        if key in samples:
            raise PairingError(f"{samples[key].generated} and {path} both match label {key}; keep one of them")
        label, real = pairs[key]
        samples[key] = Sample(key, label, real, path)
    return [samples[key] for key in sorted(samples)]


def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    height, width = size
    if array.shape[:2] == (height, width):
        return array
    image = Image.fromarray(array.astype(np.uint8 if array.ndim == 3 else np.int32))
    return np.asarray(image.resize((width, height), resample)).astype(array.dtype)


def label_lookup(label_mapping: str) -> tuple[np.ndarray | None, tuple[str, ...] | None]:
    """The id lookup table ([256] int32, 255 = ignored) and class names of a `LABEL_MAPPINGS` entry.

    Raises:
      EvaluationError: for an unknown mapping.
    """
    if label_mapping == "none":
        return None, None
    if label_mapping == "cityscapes":
        table = np.full(256, 255, np.int32)
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            table[label_id] = train_id
        return table, CITYSCAPES_TRAIN_NAMES
    raise EvaluationError(f"unknown label mapping {label_mapping!r}; use one of {LABEL_MAPPINGS}")


# ----------------------------------------------------------------------------------------------------
# Segmenters.


class Segmenter:
    """A segmentation network as a function: uint8 images [N, H, W, 3] -> int32 class ids [N, H, W].

    Build it with `load_segmenter`, or directly around any callable returning scores or ids.

    Args:
      fn: takes one tensor of `input_dtype` and returns [N, H, W, C] scores or [N, H, W] ids.
      input_dtype: tf.uint8 (images passed as they are) or tf.float32 (scaled by `input_range`).
      source: where it came from (for messages and the report).
      num_classes: C when known in advance (checked against each output), else None.
      input_range: for float inputs: "0_255", "0_1" or "-1_1".
      input_size: (height, width) when the network only takes one size, else None.
    """

    _RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "0_255": (1.0, 0.0),
        "0_1": (1 / 255.0, 0.0),
        "-1_1": (1 / 127.5, -1.0),
    }

    def __init__(
        self,
        fn,
        *,
        input_dtype: tf.DType,
        source: str,
        num_classes: int | None = None,
        input_range: str = "0_255",
        input_size: tuple[int, int] | None = None,
    ):
        if input_range not in self._RANGES:
            raise SegmenterError(f"input_range {input_range!r} must be one of {sorted(self._RANGES)}")
        if input_dtype not in (tf.uint8, tf.float32):
            raise SegmenterError(f"segmenter {source} takes {input_dtype.name} images; it must take uint8 or float32")
        self.fn = fn
        self.input_dtype = input_dtype
        self.source = source
        self.num_classes = num_classes
        self.input_range = input_range
        self.input_size = input_size

    def check_num_classes(self, expected: int, label_nc: int) -> None:
        """Raises `SegmenterError` if the segmenter's class count is known and differs from `expected`."""
        if self.num_classes is not None and self.num_classes != expected:
            raise SegmenterError(
                f"segmenter {self.source} predicts {self.num_classes} classes but the labels have {expected} "
                f"(label_nc={label_nc}); pass the label_nc the segmenter was trained with, a --label_mapping "
                f"that maps the labels to its classes, or train a matching one with "
                f"tools/train_segmenter.py --label_nc={label_nc}"
            )

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Class ids [N, H, W] of uint8 images [N, H, W, 3].

        Raises:
          SegmenterError: if the output is not [N, H, W, C] or [N, H, W] at the input size.
        """
        images = np.asarray(images, np.uint8)
        if self.input_size is not None and images.shape[1:3] != self.input_size:
            raise SegmenterError(
                f"segmenter {self.source} only takes {self.input_size[0]}x{self.input_size[1]} images, got "
                f"{images.shape[1]}x{images.shape[2]}; pass --eval_size={self.input_size[0]}x{self.input_size[1]}"
            )
        if self.input_dtype == tf.uint8:
            inputs = tf.constant(images)
        else:
            scale, offset = self._RANGES[self.input_range]
            inputs = tf.constant(images.astype(np.float32) * scale + offset)
        outputs = np.asarray(self.fn(inputs))
        if outputs.shape[:3] != images.shape[:3] or outputs.ndim not in (3, 4):
            raise SegmenterError(
                f"segmenter {self.source} returned shape {outputs.shape} for images {images.shape}; it must return "
                "[N, H, W, C] scores or [N, H, W] class ids at the input resolution"
            )
        if outputs.ndim == 4:
            if self.num_classes is None:
                self.num_classes = outputs.shape[-1]
            elif outputs.shape[-1] != self.num_classes:
                raise SegmenterError(
                    f"segmenter {self.source} returned {outputs.shape[-1]} classes, expected {self.num_classes}"
                )
            return outputs.argmax(axis=-1).astype(np.int32)
        if not np.issubdtype(outputs.dtype, np.integer):
            raise SegmenterError(
                f"segmenter {self.source} returned [N, H, W] {outputs.dtype} values; "
                "3-D outputs must be integer class ids"
            )
        return outputs.astype(np.int32)


_OUTPUT_KEYS = ("logits", "probabilities", "predictions", "class_ids")


def _pick_output(outputs: dict, output_key: str | None, source: str):
    if output_key is not None:
        if output_key not in outputs:
            raise SegmenterError(f"segmenter {source} has no output {output_key!r}; its outputs are {sorted(outputs)}")
        return output_key
    if len(outputs) == 1:
        return next(iter(outputs))
    for key in _OUTPUT_KEYS:
        if key in outputs:
            return key
    raise SegmenterError(f"segmenter {source} has outputs {sorted(outputs)}; choose one with --segmenter_output_key")


def load_segmenter(path: str | Path, *, output_key: str | None = None, input_range: str = "0_255") -> Segmenter:
    """Loads a `.keras` segmentation model or a SavedModel directory (see the module doc for the contract).

    Args:
      path: the `.keras` file or SavedModel directory.
      output_key: which output to use when there are several.
      input_range: value range of float32 inputs: "0_255", "0_1" or "-1_1".

    Returns:
      The `Segmenter`.

    Raises:
      SegmenterError: if the path is neither, or the signature does not fit the contract.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        model = keras.saving.load_model(path, custom_objects={"CropToMatch": CropToMatch}, compile=False)
        outputs = model.outputs[0] if len(model.outputs) == 1 else None
        if outputs is None:
            raise SegmenterError(f"segmenter {path} has {len(model.outputs)} outputs; export it with one")
        num_classes = outputs.shape[-1] if len(outputs.shape) == 4 else None
        dtype = tf.as_dtype(model.inputs[0].dtype)
        height, width = model.inputs[0].shape[1:3]
        return Segmenter(
            lambda x: model(x, training=False),
            input_dtype=dtype,
            source=str(path),
            num_classes=num_classes,
            input_range=input_range,
            input_size=(height, width) if height and width else None,
        )
    if not (path / "saved_model.pb").is_file():
        raise SegmenterError(f"segmenter {path} is neither a .keras file nor a SavedModel directory (saved_model.pb)")
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    if "serving_default" in signatures:
        signature = signatures["serving_default"]
    elif len(signatures) == 1:
        signature = next(iter(signatures.values()))
    else:
        raise SegmenterError(f"SavedModel {path} has signatures {sorted(signatures)} and none is serving_default")
    args, kwargs = signature.structured_input_signature
    specs = list(kwargs.items())
    if args or len(specs) != 1 or specs[0][1].shape.rank != 4 or specs[0][1].shape[-1] not in (3, None):
        raise SegmenterError(
            f"the serving signature of {path} takes {kwargs or args}; it must take one [N, H, W, 3] image tensor"
        )
    input_name, input_spec = specs[0]
    height, width = input_spec.shape[1], input_spec.shape[2]
    output_specs = signature.structured_outputs
    key = _pick_output(output_specs, output_key, str(path))
    output_shape = output_specs[key].shape
    num_classes = output_shape[-1] if output_shape.rank == 4 else None

    def call(images):
        return signature(**{input_name: images})[key]

    call.saved_model = loaded  # keeps the loaded object (and its variables) alive
    return Segmenter(
        call,
        input_dtype=input_spec.dtype,
        source=str(path),
        num_classes=num_classes,
        input_range=input_range,
        input_size=(height, width) if height and width else None,
    )


# ----------------------------------------------------------------------------------------------------
# InceptionV3 features.


def build_inception(weights: str | None = "imagenet", image_size: int = INCEPTION_SIZE) -> keras.Model:
    """InceptionV3 without its classifier, global-average pooled: [N, S, S, 3] -> [N, 2048].

    Args:
      weights: "imagenet" (Keras downloads and caches them in ~/.keras/models), the path of the
        `inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5` file, or None (random, for tests).
      image_size: input side S (299 for FID; at least 75).

    Returns:
      The feature model.

    Raises:
      EvaluationError: if `weights` is a path that does not exist.
    """
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise EvaluationError(
            f"InceptionV3 weights file {weights} does not exist; pass 'imagenet' to download them or the path of "
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
        )
    return keras.applications.InceptionV3(
        include_top=False, pooling="avg", weights=weights, input_shape=(image_size, image_size, 3)
    )


class FeatureCollector:
    """Features of images added one at a time, run through `model` in batches.

    Every image is resized bilinearly (no antialiasing) to `image_size`² as 0..255 floats, then mapped by
    `keras.applications.inception_v3.preprocess_input` (to [-1, 1]).

    Args:
      model: maps [N, S, S, 3] to [N, D] (InceptionV3 from `build_inception`, or a stand-in).
      image_size: S.
      batch_size: images per model call.
    """

    def __init__(self, model: keras.Model, image_size: int = INCEPTION_SIZE, batch_size: int = 16):
        self.model = model
        self.image_size = image_size
        self.batch_size = batch_size
        self._pending: list[np.ndarray] = []
        self._features: list[np.ndarray] = []

    def add(self, image: np.ndarray) -> None:
        """Queues one uint8 [H, W, 3] image (runs the model when a batch is full)."""
        resized = tf.image.resize(
            tf.constant(np.asarray(image), tf.float32)[None], (self.image_size, self.image_size), "bilinear"
        )
        self._pending.append(resized[0].numpy())
        if len(self._pending) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        batch = keras.applications.inception_v3.preprocess_input(np.stack(self._pending))
        self._pending = []
        features = np.asarray(self.model.predict_on_batch(batch))
        if features.ndim != 2:
            raise EvaluationError(f"the feature model returned shape {features.shape}; it must return [N, D]")
        self._features.append(features.astype(np.float64))

    def result(self) -> np.ndarray:
        """All features so far, [N, D] (float64)."""
        self._flush()
        return np.concatenate(self._features) if self._features else np.zeros((0, 0))


def inception_features(
    images: Iterable[np.ndarray], model: keras.Model, *, image_size: int = INCEPTION_SIZE, batch_size: int = 16
) -> np.ndarray:
    """[N, D] features of uint8 [H, W, 3] images (see `FeatureCollector` for the preprocessing)."""
    collector = FeatureCollector(model, image_size, batch_size)
    for image in images:
        collector.add(image)
    return collector.result()


# ----------------------------------------------------------------------------------------------------
# The protocol.


def evaluate(
    dataroot: str | Path,
    results_dir: str | Path,
    *,
    label_nc: int,
    phase: str = "test",
    metrics: Sequence[str] = ALL_METRICS,
    segmenter: str | Path | Segmenter | None = None,
    label_mapping: str = "none",
    ignore_index: int | None = None,
    inception_weights: str | None = "imagenet",
    feature_model: keras.Model | None = None,
    feature_image_size: int = INCEPTION_SIZE,
    generated_suffix: str = "_synthesized_image",
    eval_size: tuple[int, int] | None = None,
    reference_dir: str | Path | None = None,
    swd_config: metrics_lib.SWDConfig | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    feature_batch: int = 16,
    progress: bool = True,
) -> dict:
    """Scores the generated images of `results_dir` against `{dataroot}/{phase}` in one pass over the files.

    Args:
      dataroot: data set root in the official layout.
      results_dir: folder of generated images (matching rules in `match_samples`).
      label_nc: number of label classes of the data set (0: RGB inputs, no segmentation score).
      phase: split holding the label maps and real images.
      metrics: any of "seg", "fid", "kid", "swd".
      segmenter: a `Segmenter` or the path given to `load_segmenter` (needed for "seg").
      label_mapping: "none", or "cityscapes" to score the 19 Cityscapes train ids from label ids. Without a
        mapping, class names come from `{dataroot}/meta.json` when it has label_nc of them
        (`ClassTable.from_meta`), else classes are numbered.
      ignore_index: a ground-truth id (after mapping) left out of the scores, e.g. 0 "unlabeled"; ids
        >= the class count are always left out.
      inception_weights: for "fid"/"kid": "imagenet", a notop .h5 path, or None (random: tests only).
      feature_model: a ready feature model used instead of building InceptionV3.
      feature_image_size: side the images are resized to for the feature model.
      generated_suffix: optional name ending of generated images.
      eval_size: (height, width) to resize labels (nearest), real and generated images (bicubic) to;
        None requires them to have the same size already.
      reference_dir: a folder of other real images (e.g. `{dataroot}/train_img`) for the reference SWD.
      swd_config: SWD parameters (None: the paper's, `metrics.SWDConfig()`).
      kid_subsets: KID subsets.
      kid_subset_size: KID subset size (at most the image count).
      feature_batch: images per feature-model (InceptionV3) call.
      progress: show a progress bar.

    Returns:
      The report: a JSON-ready dict (see `format_markdown` for its parts).

    Raises:
      EvaluationError: for an unknown metric or mapping, "seg" without a segmenter or labels, and all
        the file, size and segmenter problems of `match_samples`, `load_segmenter` and the checks here.
      DatasetError: for problems with the data set's folders (see `paired_files`).
    """
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown or not metrics:
        raise EvaluationError(f"unknown metrics {unknown or metrics}; choose from {','.join(ALL_METRICS)}")
    samples = match_samples(dataroot, phase, results_dir, label_nc=label_nc, generated_suffix=generated_suffix)
    lookup, class_names = label_lookup(label_mapping)
    if class_names is None:
        table = ClassTable.from_meta(dataroot, label_nc)
        class_names = table.names if table else None

    seg = None
    if "seg" in metrics:
        if label_nc == 0:
            raise EvaluationError("the segmentation score needs label maps; with label_nc=0 drop seg from --metrics")
        if segmenter is None:
            raise EvaluationError(
                "the segmentation score needs a segmenter: pass --segmenter=PATH (a SavedModel or .keras file, e.g. "
                "from tools/train_segmenter.py) or drop seg from --metrics"
            )
        if not isinstance(segmenter, Segmenter):
            segmenter = load_segmenter(segmenter)
        num_classes = len(CITYSCAPES_TRAIN_NAMES) if label_mapping == "cityscapes" else label_nc
        segmenter.check_num_classes(num_classes, label_nc)
        seg = {"generated": np.zeros((num_classes, num_classes), np.int64), "real": None}
        seg["real"] = seg["generated"].copy()

    features = None
    if "fid" in metrics or "kid" in metrics:
        model = feature_model or build_inception(inception_weights, feature_image_size)
        features = {k: FeatureCollector(model, feature_image_size, feature_batch) for k in ("generated", "real")}
    swd_config = swd_config or metrics_lib.SWDConfig()
    swd = {k: metrics_lib.SWDDescriptors(swd_config) for k in ("generated", "real")} if "swd" in metrics else None

    first_size = None
    for sample in tqdm(samples, desc="evaluate", disable=not progress):
        real, generated = read_rgb(sample.real), read_rgb(sample.generated)
        label = read_label(sample.label) if label_nc else None
        reference_shape, reference_file = (
            (label.shape, sample.label) if label is not None else (real.shape[:2], sample.real)
        )
        if eval_size is None:
            for image, path in ((generated, sample.generated), (real, sample.real)):
                if image.shape[:2] != reference_shape[:2]:
                    raise ImageSizeError(
                        f"{path} is {image.shape[0]}x{image.shape[1]} but {reference_file} is "
                        f"{reference_shape[0]}x{reference_shape[1]}; generate at the label resolution or pass "
                        f"--eval_size=HxW to resize everything to one size"
                    )
        else:
            real, generated = _resize(real, eval_size, Image.BICUBIC), _resize(generated, eval_size, Image.BICUBIC)
            label = _resize(label, eval_size, Image.NEAREST) if label is not None else None
        first_size = first_size or real.shape[:2]
        if seg is not None:
            ground_truth = lookup[np.clip(label, 0, 255)] if lookup is not None else label
            for key, image in (("generated", generated), ("real", real)):
                prediction = segmenter(image[None])[0]  # one at a time: some SavedModels fix the batch at 1
                seg[key] += metrics_lib.confusion_matrix(ground_truth, prediction, len(seg[key]), ignore_index)
        if features is not None:
            features["generated"].add(generated)
            features["real"].add(real)
        if swd is not None:
            swd["generated"].add(generated)
            swd["real"].add(real)

    report: dict = {
        "dataroot": str(dataroot),
        "phase": phase,
        "results_dir": str(results_dir),
        "num_images": len(samples),
        "image_size": list(first_size),
        "metrics": [m for m in ALL_METRICS if m in metrics],
    }
    if seg is not None:
        report["segmentation"] = {
            "segmenter": segmenter.source,
            "num_classes": len(seg["generated"]),
            "label_mapping": label_mapping,
            "ignore_index": ignore_index,
            "class_names": list(class_names) if class_names else None,
            "generated": metrics_lib.segmentation_scores(seg["generated"]).to_dict(),
            "real": metrics_lib.segmentation_scores(seg["real"]).to_dict(),
        }
    if features is not None:
        report.update(
            _feature_scores(features, metrics, inception_weights, feature_model, kid_subsets, kid_subset_size)
        )
    if swd is not None:
        report["swd"] = _swd_scores(swd, swd_config, reference_dir, eval_size, progress)
    return report


def _feature_scores(features, metrics, inception_weights, feature_model, kid_subsets, kid_subset_size) -> dict:
    generated, real = features["generated"].result(), features["real"].result()
    if len(generated) < 2:
        raise EvaluationError(f"FID and KID need at least 2 images, got {len(generated)}; drop fid,kid from --metrics")
    source = "custom feature model" if feature_model is not None else f"InceptionV3 weights={inception_weights}"
    notes = []
    if feature_model is None and inception_weights is None:
        notes.append("random InceptionV3 weights: for testing only, not comparable to published numbers")
    if len(generated) < generated.shape[1]:
        notes.append(
            f"{len(generated)} images < {generated.shape[1]} feature dimensions: FID is strongly biased "
            "upwards; compare only at equal image counts"
        )
    scores = {}
    if "fid" in metrics:
        scores["fid"] = {
            "generated_vs_real": metrics_lib.frechet_inception_distance(generated, real),
            "features": source,
            "notes": notes,
        }
    if "kid" in metrics:
        kid = metrics_lib.kernel_inception_distance(
            generated, real, num_subsets=kid_subsets, subset_size=kid_subset_size
        )
        scores["kid"] = {"generated_vs_real": kid.to_dict(), "features": source, "notes": notes}
    return scores


def _swd_scores(swd, config, reference_dir, eval_size, progress) -> dict:
    real_descriptors = swd["real"].finalize()
    level_shapes = swd["real"].level_shapes
    result = metrics_lib.swd_from_descriptors(swd["generated"].finalize(), real_descriptors, level_shapes, config)
    scores = {
        "config": dataclasses.asdict(config),
        "generated_vs_real": result.to_dict(),
        "reference": None,
        "ratio": None,
    }
    if reference_dir is not None:
        reference = metrics_lib.SWDDescriptors(config)
        for path in tqdm(list_images(reference_dir), desc="reference SWD", disable=not progress):
            image = read_rgb(path)
            image = _resize(image, eval_size, Image.BICUBIC) if eval_size else image
            reference.add(image)
        if len(reference.level_shapes) != len(level_shapes):
            raise ImageSizeError(
                f"images in {reference_dir} ({reference.level_shapes[0][0]}x{reference.level_shapes[0][1]}) and the "
                f"evaluated ones ({level_shapes[0][0]}x{level_shapes[0][1]}) give different pyramid depths; pass "
                "--eval_size=HxW to resize both"
            )
        ref = metrics_lib.swd_from_descriptors(reference.finalize(), real_descriptors, level_shapes, config)
        scores["reference"] = {"dir": str(reference_dir), "num_images": reference.num_images, **ref.to_dict()}
        scores["ratio"] = result.mean / ref.mean if ref.mean > 0 else None
    return scores


# ----------------------------------------------------------------------------------------------------
# Report.


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _confusion_cell(names: Sequence[str], worst: tuple[int, float] | None, real_row: Sequence[int]) -> str:
    """The generated images' worst confusion for one class, and the real images' share of the same mistake."""
    if worst is None:
        return "–"
    target, share = worst
    real_share = real_row[target] / max(sum(real_row), 1)
    return f"{names[target]} {100 * share:.0f}% ({100 * real_share:.0f}%)"


def format_markdown(report: dict) -> str:
    """The report as Markdown tables: a summary, then SWD per level and IoU (and worst confusion) per class."""
    lines = [
        (
            f"## Evaluation of {report['results_dir']} against {report['dataroot']} ({report['phase']}, "
            f"{report['num_images']} images of {report['image_size'][0]}x{report['image_size'][1]})"
        ),
        "",
        "| metric | generated | real (oracle / reference) |",
        "|---|---|---|",
    ]
    seg = report.get("segmentation")
    if seg:
        for name, key in (
            ("pixel accuracy", "pixel_accuracy"),
            ("mean IoU", "mean_iou"),
            ("mean class accuracy", "mean_accuracy"),
        ):
            lines.append(f"| {name} | {_fmt(seg['generated'][key])} | {_fmt(seg['real'][key])} |")
    if "fid" in report:
        lines.append(f"| FID | {_fmt(report['fid']['generated_vs_real'], 3)} | – |")
    if "kid" in report:
        kid = report["kid"]["generated_vs_real"]
        lines.append(f"| KID ×1e3 | {1e3 * kid['mean']:.3f} ± {1e3 * kid['std']:.3f} | – |")
    swd = report.get("swd")
    if swd:
        reference = swd["reference"]
        lines.append(
            f"| SWD ×1e3 (mean of levels) | {_fmt(swd['generated_vs_real']['mean'], 2)} | "
            f"{_fmt(reference['mean'], 2) if reference else '–'} |"
        )
        if swd["ratio"] is not None:
            lines.append(f"| SWD(generated, real) / SWD(reference, real) | {_fmt(swd['ratio'], 3)} | – |")
        lines += ["", "| SWD ×1e3 level | generated vs real | reference vs real |", "|---|---|---|"]
        for level, value in swd["generated_vs_real"]["levels"].items():
            ref_value = reference["levels"].get(level) if reference else None
            lines.append(f"| {level} | {_fmt(value, 2)} | {_fmt(ref_value, 2)} |")
    if seg:
        names = seg["class_names"] or [str(i) for i in range(seg["num_classes"])]
        lines += [
            "",
            "| class | IoU generated | IoU real | most often taken for, generated (real) |",
            "|---|---|---|---|",
        ]
        worst = metrics_lib.most_confused(seg["generated"]["confusion"])
        for c, name in enumerate(names):
            iou = [_fmt(seg[k]["per_class_iou"][c]) for k in ("generated", "real")]
            cell = _confusion_cell(names, worst[c], seg["real"]["confusion"][c])
            lines.append(f"| {name} | {iou[0]} | {iou[1]} | {cell} |")
        lines += [
            "",
            "IoU is – for classes in neither the labels nor the predictions; they are not in the mean. The last "
            "column names the wrong class that the segmenter gives most of a class's pixels in the generated "
            "images, with the share of that class's pixels it gets there and, in brackets, in the real images.",
        ]
    for key in ("fid", "kid"):
        for note in report.get(key, {}).get("notes", []):
            if f"Note: {note}" not in lines:
                lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def write_report(report: dict, output: str | Path) -> str:
    """Writes the report as JSON to `output` and as Markdown beside it (`.md`); returns the Markdown."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    markdown = format_markdown(report)
    output.with_suffix(".md").write_text(markdown)
    return markdown
