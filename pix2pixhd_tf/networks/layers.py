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

    The forward runs TensorFlow's fused batch-norm kernel in training mode: with the batch folded into the
    channels its (H, W) statistics are exactly the per-instance ones (2.4x faster forward+backward than
    GroupNormalization(groups=-1) at 1x256x512x64 on 2 CPU cores; XLA compiles it, and the TFLite converter
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
        y = _normalize_channels(x, self.epsilon)
        if not folded:
            y = tf.transpose(tf.reshape(y, [shape[1], shape[2], shape[0], c]), [2, 0, 1, 3])
        return y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def _normalize_channels(x: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Normalise each channel of a batch-1 NHWC tensor over (H, W); the gradient keeps only the output."""

    @tf.custom_gradient
    def normalize(x):
        channels = tf.shape(x)[-1]
        y, _, variance = tf.compat.v1.nn.fused_batch_norm(
            x, tf.ones([channels], tf.float32), tf.zeros([channels], tf.float32), epsilon=epsilon, is_training=True
        )
        # The kernel returns the unbiased (n / (n-1)) variance, meant for running averages; it normalised
        # with the biased one.
        count = tf.cast(tf.reduce_prod(_sizes(x, (1, 2))), tf.float32)
        biased = variance * tf.where(count > 1, (count - 1) / count, 1.0)
        inv_std = tf.math.rsqrt(biased + epsilon)

        def grad(dy):
            dy32, y32 = tf.cast(dy, tf.float32), tf.cast(y, tf.float32)
            mean_dy = tf.reduce_mean(dy32, axis=[0, 1, 2])
            mean_dy_y = tf.reduce_mean(dy32 * y32, axis=[0, 1, 2])
            return tf.cast(dy32 * inv_std - mean_dy * inv_std - y32 * (mean_dy_y * inv_std), dy.dtype)

        return y, grad

    return normalize(x)


def instance_norm(name: str | None = None) -> layers.Layer:
    """The official norm layer (`norm='instance'`): InstanceNorm2d without affine parameters."""
    return InstanceNormalization(epsilon=1e-5, name=name)


def _activate(x: tf.Tensor, slope: float | None) -> tf.Tensor:
    """LeakyReLU with negative slope `slope` (0: ReLU; None: no activation)."""
    if slope is None:
        return x
    return tf.nn.relu(x) if slope == 0 else tf.nn.leaky_relu(x, slope)


def _activate_grad(dy: tf.Tensor, features: tf.Tensor, slope: float | None) -> tf.Tensor:
    """`_activate`'s gradient: dy where `features` > 0, dy·slope elsewhere. `features` may be the input or the
    output (same sign)."""
    if slope is None:
        return dy
    if slope == 0:
        return tf.raw_ops.ReluGrad(gradients=dy, features=features)
    return tf.where(features > 0, dy, dy * tf.cast(slope, dy.dtype))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LeakyReLU(layers.Layer):
    """nn.LeakyReLU(negative_slope) (nn.ReLU at slope 0) whose gradient reads the tensor that is kept anyway.

    `grad_from="output"` (after a conv with no norm): TensorFlow's own LeakyReluGrad reads the
    pre-activation, which stops grappler from fusing conv + bias + leaky ReLU in a training graph (its
    remapper then fails for the whole graph, losing every other fusion too) and keeps one more activation
    alive. `grad_from="input"` (after an IN, whose gradient keeps its output): the input is kept already.
    """

    def __init__(self, negative_slope: float = 0.2, grad_from: str = "output", **kwargs):
        if grad_from not in ("input", "output"):
            raise ValueError(f"grad_from must be 'input' or 'output', got {grad_from!r}")
        super().__init__(**kwargs)
        self.negative_slope = negative_slope
        self.grad_from = grad_from

    def call(self, x):
        slope = self.negative_slope

        @tf.custom_gradient
        def leaky_relu(x):
            y = _activate(x, slope)
            return y, lambda dy: _activate_grad(dy, y if self.grad_from == "output" else x, slope)

        return leaky_relu(x)

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
) -> "TorchConv2D":
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
    (Leaky)ReLU to the input first, inside the gradient like `padded_conv2d`'s.
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


def padded_conv2d(
    x: tf.Tensor,
    kernel: tf.Tensor,
    *,
    strides: int = 1,
    padding: int = 0,
    mode: str = "zero",
    input_relu_slope: float | None = None,
    condition: tf.Tensor | None = None,
):
    """PyTorch's conv: optionally a (Leaky)ReLU with `input_relu_slope` (0: ReLU), `padding` rows/columns of
    zeros ("zero") or mirrored pixels ("reflect") on every side, then a "valid" convolution of `x` (NHWC)
    with the HWIO `kernel`. A `condition` (a conditional D's label map) is convolved as channels in front of
    `x`'s, as if concatenated, and gets no gradient: G's gradient then runs back through `x`'s few channels
    only, and the concatenation is never kept.

    Three things differ from relu + pad + `tf.nn.conv2d`, not in value but in cost:
    - The gradient keeps only `x`, and activates and pads it again once the upstream gradient exists,
      instead of keeping an activated and a padded copy of every conv input. With `x` the IN output that IN's
      own gradient keeps, a conv-IN-ReLU unit costs one kept tensor; the padding alone was ~170 MiB of peak
      tensor memory for G1 + the two-scale D at 256x512 (benchmarks/README.md).
    - On CPUs, 3x3 stride-1 convs with >= MATMUL_CONV_MIN_CHANNELS inputs (G1's 1024-channel residual blocks)
      run as one im2col matrix product: TensorFlow's default (oneDNN) convolution reaches ~100 GFLOP/s there
      on two cores, a matrix product of the same FLOPs ~270 (measured on a 2-core Xeon: 94 vs 37 ms at
      16x32); below ~512 channels the convolution kernel wins. Its gradient rebuilds the shifted views too
      (9x the block input) rather than keep them.
    - A reflection pad's gradient folds the frame back without a scratch copy (`_fold_reflection`), and a
      stride-1 conv's input gradient comes out unpadded, with no padded copy to crop.
    """
    matmul = _use_matmul(kernel.shape, strides)
    if condition is not None:
        if matmul:
            raise ValueError(
                "a conv with a condition cannot take the im2col matmul path (3x3, stride 1, >= 512 inputs)"
            )
        condition = tf.stop_gradient(condition)
    elif not padding and not matmul and input_relu_slope is None:
        return tf.nn.conv2d(x, kernel, strides, "VALID")
    paddings = [[0, 0], [padding, padding], [padding, padding], [0, 0]]

    def pad(t):  # ReLU after the pad equals ReLU before it (pads copy pixels or add zeros), and runs in place
        t = t if condition is None else tf.concat([condition, t], axis=-1)
        return _activate(tf.pad(t, paddings, _PAD_MODES[mode]) if padding else t, input_relu_slope)

    stride4 = [1, strides, strides, 1]
    kernel_size, channels, filters = kernel.shape[0], kernel.shape[-2], kernel.shape[-1]
    # Stride 1 with a centred kernel: the input gradient comes out unpadded ("SAME"), so the padded one
    # (and its centre, a second copy) never exists; a reflection's frame comes from dy's border strips.
    same_size = padding and not matmul and strides == 1 and kernel_size == 2 * padding + 1 == kernel.shape[1]

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
            padded = _recompute_after(dy, pad, x)
            x_kernel = kernel if condition is None else kernel[:, :, -x.shape[-1] :, :]  # x's input channels
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
                if not same_size:
                    padded_x_shape = tf.concat([tf.shape(padded)[:3], tf.shape(x)[3:]], 0)
                    d_padded = _conv_input_grad(dy, x_kernel, padded_x_shape, "VALID", strides)
            if same_size:
                d_x = _conv_input_grad(dy, x_kernel, tf.shape(x), "SAME")
                if mode == "reflect":
                    d_x = _fold_reflection(d_x, _frame_grads(dy, x_kernel, tf.shape(x), padding), padding)
            elif not padding:
                d_x = d_padded
            elif mode == "zero":
                d_x = d_padded[:, padding:-padding, padding:-padding, :]
            else:
                p = padding
                frame = (d_padded[:, :p], d_padded[:, -p:], d_padded[:, p:-p, :p], d_padded[:, p:-p, -p:])
                d_x = _fold_reflection(d_padded[:, p:-p, p:-p], frame, p)
            return _activate_grad(d_x, x, input_relu_slope), _after_input_grad(d_kernel, d_x)

        return y, grad

    return convolve(x, kernel)


# Kernels at least this large are updated only after their layer's input gradient (`_after_input_grad`).
IN_PLACE_UPDATE_MIN_BYTES = 2**20


def _after_input_grad(d_kernel: tf.Tensor, d_x: tf.Tensor) -> tf.Tensor:
    """`d_kernel`, released to the optimizer only once `d_x`, the last reader of the kernel, exists.

    The forward pass reads the kernel and the input gradient reads it again. If the optimizer's update
    (ResourceApplyAdam) ran before the second read, it would find the variable's buffer still shared and copy it
    (copy-on-write): without this, ~400 MiB of G1's 1024-channel kernels moved to a new heap chunk every step
    at 256x512, and the allocator's touched memory (the process RSS) grew with them (benchmarks/README.md).
    Small kernels are left alone: the dependency would force a first layer's unneeded input gradient.
    """
    if d_kernel.shape.num_elements() * d_kernel.dtype.size < IN_PLACE_UPDATE_MIN_BYTES:
        return d_kernel
    with tf.control_dependencies([d_x]):
        return tf.identity(d_kernel)


def _recompute_after(dy: tf.Tensor, fn, x: tf.Tensor) -> tf.Tensor:
    """`fn(x)` again inside a gradient, once `dy` exists. Without the dependency grappler merges it (and, for
    im2col, the shifted views) with the forward's identical ops and keeps those alive through the whole
    backward pass."""
    with tf.control_dependencies([dy]):
        return fn(tf.identity(x))


def _conv_input_grad(dy: tf.Tensor, kernel: tf.Tensor, input_sizes, padding: str, strides: int = 1) -> tf.Tensor:
    return tf.raw_ops.Conv2DBackpropInput(
        input_sizes=input_sizes, filter=kernel, out_backprop=dy, strides=[1, strides, strides, 1], padding=padding
    )


def _frame_grads(dy: tf.Tensor, kernel: tf.Tensor, x_shape: tf.Tensor, p: int) -> tuple[tf.Tensor, ...]:
    """The padded input gradient's frame of a stride-1 conv with a (2p+1)² kernel over an input padded by
    p: its first and last p rows (all W + 2p columns) and first and last p columns (centre rows only).

    Frame row r < p is read only by output rows 0..r, so each border comes from a p-wide strip of dy,
    a 3p-wide partial gradient of which it is the outer p.
    """
    n, h, w, c = x_shape[0], x_shape[1], x_shape[2], x_shape[3]
    rows = lambda d: _conv_input_grad(d, kernel, tf.stack([n, 3 * p, w + 2 * p, c]), "VALID")  # noqa: E731
    cols = lambda d: _conv_input_grad(d, kernel, tf.stack([n, h + 2 * p, 3 * p, c]), "VALID")  # noqa: E731
    return (
        rows(dy[:, :p])[:, :p],
        rows(dy[:, -p:])[:, -p:],
        cols(dy[:, :, :p])[:, p:-p, :p],
        cols(dy[:, :, -p:])[:, p:-p, -p:],
    )


def _fold_reflection(centre: tf.Tensor, frame: tuple[tf.Tensor, ...], p: int) -> tf.Tensor:
    """The gradient of a p-wide reflection pad of H and W (NHWC), given the padded gradient as its centre and
    its frame (top, bottom, left, right, as `_frame_grads` returns them). The frame's values are
    scatter-added, in place, at the pixels they mirror: MirrorPadGrad's values without its scratch copy of
    the whole padded gradient."""
    top, bottom, left, right = frame
    n, h, w = _sizes(centre, range(3))

    def mirrored(index, size):  # padded index -> the unpadded index it copies: -1 -> 1, size -> size - 2
        return (size - 1) - tf.abs((size - 1) - tf.abs(index - p))

    def scattered(values, rows, cols):
        batch, r, c = tf.meshgrid(tf.range(n), rows, cols, indexing="ij")
        indices = tf.stack([batch, mirrored(r, h), mirrored(c, w)], axis=-1)
        return tf.reshape(indices, [-1, 3]), tf.reshape(values, [-1, centre.shape[-1]])

    all_cols, centre_rows = tf.range(w + 2 * p), tf.range(p, h + p)
    parts = [
        scattered(top, tf.range(p), all_cols),
        scattered(bottom, tf.range(h + p, h + 2 * p), all_cols),
        scattered(left, centre_rows, tf.range(p)),
        scattered(right, centre_rows, tf.range(w + p, w + 2 * p)),
    ]
    return tf.tensor_scatter_nd_add(centre, tf.concat([i for i, _ in parts], 0), tf.concat([v for _, v in parts], 0))


def upsample_conv2d(x: tf.Tensor, kernel: tf.Tensor, *, input_relu_slope: float | None = None) -> tf.Tensor:
    """PyTorch's ConvTranspose2d(3, stride=2, padding=1, output_padding=1) without bias, of an optionally
    (Leaky)ReLU-activated `x`; the (kh, kw, out, in) `kernel` as in `tf.nn.conv2d_transpose`. Like
    `padded_conv2d`, the gradient keeps only `x` and activates it again once dy exists."""
    stride4 = [1, 2, 2, 1]
    crop = [[0, 0], [1, 0], [1, 0], [0, 0]]  # the first row and column of the "valid" 2H+1 output

    @tf.custom_gradient
    def upsample(x, kernel):
        n, h, w = _sizes(x, range(3))
        full = tf.nn.conv2d_transpose(
            _activate(x, input_relu_slope), kernel, [n, 2 * h + 1, 2 * w + 1, kernel.shape[2]], 2, "VALID"
        )

        def grad(dy):
            activated = _recompute_after(dy, lambda t: _activate(t, input_relu_slope), x)
            d_full = tf.pad(dy, crop)
            d_kernel = tf.raw_ops.Conv2DBackpropFilter(
                input=d_full, filter_sizes=tf.shape(kernel), out_backprop=activated, strides=stride4, padding="VALID"
            )
            d_x = tf.nn.conv2d(d_full, kernel, 2, "VALID")
            return _activate_grad(d_x, x, input_relu_slope), _after_input_grad(d_kernel, d_x)

        return full[:, 1:, 1:, :], grad

    return upsample(x, kernel)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TorchConv2D(layers.Conv2D):
    """nn.Conv2d(padding=pad), or nn.ReflectionPad2d(pad) + nn.Conv2d, as one Keras conv (`padded_conv2d`).

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
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {sorted(_PAD_MODES)}, got {pad_mode!r}")
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
    converted from the official D's first layer), in which the condition gets no gradient (`padded_conv2d`).

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
    """

    def __init__(self, dim: int, input_relu: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.input_relu = input_relu
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
        y = self.norm2(self.conv2(self.norm1(self.conv1(x))))
        return (x if self.relu is None else self.relu(x)) + y

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "input_relu": self.input_relu}


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
