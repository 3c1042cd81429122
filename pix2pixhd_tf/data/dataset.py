"""The tf.data input pipeline: batches of {'label', 'instance', 'image', 'feat', 'path'} dictionaries.

    files = list_dataset_files(DatasetLayout.of(opts), phase="train")  # checks all it can without decoding
    dataset = build_dataset(opts, training=True)       # or with files=files, input_context=, seed= ...

Each element is a batch of dicts:

  'label'     int32 [B, H, W] label ids; with label_nc 0 float32 [B, H, W, input_nc] in [-1, 1] ({phase}_A)
  'instance'  int32 [B, H, W] instance ids (8-bit, 16-bit or palette PNG); iff not --no_instance
  'image'     float32 [B, H, W, output_nc] in [-1, 1]; when the image folder exists
  'feat'      float32 [B, H, W, feat_num]; iff --load_features
  'path'      string [B], the label file; iff with_paths

Decisions:
  * Storage: `--dataroot` is a folder on any filesystem `tf.io.gfile` knows (local, gs://, ram://, the
    schemes tensorflow-io registers), or TFRecord shards (a glob such as /data/train-*.tfrecord, or a folder of
    `*.tfrecord` files; see `data/tfrecords.py`), detected by `list_dataset_files`. Either way a sample's
    files arrive as bytes (`tf.io.read_file`, or one seek-and-read of its record) and then go through the
    same decoders and transforms, over the same shuffled table of samples: folder and shards give identical
    batches for a seed.
  * Decoding is tf.io (decode_png / decode_image), chosen per file from its header: 8-bit and 16-bit
    single-channel PNG id maps decode natively; palette ('P') maps and maps that PIL opens as 32-bit 'I'
    go through PIL in a numpy_function (so palette indices, not colours, are the ids), as do images in
    modes TF converts differently from PIL's convert('RGB'). Datasets without such files have a pure-TF graph.
  * Feature maps ({phase}_feat): PNG/JPEG images as the official precompute_feature_maps.py writes them
    (the encoder's tanh output as an RGB image, so feat_num must be 3; read back as x / 127.5 - 1, like the
    official loader), or float32 .npy arrays of shape (H, W, feat_num), used as they are (any feat_num).
    Either way they are resized by nearest neighbour.
  * Label ids >= label_nc: checked in the graph on every decoded label map (a reduce_max, cheap), failing
    with a tf.errors.InvalidArgumentError whose message names the file and the fix. Scanning every map up
    front would decode the whole dataset before training; `list_dataset_files(..., deep_check=True)` does
    exactly that for those who want the error before training starts.
  * Corrupt files: `list_dataset_files` opens every header (a file PIL cannot identify fails there) and
    checks that PNG/JPEG files end with their end marker (a truncated file -- the usual corruption -- fails
    there); both raise DatasetError naming the file. Damage inside the compressed data of a complete file
    is only found by decoding: `deep_check=True` finds it up front; otherwise TF's decoder fails during
    training (PIL-decoded files name the file, tf.io decoders do not).
  * Randomness: the order comes from `shuffle(seed=seed, reshuffle_each_iteration=True)` and every
    sample's crop offset and flip from stateless ops seeded by (a number from
    `Dataset.random(seed=seed, rerandomize_each_iteration=True)`, the sample's index), `seed` being
    `build_dataset`'s argument (default opts.seed). Two datasets built with the same options and seed give
    the same batches, every epoch differs from the last, and the parallel map is deterministic
    (`deterministic=True`).
"""

from __future__ import annotations

import io
import os
import re

import numpy as np
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.data import tfrecords, transforms
from pix2pixhd_tf.data.files import (
    DECODE_NATIVE,
    DECODE_NPY,
    DECODE_PIL,
    DECODE_PNG8,
    DECODE_PNG16,
    DatasetError,
    DatasetFiles,
    DatasetLayout,
    RecordLocation,
    corrupt_message,
    label_range_message,
    read_bytes,
    read_record,
)
from pix2pixhd_tf.data.files import list_folder_files
from pix2pixhd_tf.options import Options

__all__ = [
    "DatasetError",
    "DatasetFiles",
    "DatasetLayout",
    "build_dataset",
    "find_unreadable_file",
    "list_dataset_files",
    "output_size",
    "sample_order",
]

