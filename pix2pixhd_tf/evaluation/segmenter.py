"""A compact segmentation network for the segmentation score, and its training on a data set's real images.

The paper scores its results with PSPNet trained on Cityscapes. Any segmenter can be passed to the evaluation
(see `pix2pixhd_tf.evaluation.protocol.load_segmenter`); this module provides a small one that anybody can train on
the real training images of their data set in minutes on a CPU: a U-Net-like encoder-decoder (`depth`
levels of two 3×3 conv + batch norm + ReLU, max-pool down, nearest-neighbour up, skip connections) taking float
images 0..255 of any size and returning per-pixel logits.

`save_segmenter` writes either a `.keras` file or a SavedModel whose ``serving_default`` signature takes
uint8 ``images`` [N, H, W, 3] and returns ``logits`` [N, H, W, C]; the evaluation accepts both.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops
from PIL import Image

from pix2pixhd_tf.data.files import DatasetError, DatasetLayout, list_folder_files
from pix2pixhd_tf.evaluation.readers import read_label


@keras.saving.register_keras_serializable(package="pix2pixhd_tf")
class CropToMatch(layers.Layer):
    """Crops `x` [N, h, w, C] to the height and width of `reference` (h, w >= the reference's)."""

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return x[:, : shape[1], : shape[2], :]

    def compute_output_shape(self, input_shapes):
        x_shape, reference_shape = input_shapes
        return (x_shape[0], reference_shape[1], reference_shape[2], x_shape[3])


def _conv_block(x, filters: int, name: str):
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_segmenter(
    num_classes: int, *, base_filters: int = 16, depth: int = 3, name: str = "segmenter"
) -> keras.Model:
    """The compact U-Net: float32 images 0..255 [N, H, W, 3] -> logits [N, H, W, num_classes].

    Any H and W work (odd sizes are handled by cropping after each upsampling).

    Args:
      num_classes: number of output classes.
      base_filters: filters of the first level; doubled at each level down.
      depth: number of downsampling steps.
      name: model name.

    Returns:
      The uncompiled model.

    Raises:
      ValueError: if a count is not positive.
    """
    if num_classes < 1 or base_filters < 1 or depth < 1:
        raise ValueError(
            f"num_classes, base_filters and depth must be positive: {num_classes}, {base_filters}, {depth}"
        )
    inputs = keras.Input((None, None, 3), name="images")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottom")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"upsample{level}")(x)
        x = CropToMatch(name=f"crop{level}")([x, skips[level]])
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, base_filters * 2**level, f"up{level}")
    logits = layers.Conv2D(num_classes, 1, name="logits")(x)
    return keras.Model(inputs, logits, name=name)


