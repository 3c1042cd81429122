"""Export a trained pix2pixHD generator for TF Serving (SavedModel) and for devices (TFLite).

Everything a client would otherwise re-implement runs in the graph: one-hot labels, the instance
boundary map, [-1, 1] <-> uint8 conversion, PNG decoding/encoding, cluster-bank style sampling and the
input checks (label range, image size), which fail with INVALID_ARGUMENT instead of silently producing
garbage. The SavedModel needs no project code and no custom objects to load.

Signatures (N = batch, H and W = any multiple of the generator's stride, see `export_info.json`):

| signature              | inputs                                                | outputs                      |
|------------------------|-------------------------------------------------------|------------------------------|
| serving_default        | label int32 [N,H,W], instance int32 [N,H,W]           | image uint8 [N,H,W,output_nc]|
| serving_png            | label_png_bytes string [N], instance_png_bytes [N]    | image_png_bytes string [N]   |
| generate_with_seed     | label, instance, seed int32 [N]       (feature models)| image                        |
| generate_with_features | label, instance, features float32 [N,H,W,feat_num]    | image                        |
| encode                 | image uint8 [N,H,W,output_nc], instance (encoder)     | features float32 [N,H,W,feat]|

`instance` inputs are left out for --no_instance models; label_nc 0 models take `input_image` uint8
[N,H,W,input_nc] (`input_image_png_bytes` in serving_png) instead of `label`; label_feat models pool
and sample per label region, so `encode` takes `label` instead of `instance`.

Style sampling (feature models): every instance (label region for label_feat) draws one of the
`counts[c]` cluster centres of its class c (Cityscapes ids: c = id // 1000 for ids >= 1000, else id) with
a counter-based random permutation keyed by (seed, instance id). The draw of an instance depends only on
the seed and its id, not on the other instances or its position in the batch; `serving_default` and
`serving_png` use seed 0 (`DEFAULT_SEED`), `generate_with_seed` takes one seed per example. Classes
without clusters, and every class of a model exported without a bank, get zero features.

TFLite: a fixed-size, batch-1 generator-only model (`export_tflite`), see its docstring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pix2pixhd_tf.inputs import instance_edges, one_hot_labels
from pix2pixhd_tf.experiment import load_experiment, load_networks
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import ClusterBank

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
TFLITE_VARIANTS = ("float32", "float16", "dynamic_range")
_SEED_SALT = 0x5EED  # second seed word, so seed 0 is not Philox's all-zero key
_MAX_SHUFFLE_INDEX = 2**31 - 1  # instance ids are folded into [0, 2^31) before the permutation


# ------------------------------------------------------------------------------------------- helpers


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255 (rounded, clipped), as `visualize.tensor_to_uint8`."""
    return tf.cast(tf.clip_by_value(tf.round((tf.cast(image, tf.float32) + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


def from_uint8(image: tf.Tensor) -> tf.Tensor:
    """uint8 0..255 -> float32 in [-1, 1], the data pipeline's normalisation."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def instance_class(ids: tf.Tensor) -> tf.Tensor:
    """The class of a Cityscapes instance id: id // 1000 for ids >= 1000, else the id itself."""
    return tf.where(ids >= 1000, ids // 1000, ids)


def check_size_multiple(x: tf.Tensor, multiple: int, what: str) -> tf.Tensor:
    """Return `x` [N,H,W,...] after asserting (in the graph) that H and W are multiples of `multiple`."""
    if multiple <= 1:
        return x
    shape = tf.shape(x)
    ok = tf.reduce_all(tf.equal(shape[1:3] % multiple, 0))
    check = tf.debugging.Assert(
        ok,
        [
            (
                f"{what}: height and width must be multiples of {multiple} (the network's total stride); "
                "resize, crop or pad the input to a multiple of"
            ),
            multiple,
            "got height and width",
            shape[1:3],
        ],
        summarize=4,
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def _check_same_size(a: tf.Tensor, b: tf.Tensor, what: str) -> tf.Tensor:
    """Return `a` after asserting it has the same N, H and W as `b`."""
    sa, sb = tf.shape(a)[:3], tf.shape(b)[:3]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(sa, sb)), [f"{what} must have the same batch, height and width; got", sa, "and", sb]
    )
    with tf.control_dependencies([check]):
        return tf.identity(a)


# -------------------------------------------------------------------------------------- cluster bank


@dataclasses.dataclass(frozen=True)
class DenseClusterBank:
    """Cluster centres as dense arrays: `centers` float32 [classes, K, feat_num], `counts` int32 [classes]
    (valid clusters of each class; 0 means that class gets zero features)."""

    centers: np.ndarray
    counts: np.ndarray

    def __post_init__(self):
        centers = np.asarray(self.centers, np.float32)
        counts = np.asarray(self.counts, np.int32)
        if centers.ndim != 3:
            raise ValueError(f"cluster centers must be [classes, K, feat_num], got shape {centers.shape}")
        if counts.shape != centers.shape[:1]:
            raise ValueError(f"cluster counts must be [classes]={centers.shape[:1]}, got shape {counts.shape}")
        if counts.size and (counts.min() < 0 or counts.max() > centers.shape[1]):
            raise ValueError(f"cluster counts must lie in 0..K={centers.shape[1]}, got {counts.min()}..{counts.max()}")
        object.__setattr__(self, "centers", centers)
        object.__setattr__(self, "counts", counts)


ClusterBankLike = Any  # DenseClusterBank | (centers, counts) | an object with as_dense() | a path | None


def resolve_cluster_bank(bank: ClusterBankLike) -> DenseClusterBank | None:
    """Accept a `styles.ClusterBank` (anything with `as_dense() -> (centers, counts)`), a (centers, counts)
    pair, a `DenseClusterBank`, a path (loaded with `styles.ClusterBank.load`) or None."""
    if bank is None or isinstance(bank, DenseClusterBank):
        return bank
    if isinstance(bank, (str, os.PathLike)):
        bank = ClusterBank.load(os.fspath(bank))
    if hasattr(bank, "as_dense"):
        bank = bank.as_dense()
    if isinstance(bank, Mapping):
        return DenseClusterBank(bank["centers"], bank["counts"])
    centers, counts = bank
    return DenseClusterBank(centers, counts)


def sample_features(
    regions: tf.Tensor,
    seed: tf.Tensor,
    bank: DenseClusterBank | None,
    *,
    feat_num: int,
    class_of=instance_class,
) -> tf.Tensor:
    """Per-region features drawn from the cluster bank: [N,H,W] ids, seed int32 [N] -> [N,H,W,feat_num].

    Every region (unique id per image) of class c = class_of(id) gets centre j of its class, with
    j = permutation_{seed}(id) mod counts[c]; a class outside the bank or without clusters gets zeros.
    """
    regions = tf.convert_to_tensor(regions)
    shape = tf.shape(regions)
    if bank is None:
        return tf.zeros(tf.concat([shape, [feat_num]], 0), tf.float32)
    if bank.centers.shape[2] != feat_num:
        raise ValueError(
            f"the cluster bank has {bank.centers.shape[2]} features per centre, the model feat_num={feat_num}"
        )
    ids = tf.cast(regions, tf.int64)
    batch_index = tf.broadcast_to(tf.range(shape[0], dtype=tf.int64)[:, None, None], tf.shape(ids))
    keys = tf.reshape(batch_index * (2**32) + (ids & 0xFFFFFFFF), [-1])
    unique_keys, segment = tf.unique(keys, out_idx=tf.int32)
    seg_batch = unique_keys // (2**32)
    seg_id = tf.cast(tf.bitcast(tf.cast(unique_keys & 0xFFFFFFFF, tf.uint32), tf.int32), tf.int64)

    classes = tf.cast(class_of(seg_id), tf.int32)
    n_classes = bank.centers.shape[0]
    known = (classes >= 0) & (classes < n_classes)
    classes = tf.where(known, classes, 0)
    counts = tf.where(known, tf.gather(tf.constant(bank.counts), classes), 0)

    seg_seed = tf.gather(tf.cast(seed, tf.int64), seg_batch)
    philox_seed = tf.stack(
        [tf.zeros_like(seg_seed), seg_seed, tf.fill(tf.shape(seg_seed), tf.constant(_SEED_SALT, tf.int64))], 1
    )
    draw = tf.raw_ops.RandomIndexShuffle(
        index=seg_id & _MAX_SHUFFLE_INDEX,
        seed=philox_seed,
        max_index=tf.constant(_MAX_SHUFFLE_INDEX, tf.int64),
        rounds=4,
    )
    cluster = tf.cast(draw % tf.cast(tf.maximum(counts, 1), tf.int64), tf.int32)
    centres = tf.gather_nd(tf.constant(bank.centers), tf.stack([classes, cluster], 1))
    centres *= tf.cast(counts > 0, tf.float32)[:, None]
    return tf.reshape(tf.gather(centres, segment), tf.concat([shape, [feat_num]], 0))


# ------------------------------------------------------------------------------------ the endpoints


class _Endpoints:
    """The in-graph pre/post-processing around G (and E) that every signature shares."""

    def __init__(
        self, opts: Options, generator: keras.Model, encoder: keras.Model | None, bank: DenseClusterBank | None
    ):
        if opts.label_feat and opts.label_nc == 0:
            raise ValueError("--label_feat pools features per label id, which a --label_nc 0 (RGB input) model lacks")
        self.opts = opts
        self.generator = generator
        self.encoder = encoder
        self.bank = bank
        self.use_instance = not opts.no_instance
        self.use_features = opts.use_features
        self.g_multiple = int(getattr(generator, "size_multiple", 1))
        self.e_multiple = 2**opts.n_downsample_E if encoder is not None else 1
        self.label_name = "label" if opts.label_nc else "input_image"
        # One trace of each network, shared by every signature (called as a function from each).
        self._generator_fn = tf.function(
            lambda x: generator(x, training=False),
            input_signature=[tf.TensorSpec([None, None, None, opts.generator_input_nc], tf.float32)],
            autograph=False,
        )
        if encoder is not None:
            self._encoder_fn = tf.function(
                lambda image, regions: encoder([image, regions], training=False),
                input_signature=[
                    tf.TensorSpec([None, None, None, opts.output_nc], tf.float32),
                    tf.TensorSpec([None, None, None], tf.int32),
                ],
                autograph=False,
            )
        self.region_name = "label" if opts.label_feat else "instance"

    # Specs ------------------------------------------------------------------------------------------
    def label_spec(self, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        n, h, w = fixed or (None, None, None)
        if self.opts.label_nc:
            return tf.TensorSpec([n, h, w], tf.int32, name="label")
        return tf.TensorSpec([n, h, w, self.opts.input_nc], tf.uint8, name="input_image")

    @staticmethod
    def ids_spec(name: str, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        return tf.TensorSpec(list(fixed or (None, None, None)), tf.int32, name=name)

    def features_spec(self, fixed: tuple[int, int, int] | None = None) -> tf.TensorSpec:
        return tf.TensorSpec(list(fixed or (None, None, None)) + [self.opts.feat_num], tf.float32, name="features")

    def map_specs(self, fixed=None) -> list[tf.TensorSpec]:
        """label (or input_image), then instance unless no_instance."""
        specs = [self.label_spec(fixed)]
        if self.use_instance:
            specs.append(self.ids_spec("instance", fixed))
        return specs

    # Graph pieces -----------------------------------------------------------------------------------
    def input_map(self, label: tf.Tensor, instance: tf.Tensor | None) -> tf.Tensor:
        """[one-hot | boundaries] (or the normalised RGB input), checked for range, size and shape."""
        if self.opts.label_nc:
            label = tf.cast(label, tf.int32)
            label = check_size_multiple(label[..., None], self.g_multiple, "generator input")[..., 0]
            parts = [one_hot_labels(label, self.opts.label_nc)]
        else:
            image = check_size_multiple(label, self.g_multiple, "generator input")
            parts = [from_uint8(image)]
        if instance is not None:
            instance = _check_same_size(tf.cast(instance, tf.int32), label, "label and instance")
            parts.append(instance_edges(instance))
        return tf.concat(parts, -1) if len(parts) > 1 else parts[0]

    def generate(self, label, instance, features=None) -> tf.Tensor:
        """G's output in [-1, 1], float32."""
        x = self.input_map(label, instance)
        if self.use_features:
            features = _check_same_size(tf.cast(features, tf.float32), x, "features and label")
            x = tf.concat([x, features], -1)
        return tf.cast(self.run_generator(x), tf.float32)

    def run_generator(self, x: tf.Tensor) -> tf.Tensor:
        return self._generator_fn(x)

    def sampled_features(self, label, instance, seed) -> tf.Tensor:
        regions = label if self.opts.label_feat else instance
        class_of = (lambda ids: ids) if self.opts.label_feat else instance_class
        return sample_features(regions, seed, self.bank, feat_num=self.opts.feat_num, class_of=class_of)

    def generate_sampled(self, label, instance, seed) -> tf.Tensor:
        features = self.sampled_features(label, instance, seed) if self.use_features else None
        return self.generate(label, instance, features)

    def encode(self, image, regions) -> tf.Tensor:
        image = check_size_multiple(image, self.e_multiple, "encoder input")
        regions = _check_same_size(tf.cast(regions, tf.int32), image, f"image and {self.region_name}")
        return tf.cast(self._encoder_fn(from_uint8(image), regions), tf.float32)

    # PNG I/O ----------------------------------------------------------------------------------------
    @staticmethod
    def decode_id_png(png: tf.Tensor, what: str) -> tf.Tensor:
        """A single-channel 8- or 16-bit PNG -> int32 [H,W]; the bit depth is read from the IHDR header
        (decode_png with dtype uint16 would scale 8-bit values by 257)."""
        header = tf.io.decode_raw(tf.strings.substr(png, 24, 2), tf.uint8)
        check = tf.debugging.Assert(
            tf.logical_and(tf.equal(tf.size(header), 2), tf.equal(header[-1], 0)),
            [f"{what} must be a single-channel (grayscale) 8- or 16-bit PNG id map, not a palette or RGB PNG"],
        )
        with tf.control_dependencies([check]):
            depth = tf.identity(header[0])
        ids = tf.cond(
            tf.equal(depth, 16),
            lambda: tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint16), tf.int32),
            lambda: tf.cast(tf.io.decode_png(png, channels=1, dtype=tf.uint8), tf.int32),
        )
        return ids[..., 0]

    def decode_label_png(self, png: tf.Tensor) -> tf.Tensor:
        if self.opts.label_nc:
            return self.decode_id_png(png, "label_png_bytes")
        return tf.io.decode_png(png, channels=self.opts.input_nc, dtype=tf.uint8)

    def png_endpoint(self, label_png, instance_png=None) -> tf.Tensor:
        """One image at a time (tf.map_fn), so a request, or a server-side batch, may mix image sizes."""

        def one(args):
            label = self.decode_label_png(args[0])[None]
            instance = self.decode_id_png(args[1], "instance_png_bytes")[None] if self.use_instance else None
            seed = tf.constant([DEFAULT_SEED], tf.int32)
            image = to_uint8(self.generate_sampled(label, instance, seed))[0]
            return tf.io.encode_png(image)

        elems = (label_png, instance_png) if self.use_instance else (label_png,)
        return tf.map_fn(one, elems, fn_output_signature=tf.TensorSpec([], tf.string))

    # Signatures -------------------------------------------------------------------------------------
    def signatures(self) -> dict[str, tuple[Any, list[tf.TensorSpec]]]:
        """name -> (python function with named arguments, input specs); outputs are dicts."""
        sigs: dict[str, tuple[Any, list[tf.TensorSpec]]] = {}
        maps = self.map_specs()

        def default_seed(label):
            return tf.fill(tf.shape(label)[:1], DEFAULT_SEED)

        if self.use_instance:

            def serving_default(label, instance):
                return {"image": to_uint8(self.generate_sampled(label, instance, default_seed(label)))}

            def serving_png(label_png_bytes, instance_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes, instance_png_bytes)}

            instance_png_spec = [tf.TensorSpec([None], tf.string, name="instance_png_bytes")]
        else:

            def serving_default(label):
                return {"image": to_uint8(self.generate_sampled(label, None, default_seed(label)))}

            def serving_png(label_png_bytes):
                return {"image_png_bytes": self.png_endpoint(label_png_bytes)}

            instance_png_spec = []
        label_png_name = "label_png_bytes" if self.opts.label_nc else "input_image_png_bytes"
        sigs["serving_default"] = (serving_default, maps)
        sigs["serving_png"] = (serving_png, [tf.TensorSpec([None], tf.string, name=label_png_name)] + instance_png_spec)

        if self.use_features:
            seed_spec = tf.TensorSpec([None], tf.int32, name="seed")
            if self.use_instance:

                def generate_with_seed(label, instance, seed):
                    return {"image": to_uint8(self.generate_sampled(label, instance, seed))}

                def generate_with_features(label, instance, features):
                    return {"image": to_uint8(self.generate(label, instance, features))}

            else:

                def generate_with_seed(label, seed):
                    return {"image": to_uint8(self.generate_sampled(label, None, seed))}

                def generate_with_features(label, features):
                    return {"image": to_uint8(self.generate(label, None, features))}

            sigs["generate_with_seed"] = (generate_with_seed, maps + [seed_spec])
            sigs["generate_with_features"] = (generate_with_features, maps + [self.features_spec()])

        if self.encoder is not None:
            image_spec = tf.TensorSpec([None, None, None, self.opts.output_nc], tf.uint8, name="image")
            if self.opts.label_feat:

                def encode(image, label):
                    return {"features": self.encode(image, label)}

            else:

                def encode(image, instance):
                    return {"features": self.encode(image, instance)}

            sigs["encode"] = (encode, [image_spec, self.ids_spec(self.region_name)])
        return sigs


# ------------------------------------------------------------------------------------- SavedModel


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named subdirectory of `export_dir` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(n) for n in os.listdir(export_dir) if re.fullmatch(r"\d+", n)]
    return max(versions, default=0) + 1


def signature_table(functions: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The signatures as data: name, inputs and outputs with dtype and shape (None = any).

    `functions` maps names to tf.functions with an input signature (traced once, then cached).
    """
    rows = []
    for name, fn in functions.items():
        concrete = fn.get_concrete_function()
        specs = fn.input_signature
        outputs = concrete.structured_outputs
        rows.append(
            {
                "name": name,
                "inputs": {s.name: {"dtype": s.dtype.name, "shape": s.shape.as_list()} for s in specs},
                "outputs": {k: {"dtype": v.dtype.name, "shape": v.shape.as_list()} for k, v in outputs.items()},
            }
        )
    return rows


def _readme(opts: Options, endpoints: _Endpoints, table: list[dict[str, Any]], version: int) -> str:
    lines = [
        f"# pix2pixHD SavedModel `{opts.name}`, version {version}",
        "",
        "Generated by `pix2pixhd_tf.serving.saved_model.export_saved_model`; loads with plain `tf.saved_model.load` and TF Serving.",
        f"Height and width must be multiples of {endpoints.g_multiple}"
        + (f" ({endpoints.e_multiple} for `encode`)" if endpoints.encoder is not None else "")
        + "; other sizes and label ids >= label_nc "
        f"({opts.label_nc}) fail with INVALID_ARGUMENT. Images are uint8 0..255.",
        "",
        "| signature | inputs | outputs |",
        "|---|---|---|",
    ]

    def fmt(specs: dict) -> str:
        return ", ".join(f"`{k}` {v['dtype']} {v['shape']}" for k, v in specs.items())

    lines += [f"| `{row['name']}` | {fmt(row['inputs'])} | {fmt(row['outputs'])} |" for row in table]
    if endpoints.use_features:
        lines += ["", "## Styles (instance features)", ""]
        if endpoints.bank is None:
            lines.append(
                "**This model was exported without a cluster bank: `serving_default`, `serving_png` and "
                "`generate_with_seed` use zero features for every class.** Use `generate_with_features` "
                "(e.g. with `encode` on a reference image) to choose styles, or re-export with a bank."
            )
        else:
            counts = endpoints.bank.counts
            lines.append(
                f"Embedded cluster bank: {counts.shape[0]} classes, up to {endpoints.bank.centers.shape[1]} clusters "
                f"each, {int((counts > 0).sum())} classes with clusters (the others get zero features). Each "
                "instance draws a cluster of its class (class = id // 1000 for ids >= 1000, else id) from a random "
                f"permutation keyed by (seed, instance id): `serving_default` / `serving_png` use seed {DEFAULT_SEED}, "
                "`generate_with_seed` one seed per example. Same seed and id, same style."
            )
    return "\n".join(lines) + "\n"


def export_saved_model(
    opts: Options,
    export_dir: str,
    version: int | None = None,
    cluster_bank: ClusterBankLike = None,
    generator: keras.Model | None = None,
    encoder: keras.Model | None = None,
) -> str:
    """Write a TF Serving SavedModel to `export_dir/<version>/`.

    Args:
        opts: the model's options (label_nc, no_instance, features, netG, ...).
        export_dir: the model's base path for TF Serving (holds one integer directory per version).
        version: the version number; None takes the next free one. An existing version is never overwritten.
        cluster_bank: styles for feature models (a `styles.ClusterBank`, (centers, counts) arrays, a
            `DenseClusterBank` or a bank file); None gives zero features to every class, and says so.
        generator, encoder: the networks; when `generator` is None both are loaded from the checkpoint
            (`opts.checkpoints_dir/opts.name`, `opts.which_epoch`).

    Returns:
        The version directory written.

    Raises:
        FileExistsError: `version` already exists.
        ValueError: options or cluster bank inconsistent with the model.
    """
    if generator is None:
        generator, _, encoder = load_networks(opts)
    if opts.use_encoder and encoder is None:
        logger.warning("no encoder given for a feature model: the export has no `encode` signature")
    bank = resolve_cluster_bank(cluster_bank)
    if bank is not None and not opts.use_features:
        raise ValueError("a cluster bank was given for a model without features (--instance_feat / --label_feat)")
    if bank is not None and opts.label_nc and bank.centers.shape[0] != opts.label_nc:
        raise ValueError(f"the cluster bank has {bank.centers.shape[0]} classes but the model label_nc={opts.label_nc}")
    if opts.use_features and bank is None:
        logger.warning(
            "exporting a feature model without a cluster bank: serving_default and serving_png will use zero "
            "features for every class (noted in assets.extra/README.md)"
        )
    endpoints = _Endpoints(opts, generator, encoder, bank)

    version = next_version(export_dir) if version is None else int(version)
    target = os.path.join(export_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists: pick another --version or leave it out to take the next free one")
    os.makedirs(export_dir, exist_ok=True)

    archive = keras.export.ExportArchive()
    archive.track(generator)
    if encoder is not None:
        archive.track(encoder)
    functions = {
        name: archive.add_endpoint(name, fn, input_signature=specs)
        for name, (fn, specs) in endpoints.signatures().items()
    }

    # Write beside the target and rename: TF Serving polls export_dir and must never see a partial version.
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=export_dir)
    try:
        archive.write_out(tmp, verbose=False)
        table = signature_table(functions)
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with open(os.path.join(extra, "README.md"), "w") as f:
            f.write(_readme(opts, endpoints, table, version))
        info = {
            "name": opts.name,
            "version": version,
            "size_multiple": endpoints.g_multiple,
            "encode_size_multiple": endpoints.e_multiple if encoder is not None else None,
            "label_nc": opts.label_nc,
            "output_nc": opts.output_nc,
            "feat_num": opts.feat_num if opts.use_features else 0,
            "cluster_bank": None
            if bank is None
            else {"classes": int(bank.centers.shape[0]), "clusters": int(bank.centers.shape[1])},
            "default_seed": DEFAULT_SEED,
            "signatures": table,
            "options": dataclasses.asdict(opts),
        }
        with open(os.path.join(extra, "export_info.json"), "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (signatures: %s)", target, ", ".join(row["name"] for row in table))
    return target


def export_model(
    opts: Options,
    export_dir: str,
    *,
    version: int | None = None,
    cluster_file: str | None = None,
    tflite_size: tuple[int, int] | None = None,
    tflite_variants: Sequence[str] = TFLITE_VARIANTS,
) -> dict[str, Any]:
    """What `tools/export.py` does: load G (+E) and the cluster bank of an experiment once, write the
    SavedModel version and, if `tflite_size` is given, TFLite files to `export_dir/tflite/<version>/`
    (TF Serving ignores non-integer directories).

    Returns:
        {'saved_model': version dir, 'tflite': {variant: path}, 'cluster_bank': path or None}.
    """
    experiment = load_experiment(opts, cluster_file=cluster_file)
    generator, encoder, bank, bank_path = experiment.generator, experiment.encoder, experiment.clusters, None
    if bank is not None:
        bank_path = experiment.cluster_file
        logger.info("embedding the cluster bank %s", bank_path)
    saved_model = export_saved_model(opts, export_dir, version, bank, generator=generator, encoder=encoder)
    tflite = {}
    if tflite_size is not None:
        tflite_dir = os.path.join(export_dir, "tflite", os.path.basename(saved_model))
        tflite = export_tflite(opts, tflite_dir, size=tflite_size, variants=tflite_variants, generator=generator)
    return {"saved_model": saved_model, "tflite": tflite, "cluster_bank": bank_path}


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' (height x width) -> (512, 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise ValueError(f"size {text!r} must be HEIGHTxWIDTH, e.g. 512x1024")
    return int(match.group(1)), int(match.group(2))


# ----------------------------------------------------------------------------------------- TFLite


class _FrozenEndpoints(_Endpoints):
    """G's weights as graph constants (`stateless_call`): the TFLite converter leaves Keras 3 variables
    as uninitialised READ_VARIABLE ops, which run on garbage (the NaNs of DESIGN.md §6)."""

    def __init__(self, opts: Options, generator: keras.Model):
        super().__init__(opts, generator, None, None)
        self.trainable = [tf.constant(keras.ops.convert_to_numpy(v)) for v in generator.trainable_variables]
        self.non_trainable = [tf.constant(keras.ops.convert_to_numpy(v)) for v in generator.non_trainable_variables]

    def run_generator(self, x: tf.Tensor) -> tf.Tensor:
        y, _ = self.generator.stateless_call(self.trainable, self.non_trainable, x, training=False)
        return y


def _tflite_module(endpoints: _Endpoints, size: tuple[int, int]) -> tf.Module:
    """A batch-1, fixed-size generator-only module: the label/instance encoding stays in the graph
    (ONE_HOT, NOT_EQUAL, CONCATENATION are TFLite builtins); the feature map is an input."""
    h, w = size
    fixed = (1, h, w)
    specs = endpoints.map_specs(fixed)
    if endpoints.use_features:
        specs.append(endpoints.features_spec(fixed))
    names = [s.name for s in specs]

    def serve(*args):
        kw = dict(zip(names, args))
        label = kw[endpoints.label_name]
        y = endpoints.generate(label, kw.get("instance"), kw.get("features"))
        return {"image": to_uint8(y), "image_float": y}

    module = tf.Module()
    module.serve = tf.function(serve, input_signature=specs, autograph=False)
    return module


def export_tflite(
    opts: Options,
    output_dir: str,
    *,
    size: tuple[int, int],
    variants: Sequence[str] = TFLITE_VARIANTS,
    generator: keras.Model | None = None,
) -> dict[str, str]:
    """Convert the generator to TFLite files at a fixed size, one per variant.

    The model is batch 1 and generator-only: inputs `label` int32 [1,H,W] (`input_image` uint8 [1,H,W,
    input_nc] for label_nc 0), `instance` int32 [1,H,W] unless no_instance, and for feature models
    `features` float32 [1,H,W,feat_num] (no encoder and no cluster sampling: compute features with the
    SavedModel's `encode` or pick cluster centres yourself). Outputs: `image` uint8 [1,H,W,output_nc] and
    `image_float` float32 in [-1, 1]. Label ids are NOT range-checked (TFLite drops Assert ops): ids >=
    label_nc give an all-zero one-hot.

    Variants: float32; float16 (weights stored as float16, computed in float32 on CPU); dynamic_range
    (int8 weights, activations quantised on the fly). Converted with `TFLiteConverter.from_saved_model`
    on a fixed-shape SavedModel written for the purpose (from_concrete_functions gave NaNs, DESIGN.md §6).

    Returns:
        {variant: path of the .tflite file}, files named `{opts.name}_{H}x{W}_{variant}.tflite`.
    """
    unknown = set(variants) - set(TFLITE_VARIANTS)
    if unknown:
        raise ValueError(f"unknown TFLite variants {sorted(unknown)}; choose from {', '.join(TFLITE_VARIANTS)}")
    h, w = size
    if generator is None:
        generator, _, _ = load_networks(opts)
    endpoints = _FrozenEndpoints(opts, generator)
    if h % endpoints.g_multiple or w % endpoints.g_multiple:
        raise ValueError(f"TFLite size {h}x{w}: height and width must be multiples of {endpoints.g_multiple}")
    os.makedirs(output_dir, exist_ok=True)
    module = _tflite_module(endpoints, (h, w))
    paths = {}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve.get_concrete_function()})
        for variant in variants:
            converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
            if variant == "float16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif variant == "dynamic_range":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            path = os.path.join(output_dir, f"{opts.name}_{h}x{w}_{variant}.tflite")
            with open(path, "wb") as f:
                f.write(converter.convert())
            paths[variant] = path
            logger.info("wrote %s (%.1f KiB)", path, os.path.getsize(path) / 1024)
    return paths


def _interpreter(path: str, num_threads: int | None = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # LiteRT is the successor of tf.lite.Interpreter, which still works
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path, num_threads=num_threads)


def run_tflite(
    path: str, inputs: Mapping[str, np.ndarray], signature: str = "serving_default", num_threads: int | None = None
) -> dict[str, np.ndarray]:
    """Run a .tflite file's signature on named numpy inputs (LiteRT when installed, else tf.lite)."""
    interpreter = _interpreter(path, num_threads)
    runner = interpreter.get_signature_runner(signature)
    return {k: np.asarray(v) for k, v in runner(**{k: np.asarray(v) for k, v in inputs.items()}).items()}


def benchmark_tflite(path: str, runs: int = 10, num_threads: int | None = None) -> dict[str, float]:
    """File size and CPU latency of one .tflite file on valid dummy inputs (zeros: label 0 everywhere).

    Returns {'size_mb', 'mean_ms', 'median_ms', 'min_ms'} and prints one line.
    """
    interpreter = _interpreter(path, num_threads)
    runner = interpreter.get_signature_runner("serving_default")
    inputs = {name: np.zeros(d["shape"], d["dtype"]) for name, d in runner.get_input_details().items()}
    runner(**inputs)  # warm-up: allocation and kernel preparation
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        runner(**inputs)
        times.append((time.perf_counter() - start) * 1000.0)
    result = {
        "size_mb": os.path.getsize(path) / 2**20,
        "mean_ms": float(np.mean(times)),
        "median_ms": float(np.median(times)),
        "min_ms": float(np.min(times)),
    }
    print(
        f"{os.path.basename(path)}: {result['size_mb']:.2f} MiB, CPU latency median {result['median_ms']:.1f} ms "
        f"(mean {result['mean_ms']:.1f}, min {result['min_ms']:.1f}, {len(times)} runs)"
    )
    return result