_PIL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def build_dataset(
    opts: Options,
    *,
    phase: str | None = None,
    seed: int | None = None,
    training: bool = True,
    input_context: tf.distribute.InputContext | None = None,
    with_paths: bool = False,
    repeat: bool = False,
    files: DatasetFiles | None = None,
) -> tf.data.Dataset:
    """The batched input pipeline of `phase` (default `opts.phase`).

    Args:
      opts: the options (dataroot, label_nc, batchSize, loadSize, fineSize, resize_or_crop, no_flip,
        serial_batches, max_dataset_size, nThreads, seed, no_instance, load_features, ...).
      phase: the folder prefix (train, test ...; default `opts.phase`); ignored when `files` are given.
      seed: the seed of the order, crops and flips (default `opts.seed`; the trainer passes one per epoch).
      training: random crops, flips (unless --no_flip), shuffling (unless --serial_batches) and
        drop_remainder; the image folder must exist. Otherwise centred crops, no flip, keep every sample.
      input_context: from `strategy.distribute_datasets_from_function`: this pipeline reads its shard of the
        files and yields per-replica batches of `input_context.get_per_replica_batch_size(opts.batchSize)`.
      with_paths: add 'path' (the label file of each sample).
      repeat: repeat forever (each pass reshuffled and re-augmented).
      files: already listed files (e.g. from `list_dataset_files(..., deep_check=True)`); if None, the files
        of `DatasetLayout.of(opts)` and `phase` are listed.

    Returns:
      A dataset of batches of dicts, as described in the module docstring.

    Raises:
      DatasetError: anything `list_dataset_files` finds, fewer samples than one batch when training, or
        samples whose transformed sizes differ when batches have more than one sample.
    """
    require_images = training or opts.use_encoded_image
    seed = opts.seed if seed is None else seed
    layout = DatasetLayout.of(opts)
    if files is None:
        files = list_dataset_files(layout, phase=phase or opts.phase, require_images=require_images)
    if require_images and files.image is None:
        folder = os.path.join(files.root, layout.folders(files.phase)["image"])
        raise DatasetError(f"Missing image folder {folder!r}: training and --use_encoded_image need real images.")
    image_channels = {"output_nc": opts.output_nc, **({"input_nc": opts.input_nc} if opts.label_nc == 0 else {})}
    for name, channels in image_channels.items():
        if channels not in _PIL_MODES:
            raise ValueError(f"--{name}={channels}: images can have 1, 3 or 4 channels.")

    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(opts.batchSize)
        num_shards, shard = input_context.num_input_pipelines, input_context.input_pipeline_id
    else:
        batch_size, num_shards, shard = opts.batchSize, 1, 0
    shard_size = len(range(shard, len(files), num_shards))
    if training and shard_size < batch_size:
        raise DatasetError(
            f"{files.label[0].path} and the rest of its folder give {shard_size} sample(s) per input pipeline, "
            f"fewer than one batch of {batch_size}: lower --batchSize or add data."
        )

    geometries = [transforms.plan_geometry(opts, f.width, f.height) for f in files.label]
    final_sizes = {g.final for g in geometries}
    for f, g in zip(files.label, geometries):
        if min(g.final) <= 0:
            raise DatasetError(
                f"{f.path} ({f.width}x{f.height}) is too small: after --resize_or_crop={opts.resize_or_crop} "
                f"its sides round to multiples of {opts.size_multiple} as {g.final[1]}x{g.final[0]}; "
                f"use larger images or a larger --loadSize/--fineSize."
            )
    if batch_size > 1 and len(final_sizes) > 1:
        (h0, w0), first = geometries[0].final, files.label[0]
        (h1, w1), other = next((g.final, f) for f, g in zip(files.label, geometries) if g.final != (h0, w0))
        raise DatasetError(
            f"Samples of a batch must have one size, but {first.path} becomes {w0}x{h0} and {other.path} "
            f"becomes {w1}x{h1}: use --resize_or_crop resize_and_crop or crop, images of one aspect ratio, or "
            f"--batchSize 1."
        )
    static_size = next(iter(final_sizes)) if len(final_sizes) == 1 else (None, None)

    table = _file_table(files, geometries)
    elements = tf.data.Dataset.from_tensor_slices(table)
    if num_shards > 1:
        elements = elements.shard(num_shards, shard)
    if training and not opts.serial_batches:
        elements = elements.shuffle(shard_size, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        elements = elements.repeat()
    randoms = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    dataset = tf.data.Dataset.zip((elements, randoms))

    load = _SampleLoader(opts, files, training=training, with_paths=with_paths, static_size=static_size)
    parallel = opts.nThreads if opts.nThreads > 0 else tf.data.AUTOTUNE
    dataset = dataset.map(load, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options)


def list_dataset_files(
    layout: DatasetLayout, *, phase: str, require_images: bool = False, deep_check: bool = False
) -> DatasetFiles:
    """The checked samples of a dataset: the official folder layout, or TFRecord shards.

    --dataroot names shards when it is a glob (`/data/train-*.tfrecord`), a `.tfrecord` file or a folder
    holding `*.tfrecord` files but no `{phase}_label` / `{phase}_A` folder (`tfrecords.list_record_files`;
    the shards hold the phase they were packed from); otherwise it is the folder of
    `files.list_folder_files`, whose arguments these are.

    Raises:
      DatasetError: whatever those find, naming the file, shard or index; `require_images` and shards
        packed without real images.
    """
    if not tfrecords.is_record_dataroot(layout.dataroot, phase):
        return list_folder_files(layout, phase=phase, require_images=require_images, deep_check=deep_check)
    files = tfrecords.list_record_files(layout, deep_check=deep_check)
    if require_images and files.image is None:
        raise DatasetError(
            f"The shards {layout.dataroot} hold no real images (packed from a folder without {files.phase}_img): "
            f"training and --use_encoded_image need them; pack a folder with images."
        )
    return files


def output_size(opts: Options, width: int, height: int) -> tuple[int, int]:
    """(height, width) of a `width` x `height` sample after the load-time transforms."""
    return transforms.plan_geometry(opts, width, height).final


def sample_order(opts: Options, files: DatasetFiles, seed: int, training: bool = True) -> list[int]:
    """The order in which `build_dataset(opts, seed=seed, training=training, files=files)` (one input
    pipeline) reads the samples on its first pass: the same seeded shuffle over the sample indices."""
    n = len(files)
    if not training or opts.serial_batches:
        return list(range(n))
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return [int(i) for i in order.as_numpy_iterator()]


def find_unreadable_file(
    opts: Options, files: DatasetFiles, first: list[int] | tuple[int, ...] = ()
) -> tuple[str, str] | None:
    """(path, message) of the first file the input pipeline cannot use, or None if every file decodes.

    Each file is decoded eagerly with the pipeline's own decoder (so it fails where training failed) and
    label maps are checked against label_nc. The samples `first` are tried first: after a failure during
    training, the ones the pipeline was reading, so the culprit is usually found after a few files.
    """
    loader = _SampleLoader(opts, files, training=False, with_paths=False, static_size=(None, None))
    kinds = [kind for kind in ("label", "instance", "image", "feat") if getattr(files, kind) is not None]
    seen = set()
    for index in [*first, *range(len(files))]:
        if index in seen or not 0 <= index < len(files):
            continue
        seen.add(index)
        for kind in kinds:
            info = getattr(files, kind)[index]
            try:
                pixels = loader.decode_file(kind, info)
            except (tf.errors.OpError, DatasetError, OSError, ValueError) as e:
                if isinstance(e, DatasetError):  # PIL-decoded files: the message already names the file
                    return info.path, str(e)
                return info.path, corrupt_message(info.path, DecodeError(op_error_text(e)))
            if kind == "label" and opts.label_nc > 0 and pixels.size and int(pixels.max()) >= opts.label_nc:
                return info.path, label_range_message(info.path, int(pixels.max()), opts.label_nc)
    return None


def op_error_text(error: BaseException) -> str:
    """A TensorFlow error's message on one line, without the `{{function_node ...}}` prefix."""
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\].*$", "", text, flags=re.DOTALL)
    return " ".join(text.split())


