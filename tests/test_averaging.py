"""The moving average of G's (and E's) weights (--ema_decay): its arithmetic, one device and mirrored, save and
exact resume, and the tools' choice of averaged or raw weights."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf import networks
from pix2pixhd_tf.experiment import load_encoder, load_networks
from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf.training.averaging import WeightAverage, average_decay
from pix2pixhd_tf.training.trainer import Trainer, train
from tests.helpers import build_model, mirrored_strategy, random_batch, sgd_pair, tiny_options
from tests.test_train import tiny_train_options


def _weights(net) -> list[np.ndarray]:
    return [np.array(v) for v in net.weights]


def test_decay_ramps_in_then_stays_at_the_flag():
    counts = np.array([0, 1, 10, 90, 9990, 10**6])
    np.testing.assert_allclose(average_decay(0.999, counts).numpy(), [0.0, 1 / 11, 0.5, 0.9, 0.999, 0.999], rtol=1e-6)


def test_average_follows_the_ramp_then_the_closed_form():
    """After k SGD steps, the average is what its definition gives from the k weights G passed through:
    first the ramp (the first update copies), then, at the plain decay d, d^k·a0 + (1-d)·Σ d^(k-j)·w_j."""
    opts = tiny_options(no_instance=True, ema_decay=0.5)
    model = build_model(opts, sgd_pair())
    step = tf.function(model.train_step)
    batch = random_batch(opts)
    start = _weights(model.generator)
    np.testing.assert_array_equal(_weights(model.average.generator)[0], start[0])  # reset to G at build

    seen = []
    for _ in range(3):
        step(batch)
        seen.append(_weights(model.generator))
    expected = start
    for n, w in enumerate(seen):  # count n before the update: decay min(0.5, n / (n + 10))
        d = min(0.5, n / (n + 10))
        expected = [d * a + (1 - d) * x for a, x in zip(expected, w)]
    assert int(model.average.count) == 3
    for got, want in zip(_weights(model.average.generator), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(_weights(model.average.generator)[0], seen[-1][0])  # an average, not a copy

    model.average.count.assign(1000)  # past the ramp: decay 0.5 exactly
    a0 = _weights(model.average.generator)
    ws = []
    for _ in range(3):
        step(batch)
        ws.append(_weights(model.generator))
    k = len(ws)
    for i, got in enumerate(_weights(model.average.generator)):
        want = 0.5**k * a0[i] + sum(0.5 * 0.5 ** (k - j) * ws[j - 1][i] for j in range(1, k + 1))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_encoder_is_averaged_with_g():
    opts = tiny_options(instance_feat=True, ema_decay=0.9)
    model = build_model(opts, sgd_pair())
    model.average.count.assign(1000)
    before, raw_before = _weights(model.average.encoder), _weights(model.encoder)
    model.train_step(random_batch(opts))
    for a, w0, w1, got in zip(before, raw_before, _weights(model.encoder), _weights(model.average.encoder)):
        np.testing.assert_allclose(got, 0.9 * a + 0.1 * w1, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(a, b) for a, b in zip(raw_before, _weights(model.encoder)))


def test_mirrored_average_equals_the_single_device_one():
    """Each replica's average follows its (mirrored) G exactly, and differs from the one-device average no
    more than the two G's do (the replicas sum gradients in another order: a few float32 ulps per step)."""
    opts = tiny_options(no_instance=True, ema_decay=0.9)
    batch = random_batch(opts, n=2)
    single = build_model(opts, sgd_pair())
    strategy = mirrored_strategy()
    with strategy.scope():
        mirrored = build_model(opts, sgd_pair())
        for net, source in [(mirrored.generator, single.generator), (mirrored.discriminator, single.discriminator)]:
            net.set_weights(source.get_weights())
        mirrored.average.reset(mirrored.generator)

    @tf.function
    def mirrored_step(batch):
        strategy.run(mirrored.train_step, args=(batch,))

    single_step = tf.function(single.train_step)
    expected = _weights(mirrored.generator)
    distributed = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat(3))
    for n, shard in enumerate(distributed):
        mirrored_step(shard)
        single_step(batch)
        d = min(0.9, n / (n + 10))
        expected = [d * a + (1 - d) * w for a, w in zip(expected, _weights(mirrored.generator))]
    assert int(mirrored.average.count.numpy()) == 3
    g_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(_weights(single.generator), _weights(mirrored.generator)))
    assert g_diff < 1e-4
    for s, m, want in zip(single.average.generator.weights, mirrored.average.generator.weights, expected):
        replicas = [np.array(v) for v in strategy.experimental_local_results(m.value)]
        np.testing.assert_array_equal(replicas[0], replicas[1])  # every replica holds the same average
        np.testing.assert_allclose(replicas[0], want, rtol=1e-5, atol=1e-6)
        assert float(np.max(np.abs(replicas[0] - np.array(s)))) <= g_diff + 1e-6


