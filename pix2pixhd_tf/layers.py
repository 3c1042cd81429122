"""Building blocks that reproduce PyTorch's padding and pooling semantics in Keras (NHWC).

Keras' `padding="same"` pads more at the bottom/right for even sizes, PyTorch pads symmetrically; these
layers pad explicitly and then run "valid" so that converted official weights give the same numbers.
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
class ReflectionPad2D(layers.Layer):
    """nn.ReflectionPad2d: mirror padding without repeating the edge pixel."""

    def __init__(self, padding: int, **kwargs):
        super().__init__(**kwargs)
        self.padding = padding

    def call(self, x):
        p = self.padding
        return ops.pad(x, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        grow = lambda s: None if s is None else s + 2 * self.padding  # noqa: E731
        return (n, grow(h), grow(w), c)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


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


def conv(filters: int, kernel_size: int, in_channels: int, *, strides: int = 1, padding: int = 0, name: str):
    """nn.Conv2d(in, filters, kernel_size, strides, padding) as zero padding + a "valid" Keras conv.

    Returned as a list of layers so the caller can keep the conv's own name (the converter maps
    official state-dict keys onto it).
    """
    pad = [layers.ZeroPadding2D(padding, name=f"{name}_pad")] if padding else []
    return pad + [
        layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid",
            kernel_initializer=conv_kernel_initializer(),
            bias_initializer=torch_bias_initializer(in_channels * kernel_size * kernel_size),
            name=name,
        )
    ]


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
# (see conv3x3_as_matmul).
MATMUL_CONV_MIN_CHANNELS = 512


@functools.cache
def _has_gpu() -> bool:
    """GPU convolutions (cuDNN) need no im2col workaround, which would only cost memory there."""
    return bool(tf.config.list_logical_devices("GPU"))


def conv3x3_as_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """A stride-1 "valid" 3x3 convolution as one matrix product over the nine shifted views of `x` (im2col).

    On a CPU, TensorFlow's default (oneDNN) convolution of G1's 1024-channel residual blocks at 16x32 reaches
    ~100 GFLOP/s on two cores, a matrix product of the same FLOPs ~270 (measured: 94 vs 37 ms); below
    ~512 channels the convolution kernel wins. The gradient rebuilds the shifted views instead of keeping them
    alive (9x each block input): for G1 at 256x512 that saves 260 MB of peak training memory and costs 0.4 s
    of a 4.3 s step (benchmarks/README.md); at 1024x2048 keeping them would cost 5 GB.
    """
    channels, filters = x.shape[-1], kernel.shape[-1]

    def columns(x):
        # Static sizes where known keep the matmul's shape static (FLOP counting, XLA).
        n, h, w = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in range(3))
        h, w = h - 2, w - 2
        views = [x[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]
        return tf.reshape(tf.concat(views, axis=-1), [-1, 9 * channels]), n, h, w

    @tf.custom_gradient
    def convolve(x, kernel):
        matrix = tf.reshape(kernel, [9 * channels, filters])  # rows ordered (kh, kw, in), as the views
        cols, n, h, w = columns(x)
        y = tf.reshape(tf.matmul(cols, matrix), [n, h, w, filters])

        def grad(dy):
            # Rebuild the views only once dy exists: without the dependency grappler merges them with the
            # forward's identical ones and keeps those alive through the whole backward pass.
            with tf.control_dependencies([dy]):
                x_again = tf.identity(x)
            dy = tf.reshape(dy, [-1, filters])
            d_kernel = tf.reshape(tf.matmul(columns(x_again)[0], dy, transpose_a=True), [3, 3, channels, filters])
            d_cols = tf.reshape(tf.matmul(dy, matrix, transpose_b=True), [n, h, w, 9, channels])
            pads = [[[0, 0], [i, 2 - i], [j, 2 - j], [0, 0]] for i in range(3) for j in range(3)]
            d_x = tf.add_n([tf.pad(d_cols[:, :, :, t, :], pad) for t, pad in enumerate(pads)])
            return d_x, d_kernel

        return y, grad

    return convolve(x, kernel)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResnetBlock(layers.Layer):
    """The official ResnetBlock: x + [pad, conv3, IN, ReLU, pad, conv3, IN](x), no activation after."""

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.conv1 = conv(dim, 3, dim, name="conv1")[0]
        self.norm1 = instance_norm("norm1")
        self.conv2 = conv(dim, 3, dim, name="conv2")[0]
        self.norm2 = instance_norm("norm2")
        self.pad = ReflectionPad2D(1)

    def build(self, input_shape):
        padded = self.pad.compute_output_shape(input_shape)
        for conv_layer, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            conv_layer.build(padded)
            norm.build(input_shape)

    def call(self, x):
        y = ops.relu(self.norm1(self._conv(self.conv1, x)))
        y = self.norm2(self._conv(self.conv2, y))
        return x + y

    def _conv(self, layer: layers.Conv2D, x):
        x = self.pad(x)
        if self.dim < MATMUL_CONV_MIN_CHANNELS or _has_gpu():
            return layer(x)
        y = conv3x3_as_matmul(x, ops.cast(layer.kernel, x.dtype))
        return tf.nn.bias_add(y, ops.cast(layer.bias, y.dtype))

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
