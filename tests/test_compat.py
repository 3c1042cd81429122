"""What the previous package layout wrote still loads: a checkpoint, its clusters, a SavedModel and a .keras G.

`tests/fixtures/legacy_0_1` was written by the code before the re-layout (`make_fixture.py` beside it, run at
that commit): a tiny instance-feature experiment and the outputs its networks gave then.
"""

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf.experiment import load_experiment, load_networks
from pix2pixhd_tf.inputs import encode_input
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.visualize import tensor_to_uint8

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_0_1"


@pytest.fixture(scope="module")
def legacy():
    opts = Options(**json.loads((FIXTURE / "options.json").read_text()), checkpoints_dir=str(FIXTURE / "checkpoints"))
    return opts, dict(np.load(FIXTURE / "expected.npz"))


def _generator_input(expected: dict, features: np.ndarray) -> tf.Tensor:
    x = encode_input(expected["label"], expected["instance"], label_nc=5)
    return tf.concat([x, tf.constant(features)], -1)


def test_old_checkpoint_loads_with_the_same_numbers(legacy):
    opts, expected = legacy
    experiment = load_experiment(opts)
    features = experiment.encoder([expected["image"], expected["instance"]]).numpy()
    np.testing.assert_array_equal(features, expected["features"])
    fake = experiment.generator(_generator_input(expected, features)).numpy()
    np.testing.assert_allclose(fake, expected["generated"], rtol=0, atol=1e-6)
    assert experiment.clusters is not None and experiment.clusters.counts.tolist() == [2] * 5

    _, D, _ = load_networks(opts, discriminator=True)
    x = encode_input(expected["label"], expected["instance"], label_nc=5)
    np.testing.assert_allclose(D([x, tf.constant(expected["image"])])[-1][-1], expected["d_last"], atol=1e-6)


def test_old_keras_file_loads(legacy):
    _, expected = legacy
    G = keras.saving.load_model(FIXTURE / "generator.keras")
    fake = G(_generator_input(expected, expected["features"])).numpy()
    np.testing.assert_allclose(fake, expected["generated"], rtol=0, atol=1e-6)


def test_old_saved_model_serves_what_the_new_code_generates(legacy):
    opts, expected = legacy
    loaded = tf.saved_model.load(os.fspath(FIXTURE / "exported" / "1"))
    out = loaded.signatures["generate_with_features"](
        label=tf.constant(expected["label"]),
        instance=tf.constant(expected["instance"]),
        features=tf.constant(expected["features"]),
    )["image"].numpy()
    generator = load_experiment(opts).generator
    ours = generator(_generator_input(expected, expected["features"])).numpy()
    np.testing.assert_array_equal(out, tensor_to_uint8(ours))