def test_average_resumes_exactly_and_the_tools_use_it(tmp_path, capsys):
    reference = train(tiny_train_options(tmp_path, name="straight", ema_decay=0.9, instance_feat=True))
    opts = tiny_train_options(tmp_path, name="resumed", ema_decay=0.9, instance_feat=True)
    first = train(opts, max_steps=4)
    saved = _weights(first.model.average.generator)
    trainer = Trainer(opts.replace(continue_train=True))
    trainer.restore_or_initialise()
    for a, b in zip(saved, _weights(trainer.model.average.generator)):
        np.testing.assert_array_equal(a, b)
    assert int(trainer.model.average.count) == 4
    second = trainer.train()
    assert second.global_step == 6 and int(second.model.average.count) == 6
    for a, b in zip(_weights(reference.model.average.generator), _weights(second.model.average.generator)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # samples/ shows label | trained G | averaged G | real.
    grid = np.array(Image.open(os.path.join(reference.checkpoint_dir, "samples", "epoch001.png")))
    w = 2 * grid.shape[0]  # synthetic scenes are twice as wide as high
    assert grid.shape[1] == 4 * w
    assert np.abs(grid[:, w : 2 * w].astype(int) - grid[:, 2 * w : 3 * w]).mean() > 0.1  # two different G

    # test, export, encode_features and the editor read G and E through load_networks / load_encoder.
    capsys.readouterr()
    G, _, E = load_networks(opts)
    assert "Using the averaged weights of G and E" in capsys.readouterr().out
    for loaded, averaged in zip(
        _weights(G) + _weights(E), _weights(second.model.average.generator) + _weights(second.model.average.encoder)
    ):
        np.testing.assert_array_equal(loaded, averaged)
    E_alone = load_encoder(opts)
    for a, b in zip(_weights(E_alone), _weights(second.model.average.encoder)):
        np.testing.assert_array_equal(a, b)

    G_raw, _, E_raw = load_networks(opts.replace(raw_weights=True))
    assert "Using the trained (raw) weights of G and E" in capsys.readouterr().out
    for loaded, raw in zip(
        _weights(G_raw) + _weights(E_raw), _weights(second.model.generator) + _weights(second.model.encoder)
    ):
        np.testing.assert_array_equal(loaded, raw)
    assert any(not np.array_equal(a, b) for a, b in zip(_weights(G), _weights(G_raw)))


def test_a_checkpoint_without_average_loads_and_resumes_with_averaging(tmp_path, capsys):
    opts = tiny_train_options(tmp_path)
    plain = train(opts, max_steps=2)
    directory = ckpt.checkpoint_dir(os.path.join(opts.checkpoints_dir, opts.name), ckpt.LATEST)
    assert not ckpt.holds_average(directory)
    capsys.readouterr()
    G, _, _ = load_networks(opts)  # tools: the trained weights, nothing to choose
    assert "averaged" not in capsys.readouterr().out
    for a, b in zip(_weights(G), _weights(plain.model.generator)):
        np.testing.assert_array_equal(a, b)

    trainer = Trainer(opts.replace(continue_train=True, ema_decay=0.99))
    trainer.restore_or_initialise()
    assert "averaging (--ema_decay 0.99) starts now" in capsys.readouterr().out
    assert int(trainer.model.average.count) == 0
    for a, b in zip(_weights(trainer.model.average.generator), _weights(plain.model.generator)):
        np.testing.assert_array_equal(a, b)
    trainer.train(max_steps=1)
    assert ckpt.holds_average(directory)


def test_weight_average_rejects_a_decay_outside_0_1():
    opts = tiny_options(no_instance=True)
    with pytest.raises(ValueError, match="--ema_decay=1.0 must be in"):
        WeightAverage(networks.build_generator(opts), decay=1.0)


@pytest.mark.parametrize("setting", ["xla", "mixed_bfloat16"])
def test_average_updates_under_xla_and_mixed_precision(setting):
    """The average stays float32 (like Keras' variables under a mixed policy) and follows its definition."""
    opts = tiny_options(no_instance=True, ema_decay=0.5)
    if setting == "mixed_bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the conftest fixture restores float32
    model = build_model(opts, sgd_pair())
    step = tf.function(model.train_step, jit_compile=setting == "xla")
    step(random_batch(opts))
    w1 = _weights(model.generator)
    np.testing.assert_array_equal(_weights(model.average.generator)[0], w1[0])  # the first update copies
    step(random_batch(opts, seed=1))
    assert int(model.average.count) == 2
    assert all(a.dtype == "float32" for a in model.average.generator.weights)
    for a, x, y in zip(_weights(model.average.generator), w1, _weights(model.generator)):
        np.testing.assert_allclose(a, x / 11 + 10 * y / 11, rtol=1e-5, atol=1e-6)  # decay 1/(1+10) at n = 1
    assert any(not np.array_equal(x, y) for x, y in zip(w1, _weights(model.generator)))
