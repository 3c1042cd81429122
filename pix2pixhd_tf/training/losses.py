"""pix2pixHD's objective (paper Eq. 4): GAN loss + lambda·(feature matching + VGG perceptual loss).

Every loss returns one value per sample ([N]) so the caller can reduce by the *global* batch under
tf.distribute (`tf.nn.compute_average_loss`); averaging per sample and then over samples equals the
official mean over all elements because every sample has the same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

GAN_MODES = ("lsgan", "vanilla", "hinge")

# relu1_1 .. relu5_1 of VGG19 (Keras' block{k}_conv1 include the ReLU) and the official weights.
VGG_LAYERS = ("block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1")
VGG_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)

Predictions = Sequence[Sequence[tf.Tensor]]  # one list of block outputs per discriminator scale


def _per_sample_mean(x: tf.Tensor) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def l1_distance(x: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Per-sample mean |x - target|, with `target` held fixed: feature matching's, the VGG loss's and L1's term.

    The backward pass keeps only sign(x - target), as int8. tf.abs would keep the float difference for its
    gradient, and the mean's gradient would tile dy to full size: per compared feature map, 4x the kept bytes
    and one more full-size tensor, alive at the step's memory peak (benchmarks/memory_profile.py). The
    gradient is the same: sign(x - target)·dy/n.
    """
    target = tf.stop_gradient(tf.cast(target, tf.float32))

    @tf.custom_gradient
    def distance(x):
        difference = tf.cast(x, tf.float32) - target
        sign = tf.cast(tf.sign(difference), tf.int8)

        def grad(dy):
            count = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
            per_sample = tf.reshape(dy / count, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], 0))
            return tf.cast(tf.cast(sign, tf.float32) * per_sample, x.dtype)

        return _per_sample_mean(tf.abs(difference)), grad

    return distance(x)


def gan_loss(predictions: Predictions, target_is_real: bool, mode: str = "lsgan", for_discriminator: bool = True):
    """The GAN loss summed over discriminator scales, on the last output of each.

    lsgan: MSE to 1/0 (the default); vanilla: BCE on the raw scores (the official `no_lsgan`, with the
    sigmoid folded into a stable BCE); hinge: max(0, 1 ∓ D) for D and -D for G, as in SPADE.
    """
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode {mode!r} is not one of {GAN_MODES}")
    total = 0.0
    for scale in predictions:
        pred = tf.cast(scale[-1], tf.float32)
        if mode == "lsgan":
            target = 1.0 if target_is_real else 0.0
            loss = tf.square(pred - target)
        elif mode == "vanilla":
            target = tf.ones_like(pred) if target_is_real else tf.zeros_like(pred)
            loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=pred)
        elif for_discriminator:
            loss = tf.nn.relu(1.0 - pred) if target_is_real else tf.nn.relu(1.0 + pred)
        else:
            if not target_is_real:
                raise ValueError("the hinge generator loss is defined for target_is_real=True only")
            loss = -pred
        total += _per_sample_mean(loss)
    return total


def feature_matching_loss(fake: Predictions, real: Predictions, n_layers_D: int, lambda_feat: float) -> tf.Tensor:
    """Discriminator feature matching (paper Eq. 4): L1 between D's features of fake and real, real held fixed.

    The official weights: 4/(n_layers_D+1) per layer and 1/num_D per scale, times lambda_feat.
    """
    num_D = len(fake)
    feat_weight = 4.0 / (n_layers_D + 1)
    total = 0.0
    for fake_scale, real_scale in zip(fake, real):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total += (feat_weight / num_D) * lambda_feat * l1_distance(f, r)
    return total


def l1_loss(fake: tf.Tensor, real: tf.Tensor) -> tf.Tensor:
    """pix2pix's L1 reconstruction term (Isola et al. 2017), optional here: a cheap anchor for short runs
    without the VGG weights (configs/local.cfg); pix2pixHD itself does not use it."""
    return l1_distance(fake, real)


def build_vgg19_features(weights: str | None = "imagenet") -> keras.Model:
    """VGG19 up to relu5_1, returning relu{1..5}_1.

    `weights`: 'imagenet' (Keras' normal download, cached in ~/.keras/models), a local weights file
    (e.g. vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5), or None for random weights (tests only).
    """
    load_local = weights not in (None, "imagenet")
    try:
        vgg = keras.applications.VGG19(include_top=False, weights=None if load_local else weights)
    except Exception as err:  # the download fails on machines without internet
        raise RuntimeError(
            f"could not get the VGG19 ImageNet weights ({err}). Download "
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 elsewhere and pass --vgg_weights=/path/to/it, "
            "or train without the perceptual loss (--no_vgg_loss)"
        ) from err
    if load_local:
        vgg.load_weights(weights)
    vgg.trainable = False
    outputs = [vgg.get_layer(name).output for name in VGG_LAYERS]
    return keras.Model(vgg.input, outputs, name="vgg19_features")


def vgg_preprocess(image: tf.Tensor) -> tf.Tensor:
    """[-1, 1] RGB -> the caffe-style input Keras' VGG19 weights were trained on (BGR, 0..255, mean-free)."""
    image = (tf.cast(image, tf.float32) + 1.0) * 127.5
    return keras.applications.vgg19.preprocess_input(image)


class VGGLoss:
    """Perceptual loss (paper Eq. 4's L_VGG): weighted L1 between VGG19 features of fake and real."""

    def __init__(self, vgg: keras.Model, lambda_feat: float = 10.0):
        self.vgg = vgg
        self.lambda_feat = lambda_feat

    def __call__(self, fake: tf.Tensor, real: tf.Tensor) -> tf.Tensor:
        fake_feats = self.vgg(vgg_preprocess(fake))
        real_feats = self.vgg(vgg_preprocess(real))
        total = 0.0
        for w, f, r in zip(VGG_WEIGHTS, fake_feats, real_feats):
            total += w * l1_distance(f, r)
        return self.lambda_feat * total
