"""Network sizes at the official Cityscapes settings, output shapes, dynamic sizes and initialisation."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf import networks
from pix2pixhd_tf.networks import Encoder, GlobalGenerator, LocalEnhancer, MultiscaleDiscriminator, NLayerDiscriminator
from tests.helpers import tiny_options

CITYSCAPES_G_IN = 35 + 1  # one-hot labels + instance boundary map
CITYSCAPES_D_IN = 36 + 3  # ... + the image


@pytest.fixture(scope="module")
def cityscapes_global_g():
    keras.utils.set_random_seed(1)
    return GlobalGenerator(CITYSCAPES_G_IN, 3, ngf=64, n_downsample_global=4, n_blocks_global=9)


def test_parameter_counts_equal_the_official_cityscapes_models(cityscapes_global_g):
    assert cityscapes_global_g.count_params() == 182_546_755
    local = LocalEnhancer(
        CITYSCAPES_G_IN, 3, ngf=32, n_downsample_global=4, n_blocks_global=9, n_local_enhancers=1, n_blocks_local=3
    )
    assert local.count_params() == 182_857_059
    del local
    assert MultiscaleDiscriminator(CITYSCAPES_D_IN, ndf=64, n_layers_D=3, num_D=3).count_params() == 8_404_803
    assert NLayerDiscriminator(CITYSCAPES_D_IN, ndf=64, n_layers_D=3).count_params() == 2_801_601
    assert Encoder(3, feat_num=3, nef=16, n_downsample_E=4).count_params() == 788_803


def test_options_build_the_cityscapes_channel_sizes():
    opts = tiny_options(label_nc=35, num_D=3, n_layers_D=3, instance_feat=True)
    assert opts.generator_input_nc == 35 + 1 + 3
    assert networks.build_discriminator(opts).input_nc == CITYSCAPES_D_IN
    assert networks.build_encoder(opts).feat_num == 3
    assert networks.build_encoder(tiny_options()) is None


def test_initialisation_follows_the_official_weights_init(cityscapes_global_g):
    """Kernels ~ N(0, 0.02) (weights_init); biases U(±1/sqrt(fan_in)), PyTorch's default."""
    kernels = [w for w in cityscapes_global_g.weights if w.path.endswith("kernel")]
    biases = [w for w in cityscapes_global_g.weights if w.path.endswith("bias")]
    assert len(kernels) == len(biases) == 1 + 4 + 9 * 2 + 4 + 1
    big = np.asarray(kernels[10])  # a residual conv: 9.4M samples
    assert big.shape == (3, 3, 1024, 1024)
    assert abs(big.std() - 0.02) < 0.02 * 0.01 and abs(big.mean()) < 1e-4
    for kernel, bias in zip(kernels, biases):
        k = np.asarray(kernel)
        assert abs(k.std() - 0.02) < 0.02 * 0.05, kernel.path
        # Conv2D kernels are (kh, kw, in, out); the transposed conv's (kh, kw, out, in) has PyTorch's
        # fan_in = out·kh·kw (dimension 1 of its (in, out, kh, kw) weight).
        kh, kw, fan_channels = k.shape[0], k.shape[1], k.shape[2]
        bound = 1 / math.sqrt(fan_channels * kh * kw)
        b = np.asarray(bias)
        assert np.all(np.abs(b) <= bound), bias.path
        if b.size >= 16:
            assert np.abs(b).max() > 0.5 * bound, bias.path  # spread over the range, not zeros


@pytest.mark.parametrize("n_local_enhancers", [0, 1, 2])
def test_generator_output_shapes(n_local_enhancers):
    opts = tiny_options(netG="local" if n_local_enhancers else "global", n_local_enhancers=n_local_enhancers)
    g = networks.build_generator(opts)
    assert isinstance(g, LocalEnhancer if n_local_enhancers else GlobalGenerator)
    assert g.size_multiple == opts.size_multiple == 2 ** (2 + n_local_enhancers)
    x = tf.random.normal((2, 32, 48, opts.generator_input_nc))
    y = g(x)
    assert y.shape == (2, 32, 48, 3)
    assert float(tf.reduce_max(tf.abs(y))) <= 1.0  # tanh