class DecodeError(Exception):
    """What the pipeline's decoder said about a file (named so in `corrupt_message`)."""


# ----------------------------------------------------------------------------------------------------------


def _file_table(files: DatasetFiles, geometries: list[transforms.Geometry]) -> dict[str, np.ndarray]:
    table = {
        "index": np.arange(len(files), dtype=np.int64),
        "size": np.array([(f.height, f.width) for f in files.label], np.int32),
        "resized": np.array([g.resized for g in geometries], np.int32),
        "window": np.array([g.window for g in geometries], np.int32),
        "max_offset": np.array([g.max_offset for g in geometries], np.int32),
        "final": np.array([g.final for g in geometries], np.int32),
    }
    for kind in ("label", "instance", "image", "feat"):
        infos = getattr(files, kind)
        if infos is not None:
            table[f"{kind}_path"] = np.array([f.path for f in infos], dtype=object)
            table[f"{kind}_decode"] = np.array([f.decode for f in infos], np.int32)
            if kind == "feat":
                table["feat_offset"] = np.array([f.npy_offset for f in infos], np.int32)
    if files.label[0].record is not None:  # TFRecord shards: where each sample's Example lies
        table["record_shard"] = np.array([f.record.shard for f in files.label], dtype=object)
        table["record_offset"] = np.array([f.record.offset for f in files.label], np.int64)
        table["record_length"] = np.array([f.record.length for f in files.label], np.int64)
    return table


