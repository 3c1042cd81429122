"""The PyTorch-semantics layers against numpy and torch.nn.functional, their configs and saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import torch.nn.functional as F

from pix2pixhd_tf.networks import GlobalGenerator, NLayerDiscriminator
from pix2pixhd_tf.networks.fast_ops import MATMUL_CONV_MIN_CHANNELS, padded_conv2d, upsample_conv2d
from pix2pixhd_tf.networks.layers import (
    AvgPoolExcludePad,
    InstanceAveragePool,
    InstanceNormalization,
    LeakyReLU,
    ResnetBlock,
    TorchConvTranspose2D,
    conv,
    instance_norm,
)
from tests.helpers import config_round_trip

rng = np.random.default_rng(0)


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize(
    "kernel_size, strides, pad, pad_mode, channels, slope",
    [
        (3, 2, 1, "zero", 3, None),  # G's downsampling
        (4, 2, 2, "zero", 3, None),  # D's layers
        (4, 1, 2, "zero", 3, None),
        (7, 1, 3, "reflect", 3, None),  # G's first and last conv, with the ReflectionPad2d(3) in front
        (3, 1, 1, "reflect", 4, None),  # residual block, convolution kernel
        (3, 1, 1, "reflect", MATMUL_CONV_MIN_CHANNELS, None),  # residual block, im2col matmul
        (3, 1, 0, "zero", MATMUL_CONV_MIN_CHANNELS, None),
        (3, 2, 1, "zero", 3, 0.0),  # G: the ReLU of the unit before, applied by the conv
        (4, 2, 2, "zero", 3, 0.2),  # D: the LeakyReLU of the block before
        (7, 1, 3, "reflect", 3, 0.0),
        (3, 1, 0, "zero", 4, 0.0),  # no padding: still the custom gradient
        (3, 1, 1, "reflect", MATMUL_CONV_MIN_CHANNELS, 0.0),
    ],
)
def test_torch_conv2d_and_its_gradients_equal_pytorch(kernel_size, strides, pad, pad_mode, channels, slope):
    x = rng.standard_normal((2, 9, 8, channels)).astype(np.float32)
    layer = conv(
        5, kernel_size, channels, strides=strides, padding=pad, pad_mode=pad_mode, input_relu_slope=slope, name="c"
    )
    layer.build(x.shape)
    out_shape = layer.compute_output_shape((2, 9, 8, channels))
    upstream = rng.standard_normal(out_shape).astype(np.float32)
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        out = layer(x_t)
        loss = tf.reduce_sum(out * upstream)
    d_x, d_kernel, d_bias = tape.gradient(loss, [x_t, layer.kernel, layer.bias])

    t = _nchw(x).requires_grad_(True)
    weight = torch.from_numpy(np.array(layer.kernel).transpose(3, 2, 0, 1).copy()).requires_grad_(True)
    bias = torch.from_numpy(np.array(layer.bias)).requires_grad_(True)
    activated = t if slope is None else F.leaky_relu(t, slope)
    padded = F.pad(activated, (pad,) * 4, mode="constant" if pad_mode == "zero" else "reflect")
    expected = F.conv2d(padded, weight, bias, stride=strides)
    (expected * _nchw(upstream)).sum().backward()

    assert out.shape == tuple(expected.shape[i] for i in (0, 2, 3, 1)) == out_shape
    np.testing.assert_allclose(out, _nhwc(expected.detach()), atol=2e-4)
    np.testing.assert_allclose(d_x, _nhwc(t.grad), atol=2e-4)
    np.testing.assert_allclose(d_kernel, weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(d_bias, bias.grad.numpy(), rtol=1e-5, atol=1e-4)

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, channels))])
    def dynamic(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * upstream)
        return out, tape.gradient(loss, x)

    dynamic_out, dynamic_d_x = dynamic(x)
    np.testing.assert_allclose(dynamic_out, out, atol=1e-5)
    np.testing.assert_allclose(dynamic_d_x, d_x, atol=1e-5)


@pytest.mark.parametrize("channels", [4, MATMUL_CONV_MIN_CHANNELS])
def test_conv_gradient_keeps_no_padded_copy_of_its_input(channels):
    """The backward pass reads the unpadded input (which the ReLU before the conv keeps anyway) and pads
    it again, so no padded copy lives from the forward to the backward pass."""
    layer = conv(4, 3, channels, padding=1, pad_mode="reflect", name="c")

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(tf.nn.relu(x)))
        return tape.gradient(loss, [x, layer.kernel])

    ops_ = grads.get_concrete_function(tf.TensorSpec((1, 6, 6, channels))).graph.get_operations()
    pads = [op for op in ops_ if op.type == "MirrorPad"]
    forward_pad = [op for op in pads if not op.inputs[0].op.control_inputs]
    backward_pad = [op for op in pads if op.inputs[0].op.control_inputs]  # padded again once dy exists
    assert len(forward_pad) == 1 and len(backward_pad) == 1
    readers = {c.type for c in forward_pad[0].outputs[0].consumers()}
    assert readers <= {"Conv2D", "StridedSlice"}  # the forward conv or its im2col views, nothing in backward
    assert any(op.type in ("Conv2DBackpropFilter", "MatMul") for op in ops_)


@pytest.mark.parametrize("kernel_size, pad_mode", [(7, "reflect"), (3, "reflect"), (3, "zero")])
def test_stride_1_conv_input_gradient_is_never_padded_size(kernel_size, pad_mode):
    """G's output conv starts the backward pass at full resolution: its input gradient comes out at the
    input's size, plus dy-strip partials for a reflection's frame, never as a padded tensor to crop."""
    layer = conv(3, kernel_size, 4, padding=kernel_size // 2, pad_mode=pad_mode, input_relu_slope=0.0, name="c")

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x))
        return tape.gradient(loss, x)

    shape = (1, 40, 48, 4)
    ops_ = grads.get_concrete_function(tf.TensorSpec(shape)).graph.get_operations()
    input_grads = [op.outputs[0].shape for op in ops_ if op.type == "Conv2DBackpropInput"]
    assert input_grads[0] == shape
    assert all(s.num_elements() < np.prod(shape) / 3 for s in input_grads[1:])  # the frame's strips
    assert len(input_grads) == (5 if pad_mode == "reflect" else 1)


@pytest.mark.parametrize("size, slope", [((4, 4), None), ((5, 6), None), ((5, 6), 0.0)])
def test_torch_conv_transpose_and_its_gradients_equal_pytorch(size, slope):
    x = rng.standard_normal((2, *size, 4)).astype(np.float32)
    layer = TorchConvTranspose2D(3, in_channels=4, input_relu_slope=slope)
    upstream = rng.standard_normal((2, 2 * size[0], 2 * size[1], 3)).astype(np.float32)
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        out = layer(x_t)
        loss = tf.reduce_sum(out * upstream)
    d_x, d_kernel, d_bias = tape.gradient(loss, [x_t, layer.conv.kernel, layer.conv.bias])
    assert out.shape == (2, 2 * size[0], 2 * size[1], 3)

    t = _nchw(x).requires_grad_(True)
    kernel, bias = (np.asarray(v) for v in layer.conv.weights)  # (kh, kw, out, in), (out,)
    weight = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).requires_grad_(True)  # (in, out, kh, kw)
    bias_t = torch.from_numpy(bias).requires_grad_(True)
    activated = t if slope is None else F.leaky_relu(t, slope)
    expected = F.conv_transpose2d(activated, weight, bias_t, stride=2, padding=1, output_padding=1)
    (expected * _nchw(upstream)).sum().backward()
    np.testing.assert_allclose(out, _nhwc(expected.detach()), atol=1e-5)
    np.testing.assert_allclose(d_x, _nhwc(t.grad), atol=1e-4)
    np.testing.assert_allclose(d_kernel, weight.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d_bias, bias_t.grad.numpy(), rtol=1e-5, atol=1e-4)


def test_a_conv_norm_relu_unit_keeps_only_the_norm_output_for_backward():
    """conv -> IN -> (ReLU inside the next conv): the gradient reads IN's output, never the conv's output
    (IN's input) nor a separate activation, so one tensor per unit lives through the backward pass."""
    first = conv(4, 3, 3, padding=1, name="c1")
    norm = instance_norm("n1")
    second = conv(2, 3, 4, padding=1, pad_mode="reflect", input_relu_slope=0.0, name="c2")

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(second(norm(first(x))))
        return tape.gradient(loss, [x, first.kernel, second.kernel])

    graph = grads.get_concrete_function(tf.TensorSpec((1, 6, 6, 3))).graph
    ops_ = graph.get_operations()
    [norm_op] = [op for op in ops_ if op.type == "FusedBatchNormV3"]
    conv_output = norm_op.inputs[0]
    for reader in conv_output.consumers():  # the norm, and custom gradients' IdentityN, whose copy is unused
        assert reader.type in ("FusedBatchNormV3", "IdentityN")
        if reader.type == "IdentityN":
            [index] = [i for i, t in enumerate(reader.inputs) if t.name == conv_output.name]
            assert not reader.outputs[index].consumers()
    assert not any(op.type.startswith("FusedBatchNormGrad") for op in ops_)
    relus = [op for op in ops_ if op.type == "Relu"]
    assert len(relus) == 2  # forward, and again in the backward pass for the kernel gradient
    assert {c.type for c in relus[0].outputs[0].consumers()} <= {"Conv2D"}


@pytest.mark.parametrize("size", [(7, 9), (8, 6), (1, 2)])
def test_avg_pool_excludes_padding_like_pytorch(size):
    x = rng.standard_normal((2, *size, 3)).astype(np.float32)
    expected = F.avg_pool2d(_nchw(x), 3, 2, 1, count_include_pad=False)
    out = np.asarray(AvgPoolExcludePad()(x))
    np.testing.assert_allclose(out, _nhwc(expected), atol=1e-6)
    assert AvgPoolExcludePad().compute_output_shape((2, *size, 3)) == out.shape


def _slow_instance_mean(features: np.ndarray, instance: np.ndarray) -> np.ndarray:
    out = np.zeros_like(features)
    for b in range(features.shape[0]):
        for i in np.unique(instance[b]):
            mask = instance[b] == i
            out[b][mask] = features[b][mask].mean(axis=0)
    return out


def test_instance_average_pool_is_the_mean_of_each_batch_and_instance_region():
    features = rng.standard_normal((3, 8, 10, 4)).astype(np.float32)
    instance = rng.choice([0, 7, 26001, 33000], size=(3, 8, 10)).astype(np.int32)  # Cityscapes-sized ids
    instance[1] = instance[0]  # the same ids in two batch elements must stay separate regions
    out = np.asarray(InstanceAveragePool()(features, instance))

    np.testing.assert_allclose(out, _slow_instance_mean(features, instance), atol=1e-5)
    mask = instance[0] == 26001
    np.testing.assert_allclose(out[0][mask], np.broadcast_to(features[0][mask].mean(0), out[0][mask].shape), atol=1e-5)
    assert not np.allclose(out[0][mask], out[1][mask])  # batch 1 has the same ids but its own means


def _value_and_input_grad(fn, x: np.ndarray, upstream: np.ndarray, dtype=tf.float32):
    x = tf.constant(x, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
    return np.asarray(tf.cast(y, tf.float32)), np.asarray(tf.cast(tape.gradient(loss, x), tf.float32))


def _torch_value_and_input_grad(fn, x: np.ndarray, upstream: np.ndarray):
    xt = _nchw(x).requires_grad_(True)
    y = fn(xt)
    (y * _nchw(upstream)).sum().backward()
    return _nhwc(y.detach()), _nhwc(xt.grad)


@pytest.mark.parametrize("batch", [1, 3])
def test_instance_norm_and_its_gradient_equal_torch(batch):
    # Batch 1 uses the fused kernel directly; larger batches fold the batch into the channels.
    x = (3 * rng.standard_normal((batch, 6, 5, 4)) + 1).astype(np.float32)
    upstream = rng.standard_normal(x.shape).astype(np.float32)
    out, grad = _value_and_input_grad(instance_norm(), x, upstream)
    expected, expected_grad = _torch_value_and_input_grad(lambda t: F.instance_norm(t, eps=1e-5), x, upstream)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-5)
    assert np.abs(grad).max() > 0.1  # a real gradient, not zeros


def test_instance_norm_with_an_unknown_batch_size_in_a_graph():
    layer = instance_norm()
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 4))])
    x = (3 * rng.standard_normal((2, 6, 5, 4)) - 2).astype(np.float32)
    expected = _nhwc(F.instance_norm(_nchw(x), eps=1e-5))
    np.testing.assert_allclose(fn(x), expected, atol=1e-5)
    np.testing.assert_allclose(fn(x[:1]), expected[:1], atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_instance_norm_in_half_precision_keeps_the_input_dtype(dtype):
    x = (3 * rng.standard_normal((2, 8, 8, 4)) + 1).astype(np.float32)
    upstream = rng.standard_normal(x.shape).astype(np.float32)
    layer = InstanceNormalization(dtype=f"mixed_{dtype}")
    assert layer(tf.constant(x, dtype)).dtype == dtype
    out, grad = _value_and_input_grad(layer, x, upstream, dtype=dtype)
    expected, expected_grad = _torch_value_and_input_grad(lambda t: F.instance_norm(t, eps=1e-5), x, upstream)
    tol = 0.05 if dtype == "bfloat16" else 5e-3
    np.testing.assert_allclose(out, expected, atol=tol)
    np.testing.assert_allclose(grad, expected_grad, atol=tol)


@pytest.mark.parametrize("slope, grad_from", [(0.2, "output"), (0.2, "input"), (0.0, "input"), (0.0, "output")])
def test_leaky_relu_value_and_gradient_equal_torch(slope, grad_from):
    x = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    upstream = rng.standard_normal(x.shape).astype(np.float32)
    out, grad = _value_and_input_grad(LeakyReLU(slope, grad_from=grad_from), x, upstream)
    expected, expected_grad = _torch_value_and_input_grad(lambda t: F.leaky_relu(t, slope), x, upstream)
    np.testing.assert_allclose(out, expected, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-7)


def test_training_graph_of_the_discriminator_keeps_grappler_fusions(capfd):
    """With TF's own LeakyReluGrad, grappler's remapper fails on a PatchGAN's training graph ("remapper
    failed", every fusion of the graph dropped); the output-based gradient must not trip it."""
    discriminator = NLayerDiscriminator(5, ndf=8, n_layers_D=3)

    @tf.function
    def step(condition, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.add_n([tf.reduce_sum(t) for t in discriminator([condition, x])])
        return tape.gradient(loss, [x] + discriminator.trainable_variables)

    grads = step(tf.ones((1, 32, 32, 2)), tf.ones((1, 32, 32, 3)))
    assert all(g is not None for g in grads)
    assert "remapper failed" not in capfd.readouterr().err


def test_wide_resnet_block_takes_the_matmul_path_and_equals_torch():
    dim = MATMUL_CONV_MIN_CHANNELS
    block = ResnetBlock(dim)
    x = rng.standard_normal((1, 5, 6, dim)).astype(np.float32)
    out = np.asarray(block(x))

    def torch_conv(t, layer):
        weight = torch.from_numpy(np.array(layer.kernel).transpose(3, 2, 0, 1).copy())
        return F.conv2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), weight, torch.from_numpy(np.array(layer.bias)))

    t = _nchw(x)
    y = F.relu(F.instance_norm(torch_conv(t, block.conv1), eps=1e-5))
    expected = _nhwc(t + F.instance_norm(torch_conv(y, block.conv2), eps=1e-5))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    graph = tf.function(block).get_concrete_function(tf.TensorSpec((1, 5, 6, dim))).graph
    assert not any(op.type == "Conv2D" for op in graph.get_operations())  # the matmul path, not a conv


