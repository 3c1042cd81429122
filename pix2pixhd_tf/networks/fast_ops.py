"""The custom-gradient ops behind `layers.py`: what makes training fast and lean in memory on CPUs.

Every op here gives the values of its plain TensorFlow counterpart (PyTorch's padding and
transposed-conv semantics included, see `layers.py`); only the cost differs. The gradients keep one tensor
per conv-IN-(Leaky)ReLU unit, IN's output, and recompute activations and pads from it once the upstream
gradient exists; wide 3x3 convs run as im2col matrix products on CPUs; large kernels are released to the
optimizer only after their last read. `benchmarks/README.md` holds the measurements behind each choice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import tensorflow as tf


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


def leaky_relu(x: tf.Tensor, slope: float, grad_from: str) -> tf.Tensor:
    """`_activate` whose gradient reads `x` (`grad_from="input"`) or the output (`"output"`): whichever
    tensor training keeps anyway.

    After a conv with no norm, the output: TensorFlow's own LeakyReluGrad reads the pre-activation, which
    stops grappler from fusing conv + bias + leaky ReLU in a training graph (its remapper then fails for the
    whole graph, losing every other fusion too) and keeps one more activation alive. After an IN, whose
    gradient keeps its output, the input: it is kept already.
    """

    @tf.custom_gradient
    def activate(x):
        y = _activate(x, slope)
        return y, lambda dy: _activate_grad(dy, y if grad_from == "output" else x, slope)

    return activate(x)


def normalize_channels(x: tf.Tensor, epsilon: float) -> tf.Tensor:
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


# On CPUs, residual blocks with at least this many channels run their 3x3 convs as one matrix product
# (see padded_conv2d).
MATMUL_CONV_MIN_CHANNELS = 512


@functools.cache
def _has_gpu() -> bool:
    """GPU convolutions (cuDNN) need no im2col workaround, which would only cost memory there."""
    return bool(tf.config.list_logical_devices("GPU"))


PAD_MODES = {"zero": "CONSTANT", "reflect": "REFLECT"}


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
      own gradient keeps, a conv-IN-ReLU unit costs one kept tensor.
    - On CPUs, 3x3 stride-1 convs with >= MATMUL_CONV_MIN_CHANNELS inputs (G1's 1024-channel residual blocks)
      run as one im2col matrix product, which TensorFlow's default (oneDNN) convolution is much slower than
      there; with fewer channels the convolution kernel wins. Its gradient rebuilds the shifted views too
      (9x the block input) rather than keep them.
    - A reflection pad's gradient folds the frame back without a scratch copy (`_fold_reflection`), and a
      stride-1 conv's input gradient comes out unpadded, with no padded copy to crop. With a condition, the
      kernel gradient comes in two parts, from the padded condition and the padded `x`: the padded
      concatenation is not rebuilt (at a conditional D's first layer at 1024x2048 it and its source are
      0.6 GB, at the step's memory peak: benchmarks/memory_profile.py). Zero padding stays a `tf.pad`:
      the kernels' own EXPLICIT padding takes Eigen's im2col path here, 1 GB of scratch for D's last layer.

    benchmarks/README.md has the measurements.
    """
    matmul = _use_matmul(kernel.shape, strides)
    if condition is not None:
        if matmul:
            raise ValueError(
                "a conv with a condition cannot take the im2col matmul path (3x3, stride 1, >= 512 inputs)"
            )
        condition = tf.stop_gradient(condition)
    elif not padding and not matmul and input_relu_slope is None and not _slow_float16(x.dtype):
        return tf.nn.conv2d(x, kernel, strides, "VALID")  # its own gradient is the same (`_filter_grad`)
    paddings = [[0, 0], [padding, padding], [padding, padding], [0, 0]]

    def pad_alone(t):  # ReLU after the pad equals ReLU before it (pads copy pixels or add zeros), and runs in place
        return _activate(tf.pad(t, paddings, PAD_MODES[mode]) if padding else t, input_relu_slope)

    def pad(t):
        return pad_alone(t if condition is None else tf.concat([condition, t], axis=-1))

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
            x_kernel = kernel if condition is None else kernel[:, :, -x.shape[-1] :, :]  # x's input channels
            if condition is None:
                inputs = [_recompute_after(dy, pad, x)]
            else:  # the condition's kernel rows get their gradient from the condition alone
                inputs = [_recompute_after(dy, pad_alone, t) for t in (condition, x)]
            padded = inputs[-1]
            if matmul:
                dy_rows = tf.reshape(dy, [-1, filters])
                d_kernel = tf.reshape(tf.matmul(_im2col(padded), dy_rows, transpose_a=True), [3, 3, channels, filters])
                d_cols = tf.reshape(tf.matmul(dy_rows, matrix, transpose_b=True), [n, h - 2, w - 2, 9, channels])
                shifts = [[[0, 0], [i, 2 - i], [j, 2 - j], [0, 0]] for i in range(3) for j in range(3)]
                d_padded = tf.add_n([tf.pad(d_cols[:, :, :, t, :], s) for t, s in enumerate(shifts)])
            else:
                d_kernels = [_filter_grad(t, _kernel_shape(kernel, t), dy, stride4) for t in inputs]
                d_kernel = d_kernels[0] if len(d_kernels) == 1 else tf.concat(d_kernels, axis=2)
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
    (copy-on-write): without this, G1's 1024-channel kernels moved to a new heap chunk every step, and the
    allocator's touched memory (the process RSS) grew with them (benchmarks/README.md).
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