def segmentation_dataset(
    dataroot: str | Path,
    *,
    num_classes: int,
    phase: str = "train",
    batch_size: int = 8,
    image_size: tuple[int, int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> tf.data.Dataset:
    """(images float32 0..255, labels int32, weights float32) batches from `{phase}_img` / `{phase}_label`.

    Label ids >= `num_classes` (e.g. 255 void) get weight 0 and label 0. Files are read with PIL in
    `tf.numpy_function`, so palette and 16-bit label PNGs work.

    Args:
      dataroot: data set root in the official layout.
      num_classes: number of classes (the data set's label_nc).
      phase: split to read.
      batch_size: batch size.
      image_size: (height, width) to resize to (images bilinear, labels nearest); None keeps the files'
        size, which must then be the same for all.
      shuffle: reshuffle every epoch.
      seed: shuffle seed.

    Returns:
      The dataset (one pass over the files per epoch).

    Raises:
      DatasetError: (from `pix2pixhd_tf.data.files`) for missing/empty folders, unpaired names, unreadable
        files, a label map whose size differs from its image's, or several sizes without `image_size`.
    """
    files = list_folder_files(
        DatasetLayout(str(dataroot), num_classes, instances=False), phase=phase, require_images=True
    )
    sizes = sorted({(info.height, info.width) for info in files.label})
    if image_size is None and len(sizes) > 1:
        raise DatasetError(
            f"the images of {Path(dataroot) / (phase + '_img')} have {len(sizes)} sizes ({sizes[:3]} ...); "
            "pass image_size (--image_size=HxW) to resize them to one"
        )
    height, width = image_size or sizes[0]
    label_paths = [info.path for info in files.label]
    image_paths = [info.path for info in files.image]

    def load(index):
        index = int(index)
        with Image.open(image_paths[index]) as file:
            image = file.convert("RGB")
        label = Image.fromarray(read_label(label_paths[index]))
        if (image.height, image.width) != (height, width):
            image = image.resize((width, height), Image.BILINEAR)
            label = label.resize((width, height), Image.NEAREST)
        label = np.asarray(label).astype(np.int32)
        valid = label < num_classes
        return np.asarray(image, np.float32), np.where(valid, label, 0).astype(np.int32), valid.astype(np.float32)

    def load_tensors(index):
        image, label, weight = tf.numpy_function(load, [index], (tf.float32, tf.int32, tf.float32))
        image.set_shape((height, width, 3))
        label.set_shape((height, width))
        weight.set_shape((height, width))
        return image, label, weight

    dataset = tf.data.Dataset.range(len(label_paths))
    if shuffle:
        dataset = dataset.shuffle(len(label_paths), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(load_tensors, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def train_segmenter(
    dataroot: str | Path,
    *,
    num_classes: int,
    phase: str = "train",
    epochs: int = 10,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    image_size: tuple[int, int] | None = None,
    base_filters: int = 16,
    depth: int = 3,
    seed: int = 0,
    output: str | Path | None = None,
    verbose: int | str = "auto",
) -> keras.Model:
    """Trains `build_segmenter` on the real images and label maps of `{dataroot}/{phase}`.

    Adam with a cosine decay of the learning rate to 0, masked (void-ignoring) softmax cross-entropy;
    Keras' progress bar shows loss and pixel accuracy per epoch.

    Args:
      dataroot: data set root in the official layout.
      num_classes: number of classes (the data set's label_nc).
      phase: split to train on.
      epochs: passes over the data.
      batch_size: batch size.
      learning_rate: initial Adam learning rate.
      image_size: see `segmentation_dataset`.
      base_filters: see `build_segmenter`.
      depth: see `build_segmenter`.
      seed: seed of weights and shuffling.
      output: where to save it (`save_segmenter`), or None.
      verbose: Keras `fit` verbosity.

    Returns:
      The trained model.

    Raises:
      DatasetError: see `segmentation_dataset`.
    """
    keras.utils.set_random_seed(seed)
    dataset = segmentation_dataset(
        dataroot, num_classes=num_classes, phase=phase, batch_size=batch_size, image_size=image_size, seed=seed
    )
    model = build_segmenter(num_classes, base_filters=base_filters, depth=depth)
    steps = epochs * int(dataset.cardinality())
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(steps, 1))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
    )
    model.fit(dataset, epochs=epochs, verbose=verbose, shuffle=False)
    if output is not None:
        save_segmenter(model, output)
    return model


def save_segmenter(model: keras.Model, path: str | Path) -> Path:
    """Saves a segmenter as `path` if it ends in `.keras`, else as a SavedModel directory.

    The SavedModel's ``serving_default`` takes uint8 ``images`` [N, H, W, 3] and returns
    ``{"logits": [N, H, W, C]}``.

    Returns:
      The path written.
    """
    path = Path(path)
    if path.suffix == ".keras":
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save(path)
        return path
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(images):
        return {"logits": model(tf.cast(images, tf.float32), training=False)}

    archive.add_endpoint(
        "serving_default", serve, input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
    )
    archive.write_out(str(path), verbose=False)
    return path