@pytest.mark.parametrize(
    "make_layer, shapes",
    [
        (lambda: conv(3, 4, 2, strides=2, padding=2, pad_mode="reflect", name="conv"), [(1, 6, 6, 2)]),
        (lambda: TorchConvTranspose2D(3, in_channels=2, name="up"), [(1, 4, 4, 2)]),
        (lambda: AvgPoolExcludePad(name="pool"), [(1, 5, 5, 2)]),
        (lambda: ResnetBlock(4, name="block"), [(1, 6, 6, 4)]),
        (lambda: ResnetBlock(4, input_relu=True, name="block"), [(1, 6, 6, 4)]),
        (lambda: InstanceAveragePool(name="inst_pool"), [(1, 4, 4, 2), (1, 4, 4)]),
        (lambda: instance_norm(name="norm"), [(2, 4, 4, 3)]),
        (lambda: LeakyReLU(0.3, name="lrelu"), [(1, 4, 4, 2)]),
        (lambda: conv(3, 3, 2, padding=1, input_relu_slope=0.2, name="conv"), [(1, 6, 6, 2)]),
        (lambda: TorchConvTranspose2D(3, in_channels=2, input_relu_slope=0.0, name="up"), [(1, 4, 4, 2)]),
    ],
    ids=[
        "TorchConv2D",
        "TorchConvTranspose2D",
        "AvgPoolExcludePad",
        "ResnetBlock",
        "ResnetBlock-input_relu",
        "InstanceAveragePool",
        "InstanceNormalization",
        "LeakyReLU",
        "TorchConv2D-input_relu",
        "TorchConvTranspose2D-input_relu",
    ],
)
def test_config_round_trip_gives_the_same_layer(make_layer, shapes):
    layer = make_layer()
    clone = config_round_trip(layer)
    assert clone.name == layer.name
    inputs = [rng.standard_normal(shapes[0]).astype(np.float32)]
    if len(shapes) > 1:
        inputs.append(rng.integers(0, 3, shapes[1]).astype(np.int32))
    expected = layer(*inputs)
    clone(*inputs)  # build, then share the weights
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(*inputs), expected, atol=1e-6)


