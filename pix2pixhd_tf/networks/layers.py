"""Building blocks that reproduce PyTorch's padding and pooling semantics in Keras (NHWC).

Keras' `padding="same"` pads more at the bottom/right for even sizes, PyTorch pads symmetrically; these
layers pad explicitly (zeros or mirrored pixels) and then run "valid", so that converted official weights
give the same numbers. Their computations, and the custom gradients that keep training lean, are in
`fast_ops`; `ConvChain` builds conv-IN-ReLU units from them.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from keras import layers, ops

from pix2pixhd_tf.networks.fast_ops import (
    PAD_MODES,
    leaky_relu,
    normalize_channels,
    padded_conv2d,
    recompute,
    upsample_conv2d,
)

_PACKAGE = "pix2pixhd_tf"


class FunctionalNetwork(keras.Model):
    """A functional model built in `__init__` whose config is its init arguments (`CONFIG` lists them).

    Subclasses assign each argument to an attribute of the same name; `get_config` returns exactly those.
    """

    CONFIG: tuple[str, ...] = ()
    # Set by a subclass (from its `recompute` argument): its whole forward is one `fast_ops.recompute`
    # segment, so its backward pass keeps only its inputs.
    recompute_call: bool = False

    def call(self, inputs, training=None, mask=None):
        if not self.recompute_call:
            return super().call(inputs, training=training, mask=mask)
        run_graph = super().call

        def forward(*tensors):
            return run_graph(tf.nest.pack_sequence_as(inputs, list(tensors)), training=training, mask=mask)

        return recompute(forward, *tf.nest.flatten(inputs))

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

    The forward runs TensorFlow's fused batch-norm kernel in training mode: with the batch folded into the
    channels its (H, W) statistics are exactly the per-instance ones (faster than
    GroupNormalization(groups=-1), see benchmarks/README.md; XLA compiles it, and the TFLite converter
    lowers it to mean / squared difference / rsqrt). The gradient is computed from the *output* x̂ and
    1/σ: dx = (dy - mean(dy) - x̂·mean(dy·x̂)) / σ. x̂ is what the following ReLU and conv keep anyway (they
    take it as `input_relu_slope`), so training keeps one tensor per conv-IN-ReLU unit instead of the conv
    output and the activation.
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
        y = normalize_channels(x, self.epsilon)
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
    """nn.LeakyReLU(negative_slope) (nn.ReLU at slope 0) whose gradient reads the tensor that is kept anyway:
    `grad_from="output"` after a conv with no norm, `"input"` after an IN (`fast_ops.leaky_relu` says why).
    """

    def __init__(self, negative_slope: float = 0.2, grad_from: str = "output", **kwargs):
        if grad_from not in ("input", "output"):
            raise ValueError(f"grad_from must be 'input' or 'output', got {grad_from!r}")
        super().__init__(**kwargs)
        self.negative_slope = negative_slope
        self.grad_from = grad_from

    def call(self, x):
        return leaky_relu(x, self.negative_slope, self.grad_from)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope, "grad_from": self.grad_from}


def conv(
    filters: int,
    kernel_size: int,
    in_channels: int,
    *,
    strides: int = 1,
    padding: int = 0,
    pad_mode: str = "zero",
    input_relu_slope: float | None = None,
    conditional: bool = False,
    name: str,
    dtype=None,
) -> TorchConv2D:
    """nn.Conv2d(in, filters, kernel_size, strides, padding) with the official weight init; `pad_mode`
    "reflect" stands for the nn.ReflectionPad2d(padding) that precedes the conv in the official Sequential,
    `input_relu_slope` for the (Leaky)ReLU before that. `conditional`: a `ConditionalConv2D`, called on
    [condition, x] (`in_channels` counts both)."""
    return (ConditionalConv2D if conditional else TorchConv2D)(
        filters,
        kernel_size,
        strides=strides,
        pad=padding,
        pad_mode=pad_mode,
        input_relu_slope=input_relu_slope,
        kernel_initializer=conv_kernel_initializer(),
        bias_initializer=torch_bias_initializer(in_channels * kernel_size * kernel_size),
        dtype=dtype,
        name=name,
    )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchConvTranspose2D(layers.Layer):
    """nn.ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): exactly doubles H and W.

    A "valid" transposed conv gives 2H+1; PyTorch's padding=1 drops the first row/column and its
    output_padding=1 gives back the last one, so cropping the first row and column matches it exactly.
    The kernel is (kh, kw, out, in), PyTorch's (in, out, kh, kw) transposed without flipping; it lives in
    a Keras Conv2DTranspose sublayer (`conv`), which holds the weights. `input_relu_slope` applies a
    (Leaky)ReLU to the input first, inside the gradient (`fast_ops.upsample_conv2d`).
    """

    def __init__(self, filters: int, in_channels: int, input_relu_slope: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.in_channels = in_channels
        self.input_relu_slope = input_relu_slope
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
        y = upsample_conv2d(x, ops.cast(self.conv.kernel, x.dtype), input_relu_slope=self.input_relu_slope)
        return y + ops.cast(self.conv.bias, y.dtype)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        double = lambda s: None if s is None else 2 * s  # noqa: E731
        return (n, double(h), double(w), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "in_channels": self.in_channels,
            "input_relu_slope": self.input_relu_slope,
        }


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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchConv2D(layers.Conv2D):
    """nn.Conv2d(padding=pad), or nn.ReflectionPad2d(pad) + nn.Conv2d, as one Keras conv
    (`fast_ops.padded_conv2d`).

    The padding lives inside the layer so that training keeps no padded copy of its input.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        *,
        pad: int = 0,
        pad_mode: str = "zero",
        input_relu_slope: float | None = None,
        **kwargs,
    ):
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(PAD_MODES)}, got {pad_mode!r}")
        kwargs["padding"] = "valid"
        super().__init__(filters, kernel_size, **kwargs)
        self.pad = pad
        self.pad_mode = pad_mode
        self.input_relu_slope = input_relu_slope

    def convolution_op(self, inputs, kernel, condition=None):
        return padded_conv2d(
            inputs,
            ops.cast(kernel, inputs.dtype),
            strides=self.strides[0],
            padding=self.pad,
            mode=self.pad_mode,
            input_relu_slope=self.input_relu_slope,
            condition=condition,
        )

    def compute_output_shape(self, input_shape):
        grow = lambda s: None if s is None else s + 2 * self.pad  # noqa: E731
        n, h, w, c = input_shape
        return super().compute_output_shape((n, grow(h), grow(w), c))

    def get_config(self):
        return {
            **super().get_config(),
            "pad": self.pad,
            "pad_mode": self.pad_mode,
            "input_relu_slope": self.input_relu_slope,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConditionalConv2D(TorchConv2D):
    """A TorchConv2D called on [condition, x]: one conv over their channel concatenation (one kernel, as
    converted from the official D's first layer), in which the condition gets no gradient
    (`fast_ops.padded_conv2d`).

    A conditional D's first layer sees [label map | image] three times per step; this way no pass keeps a
    39-channel copy (the label map is kept once, the image per pass) or computes a 39-channel input
    gradient: the concatenation exists only for the moment of the forward conv and of the kernel gradient.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_spec = None  # two tensors, not Conv2D's one

    @staticmethod
    def _joint_shape(input_shape):
        """[condition shape, x shape] -> the concatenation's shape (Conv2D's own build passes that one)."""
        if input_shape[0] is None or isinstance(input_shape[0], int):
            return input_shape
        condition, x = (tuple(s) for s in input_shape)
        return (*x[:-1], condition[-1] + x[-1])

    def build(self, input_shape):
        super().build(self._joint_shape(input_shape))
        self.input_spec = None

    def convolution_op(self, inputs, kernel):
        condition, x = inputs
        return super().convolution_op(x, kernel, condition=ops.cast(condition, x.dtype))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(self._joint_shape(input_shape))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResnetBlock(layers.Layer):
    """The official ResnetBlock: x + [pad, conv3, IN, ReLU, pad, conv3, IN](x), no activation after.

    `input_relu`: the block's input is the IN output of a conv-IN-ReLU unit whose ReLU is still to apply
    (the first block after G's downsampling), so that only that IN output is kept for the backward pass.
    `recompute` (`--recompute=blocks`): the backward pass keeps only the block's input, not its two IN
    outputs, and runs the block's forward again (`fast_ops.recompute`).
    """

    def __init__(self, dim: int, input_relu: bool = False, recompute: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.input_relu = input_relu
        self.recompute = recompute
        slope = 0.0 if input_relu else None
        self.conv1 = conv(dim, 3, dim, padding=1, pad_mode="reflect", input_relu_slope=slope, name="conv1")
        self.norm1 = instance_norm("norm1")
        self.conv2 = conv(dim, 3, dim, padding=1, pad_mode="reflect", input_relu_slope=0.0, name="conv2")
        self.norm2 = instance_norm("norm2")
        self.relu = LeakyReLU(0.0, grad_from="input", name="relu") if input_relu else None

    def build(self, input_shape):
        for conv_layer, norm in ((self.conv1, self.norm1), (self.conv2, self.norm2)):
            conv_layer.build(input_shape)
            norm.build(input_shape)

    def call(self, x):
        return recompute(self._block, x) if self.recompute else self._block(x)

    def _block(self, x):
        y = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return (x if self.relu is None else self.relu(x)) + y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "input_relu": self.input_relu, "recompute": self.recompute}


class ConvChain:
    """Builds conv-IN-(Leaky)ReLU units one after another on a Keras tensor.

    Each unit's activation runs inside the layer that reads the unit (a conv's `input_relu_slope`,
    `ResnetBlock(input_relu=True)`), in its forward and again in its gradient, so the tensor between two
    units is IN's output: the one tensor that training keeps for a unit's backward pass (`fast_ops`). `x` is
    the chain's current tensor; while `pending`, its activation (slope `slope`) is still to apply.
    `recompute_blocks`: its ResnetBlocks recompute their forward in the backward pass (`--recompute`).
    """

    def __init__(self, x, slope: float = 0.0, recompute_blocks: bool = False):
        self.x = x
        self.slope = slope
        self.recompute_blocks = recompute_blocks
        self.pending = False

    def unit(self, filters: int, kernel_size: int, in_channels: int, *, name: str, norm_name: str, **conv_kwargs):
        """conv (`conv`'s arguments), IN; the activation is left to the next layer."""
        self._conv(filters, kernel_size, in_channels, name=name, **conv_kwargs)
        self._norm(norm_name)

    def up_unit(self, filters: int, in_channels: int, *, name: str, norm_name: str):
        """Transposed conv (2x), IN; the activation is left to the next layer."""
        self.x = TorchConvTranspose2D(filters, in_channels, input_relu_slope=self._input_slope(), name=name)(self.x)
        self._norm(norm_name)

    def residual(self, dim: int, *, name: str):
        """A ResnetBlock, which ends with its addition: nothing is left to activate."""
        if self.pending and self.slope != 0:
            raise ValueError(f"a ResnetBlock applies a pending ReLU, not a LeakyReLU of slope {self.slope}")
        self.x = ResnetBlock(dim, input_relu=self.pending, recompute=self.recompute_blocks, name=name)(self.x)
        self.pending = False

    def output_conv(self, filters: int, kernel_size: int, in_channels: int, *, name: str, **conv_kwargs):
        """A last conv, with no norm or activation after it: returns its output."""
        self._conv(filters, kernel_size, in_channels, name=name, **conv_kwargs)
        return self.x

    def activated(self, name: str):
        """`x` with its pending activation applied by a layer of its own (for an addition or a feature output);
        the chain itself goes on from `x`."""
        if not self.pending:
            return self.x
        return LeakyReLU(self.slope, grad_from="input", name=name)(self.x)

    def _input_slope(self) -> float | None:
        return self.slope if self.pending else None

    def _conv(self, filters: int, kernel_size: int, in_channels: int, *, name: str, **conv_kwargs):
        layer = conv(filters, kernel_size, in_channels, input_relu_slope=self._input_slope(), name=name, **conv_kwargs)
        self.x = layer(self.x)
        self.pending = False

    def _norm(self, name: str):
        self.x = instance_norm(name)(self.x)
        self.pending = True


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
