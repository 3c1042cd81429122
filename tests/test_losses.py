"""The objective against hand computations: GAN modes, feature matching weights, VGG19 loss."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf.training import losses

rng = np.random.default_rng(0)


def _predictions(num_D: int, n_layers_D: int, n: int = 2, seed: int = 0) -> list[list[tf.Tensor]]:
    """Hand-made D outputs: n_layers_D + 1 feature maps and one score map per scale."""
    r = np.random.default_rng(seed)
    return [
        [tf.constant(r.standard_normal((n, 4 - s, 5 - s, 2 + k)), tf.float32) for k in range(n_layers_D + 2)]
        for s in range(num_D)
    ]


def _mean_per_sample(x: np.ndarray) -> np.ndarray:
    return x.reshape(x.shape[0], -1).mean(axis=1)


def test_lsgan_is_mse_to_one_and_zero_summed_over_scales():
    preds = _predictions(num_D=3, n_layers_D=1)
    scores = [np.asarray(p[-1]) for p in preds]
    real = losses.gan_loss(preds, True, "lsgan")
    fake = losses.gan_loss(preds, False, "lsgan")
    assert real.shape == (2,)
    np.testing.assert_allclose(real, sum(_mean_per_sample((s - 1) ** 2) for s in scores), rtol=1e-6)
    np.testing.assert_allclose(fake, sum(_mean_per_sample(s**2) for s in scores), rtol=1e-6)


def test_vanilla_is_bce_of_the_sigmoid():
    preds = _predictions(num_D=2, n_layers_D=1)
    p = [1 / (1 + np.exp(-np.asarray(s[-1], np.float64))) for s in preds]
    real = sum(_mean_per_sample(-np.log(q)) for q in p)
    fake = sum(_mean_per_sample(-np.log(1 - q)) for q in p)
    np.testing.assert_allclose(losses.gan_loss(preds, True, "vanilla"), real, rtol=1e-5)
    np.testing.assert_allclose(losses.gan_loss(preds, False, "vanilla"), fake, rtol=1e-5)
    # Stable for saturated scores, where sigmoid + log would give inf.
    saturated = [[tf.fill((1, 2, 2, 1), 200.0)]]
    np.testing.assert_allclose(losses.gan_loss(saturated, False, "vanilla"), [200.0])


def test_hinge_for_d_and_g():
    preds = [[tf.constant([[[[-2.0], [-0.5]], [[0.5], [3.0]]]])]]  # one sample, scores -2, -0.5, 0.5, 3
    np.testing.assert_allclose(losses.gan_loss(preds, True, "hinge"), [(3 + 1.5 + 0.5 + 0) / 4])
    np.testing.assert_allclose(losses.gan_loss(preds, False, "hinge"), [(0 + 0.5 + 1.5 + 4) / 4])
    np.testing.assert_allclose(losses.gan_loss(preds, True, "hinge", for_discriminator=False), [-0.25])
    with pytest.raises(ValueError, match="target_is_real=True"):
        losses.gan_loss(preds, False, "hinge", for_discriminator=False)
    with pytest.raises(ValueError, match="wgan"):
        losses.gan_loss(preds, True, "wgan")


@pytest.mark.parametrize("num_D, n_layers_D", [(2, 3), (3, 2)])
def test_feature_matching_uses_the_official_weights(num_D, n_layers_D):
    fake = _predictions(num_D, n_layers_D, seed=1)
    real = _predictions(num_D, n_layers_D, seed=2)
    expected = 0.0
    for fs, rs in zip(fake, real):
        for f, r in zip(fs[:-1], rs[:-1]):  # every block but the score map
            expected = expected + 4.0 / (n_layers_D + 1) / num_D * 10.0 * _mean_per_sample(np.abs(np.asarray(f) - r))
    out = losses.feature_matching_loss(fake, real, n_layers_D, lambda_feat=10.0)
    assert out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-5)


def test_feature_matching_on_one_hand_made_layer():
    fake = [[tf.fill((1, 2, 2, 1), 3.0), tf.zeros((1, 1, 1, 1))]]
    real = [[tf.fill((1, 2, 2, 1), 1.0), tf.fill((1, 1, 1, 1), 9.0)]]  # the score map is ignored
    # num_D 1, n_layers_D 3: weight 4/4 · 1 · lambda 2 · |3 - 1| = 4
    np.testing.assert_allclose(losses.feature_matching_loss(fake, real, 3, 2.0), [4.0])


def test_feature_matching_gradient_does_not_flow_into_the_real_branch():
    fake = [[tf.Variable(tf.random.normal((2, 3, 3, 2))), tf.zeros((2, 1, 1, 1))]]
    real = [[tf.Variable(tf.random.normal((2, 3, 3, 2))), tf.zeros((2, 1, 1, 1))]]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.feature_matching_loss(fake, real, 3, 10.0))
    grad_fake, grad_real = tape.gradient(loss, [fake[0][0], real[0][0]])
    assert grad_real is None
    assert float(tf.reduce_max(tf.abs(grad_fake))) > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (3, 7)])
def test_l1_distance_has_tf_abs_gradient_in_a_graph_and_eagerly(shape, dtype):
    """The int8-sign gradient equals autodiff of mean|x - target| exactly, ties (x == target, gradient 0)
    included, per sample; in a tf.function too."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=shape).astype("float32"), dtype=dtype)
    target = tf.tensor_scatter_nd_update(  # a few exact ties
        tf.constant(rng.normal(size=shape).astype("float32")), [[0] * len(shape), [1] * len(shape)],
        tf.cast(tf.stack([x[(0,) * len(shape)], x[(1,) * len(shape)]]), tf.float32),
    )
    weights = tf.constant([1.0, -3.0, 0.5][: shape[0]])

    def both(x):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = losses.l1_distance(x, target)
            plain = tf.reduce_mean(tf.reshape(tf.abs(tf.cast(x, tf.float32) - target), [shape[0], -1]), axis=1)
            ours_total, plain_total = tf.reduce_sum(weights * ours), tf.reduce_sum(weights * plain)
        return ours, plain, tape.gradient(ours_total, x), tape.gradient(plain_total, x)

    for run in (both, tf.function(both)):
        ours, plain, grad, expected = run(x)
        np.testing.assert_array_equal(ours, plain)
        assert grad.dtype == x.dtype
        np.testing.assert_array_equal(tf.cast(grad, tf.float32), tf.cast(expected, tf.float32))
        assert float(tf.reshape(grad, [-1])[0]) == 0.0  # a tie
        assert float(tf.reduce_max(tf.abs(tf.cast(grad, tf.float32)))) > 0