def test_conditional_conv_is_one_conv_over_the_concatenation_without_a_condition_gradient():
    condition = tf.constant(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
    image = tf.constant(rng.standard_normal((2, 9, 8, 3)).astype(np.float32))
    layer = conv(5, 4, 7, strides=2, padding=2, conditional=True, name="c")
    plain = conv(5, 4, 7, strides=2, padding=2, name="c")
    layer.build([condition.shape, image.shape])
    plain.build((2, 9, 8, 7))
    plain.set_weights(layer.get_weights())
    upstream = rng.standard_normal(layer.compute_output_shape([condition.shape, image.shape])).astype(np.float32)
    joint = tf.concat([condition, image], -1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([condition, image, joint])
        out = layer([condition, image])
        expected = plain(joint)
        loss, plain_loss = tf.reduce_sum(out * upstream), tf.reduce_sum(expected * upstream)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert tape.gradient(loss, condition) is None
    np.testing.assert_allclose(tape.gradient(loss, image), tape.gradient(plain_loss, joint)[..., 4:], atol=1e-6)
    np.testing.assert_allclose(tape.gradient(loss, layer.kernel), tape.gradient(plain_loss, plain.kernel), atol=1e-5)

    clone = config_round_trip(layer)  # built from its build config
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone([condition, image]), out)

    if not tf.config.list_logical_devices("GPU"):  # CPUs run wide 3x3 convs as matmuls, which take no condition
        wide = conv(4, 3, MATMUL_CONV_MIN_CHANNELS, padding=1, conditional=True, name="wide")
        with pytest.raises(ValueError, match="matmul path"):
            wide([tf.zeros((1, 4, 4, MATMUL_CONV_MIN_CHANNELS - 3)), tf.zeros((1, 4, 4, 3))])


def test_global_generator_survives_keras_save_and_load(tmp_path):
    net = GlobalGenerator(input_nc=4, output_nc=3, ngf=4, n_downsample_global=2, n_blocks_global=1)
    path = str(tmp_path / "g.keras")
    net.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is GlobalGenerator
    assert loaded.get_config() == net.get_config()
    x = tf.random.normal((1, 16, 20, 4))
    np.testing.assert_array_equal(loaded(x), net(x))


@pytest.mark.parametrize(
    "op",
    [
        lambda x, k: padded_conv2d(x, k, padding=1, mode="reflect", input_relu_slope=0.0),
        lambda x, k: padded_conv2d(x, k, strides=2, padding=1),
        lambda x, k: padded_conv2d(x, k),  # no pad, no activation: the plain conv's own gradient in float32
        lambda x, k: upsample_conv2d(x, k),
    ],
    ids=["reflect", "stride2", "plain", "upsample"],
)
def test_float16_kernel_gradients_equal_float32_ones_to_rounding(op):
    """float16 kernel gradients run in float32 on CPUs (TensorFlow's float16 Conv2DBackpropFilter is hundreds
    of times slower there): the same values as float32, to float16's rounding, in float16."""
    x = rng.standard_normal((2, 12, 10, 8)).astype(np.float32)
    kernel = (0.2 * rng.standard_normal((3, 3, 8, 8))).astype(np.float32)
    grads = {}
    for dtype in (tf.float32, tf.float16):
        x_t, k_t = tf.constant(x, dtype), tf.constant(kernel, dtype)
        with tf.GradientTape() as tape:
            tape.watch([x_t, k_t])
            out = op(x_t, k_t)
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * tf.cos(tf.range(out.shape[-1], dtype=tf.float32)))
        grads[dtype] = tape.gradient(loss, [x_t, k_t])
    for got, expected in zip(grads[tf.float16], grads[tf.float32]):
        assert got.dtype == tf.float16
        scale = float(np.max(np.abs(expected)))
        error = float(np.max(np.abs(np.asarray(got, np.float32) - expected))) / scale
        print(f"float16 gradient error {error:.1e}")
        assert error <= 2e-3