def _kernel_shape(kernel: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    """`kernel`'s shape with `t`'s channels as its input channels: the rows of the kernel that read `t`."""
    return tf.concat([tf.shape(kernel)[:2], tf.shape(t)[3:], tf.shape(kernel)[3:]], 0)


def _slow_float16(dtype: tf.DType) -> bool:
    """float16 on a CPU, where TensorFlow has no fast float16 kernel gradient (`_filter_grad`)."""
    return dtype == tf.float16 and not _has_gpu()


def _filter_grad(x: tf.Tensor, filter_sizes, dy: tf.Tensor, strides4: list[int]) -> tf.Tensor:
    """A "valid" conv's kernel gradient. On CPUs float16 runs in float32: TensorFlow has no fast float16
    kernel for it there (a 3x3, 64-channel 128x256 one took 5.5 s against 10 ms in float32 on an AVX512-FP16
    Xeon, benchmarks/memory_cpu.md), and float32 accumulation is the more exact one anyway."""
    compute = tf.float32 if _slow_float16(x.dtype) else x.dtype
    d_kernel = tf.raw_ops.Conv2DBackpropFilter(
        input=tf.cast(x, compute),
        filter_sizes=filter_sizes,
        out_backprop=tf.cast(dy, compute),
        strides=strides4,
        padding="VALID",
    )
    return tf.cast(d_kernel, x.dtype)


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
            d_kernel = _filter_grad(d_full, tf.shape(kernel), activated, stride4)
            d_x = tf.nn.conv2d(d_full, kernel, 2, "VALID")
            return _activate_grad(d_x, x, input_relu_slope), _after_input_grad(d_kernel, d_x)

        return full[:, 1:, 1:, :], grad

    return upsample(x, kernel)


RECOMPUTE_MODES = ("none", "blocks", "all")


def check_recompute(recompute: str) -> None:
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {recompute!r}")


def recompute(fn: Callable[..., tf.Tensor | list], *args: tf.Tensor):
    """`fn(*args)`, whose backward pass keeps only `args` and runs `fn` again to get everything else
    (`--recompute`): activation memory traded for one more forward of `fn`.

    `tf.recompute_grad` does the work: its forward runs without recording, the gradient finds the variables
    `fn` read (Keras layers' kernels included) and differentiates a second run of `fn` with respect to
    them and `args`. In a graph that second run takes a data dependency on the upstream gradient, so
    grappler cannot merge it with the forward's identical ops (which would keep the forward's tensors alive,
    as `_recompute_after` explains). `fn` must be deterministic (no dropout or random ops) and may call
    Keras layers and the custom-gradient ops above; its outputs may be a (nested) list.
    """
    return tf.recompute_grad(fn)(*args)
