"""Building blocks that reproduce PyTorch's padding and pooling semantics in Keras (NHWC).

Keras' `padding="same"` pads more at the bottom/right for even sizes, PyTorch pads symmetrically; these
layers pad explicitly (zeros or mirrored pixels) and then run "valid", so that converted official weights
give the same numbers.
"""

from __future__ import annotations

import functools
import math

import keras
import tensorflow as tf
from keras import layers, ops

_PACKAGE = "pix2pixhd_tf"


class FunctionalNetwork(keras.Model):
    """A functional model built in `__init__` whose config is its init arguments (`CONFIG` lists them).

    Subclasses assign each argument to an attribute of the same name; `get_config` returns exactly those.
    """

    CONFIG: tuple[str, ...] = ()

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, **{k: getattr(self, k) for k in self.CONFIG}}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def conv_kernel_initializer() -> keras.initializers.Initializer:
    """The official `weights_init`: conv and transposed-conv kernels ~ N(0, 0.02)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


def torch_bias_initializer(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), which `weights_init` leaves alone."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InstanceNormalization(layers.Layer):
    """nn.InstanceNorm2d(affine=False): per-sample, per-channel statistics, eps 1e-5, no running stats.

    Runs TensorFlow's fused batch-norm kernel in training mode: with the batch folded into the channels its
    (H, W) statistics are exactly the per-instance ones. One fused kernel forward and one backward replace
    GroupNormalization(groups=-1)'s chain of reductions and element-wise passes, and the backward keeps
    only the input and two small vectors (2.4x faster forward+backward at 1x256x512x64 on 2 CPU cores).
    XLA compiles it, and the TFLite converter lowers it to mean / squared difference / rsqrt.
    """

    def __init__(self, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        c = x.shape[-1]
        if c is None:
            raise ValueError("instance normalization needs a known channel count")
        n = x.shape[0]
        folded = n == 1  # batch 1: the (1, H, W, C) tensor already has per-instance channel statistics
        if not folded:
            shape = tf.shape(x)
            x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [1, shape[1], shape[2], shape[0] * c])
        channels = tf.shape(x)[-1]
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x,
            tf.ones([channels], tf.float32),
            tf.zeros([channels], tf.float32),
            epsilon=self.epsilon,
            is_training=True,
        )
        if not folded:
            y = tf.transpose(tf.reshape(y, [shape[1], shape[2], shape[0], c]), [2, 0, 1, 3])
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def instance_norm(name: str | None = None) -> layers.Layer:
    """The official norm layer (`norm='instance'`): InstanceNorm2d without affine parameters."""
    return InstanceNormalization(epsilon=1e-5, name=name)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LeakyReLU(layers.Layer):
    """nn.LeakyReLU(negative_slope) whose gradient is computed from its output, not its input.

    The output has the input's sign, so the gradient is the same; but TensorFlow's own LeakyReluGrad reads
    the pre-activation, which stops grappler from fusing conv + bias + leaky ReLU in a training graph (its
    remapper then fails for the whole graph, losing every other fusion too) and keeps one more activation
    alive for the backward pass.
    """

    def __init__(self, negative_slope: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = negative_slope

    def call(self, x):
        slope = self.negative_slope

        @tf.custom_gradient
        def leaky_relu(x):
            y = tf.nn.leaky_relu(x, slope)
            return y, lambda dy: tf.where(y > 0, dy, dy * tf.cast(slope, dy.dtype))

        return leaky_relu(x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}


def conv(
    filters: int,
    kernel_size: int,
    in_channels: int,
    *,
    strides: int = 1,
    padding: int = 0,
    pad_mode: str = "zero",
    name: str,
    dtype=None,
) -> "TorchConv2D":
    """nn.Conv2d(in, filters, kernel_size, strides, padding) with the official weight init; `pad_mode`
    "reflect" stands for the nn.ReflectionPad2d(padding) that precedes the conv in the official Sequential."""
    return TorchConv2D(
        filters,
        kernel_size,
        strides=strides,
        pad=padding,
        pad_mode=pad_mode,
        kernel_initializer=conv_kernel_initializer(),
        bias_initializer=torch_bias_initializer(in_channels * kernel_size * kernel_size),
        dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchConvTranspose2D(layers.Layer):
    """nn.ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): exactly doubles H and W.

    A "valid" Keras transposed conv gives 2H+1; PyTorch's padding=1 drops the first row/column and its
    output_padding=1 gives back the last one, so cropping the first row and column matches it exactly.
    The kernel is (kh, kw, out, in), PyTorch's (in, out, kh, kw) transposed without flipping.
    """

    def __init__(self, filters: int, in_channels: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.in_channels = in_channels
        self.conv = layers.Conv2DTranspose(
            filters,
            3,
            strides=2,
            padding="valid",
            kernel_initializer=conv_kernel_initializer(),
            # PyTorch computes fan_in of a transposed conv from weight dim 1 (= out channels).
            bias_initializer=torch_bias_initializer(filters * 9),
            dtype=self.dtype_policy,
            name="conv",
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(x)[:, 1:, 1:, :]

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        double = lambda s: None if s is None else 2 * s  # noqa: E731
        return (n, double(h), double(w), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "in_channels": self.in_channels}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AvgPoolExcludePad(layers.Layer):
    """nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False): the input pyramid's downsampler.

    Border windows average only the real pixels, so the sum over the zero-padded window is divided by
    the number of real pixels in it.
    """

    def call(self, x):
        pad = [[0, 0], [1, 1], [1, 1], [0, 0]]
        summed = ops.average_pool(ops.pad(x, pad), 3, strides=2, padding="valid")
        ones = ops.pad(ops.ones_like(x[..., :1]), pad)
        counted = ops.average_pool(ones, 3, strides=2, padding="valid")
        return summed / counted

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        half = lambda s: None if s is None else (s - 1) // 2 + 1  # noqa: E731
        return (n, half(h), half(w), c)


# On CPUs, residual blocks with at least this many channels run their 3x3 convs as one matrix product
# (see padded_conv2d).
MATMUL_CONV_MIN_CHANNELS = 512


@functools.cache
def _has_gpu() -> bool:
    """GPU convolutions (cuDNN) need no im2col workaround, which would only cost memory there."""
    return bool(tf.config.list_logical_devices("GPU"))


_PAD_MODES = {"zero": "CONSTANT", "reflect": "REFLECT"}


def _use_matmul(kernel_shape, strides: int) -> bool:
    kh, kw, channels, _ = kernel_shape
    return (kh, kw, strides) == (3, 3, 1) and channels >= MATMUL_CONV_MIN_CHANNELS and not _has_gpu()


def _sizes(x: tf.Tensor, axes) -> list:
    """x's sizes along `axes`, static where known: static shapes keep the matmul's shape static (FLOP
    counting, XLA)."""
    return [x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in axes]


def _im2col(x: tf.Tensor) -> tf.Tensor:
    """The nine shifted views of `x` (N, H, W, C) for a "valid" 3x3 conv, as one (N·(H-2)·(W-2), 9·C) matrix
    whose columns are ordered (kh, kw, in) like a reshaped HWIO kernel."""
    h, w = _sizes(x, (1, 2))
    views = [x[:, i : i + h - 2, j : j + w - 2, :] for i in range(3) for j in range(3)]
    return tf.reshape(tf.concat(views, axis=-1), [-1, 9 * x.shape[-1]])


def padded_conv2d(x: tf.Tensor, kernel: tf.Tensor, *, strides: int = 1, padding: int = 0, mode: str = "zero"):
    """PyTorch's conv: `padding` rows/columns of zeros ("zero") or mirrored pixels ("reflect") on every side,
    then a "valid" convolution of `x` (NHWC) with the HWIO `kernel`.

    Two things differ from pad + `tf.nn.conv2d`, not in value but in cost:
    - The gradient keeps only `x`, which the ReLU before the conv keeps anyway, and pads it again once the
      upstream gradient exists, instead of keeping a padded copy of every conv input. For G1 + the two-scale D
      at 256x512 that is ~170 MiB less peak tensor memory (benchmarks/README.md) for one cheap pad per conv.
    - On CPUs, 3x3 stride-1 convs with >= MATMUL_CONV_MIN_CHANNELS inputs (G1's 1024-channel residual blocks)
      run as one im2col matrix product: TensorFlow's default (oneDNN) convolution reaches ~100 GFLOP/s there
      on two cores, a matrix product of the same FLOPs ~270 (measured on a 2-core Xeon: 94 vs 37 ms at
      16x32); below ~512 channels the convolution kernel wins. Its gradient rebuilds the shifted views too
      (9x the block input) rather than keep them.
    """
    matmul = _use_matmul(kernel.shape, strides)
    if not padding and not matmul:
        return tf.nn.conv2d(x, kernel, strides, "VALID")
    paddings = [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    pad = (lambda t: tf.pad(t, paddings, _PAD_MODES[mode])) if padding else tf.identity
    stride4 = [1, strides, strides, 1]
    channels, filters = kernel.shape[-2], kernel.shape[-1]

    @tf.custom_gradient
    def convolve(x, kernel):
        padded = pad(x)
        if matmul:
            n, h, w = _sizes(padded, range(3))
            matrix = tf.reshape(kernel, [9 * channels, filters])
            y = tf.reshape(tf.matmul(_im2col(padded), matrix), [n, h - 2, w - 2, filters])
        else:
            y = tf.nn.conv2d(padded, kernel, strides, "VALID")

        def grad(dy):
            # Pad again only once dy exists: without the dependency grappler merges this pad (and the views)
            # with the forward's identical ones and keeps those alive through the whole backward pass.
            with tf.control_dependencies([dy]):
                padded = pad(tf.identity(x))
            if matmul:
                dy_rows = tf.reshape(dy, [-1, filters])
                d_kernel = tf.reshape(tf.matmul(_im2col(padded), dy_rows, transpose_a=True), [3, 3, channels, filters])
                d_cols = tf.reshape(tf.matmul(dy_rows, matrix, transpose_b=True), [n, h - 2, w - 2, 9, channels])
                shifts = [[[0, 0], [i, 2 - i], [j, 2 - j], [0, 0]] for i in range(3) for j in range(3)]
                d_padded = tf.add_n([tf.pad(d_cols[:, :, :, t, :], s) for t, s in enumerate(shifts)])
            else:
                d_kernel = tf.raw_ops.Conv2DBackpropFilter(
                    input=padded, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=stride4, padding="VALID"
                )
                d_padded = tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=tf.shape(padded), filter=kernel, out_backprop=dy, strides=stride4, padding="VALID"
                )
            if not padding:
                d_x = d_padded
            elif mode == "zero":
                d_x = d_padded[:, padding:-padding, padding:-padding, :]
            else:
                d_x = tf.raw_ops.MirrorPadGrad(input=d_padded, paddings=paddings, mode="REFLECT")
            return d_x, d_kernel

        return y, grad

    return convolve(x, kernel)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchConv2D(layers.Conv2D):
    """nn.Conv2d(padding=pad), or nn.ReflectionPad2d(pad) + nn.Conv2d, as one Keras conv (`padded_conv2d`).

    The padding lives inside the layer so that training keeps no padded copy of its input.
    """

    def __init__(self, filters: int, kernel_size: int, *, pad: int = 0, pad_mode: str = "zero", **kwargs):
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(_PAD_MODES)}, got {pad_mode!r}")
        kwargs["padding"] = "valid"
        super().__init__(filters, kernel_size, **kwargs)
        self.pad = pad
        self.pad_mode = pad_mode

    def convolution_op(self, inputs, kernel):
        return padded_conv2d(
            inputs, ops.cast(kernel, inputs.dtype), strides=self.strides[0], padding=self.pad, mode=self.pad_mode
        )

    def compute_output_shape(self, input_shape):
        grow = lambda s: None if s is None else s + 2 * self.pad  # noqa: E731
        n, h, w, c = input_shape
        return super().compute_output_shape((n, grow(h), grow(w), c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad, "pad_mode": self.pad_mode}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResnetBlock(layers.Layer):
    """The official ResnetBlock: x + [pad, conv3, IN, ReLU, pad, conv3, IN](x), no activation after."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.conv1 = conv(dim, 3, dim, padding=1, pad_mode="reflect", name="conv1")
        self.norm1 = instance_norm("norm1")
        self.conv2 = conv(dim, 3, dim, padding=1, pad_mode="reflect", name="conv2")
        self.norm2 = instance_norm("norm2")

    def build(self, input_shape):
        for conv_layer, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            conv_layer.build(input_shape)
            norm.build(input_shape)

    def call(self, x):
        y = ops.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return x + y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dim": self.dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InstanceAveragePool(layers.Layer):
    """Instance-wise average pooling (paper §3.4): each pixel gets the mean feature of its instance.

    Vectorised as one segment mean over keys (batch index, instance id), so its cost does not grow with
    the number of instances and it exports as plain TF ops.
    """

    def call(self, features, instance):
        features = ops.cast(features, "float32")
        shape = tf.shape(features)
        n, h, w, c = shape[0], shape[1], shape[2], shape[3]
        batch_index = tf.broadcast_to(tf.range(n, dtype=tf.int64)[:, None, None], [n, h, w])
        # Pair (batch, instance) into one int64 key; instance ids fit in 32 bits.
        keys = tf.reshape(batch_index * (2**32) + tf.cast(instance, tf.int64), [-1])
        unique_keys, segment = tf.unique(keys, out_idx=tf.int32)
        flat = tf.reshape(features, [-1, c])
        means = tf.math.unsorted_segment_mean(flat, segment, tf.shape(unique_keys)[0])
        return tf.reshape(tf.gather(means, segment), shape)

    def compute_output_shape(self, features_shape, instance_shape):
        return features_shape
