"""Turning label and instance maps into network inputs (paper §3.3), with checks that fail loudly.

All functions are graph-safe: the same code serves training, inference and the exported SavedModel.
"""

from __future__ import annotations

import tensorflow as tf


def check_label_range(label: tf.Tensor, label_nc: int) -> tf.Tensor:
    """Return `label` after asserting 0 <= id < label_nc; an out-of-range id would one-hot to zeros silently."""
    label = tf.convert_to_tensor(label)
    with tf.control_dependencies(
        [
            tf.debugging.assert_less(
                label,
                tf.cast(label_nc, label.dtype),
                message=f"label ids must be < label_nc={label_nc}: set --label_nc to the number of classes "
                "(max id + 1) or remap the label maps",
            ),
            tf.debugging.assert_non_negative(label, message="label ids must be >= 0"),
        ]
    ):
        return tf.identity(label)


def check_map_rank(t: tf.Tensor, what: str) -> None:
    """Raise unless `t` is an [N, H, W] id map: an [N, H, W, 1] map would one-hot (or edge-detect) silently
    along the wrong axes."""
    if t.shape.rank is not None and t.shape.rank != 3:
        raise ValueError(f"{what} must be [N, H, W] integer ids, got shape {t.shape}: squeeze the channel axis")


def check_image_size(image: tf.Tensor, multiple: int) -> tf.Tensor:
    """Return `image` [N,H,W,...] after asserting H and W are multiples of `multiple`.

    Each stride-2 layer halves the size and each transposed conv doubles it, so other sizes cannot
    round-trip. Static shapes are checked at trace time, dynamic ones in the graph.
    """
    image = tf.convert_to_tensor(image)
    h, w = image.shape[1], image.shape[2]
    if h is not None and w is not None:
        if h % multiple or w % multiple:
            raise ValueError(
                f"image size {h}x{w} is not divisible by {multiple}, the networks' size multiple "
                "(2^(n_downsample_global + n_local_enhancers), and 2^n_downsample_E with an encoder): resize "
                f"or crop to a multiple, e.g. {h // multiple * multiple}x{w // multiple * multiple} (the "
                "dataset pipeline rounds sizes to it)"
            )
        return image
    shape = tf.shape(image)
    with tf.control_dependencies(
        [
            tf.debugging.assert_equal(
                shape[1:3] % multiple,
                0,
                message=f"image height and width must be multiples of {multiple}, the networks' size multiple "
                "(2^(n_downsample_global + n_local_enhancers), and 2^n_downsample_E with an encoder): resize or "
                "crop the input",
            )
        ]
    ):
        return tf.identity(image)


def check_channels(image: tf.Tensor, channels: int, what: str) -> None:
    """Raise if the static channel count of `image` differs from `channels`."""
    got = image.shape[-1]
    if got is not None and got != channels:
        raise ValueError(f"{what} has {got} channels but the model expects {channels}: check --input_nc/--output_nc")


def one_hot_labels(label: tf.Tensor, label_nc: int, dtype: str = "float32") -> tf.Tensor:
    """[N,H,W] integer ids -> [N,H,W,label_nc] one-hot (range-checked)."""
    check_map_rank(tf.convert_to_tensor(label), "the label map")
    label = check_label_range(tf.cast(label, tf.int32), label_nc)
    return tf.one_hot(label, label_nc, dtype=dtype)


def instance_edges(instance: tf.Tensor, dtype: str = "float32") -> tf.Tensor:
    """[N,H,W] instance ids -> [N,H,W,1] boundary map (paper Fig. 4).

    A pixel is 1 where it differs from a 4-neighbour; both sides of every boundary are marked, so two
    touching cars of the same class are still separated.
    """
    t = tf.convert_to_tensor(instance)
    check_map_rank(t, "the instance map")
    dx = tf.not_equal(t[:, :, 1:], t[:, :, :-1])
    dy = tf.not_equal(t[:, 1:, :], t[:, :-1, :])
    false_col = tf.zeros_like(dx[:, :, :1])
    false_row = tf.zeros_like(dy[:, :1, :])
    edge = tf.concat([false_col, dx], axis=2) | tf.concat([dx, false_col], axis=2)
    edge |= tf.concat([false_row, dy], axis=1) | tf.concat([dy, false_row], axis=1)
    return tf.cast(edge, dtype)[..., None]


def label_input(label: tf.Tensor, label_nc: int, input_nc: int) -> tf.Tensor:
    """The label part of the input: one-hot ids, or (label_nc 0) the RGB input image itself."""
    if label_nc:
        return one_hot_labels(label, label_nc)
    label = tf.cast(label, tf.float32)
    if label.shape.rank is not None and label.shape.rank != 4:
        raise ValueError(f"with label_nc 0 the input is an [N, H, W, {input_nc}] image, got shape {label.shape}")
    check_channels(label, input_nc, "the input image ({phase}_A)")
    return label


def encode_input(
    label: tf.Tensor,
    instance: tf.Tensor | None,
    *,
    label_nc: int,
    input_nc: int = 3,
) -> tf.Tensor:
    """[one-hot labels | instance boundary map]: what D sees before the image, and G before features."""
    parts = [label_input(label, label_nc, input_nc)]
    if instance is not None:
        parts.append(instance_edges(instance))
    return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]
