"""Load-time scaling, cropping and flipping, as the official `data/base_dataset.py` does them.

The official transform of a sample of size (w, h), for each `--resize_or_crop` mode:

  resize_and_crop       resize to loadSize x loadSize, then crop fineSize x fineSize
  scale_width           width to loadSize, height int(loadSize * h / w) (unchanged if w == loadSize)
  scale_width_and_crop  scale_width, then crop fineSize x fineSize
  crop                  crop fineSize x fineSize from the original
  none                  nothing

The crop offset (x, y) is uniform in [0, max(0, w' - fineSize)] x [0, max(0, h' - fineSize)] (inclusive,
like `random.randint`), and the crop is skipped when neither side exceeds fineSize; a side shorter than
fineSize is padded with zeros (what PIL's `crop` does outside the image). The official code rounds the sides
to the nearest multiple of 2^n_downsample only in mode `none` (`__make_power_2`: `int(round(s / base) *
base)`, Python rounding); here every mode does it, with base `opts.size_multiple` (also counting the local
enhancers and the encoder), so the generator always gets sides it can halve and double back. Sizes that are
already multiples, as in every official recipe, are untouched. Finally a left-right flip with p = 0.5 when
training and not --no_flip.

The sizes depend only on the original size, so `plan_geometry` computes them in Python with the official
integer arithmetic; the random part (offset and flip) is drawn per sample in the graph by `draw_params`,
once, and `apply` uses it for the label, instance, image and feature maps alike. Label, instance and feature
maps are resized by nearest neighbour (source pixel floor((i + 0.5) * in / out), as PIL's NEAREST), images
bicubic (Keys a = -0.5, antialiased when shrinking, as PIL's BICUBIC).

Not training: no flip, and a centred crop instead of a random one (the official test code still crops at a
random offset; a fixed one makes evaluation repeatable).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from pix2pixhd_tf.options import Options

RESIZE_OR_CROP_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """The deterministic part of the transform of one sample; all sizes are (height, width)."""

    resized: tuple[int, int]  # after resize / scale_width
    window: tuple[int, int]  # crop window (== resized when there is no crop)
    max_offset: tuple[int, int]  # inclusive upper bounds of the crop offset (y, x)
    final: tuple[int, int]  # after rounding the sides to multiples of opts.size_multiple


def plan_geometry(opts: Options, width: int, height: int) -> Geometry:
    """The sizes that the official transforms give a `width` x `height` sample (see the module docstring)."""
    mode = opts.resize_or_crop
    if mode not in RESIZE_OR_CROP_MODES:
        raise ValueError(f"--resize_or_crop={mode!r} is not one of {RESIZE_OR_CROP_MODES}.")
    h, w = height, width
    if "resize" in mode:
        h = w = opts.loadSize
    elif "scale_width" in mode and w != opts.loadSize:
        h, w = int(opts.loadSize * h / w), opts.loadSize
    resized = (h, w)
    if "crop" in mode and (w > opts.fineSize or h > opts.fineSize):
        window = (opts.fineSize, opts.fineSize)
        max_offset = (max(0, h - opts.fineSize), max(0, w - opts.fineSize))
    else:
        window, max_offset = resized, (0, 0)
    base = float(opts.size_multiple)
    final = (int(round(window[0] / base) * base), int(round(window[1] / base) * base))
    return Geometry(resized, window, max_offset, final)


def draw_params(geometry: dict[str, tf.Tensor], seed: tf.Tensor, training: bool, flip: bool) -> dict[str, tf.Tensor]:
    """One crop offset and flip decision for a sample, from a stateless `seed` (int64 [2]).

    Args:
      geometry: `Geometry` fields as int32 tensors ('max_offset': [2]).
      seed: the stateless seed of this sample.
      training: random offset (else centred) and, with `flip`, a random flip (else none).
      flip: whether flipping is allowed (training and not --no_flip).
    """
    max_offset = geometry["max_offset"]
    if training:
        seeds = tf.random.experimental.stateless_split(seed, num=3)
        y = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=max_offset[0] + 1, dtype=tf.int32)
        x = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=max_offset[1] + 1, dtype=tf.int32)
        offset = tf.stack([y, x])
        do_flip = tf.random.stateless_uniform([], seeds[2]) > 0.5 if flip else tf.constant(False)
    else:
        offset = max_offset // 2
        do_flip = tf.constant(False)
    return {"offset": offset, "flip": do_flip}


def apply(x: tf.Tensor, geometry: dict[str, tf.Tensor], params: dict[str, tf.Tensor], method: str) -> tf.Tensor:
    """Resize, crop, round to the size multiple and flip one [H, W, C] map.

    Args:
      x: the decoded map; images as float32 in 0..255, id maps as int32, feature maps as float32.
      geometry: `Geometry` fields as int32 tensors.
      params: from `draw_params`, shared by all the maps of a sample.
      method: 'nearest' (label, instance and feature maps) or 'bicubic' (images).
    """
    x = resize(x, geometry["resized"], method)
    window = geometry["window"]
    # A window larger than the image (a side shorter than fineSize) reads zeros, as PIL's crop does.
    pad = tf.maximum(window - tf.shape(x)[:2], 0)
    x = tf.pad(x, [[0, pad[0]], [0, pad[1]], [0, 0]])
    offset = params["offset"]
    x = x[offset[0] : offset[0] + window[0], offset[1] : offset[1] + window[1]]
    x = resize(x, geometry["final"], method)
    return tf.cond(params["flip"], lambda: tf.reverse(x, axis=[1]), lambda: x)


def resize(x: tf.Tensor, size: tf.Tensor, method: str) -> tf.Tensor:
    """Resizes [H, W, C] `x` to `size` (int32 [2]: height, width); a no-op when the size already matches."""
    same = tf.reduce_all(tf.equal(tf.shape(x)[:2], size))
    if method == "nearest":
        resized = lambda: resize_nearest(x, size)  # noqa: E731
    elif method == "bicubic":
        resized = lambda: tf.image.resize(x, size, method="bicubic", antialias=True)  # noqa: E731
    else:
        raise ValueError(f"Unknown resampling method {method!r}.")
    return tf.cond(same, lambda: x, resized)


def resize_nearest(x: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour resize of [H, W, C] `x` by gathering, for any dtype (ids stay exact).

    Output pixel i reads input pixel floor((i + 0.5) * in / out), the rule of PIL's NEAREST, so no new
    values can appear.
    """
    in_size = tf.shape(x)[:2]

    def source(axis):
        scale = tf.cast(in_size[axis], tf.float64) / tf.cast(size[axis], tf.float64)
        i = tf.floor((tf.range(size[axis], dtype=tf.float64) + 0.5) * scale)
        return tf.minimum(tf.cast(i, tf.int32), in_size[axis] - 1)

    return tf.gather(tf.gather(x, source(0), axis=0), source(1), axis=1)
