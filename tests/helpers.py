"""Tiny configurations and checks shared by the core tests (ngf 8, 32×32: each step takes milliseconds)."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import tensorflow as tf

from pix2pixhd_tf.training.model import Pix2PixHD
from pix2pixhd_tf.options import Options

TINY = dict(
    label_nc=5,
    ngf=8,
    n_downsample_global=2,
    n_blocks_global=1,
    n_local_enhancers=1,
    n_blocks_local=1,
    ndf=8,
    n_layers_D=2,
    num_D=2,
    nef=4,
    n_downsample_E=2,
    no_vgg_loss=True,
)


def tiny_options(**overrides) -> Options:
    """A small global-G configuration (label_nc 5, ngf 8, 2 downsamples, 1 block, 2 D scales, no VGG)."""
    return Options(**{**TINY, **overrides})


def random_batch(opts: Options, n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> dict:
    """A batch with the `pix2pixhd_tf.data` contract: label, instance (unless no_instance), image, feat."""
    rng = np.random.default_rng(seed)

    def blocks(high: int, size: int) -> np.ndarray:
        ids = rng.integers(0, high, (n, -(-h // size), -(-w // size)))
        return np.repeat(np.repeat(ids, size, 1), size, 2)[:, :h, :w]

    if opts.label_nc:
        # Blocky label maps with a few instances each, so edges and instance pooling have something to do.
        label = blocks(opts.label_nc, 4)
    else:
        label = rng.uniform(-1, 1, (n, h, w, opts.input_nc))
    batch = {
        "label": tf.constant(label, tf.int32 if opts.label_nc else tf.float32),
        "image": tf.constant(rng.uniform(-1, 1, (n, h, w, opts.output_nc)), tf.float32),
    }
    if not opts.no_instance:
        batch["instance"] = tf.constant(blocks(4, 8), tf.int32)
    if opts.load_features:
        batch["feat"] = tf.constant(rng.uniform(-1, 1, (n, h, w, opts.feat_num)), tf.float32)
    return batch


_collective_key_bases = itertools.count(1)


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPUs of conftest, with collective keys of its own.

    Every MirroredStrategy numbers its all-reduces from the same group/instance keys, and the process
    remembers the shape first seen under a key: a second strategy all-reducing other shapes in the same
    process aborts ("Shape mismatch in the collective instance ..."). TF's own tests shift the key base.
    """
    tf.distribute.MirroredStrategy._collective_key_base = 10_000 * next(_collective_key_bases)
    try:
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    finally:
        tf.distribute.MirroredStrategy._collective_key_base = 0


def sgd_pair(lr: float = 0.1) -> tuple[keras.optimizers.Optimizer, keras.optimizers.Optimizer]:
    """Plain SGD for G and D: an update is lr·gradient, so a wrongly scaled gradient shows (Adam's first
    step, lr·g/|g|, would hide a factor of 2)."""
    return keras.optimizers.SGD(lr, name="g_sgd"), keras.optimizers.SGD(lr, name="d_sgd")


def build_model(opts: Options, optimizers=None, vgg: keras.Model | None = None) -> Pix2PixHD:
    """A compiled Pix2PixHD (Adam from the options unless `optimizers` is given); call inside a scope."""
    from pix2pixhd_tf.training.model import make_optimizers

    model = Pix2PixHD.from_options(opts, vgg=vgg)
    model.compile(*(optimizers or make_optimizers(opts)))
    return model


def network_weights(model: Pix2PixHD) -> dict[str, list[np.ndarray]]:
    """Numpy copies of G's, D's (and E's) weights, keyed by network."""
    nets = {"G": model.generator, "D": model.discriminator}
    if model.encoder is not None:
        nets["E"] = model.encoder
    return {key: [np.array(v) for v in net.weights] for key, net in nets.items()}


def set_network_weights(model: Pix2PixHD, weights: dict[str, list[np.ndarray]]) -> None:
    """Load a `network_weights` result into `model` (e.g. a mirrored copy of a one-device model)."""
    for key, values in weights.items():
        {"G": model.generator, "D": model.discriminator, "E": model.encoder}[key].set_weights(values)


def max_abs_diff(a: dict, b: dict) -> dict[str, float]:
    """Largest absolute difference per network between two `network_weights` results."""
    return {k: max(float(np.max(np.abs(x - y))) for x, y in zip(a[k], b[k])) for k in a}


def config_round_trip(layer: keras.layers.Layer) -> keras.layers.Layer:
    """Rebuild `layer` from its (serialised) config and check the config survives unchanged."""
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()
    return clone