def test_local_enhancer_layer_groups():
    g = networks.build_generator(tiny_options(netG="local", n_local_enhancers=2))
    global_vars = {id(v) for v in g.global_variables()}
    enhancer_vars = [v for v in g.trainable_variables if id(v) not in global_vars]
    assert global_vars and enhancer_vars
    assert all(v.path.startswith(("model1_", "model2_")) for v in enhancer_vars)
    assert all(v.path.startswith("model_") for v in g.global_variables())
    # G1 runs at ngf·2^n_local_enhancers = 32 filters in its first conv.
    assert g.get_layer("model_1").filters == 8 * 2**2


def _patch_size(s: int, n_layers_D: int) -> int:
    """Side of D's score map: n_layers_D convs k4 s2 p2 (s // 2 + 1), two k4 s1 p2 (s + 1)."""
    for _ in range(n_layers_D):
        s = s // 2 + 1
    return s + 2


@pytest.mark.parametrize("num_D, n_layers_D", [(1, 2), (3, 3)])
def test_discriminator_returns_every_block_of_every_scale(num_D, n_layers_D):
    d = MultiscaleDiscriminator(7, ndf=8, n_layers_D=n_layers_D, num_D=num_D)
    outputs = d([tf.random.normal((2, 64, 48, 4)), tf.random.normal((2, 64, 48, 3))])
    assert len(outputs) == num_D
    for i, scale in enumerate(outputs):
        assert len(scale) == n_layers_D + 2
        h, w = 64, 48
        for _ in range(i):  # AvgPool(3, 2, pad 1): ceil(s / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        expected = []
        for _ in range(n_layers_D):  # kernel 4, stride 2, pad 2: s // 2 + 1
            h, w = h // 2 + 1, w // 2 + 1
            expected.append((h, w))
        for _ in range(2):  # kernel 4, stride 1, pad 2: s + 1
            h, w = h + 1, w + 1
            expected.append((h, w))
        assert [tuple(t.shape[1:3]) for t in scale] == expected
        channels = [min(8 * 2**k, 512) for k in range(n_layers_D + 1)] + [1]
        assert [t.shape[-1] for t in scale] == channels
    assert d.scale(num_D - 1) is d.get_layer(f"scale{num_D - 1}")


def test_same_networks_run_on_two_sizes():
    opts = tiny_options(netG="local", instance_feat=True)
    g, d, e = networks.build_generator(opts), networks.build_discriminator(opts), networks.build_encoder(opts)
    for h, w in [(16, 32), (48, 24)]:
        assert g(tf.zeros((1, h, w, opts.generator_input_nc))).shape == (1, h, w, 3)
        scores = d([tf.zeros((1, h, w, opts.discriminator_input_nc - 3)), tf.zeros((1, h, w, 3))])[0][-1]
        assert scores.shape == (1, _patch_size(h, 2), _patch_size(w, 2), 1)
        assert e([tf.zeros((1, h, w, 3)), tf.zeros((1, h, w), tf.int32)]).shape == (1, h, w, 3)


def test_encoder_output_is_constant_per_instance():
    e = Encoder(3, feat_num=3, nef=4, n_downsample_E=2)
    instance = np.zeros((2, 16, 16), np.int32)
    instance[:, :, 8:] = 5
    feat = np.asarray(e([tf.random.normal((2, 16, 16, 3)), tf.constant(instance)]))
    for b in range(2):
        for i in (0, 5):
            region = feat[b][instance[b] == i]
            np.testing.assert_allclose(region, np.broadcast_to(region[0], region.shape), atol=1e-6)
    assert not np.allclose(feat[0, 0, 0], feat[0, 0, 15])