def test_vgg_preprocess_maps_to_caffe_bgr_minus_imagenet_mean():
    image = tf.constant([[[[1.0, -1.0, 0.0]]]])  # R=255, G=0, B=127.5 in 0..255
    expected = [127.5 - 103.939, 0.0 - 116.779, 255.0 - 123.68]  # BGR, mean-subtracted
    np.testing.assert_allclose(losses.vgg_preprocess(image)[0, 0, 0], expected, rtol=1e-5)


class _ScaledCopies(keras.layers.Layer):
    """A stand-in for VGG19: the k-th 'feature map' is the input times 10^k."""

    def call(self, x):
        return [x * 10.0**k for k in range(5)]


def test_vgg_loss_weights_each_layer_officially():
    x = keras.Input((None, None, 3))
    stub = keras.Model(x, _ScaledCopies()(x))
    fake = tf.constant(rng.uniform(-1, 1, (2, 4, 4, 3)), tf.float32)
    real = tf.constant(rng.uniform(-1, 1, (2, 4, 4, 3)), tf.float32)
    l1 = _mean_per_sample(np.abs(np.asarray(losses.vgg_preprocess(fake) - losses.vgg_preprocess(real))))
    weights = [1 / 32, 1 / 16, 1 / 8, 1 / 4, 1]
    expected = 10.0 * sum(w * 10.0**k * l1 for k, w in enumerate(weights))
    np.testing.assert_allclose(losses.VGGLoss(stub, lambda_feat=10.0)(fake, real), expected, rtol=1e-5)


def test_vgg19_loss_with_random_weights():
    vgg = losses.build_vgg19_features(None)
    # relu1_1 .. relu5_1: Keras' block{k}_conv1 layers, whose activation is the ReLU.
    assert [t._keras_history[0].name for t in vgg.outputs] == list(losses.VGG_LAYERS)
    assert all(vgg.get_layer(name).activation is keras.activations.relu for name in losses.VGG_LAYERS)
    assert not vgg.trainable_weights
    loss_fn = losses.VGGLoss(vgg, lambda_feat=10.0)
    fake = tf.Variable(tf.random.uniform((2, 32, 32, 3), -1, 1))
    real = tf.Variable(tf.random.uniform((2, 32, 32, 3), -1, 1))
    with tf.GradientTape() as tape:
        loss = loss_fn(fake, real)
    assert loss.shape == (2,) and float(tf.reduce_min(loss)) > 0
    grad_fake, grad_real = tape.gradient(loss, [fake, real])
    assert grad_real is None and float(tf.reduce_max(tf.abs(grad_fake))) > 0
    np.testing.assert_allclose(loss_fn(real, real), [0.0, 0.0])
