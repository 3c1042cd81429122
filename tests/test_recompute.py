"""--recompute: recomputing activations in the backward pass changes memory and time, never the numbers.

Tolerances, relative to the largest gradient (or update) entry of the network (G or D). float32: 1e-5
(`F32_RTOL`); recomputation reruns the same kernels on the same inputs, but grappler may fuse or order the
re-run differently, so results agree to rounding, not bit for bit. bfloat16 (mixed_bfloat16 policy):
`BF16_RTOL`. MirroredStrategy: one SGD step's weight updates, float32 tolerance.
"""

from __future__ import annotations

import functools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf.networks import GlobalGenerator, MultiscaleDiscriminator
from pix2pixhd_tf.networks.layers import ResnetBlock
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.training.model import Pix2PixHD
from pix2pixhd_tf.training.trainer import train
from tests.helpers import (
    build_model,
    config_round_trip,
    mirrored_strategy,
    network_weights,
    random_batch,
    set_network_weights,
    sgd_pair,
    tiny_options,
)
from tests.test_train import tiny_train_options

F32_RTOL = 1e-5
BF16_RTOL = 1e-2
MODES = ("blocks", "all")


def _local_options(**overrides) -> Options:
    """A tiny local G (G1 + one enhancer, a residual block in each) with instance maps and a 2-scale D."""
    return tiny_options(netG="local", n_blocks_global=2, n_blocks_local=1, **overrides)


def _losses_and_grads(model: Pix2PixHD, batch: dict):
    """The train step's G and D losses and their gradients (G's and D's variables), in one tf.function."""

    @tf.function
    def run(data):
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            g_losses, d_losses, _ = model.compute_losses(data, training=True, d_tape=d_tape)
            g_loss = tf.reduce_mean(tf.add_n(list(g_losses.values())))
            d_loss = tf.reduce_mean(0.5 * (d_losses["D_real"] + d_losses["D_fake"]))
        g_grads = g_tape.gradient(g_loss, model.generator.trainable_variables)
        d_grads = d_tape.gradient(d_loss, model.discriminator.trainable_variables)
        return [g_loss, d_loss], g_grads, d_grads

    losses, g_grads, d_grads = run(batch)
    assert all(g is not None for g in g_grads + d_grads), "a variable got no gradient"
    return (
        [float(v) for v in losses],
        [np.array(tf.cast(g, tf.float32)) for g in g_grads],
        [np.array(tf.cast(g, tf.float32)) for g in d_grads],
    )


def _relative_errors(got: list[np.ndarray], expected: list[np.ndarray]) -> list[float]:
    """Per tensor: max |got - expected| / the largest |expected| entry of the whole network.

    Network-wide, not per tensor: the biases of convs followed by an instance norm have a zero gradient
    (the norm removes the mean), so theirs are rounding noise, equal only to rounding.
    """
    assert len(got) == len(expected)
    scale = max(float(np.max(np.abs(b))) for b in expected)
    return [float(np.max(np.abs(a - b))) / scale for a, b in zip(got, expected)]


@functools.cache
def _reference(policy: str):
    """recompute=none under `policy`: (options, batch, weights, losses and gradients), shared by the modes."""
    keras.mixed_precision.set_global_policy(policy)
    opts = _local_options()
    batch = random_batch(opts, n=2, h=32, w=64)
    reference = build_model(opts, sgd_pair())
    return opts, batch, network_weights(reference), _losses_and_grads(reference, batch)


def _check_same(mode: str, policy: str, rtol: float):
    opts, batch, weights, expected = _reference(policy)
    keras.mixed_precision.set_global_policy(policy)
    model = build_model(opts.replace(recompute=mode), sgd_pair())
    set_network_weights(model, weights)
    assert model.generator.recompute == model.discriminator.recompute == mode
    got = _losses_and_grads(model, batch)
    np.testing.assert_allclose(got[0], expected[0], rtol=rtol)
    g_errors, d_errors = _relative_errors(got[1], expected[1]), _relative_errors(got[2], expected[2])
    print(f"{mode} {policy}: max relative gradient error G {max(g_errors):.2e}, D {max(d_errors):.2e}")
    assert max(g_errors) <= rtol and max(d_errors) <= rtol
    # The gradients are real ones: every G and D variable gets a non-zero gradient.
    assert all(np.max(np.abs(g)) > 0 for g in got[1] + got[2])


@pytest.mark.parametrize("mode", MODES)
def test_recompute_gives_the_same_losses_and_gradients(mode):
    _check_same(mode, "float32", F32_RTOL)


@pytest.mark.parametrize("mode", MODES)
def test_recompute_gives_the_same_gradients_in_bfloat16(mode):
    _check_same(mode, "mixed_bfloat16", BF16_RTOL)