class _SampleLoader:
    """Maps one row of the file table (and a random number) to the transformed sample dict."""

    def __init__(self, opts: Options, files: DatasetFiles, *, training: bool, with_paths: bool, static_size):
        self.opts = opts
        self.training = training
        self.flip = training and not opts.no_flip
        self.with_paths = with_paths
        self.static_size = tuple(static_size)
        self.decoders = {
            kind: sorted({f.decode for f in getattr(files, kind)})
            for kind in ("label", "instance", "image", "feat")
            if getattr(files, kind) is not None
        }
        self.from_records = files.label[0].record is not None

    def read(self, row: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The bytes of every file of the sample: from its filesystem, or its shard's Example (one read)."""
        if not self.from_records:
            return {kind: tf.io.read_file(row[f"{kind}_path"]) for kind in self.decoders}
        location = [row["record_shard"], row["record_offset"], row["record_length"], row["label_path"]]
        serialized = tf.numpy_function(_read_record, location, tf.string, stateful=False)
        features = {kind: tf.io.FixedLenFeature([], tf.string) for kind in self.decoders}
        return tf.io.parse_single_example(tf.ensure_shape(serialized, []), features)

    def __call__(self, row: dict[str, tf.Tensor], random: tf.Tensor) -> dict[str, tf.Tensor]:
        opts = self.opts
        seed = tf.stack([random, row["index"]])
        geometry = {k: row[k] for k in ("resized", "window", "max_offset", "final")}
        params = transforms.draw_params(geometry, seed, self.training, self.flip)
        data = self.read(row)
        sample = {}

        path = row["label_path"]
        if opts.label_nc == 0:
            label = self._decode_image(data["label"], path, row["label_decode"], opts.input_nc, self.decoders["label"])
            sample["label"] = self._image(label, geometry, params, opts.input_nc)
        else:
            label = self._decode_ids(data["label"], path, row["label_decode"], self.decoders["label"])
            label = self._check_label_range(label, path)
            sample["label"] = self._ids(label, geometry, params)
        if "instance" in self.decoders:
            instance = self._decode_ids(
                data["instance"], row["instance_path"], row["instance_decode"], self.decoders["instance"]
            )
            sample["instance"] = self._ids(instance, geometry, params)
        if "image" in self.decoders:
            image = self._decode_image(
                data["image"], row["image_path"], row["image_decode"], opts.output_nc, self.decoders["image"]
            )
            sample["image"] = self._image(image, geometry, params, opts.output_nc)
        if "feat" in self.decoders:
            sample["feat"] = self._feat(data["feat"], row, geometry, params)
        if self.with_paths:
            sample["path"] = path
        return sample

    def decode_file(self, kind: str, info) -> np.ndarray:
        """One file decoded eagerly, exactly as this loader decodes it in the graph (for error hunting)."""
        raw = read_bytes(info)
        if kind == "feat" and info.decode == DECODE_NPY:
            return np.load(io.BytesIO(raw), allow_pickle=False)
        data, path, decode = tf.constant(raw), tf.constant(info.path), tf.constant(info.decode)
        if kind == "feat":
            return self._decode_image(data, path, decode, 3, [info.decode]).numpy()
        if kind in ("label", "instance") and not (kind == "label" and self.opts.label_nc == 0):
            return self._decode_ids(data, path, decode, [info.decode]).numpy()
        channels = self.opts.input_nc if kind == "label" else self.opts.output_nc
        return self._decode_image(data, path, decode, channels, [info.decode]).numpy()

    # Transforms ------------------------------------------------------------------------------------------

    def _ids(self, ids, geometry, params):
        ids = transforms.apply(ids, geometry, params, "nearest")
        ids.set_shape(self.static_size + (1,))
        return ids[..., 0]

    def _image(self, image, geometry, params, channels):
        image = transforms.apply(tf.cast(image, tf.float32), geometry, params, "bicubic")
        # PIL resamples in uint8: clip and round like it before scaling to [-1, 1].
        image = tf.round(tf.clip_by_value(image, 0.0, 255.0)) / 127.5 - 1.0
        image.set_shape(self.static_size + (channels,))
        return image

    def _feat(self, data, row, geometry, params):
        feat_num = self.opts.feat_num
        if self.decoders["feat"] == [DECODE_NPY]:
            shape = tf.concat([row["size"], [feat_num]], axis=0)
            data = tf.strings.substr(data, row["feat_offset"], tf.reduce_prod(shape) * 4)
            feat = tf.reshape(tf.io.decode_raw(data, tf.float32, little_endian=True), shape)
            feat = transforms.apply(feat, geometry, params, "nearest")
        else:  # Images as precompute_feature_maps.py writes them: (feat + 1) / 2 * 255 in RGB.
            feat = self._decode_image(data, row["feat_path"], row["feat_decode"], 3, self.decoders["feat"])
            feat = transforms.apply(tf.cast(feat, tf.float32), geometry, params, "nearest") / 127.5 - 1.0
        feat.set_shape(self.static_size + (feat_num,))
        return feat

    def _check_label_range(self, label, path):
        label_nc = self.opts.label_nc
        max_id = tf.reduce_max(label)
        head, tail = label_range_message("\0", "\0", label_nc).split("\0", 1)
        middle, tail = tail.split("\0", 1)
        message = tf.strings.join([head, path, middle, tf.strings.as_string(max_id), tail])
        check = tf.debugging.Assert(max_id < label_nc, [message])
        with tf.control_dependencies([check]):
            return tf.identity(label)

    # Decoding ---------------------------------------------------------------------------------------------

    @staticmethod
    def _switch(decode, present, branches):
        """Runs the branch of `decode` among the decoders `present` in the dataset (no switch if only one)."""
        if len(present) == 1:
            return branches[present[0]]()
        index = tf.gather(tf.constant([present.index(d) if d in present else 0 for d in range(5)]), decode)
        return tf.switch_case(index, [branches[d] for d in present])

    def _decode_ids(self, data, path, decode, present):
        """`data`: the file's bytes; `path`: its name, for error messages."""

        def png(dtype):
            return lambda: tf.cast(tf.io.decode_png(data, channels=1, dtype=dtype), tf.int32)

        def pil():
            ids = tf.numpy_function(_pil_ids, [data, path], tf.int32, stateful=False)
            return tf.ensure_shape(ids, [None, None, 1])

        branches = {DECODE_PNG8: png(tf.uint8), DECODE_PNG16: png(tf.uint16), DECODE_PIL: pil}
        return self._switch(decode, present, branches)

    def _decode_image(self, data, path, decode, channels, present):
        def native():
            return tf.io.decode_image(data, channels=channels, dtype=tf.uint8, expand_animations=False)

        def pil():
            image = tf.numpy_function(_pil_image, [data, path, channels], tf.uint8, stateful=False)
            return tf.ensure_shape(image, [None, None, channels])

        return self._switch(decode, present, {DECODE_NATIVE: native, DECODE_PIL: pil})


def _read_record(shard: bytes, offset: np.ndarray, length: np.ndarray, path: bytes) -> bytes:
    """The serialized Example of one sample (a seek and one read; `path` names the sample on error)."""
    location = RecordLocation(shard.decode(), int(offset), int(length), "label")
    try:
        data = read_record(location)
        # Parsed here too, so that damaged bytes fail with a message naming the record (the graph's parser
        # would quote the raw bytes). A C++ parse of one sample: small beside decoding its PNGs.
        tf.train.Example.FromString(data)
    except Exception as e:  # protobuf DecodeError, OSError, tf.errors.OpError: all name the record
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(corrupt_message(path.decode(), e)) from e
    return data


def _pil_ids(data: bytes, path: bytes) -> np.ndarray:
    path = path.decode()
    try:
        with Image.open(io.BytesIO(data)) as im:
            ids = np.asarray(im)
    except Exception as e:  # PIL raises many types; name the file whatever it is.
        raise DatasetError(corrupt_message(path, e)) from e
    return ids.astype(np.int32).reshape(ids.shape[:2] + (1,))


def _pil_image(data: bytes, path: bytes, channels: np.ndarray) -> np.ndarray:
    path = path.decode()
    try:
        with Image.open(io.BytesIO(data)) as im:
            image = np.asarray(im.convert(_PIL_MODES[int(channels)]), dtype=np.uint8)
    except Exception as e:
        raise DatasetError(corrupt_message(path, e)) from e
    return image.reshape(image.shape[:2] + (int(channels),))
