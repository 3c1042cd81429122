"""Turning label and instance maps into network inputs (paper §3.3), with checks that fail loudly.

G's input is built in two steps, the same everywhere (training, `Synthesizer`, the SavedModel and TFLite
endpoints, the editor through those): `encode_input` (one-hot labels | instance boundaries: D's
conditioning too), then `generator_input` (the one size check, then the feature maps appended). Every
function is graph-safe, so the exported graph runs exactly this code.
"""

from __future__ import annotations

from typing import Any

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


def size_multiple(network: Any) -> int:
    """What a network's input height and width must be multiples of: its `size_multiple` property
    (2^stride-2 layers, see `networks`), or 1 for a model without one (a stride-1 stand-in in tests).

    This is the one reading of a network's size multiple; `Options.size_multiple` is the data pipeline's
    (G's and E's together) for when no network is at hand.
    """
    return int(getattr(network, "size_multiple", 1))


def check_image_size(image: tf.Tensor, multiple: int, what: str = "image") -> tf.Tensor:
    """Return `image` [N,H,W,...] after asserting H and W are multiples of `multiple`.

    Each stride-2 layer halves the size and each transposed conv doubles it, so other sizes cannot
    round-trip. Static shapes are checked at trace time (ValueError), dynamic ones in the graph
    (InvalidArgumentError, which TF Serving answers as INVALID_ARGUMENT).
    """
    image = tf.convert_to_tensor(image)
    if multiple <= 1:
        return image
    h, w = image.shape[1], image.shape[2]
    if h is not None and w is not None:
        if h % multiple or w % multiple:
            raise ValueError(
                f"{what} size {h}x{w} is not divisible by {multiple}, the networks' size multiple "
                "(2^(n_downsample_global + n_local_enhancers), and 2^n_downsample_E with an encoder): resize "
                f"or crop to a multiple, e.g. {h // multiple * multiple}x{w // multiple * multiple} (the "
                "dataset pipeline rounds sizes to it)"
            )
        return image
    shape = tf.shape(image)
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(shape[1:3] % multiple, 0)),
        [
            (
                f"{what} height and width must be multiples of {multiple}, the networks' size multiple "
                "(2^(n_downsample_global + n_local_enhancers), and 2^n_downsample_E with an encoder): resize, crop "
                "or pad the input; got height and width"
            ),
            shape[1:3],
        ],
        summarize=4,
    )
    with tf.control_dependencies([check]):
        return tf.identity(image)


def check_same_size(x: tf.Tensor, reference: tf.Tensor, what: str) -> tf.Tensor:
    """Return `x` after asserting it has the batch size, height and width of `reference` (statically when
    both shapes are known, else in the graph): a mismatch would otherwise surface as an opaque concat error."""
    x, reference = tf.convert_to_tensor(x), tf.convert_to_tensor(reference)
    static_x, static_ref = x.shape[:3], reference.shape[:3]
    if static_x.is_fully_defined() and static_ref.is_fully_defined():
        if static_x != static_ref:
            raise ValueError(
                f"{what} must have the same batch size, height and width; got {x.shape} and {reference.shape}"
            )
        return x
    sx, sr = tf.shape(x)[:3], tf.shape(reference)[:3]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(sx, sr)), [f"{what} must have the same batch size, height and width; got", sx, "and", sr]
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def from_uint8(image: tf.Tensor) -> tf.Tensor:
    """uint8 0..255 -> float32 in [-1, 1]: the data pipeline's normalisation of images."""
    return tf.cast(image, tf.float32) / 127.5 - 1.0


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    """G's output in [-1, 1] -> uint8 0..255 (rounded half to even, clipped), as `visualize.tensor_to_uint8`
    does in numpy."""
    return tf.cast(tf.clip_by_value(tf.round((tf.cast(image, tf.float32) + 1.0) * 127.5), 0.0, 255.0), tf.uint8)


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
    """The label part of the input: one-hot ids, or (label_nc 0) the input image itself (uint8 images are
    mapped to [-1, 1], float ones taken as they are)."""
    if label_nc:
        return one_hot_labels(label, label_nc)
    label = tf.convert_to_tensor(label)
    label = from_uint8(label) if label.dtype == tf.uint8 else tf.cast(label, tf.float32)
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
        parts.append(instance_edges(check_same_size(instance, label, "the label and instance maps")))
    return tf.concat(parts, axis=-1) if len(parts) > 1 else parts[0]


def generator_input(
    conditioning: tf.Tensor,
    features: tf.Tensor | None = None,
    *,
    feat_num: int = 0,
    size_multiple: int = 1,
) -> tf.Tensor:
    """G's input: `conditioning` (from `encode_input`) checked for size, then the feature maps appended.

    Args:
        conditioning: [N, H, W, C] one-hot labels | boundaries (or the input image with label_nc 0).
        features: [N, H, W, feat_num] per-instance features (E's, sampled or chosen styles), for feature models.
        feat_num: the feature channels G takes (0: a model trained without --instance_feat/--label_feat).
        size_multiple: G's (and, when E runs on the same image, E's) `size_multiple`.

    Raises:
        ValueError: a size that is not a multiple (static shapes; dynamic ones fail in the graph with
            InvalidArgumentError), features for a model without them or missing for one with them, or
            features of the wrong shape.
    """
    conditioning = check_image_size(conditioning, size_multiple, "the generator input")
    if not feat_num:
        if features is not None:
            raise ValueError(
                "features were given, but this model was trained without --instance_feat/--label_feat, so it "
                "takes no features"
            )
        return conditioning
    if features is None:
        raise ValueError(f"this feature model needs a feature map [N, H, W, {feat_num}] (feat_num={feat_num})")
    features = tf.cast(features, conditioning.dtype)
    expected = (*conditioning.shape[:3], feat_num)
    if features.shape.rank is not None and (
        features.shape.rank != 4
        or any(a is not None and b is not None and a != b for a, b in zip(features.shape, expected))
    ):
        raise ValueError(
            f"features have shape {tuple(features.shape)}; this model needs {expected} (N, H, W, feat_num)"
        )
    features = check_same_size(features, conditioning, "the features and the label map")
    return tf.concat([conditioning, features], axis=-1)
