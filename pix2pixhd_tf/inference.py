"""Inference: a trained generator (+ encoder, + cluster bank) behind one small API.

    synth = Synthesizer.from_checkpoint(opts)              # G, E and clusters.npz of opts.name
    features = synth.sample_features(label, instance, seed=0, style=StyleSpec.load("red_car.json"))
    image = synth.generate(label, instance, features)      # uint8 [H, W, 3]

`tools/test.py` (`run_test`), the editor and the evaluation use this.

Inputs are numpy arrays or tensors, one sample ([H, W] ids, [H, W, C] images) or a batch ([N, H, W],
[N, H, W, C]); outputs follow the input (a batch in, a batch out). Label maps hold class ids (or, with
--label_nc 0, the input image in [-1, 1]); instance maps Cityscapes-style ids; images are floats in
[-1, 1] or uint8.

Sampled styles are those of the exported SavedModel: `generate(label, instance, seed=s)` gives the image
`generate_with_seed` gives with seed s (see `styles.sampling` for what a seed may be).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from pix2pixhd_tf import visualize
from pix2pixhd_tf.data.classes import ClassTable
from pix2pixhd_tf.data.dataset import build_dataset
from pix2pixhd_tf.data.files import DatasetLayout
from pix2pixhd_tf.data.dataset import list_dataset_files
from pix2pixhd_tf.experiment import Experiment, load_experiment
from pix2pixhd_tf.inputs import check_image_size, encode_input, from_uint8, generator_input, size_multiple, to_uint8
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import (
    ClusterBank,
    SeedLike,
    StyleSpec,
    apply_style,
    classes_of,
    sample_feature_map,
)

__all__ = [
    "Synthesizer",
    "TestResult",
    "run_test",
]

_LOG = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the wrapper


def _to_numpy(x: Any) -> np.ndarray:
    return x.numpy() if isinstance(x, tf.Tensor) else np.asarray(x)


class Synthesizer:
    """G (+ E + cluster bank) of one experiment, for generating images from label and instance maps."""

    def __init__(
        self,
        opts: Options,
        generator: keras.Model,
        encoder: keras.Model | None = None,
        clusters: ClusterBank | None = None,
        cluster_file: str | None = None,
    ):
        """
        Args:
            opts: the options the networks were built with (label_nc, no_instance, features ...).
            generator, encoder: the networks (E only for models that encode features).
            clusters: the cluster bank for sampling styles, if any.
            cluster_file: where the bank was (or would have been) read, for messages.
        """
        if clusters is not None and (clusters.label_nc, clusters.feat_num) != (opts.label_nc, opts.feat_num):
            raise ValueError(
                f"the cluster bank has label_nc={clusters.label_nc}, feat_num={clusters.feat_num}; the model "
                f"label_nc={opts.label_nc}, feat_num={opts.feat_num}"
            )
        self.opts = opts
        self.generator = generator
        self.encoder = encoder
        self.clusters = clusters
        self.cluster_file = cluster_file

    @classmethod
    def from_checkpoint(
        cls, opts: Options, *, which_epoch: str | None = None, cluster_file: str | None = None
    ) -> Synthesizer:
        """Load G (and E) from `{checkpoints_dir}/{name}/{which_epoch}` and, for feature models, the clusters.

        Args:
            opts: the flags the experiment was trained with (checked against its options.json).
            which_epoch: 'latest' or an epoch; default `opts.which_epoch`.
            cluster_file: a cluster bank to use (our .npz, or the official pickled .npy); by default
                `clusters.npz` beside the checkpoint, if it exists (sampling fails later if it does not).

        Raises:
            FileNotFoundError: no checkpoint, or an explicitly named cluster file is missing.
            ValueError: flags differ from the trained ones; the bank does not fit the model.
        """
        experiment = load_experiment(opts, which_epoch=which_epoch, cluster_file=cluster_file)
        return cls.from_experiment(experiment)

    @classmethod
    def from_experiment(cls, experiment: Experiment) -> Synthesizer:
        return cls(
            experiment.opts, experiment.generator, experiment.encoder, experiment.clusters, experiment.cluster_file
        )

    # ---------------------------------------------------------------- properties
    @property
    def uses_features(self) -> bool:
        """Whether G takes feat_num feature channels (--instance_feat / --label_feat)."""
        return self.opts.use_features

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (the generator's `size_multiple`)."""
        return size_multiple(self.generator)

    @property
    def feat_num(self) -> int:
        """The feature channels G takes (0 for a model without features)."""
        return self.opts.feat_num if self.uses_features else 0

    # ---------------------------------------------------------------- inputs
    def _batch(self, x: Any, spatial_ndim: int, what: str) -> tuple[np.ndarray, bool]:
        x = _to_numpy(x)
        if x.ndim == spatial_ndim:
            return x[None], True
        if x.ndim == spatial_ndim + 1:
            return x, False
        raise ValueError(
            f"{what} must have {spatial_ndim} dimensions (one sample) or {spatial_ndim + 1} (a batch), "
            f"got shape {x.shape}"
        )

    def _label(self, label: Any) -> tuple[np.ndarray, bool]:
        if self.opts.label_nc == 0:
            label, unbatched = self._batch(label, 3, "the input image (label_nc 0)")
            return self._float_image(label), unbatched
        label, unbatched = self._batch(label, 2, "the label map")
        if not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"the label map must hold integer class ids, got {label.dtype}")
        return label.astype(np.int32), unbatched

    def _ids(self, ids: Any, what: str) -> np.ndarray:
        ids, _ = self._batch(ids, 2, what)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"the {what} must hold integer ids, got {ids.dtype}")
        return ids.astype(np.int32)

    @staticmethod
    def _float_image(image: np.ndarray) -> np.ndarray:
        if image.dtype == np.uint8:
            return from_uint8(image).numpy()
        return image.astype(np.float32)

    def _instance(self, instance: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        if self.opts.no_instance:
            return None
        if instance is None:
            raise ValueError("this model was trained with instance maps (no --no_instance): pass the instance map")
        instance = self._ids(instance, "instance map")
        if instance.shape != shape:
            raise ValueError(f"the instance map {instance.shape} and the label map {shape} differ in N, H, W")
        return instance

    def regions(self, label: Any, instance: Any) -> np.ndarray:
        """The map features are pooled over: the instance map, or the label map with --label_feat ([N, H, W])."""
        if self.opts.label_feat:
            return self._ids(label, "label map")
        if instance is None:
            raise ValueError("an --instance_feat model pools features per instance: pass the instance map")
        return self._ids(instance, "instance map")

    # ---------------------------------------------------------------- features
    def _require_features(self, what: str) -> None:
        if not self.uses_features:
            raise ValueError(
                f"{what}: this model was trained without --instance_feat/--label_feat, so it takes no features"
            )

    def encode(self, image: Any, instance: Any, label: Any = None) -> np.ndarray:
        """E's instance-pooled features of a real image (the paper's "encoded image" style).

        Args:
            image: [H, W, C] or [N, H, W, C], float in [-1, 1] or uint8.
            instance: the instance map (ignored with --label_feat, which pools over `label`).
            label: the label map (needed with --label_feat).

        Returns:
            float32 [(N,) H, W, feat_num].
        """
        self._require_features("encode")
        if self.encoder is None:
            raise ValueError(
                "this model has no encoder (trained with --load_features): sample styles from a cluster bank "
                "(sample_features) or pass feature maps"
            )
        image, unbatched = self._batch(image, 3, "the image")
        if self.opts.label_feat and label is None:
            raise ValueError("a --label_feat model pools features per label: pass the label map")
        regions = self.regions(label, instance)
        if regions.shape != image.shape[:3]:
            raise ValueError(f"the image {image.shape} and the region map {regions.shape} differ in N, H, W")
        image = check_image_size(self._float_image(image), size_multiple(self.encoder), "the encoder input")
        features = self.encoder([image, tf.constant(regions, tf.int32)], training=False).numpy()
        return features[0] if unbatched else features

    def sample_features(
        self,
        label: Any,
        instance: Any,
        *,
        seed: SeedLike = None,
        style: StyleSpec | None = None,
        strict: bool = True,
    ) -> np.ndarray:
        """A cluster centre per instance, random (seeded) or as `style` says (see `styles.sample_feature_map`).

        Args:
            seed: an int (the seed of every image), one seed per image, a numpy Generator or None; for the
                same seeds the SavedModel's `generate_with_seed` samples the same features.

        Returns:
            float32 [(N,) H, W, feat_num].

        Raises:
            ValueError: no cluster bank for a region that needs sampling; a bad or (strict) unmatched spec entry.
        """
        self._require_features("sample_features")
        unbatched = np.ndim(_to_numpy(label)) == (3 if self.opts.label_nc == 0 else 2)
        regions = self.regions(label, instance)
        if self.clusters is None:
            style = style or StyleSpec()
            unstyled = [int(r) for r in np.unique(regions) if not isinstance(style.style_for(r), tuple)]
            if unstyled:
                raise ValueError(
                    f"no cluster bank: {self.cluster_file or 'none given'} does not exist, so regions "
                    f"{', '.join(map(str, unstyled[:10]))}{' ...' if len(unstyled) > 10 else ''} cannot be styled. "
                    "Run tools/encode_features.py for this experiment, pass --cluster_path, use "
                    "--use_encoded_image, or give those regions explicit feature vectors"
                )
        features = sample_feature_map(
            regions,
            self.clusters,
            feat_num=self.opts.feat_num,
            label_nc=self.opts.label_nc,
            seed=seed,
            style=style,
            strict=strict,
        )
        return features[0] if unbatched else features

    def apply_style(
        self, features: Any, label: Any, instance: Any, style: StyleSpec, *, strict: bool = True
    ) -> np.ndarray:
        """`features` with the regions named by `style` overwritten (e.g. on top of `encode`)."""
        self._require_features("apply_style")
        features = _to_numpy(features)
        regions = self.regions(label, instance)
        batch = features if features.ndim == 4 else features[None]
        out = apply_style(batch, regions, style, bank=self.clusters, label_nc=self.opts.label_nc, strict=strict)
        return out if features.ndim == 4 else out[0]

    # ---------------------------------------------------------------- generation
    def generate_float(
        self,
        label: Any,
        instance: Any = None,
        features: Any = None,
        *,
        seed: SeedLike = None,
        style: StyleSpec | None = None,
    ) -> np.ndarray:
        """G's output in [-1, 1], float32 [(N,) H, W, output_nc]; see `generate`."""
        label_b, unbatched = self._label(label)
        instance_b = self._instance(instance, label_b.shape[:3])
        conditioning = encode_input(label_b, instance_b, label_nc=self.opts.label_nc, input_nc=self.opts.input_nc)
        if self.uses_features:
            if features is None:
                features = self.sample_features(label_b, instance_b, seed=seed, style=style)
            elif style is not None:
                raise ValueError("pass either features or a style (apply a style to features with apply_style)")
            features = _to_numpy(features).astype(np.float32)
            if features.ndim == 3:
                features = features[None]
        elif features is not None or style is not None:
            self._require_features("generate with features or a style")
        x = generator_input(conditioning, features, feat_num=self.feat_num, size_multiple=self.size_multiple)
        output = tf.cast(self.generator(x, training=False), tf.float32).numpy()
        return output[0] if unbatched else output

    def generate(
        self,
        label: Any,
        instance: Any = None,
        features: Any = None,
        *,
        seed: SeedLike = None,
        style: StyleSpec | None = None,
    ) -> np.ndarray:
        """The synthesised image, uint8 [(N,) H, W, output_nc].

        Args:
            label: class ids [(N,) H, W] (label_nc 0: the input image [(N,) H, W, input_nc]).
            instance: instance ids (required unless the model was trained with --no_instance).
            features: [(N,) H, W, feat_num] for feature models (from `encode`, `sample_features` or your
                own); when None, styles are sampled from the cluster bank with `seed` and `style`.

        Raises:
            ValueError: sizes not multiples of the generator's `size_multiple`, missing instance map, label ids
                out of range (tf.errors.InvalidArgumentError), features for a model without them, or a wrong shape.
        """
        return to_uint8(self.generate_float(label, instance, features, seed=seed, style=style)).numpy()

    def class_variants(
        self, label: Any, instance: Any, class_id: int, *, seed: SeedLike = 0
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """One image per cluster of `class_id`: all its instances get centre k, everything else one fixed sample.

        Returns:
            (uint8 images [H, W, C], one per cluster in index order; the bool mask [H, W] of the class's regions).
        """
        self._require_features("class_variants")
        if self.clusters is None:
            raise ValueError(f"class_variants needs a cluster bank ({self.cluster_file or 'none'} does not exist)")
        count = int(self.clusters.counts[self.clusters._check_class(class_id)])
        if count == 0:
            raise ValueError(f"class {class_id} has no clusters ({self.clusters.describe()})")
        label_b, _ = self._label(label)
        instance_b = None if instance is None else self._ids(instance, "instance map")
        regions = self.regions(label_b, instance_b)
        if len(regions) != 1:
            raise ValueError(f"class_variants takes one sample, got a batch of {len(regions)}")
        mask = classes_of(regions) == class_id
        if not mask.any():
            present = sorted(set(classes_of(regions).tolist()))
            raise ValueError(f"class {class_id} does not occur in the map; classes present: {present}")
        base = self.sample_features(label_b, instance_b, seed=seed)
        images = []
        for k in range(count):
            features = base.copy()
            features[mask] = self.clusters.centers[class_id, k]
            images.append(self.generate(label_b, instance_b, features)[0])
        mask = mask[0]
        return images, mask


# ------------------------------------------------------------------------------------------ tools/test.py


@dataclasses.dataclass
class TestResult:
    web_dir: str  # {results_dir}/{name}/{phase}_{which_epoch}
    index_html: str
    rows: list[dict[str, str]]  # per image: name and label/generated/real paths relative to web_dir
    unmatched_style: tuple[list[int], list[int]]  # spec instance/class ids that matched no image


def run_test(
    opts: Options,
    *,
    style: StyleSpec | None = None,
    seed: int = 0,
    cluster_file: str | None = None,
    progress: bool = True,
) -> TestResult:
    """The official test.py: synthesise the first `how_many` samples of `{dataroot}/{phase}_label` (+ inst).

    Writes `{results_dir}/{name}/{phase}_{which_epoch}/images/NAME_{input_label,synthesized_image,real_image}.png`
    (real_image when `{phase}_img` exists) and `index.html` there (label | generated | real).

    Feature models: each instance gets a cluster of its class, sampled with seed `seed + i` for the i-th
    image (`styles.image_seeds`; the SavedModel's `generate_with_seed` with that seed gives the same image), then
    `style` overrides; with `opts.use_encoded_image` E encodes the real image instead (and `style` still
    overrides). Spec entries are matched per image; entries that match no image are reported (logged).

    Raises:
        ValueError: a style or --use_encoded_image for a model without features, a bad spec, ...
    """
    synth = Synthesizer.from_checkpoint(opts, cluster_file=cluster_file)
    if style and not synth.uses_features:
        raise ValueError(
            "--style_spec: this model was trained without --instance_feat/--label_feat, so it has no styles"
        )
    if opts.use_encoded_image and not synth.uses_features:
        raise ValueError("--use_encoded_image: this model was trained without --instance_feat/--label_feat")
    if style:
        style.validate(label_nc=opts.label_nc, feat_num=opts.feat_num, bank=synth.clusters)

    test_opts = opts.replace(batchSize=1, serial_batches=True, no_flip=True, load_features=False)
    files = list_dataset_files(DatasetLayout.of(test_opts), phase=opts.phase, require_images=opts.use_encoded_image)
    dataset = build_dataset(test_opts, training=False, with_paths=True, files=files)
    palette = ClassTable.for_dataset(opts.dataroot, opts.label_nc).palette
    web_dir = os.path.join(opts.results_dir, opts.name, f"{opts.phase}_{opts.which_epoch}")
    image_dir = os.path.join(web_dir, "images")
    rows, seen = [], []
    total = min(opts.how_many, len(files))
    for i, batch in enumerate(tqdm(dataset.take(opts.how_many), total=total, desc="test", disable=not progress)):
        label = batch["label"].numpy()
        instance = batch["instance"].numpy() if "instance" in batch else None
        features = None
        if synth.uses_features:
            regions = synth.regions(label, instance)
            seen.append(np.unique(regions))
            if opts.use_encoded_image:
                features = synth.encode(batch["image"], instance, label)
                if style:
                    features = synth.apply_style(features, label, instance, style, strict=False)
            else:
                features = synth.sample_features(label, instance, seed=seed + i, style=style, strict=False)
        generated = synth.generate(label, instance, features)
        name = os.path.splitext(os.path.basename(batch["path"][0].numpy().decode()))[0]
        row = {"name": name}
        visuals = {
            "label": ("input_label", visualize.input_visual(label[0], palette)),
            "generated": ("synthesized_image", generated[0]),
        }
        if "image" in batch:
            visuals["real"] = ("real_image", visualize.tensor_to_uint8(batch["image"][0]))
        for column, (suffix, array) in visuals.items():
            filename = f"{name}_{suffix}.png"
            visualize.save_image(os.path.join(image_dir, filename), array)
            row[column] = f"images/{filename}"
        rows.append(row)
    index = os.path.join(web_dir, "index.html")
    title = f"Experiment = {opts.name}, Phase = {opts.phase}, Epoch = {opts.which_epoch}"
    visualize.write_html_index(index, title, rows)
    unmatched = ([], [])
    if style and seen:
        unmatched = style.unmatched(np.concatenate(seen))
        if unmatched[0] or unmatched[1]:
            present = np.unique(np.concatenate(seen))
            _LOG.warning(
                "style spec entries matched no image: instances %s, classes %s (instances seen: %s)",
                unmatched[0],
                unmatched[1],
                ", ".join(map(str, present[:50])),
            )
    return TestResult(web_dir, index, rows, unmatched)
