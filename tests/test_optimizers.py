"""FusedAdam against Keras' Adam: the same trajectory, under a strategy too, and interchangeable checkpoints."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from pix2pixhd_tf.training.optimizers import FusedAdam
from tests.helpers import mirrored_strategy

SHAPES = [(3, 3, 4, 5), (5,)]
ADAM = {"learning_rate": 0.01, "beta_1": 0.5, "beta_2": 0.999, "epsilon": 1e-8}


def _variables(seed: int = 0) -> list[keras.Variable]:
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _gradients(step: int) -> list[tf.Tensor]:
    rng = np.random.default_rng(100 + step)
    return [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _train(optimizer: keras.optimizers.Optimizer, variables, steps: range) -> list[np.ndarray]:
    apply = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    for step in steps:
        apply(_gradients(step))
    return [v.numpy() for v in variables]


def test_fused_adam_follows_keras_adam_including_bias_correction():
    start = [v.numpy() for v in _variables()]
    expected = _train(keras.optimizers.Adam(**ADAM), _variables(), range(20))
    got = _train(FusedAdam(**ADAM), _variables(), range(20))
    for e, g, s in zip(expected, got, start):
        assert np.abs(e - s).max() > 0.05  # 20 steps of lr 0.01 moved the weights
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_fused_adam_under_mirrored_strategy_equals_a_single_device():
    expected = _train(FusedAdam(**ADAM), _variables(), range(5))
    strategy = mirrored_strategy()
    with strategy.scope():
        variables = _variables()
        optimizer = FusedAdam(**ADAM)
        optimizer.build(variables)

    @tf.function
    def apply(grads):
        # Each replica holds half of the summed gradient: the all-reduce gives the full one back.
        strategy.run(lambda: optimizer.apply_gradients(zip([g / 2 for g in grads], variables)))

    for step in range(5):
        apply(_gradients(step))
    for e, v in zip(expected, variables):
        for component in v.value.values:  # every replica's copy
            np.testing.assert_allclose(component.numpy(), e, atol=1e-6)


def test_a_keras_adam_checkpoint_continues_in_fused_adam(tmp_path):
    variables = _variables()
    keras_adam = keras.optimizers.Adam(**ADAM)
    _train(keras_adam, variables, range(3))
    path = tf.train.Checkpoint(variables=variables, optimizer=keras_adam).write(str(tmp_path / "ck"))
    expected = _train(keras_adam, variables, range(3, 6))

    restored_vars = _variables(seed=1)
    fused = FusedAdam(**ADAM)
    fused.build(restored_vars)
    tf.train.Checkpoint(variables=restored_vars, optimizer=fused).read(path).assert_consumed()
    assert int(fused.iterations) == 3
    for e, g in zip(expected, _train(fused, restored_vars, range(3, 6))):
        np.testing.assert_allclose(g, e, atol=1e-6)


def test_sparse_gradients_take_keras_update():
    table = keras.Variable(np.ones((6, 2), np.float32))
    grad = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 4]), tf.constant([6, 2]))
    FusedAdam(**ADAM).apply_gradients([(grad, table)])
    changed = np.abs(table.numpy() - 1).max(axis=1) > 0
    np.testing.assert_array_equal(changed, [False, True, False, False, True, False])