def test_recomputed_block_gives_kernel_gradients_eagerly_too():
    """tf.recompute_grad finds a Keras layer's variables itself: the gradients w.r.t. the block's kernels
    exist and equal the plain block's, also outside a tf.function."""
    x = tf.random.stateless_normal([1, 12, 10, 16], seed=[1, 2])
    plain, recomputed = ResnetBlock(16, input_relu=True), ResnetBlock(16, input_relu=True, recompute=True)
    plain.build(x.shape)
    recomputed.build(x.shape)
    recomputed.set_weights(plain.get_weights())
    grads = []
    for block in (plain, recomputed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.square(block(x)))
        grads.append(tape.gradient(loss, [x, *block.trainable_variables]))
    assert len(grads[1]) == 5 and all(g is not None for g in grads[1])  # x, 2 kernels, 2 biases
    errors = _relative_errors([np.array(g) for g in grads[1]], [np.array(g) for g in grads[0]])
    assert max(errors) <= F32_RTOL, errors
    assert config_round_trip(recomputed).recompute is True


def test_mirrored_step_with_recompute_equals_without():
    """One SGD train step under MirroredStrategy (2 logical CPUs): the same losses and updates with
    recompute=blocks and all as without."""
    opts = _local_options()
    batch = random_batch(opts, n=2, h=32, w=64)
    before = network_weights(build_model(opts, sgd_pair()))
    results = {}
    for mode in ("none", *MODES):
        strategy = mirrored_strategy()
        with strategy.scope():
            model = build_model(opts.replace(recompute=mode), sgd_pair())
        set_network_weights(model, before)
        distributed = next(
            iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(batch).batch(2)))
        )
        logs = tf.function(lambda d, s=strategy, m=model: s.run(m.train_step, args=(d,)))(distributed)
        losses = {k: float(strategy.reduce("MEAN", v, axis=None)) for k, v in logs.items()}
        results[mode] = losses, network_weights(model)
    losses, weights = results["none"]
    for mode in MODES:
        np.testing.assert_allclose(list(results[mode][0].values()), list(losses.values()), rtol=F32_RTOL)
        for net in ("G", "D"):
            updates = [a - b for a, b in zip(weights[net], before[net])]
            got = [a - b for a, b in zip(results[mode][1][net], before[net])]
            errors = _relative_errors(got, updates)
            print(f"mirrored {mode} {net}: max relative update error {max(errors):.2e}")
            assert max(errors) <= F32_RTOL, (mode, net)


def test_unknown_recompute_mode_is_refused():
    with pytest.raises(ValueError, match="--recompute='some' is not one of 'none', 'blocks', 'all'"):
        _local_options(recompute="some")
    with pytest.raises(ValueError, match="recompute must be one of none, blocks, all, got 'some'"):
        GlobalGenerator(8, ngf=4, n_downsample_global=1, n_blocks_global=1, recompute="some")
    with pytest.raises(ValueError, match="recompute must be one of none, blocks, all, got 'some'"):
        MultiscaleDiscriminator(8, ndf=4, n_layers_D=1, num_D=1, recompute="some")


def test_recompute_is_in_the_networks_configs():
    """A saved network keeps its setting (it changes no weight: a checkpoint loads into either)."""
    opts = _local_options(recompute="all")
    model = build_model(opts)
    for network in (model.generator, model.discriminator):
        assert config_round_trip(network).recompute == "all"
    plain = build_model(_local_options())
    assert [v.path for v in plain.generator.weights] == [v.path for v in model.generator.weights]
    assert [v.path for v in plain.discriminator.weights] == [v.path for v in model.discriminator.weights]


@pytest.mark.slow
def test_recompute_round_trips_through_options_json_and_resume(tmp_path):
    """Train 2 steps with --recompute=blocks; options.json records it, and --continue_train resumes with it
    (and with another setting: recompute is not an architecture flag)."""
    opts = tiny_train_options(
        tmp_path, name="recompute", synthetic_size=4, niter=2, niter_decay=0, steps_per_epoch=2, recompute="blocks"
    )
    first = train(opts, max_steps=2)
    assert first.global_step == 2 and first.model.generator.recompute == "blocks"
    options_json = os.path.join(opts.checkpoints_dir, opts.name, "options.json")
    with open(options_json) as f:
        assert json.load(f)["recompute"] == "blocks"

    second = train(opts.replace(continue_train=True))
    assert second.global_step == 4 and second.model.generator.recompute == "blocks"
    with open(options_json) as f:
        assert json.load(f)["recompute"] == "blocks"
    third = train(opts.replace(continue_train=True, recompute="all", niter=3))
    assert third.global_step == 6 and third.model.discriminator.recompute == "all"
    assert all(np.isfinite(v) for v in third.losses.values())
