"""One style sampler, three front ends: a checkpoint (`Synthesizer`), the exported SavedModel and the editor
backends give the same features and the same uint8 image for the same seed and style spec.

A tiny untrained feature experiment (G, E, a cluster bank whose classes have 0 to 3 clusters) is saved as
a checkpoint and exported once per module. The SavedModel samples in its graph (`sample_features_graph`),
the checkpoint and the editor in numpy (`sample_feature_map`); both twins draw with `cluster_draw`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf import networks
from pix2pixhd_tf.editor.backends import CheckpointBackend, SavedModelBackend
from pix2pixhd_tf.inference import Synthesizer
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.serving.saved_model import export_model
from pix2pixhd_tf.styles import ClusterBank, StyleSpec, default_cluster_file, image_seeds, sample_features_graph
from pix2pixhd_tf.training import checkpoint as ckpt

TINY = dict(
    name="consistency",
    label_nc=9,
    ngf=8,
    n_downsample_global=2,
    n_blocks_global=1,
    instance_feat=True,
    feat_num=3,
    nef=4,
    n_downsample_E=2,
    n_clusters=3,
    no_vgg_loss=True,
)
COUNTS = np.array([0, 3, 2, 1, 3, 0, 3, 2, 3], np.int32)  # classes 0 and 5 have no clusters: zero features
LEGACY = Path(__file__).parent / "fixtures" / "legacy_0_1"


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 32x64 scene: sky (1), road (2), unlabeled (0), class 5 (no clusters) and eleven instances of
    classes 4, 6, 7 and 8."""
    label = np.full((32, 64), 2, np.int32)
    label[:8] = 1
    label[8:10, :] = 0
    label[28:, :8] = 5
    instance = label.copy()
    for k in range(8):  # eight cars (class 8) in a row
        instance[12:20, 8 * k : 8 * k + 6] = 8000 + k
    instance[22:28, 10:20] = 4001
    instance[22:28, 30:40] = 6003
    instance[22:28, 44:60] = 7002
    label = np.where(instance >= 1000, instance // 1000, label).astype(np.int32)
    return label, instance.astype(np.int32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The checkpoint's Synthesizer, the exported SavedModel (loaded) and its version directory."""
    root = tmp_path_factory.mktemp("consistency")
    opts = Options(checkpoints_dir=str(root / "ckpt"), **TINY)
    keras.utils.set_random_seed(0)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    ckpt.save(ckpt.make_checkpoint(G, None, E), ckpt.checkpoint_dir(ckpt.experiment_dir(opts), "latest"))
    ckpt.save_options(opts, ckpt.experiment_dir(opts))
    centers = np.random.default_rng(1).uniform(-1, 1, (9, 3, 3)).astype(np.float32)
    ClusterBank(centers, COUNTS).save(default_cluster_file(opts))

    synth = Synthesizer.from_checkpoint(opts)
    version = export_model(opts, str(root / "export"))["saved_model"]
    return synth, tf.saved_model.load(version), version


def _batch(n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    label, instance = _scene()
    labels, instances = np.stack([label] * n), np.stack([instance] * n)
    instances[1:, 12:20, 8:14] = 8042  # the second image renames one car: the others keep their styles
    return labels, instances


def _saved_model_image(model, signature: str, label, instance, **extra) -> np.ndarray:
    inputs = {"label": tf.constant(label), "instance": tf.constant(instance)}
    inputs.update({k: tf.constant(v) for k, v in extra.items()})
    return model.signatures[signature](**inputs)["image"].numpy()


# ------------------------------------------------------------------------------------ seed only


@pytest.mark.parametrize("seeds", [[0, 0], [3, 11], [2**31 - 1, 123456789]], ids=["default", "small", "large"])
def test_checkpoint_and_saved_model_sample_the_same_features_and_image(world, seeds):
    synth, model, _ = world
    label, instance = _batch()
    features = synth.sample_features(label, instance, seed=seeds)
    graph = sample_features_graph(instance, np.array(seeds, np.int32), synth.clusters, feat_num=3).numpy()
    np.testing.assert_array_equal(features, graph)
    assert len({tuple(f) for f in features[0][instance[0] >= 8000]}) > 1  # the cars do differ

    image = synth.generate(label, instance, seed=seeds)
    seeded = _saved_model_image(model, "generate_with_seed", label, instance, seed=np.array(seeds, np.int32))
    # The SavedModel's own sampling and the checkpoint's features fed to it: the very same image.
    fed = _saved_model_image(model, "generate_with_features", label, instance, features=features)
    np.testing.assert_array_equal(seeded, fed)
    np.testing.assert_array_equal(seeded, image)
    if seeds == [0, 0]:  # serving_default samples with seed 0
        np.testing.assert_array_equal(_saved_model_image(model, "serving_default", label, instance), image)


def test_one_int_seed_is_every_images_seed(world):
    synth, model, _ = world
    label, instance = _batch()
    image = synth.generate(label, instance, seed=5)
    np.testing.assert_array_equal(image, synth.generate(label, instance, seed=[5, 5]))
    np.testing.assert_array_equal(image[0], synth.generate(label[0], instance[0], seed=5))
    seeded = _saved_model_image(model, "generate_with_seed", label, instance, seed=np.array([5, 5], np.int32))
    np.testing.assert_array_equal(seeded, image)


# ------------------------------------------------------------------------------------ style specs


def test_style_spec_wins_and_the_other_regions_keep_the_saved_models_draw(world):
    synth, model, _ = world
    label, instance = _batch()
    spec = StyleSpec.from_dict({"instances": {"8001": 2, "8003": [0.5, -0.5, 0.25]}, "classes": {"7": 1}})
    features = synth.sample_features(label, instance, seed=[4, 9], style=spec)
    graph = sample_features_graph(instance, np.array([4, 9], np.int32), synth.clusters, feat_num=3).numpy()
    styled = np.vectorize(lambda r: spec.style_for(r) is not None)(instance)
    assert styled.any() and (~styled).any()
    np.testing.assert_array_equal(features[~styled], graph[~styled])
    for n in range(2):
        np.testing.assert_allclose(features[n][instance[n] == 8003], np.broadcast_to([0.5, -0.5, 0.25], (48, 3)))
    np.testing.assert_array_equal(
        features[0][instance[0] == 8001], np.broadcast_to(synth.clusters.centers[8, 2], (48, 3))
    )

    image = synth.generate(label, instance, seed=[4, 9], style=spec)
    with_features = _saved_model_image(model, "generate_with_features", label, instance, features=features)
    np.testing.assert_array_equal(with_features, image)


# ------------------------------------------------------------------------------------ the editor


def test_editor_backends_give_the_checkpoints_image(world):
    synth, _, version = world
    label, instance = _scene()
    checkpoint = CheckpointBackend(synth)  # G compiled into one tf.function, as the editor runs it
    saved = SavedModelBackend(version)  # features from the experiment's clusters.npz, generate_with_features
    assert saved.clusters is not None and saved.can_choose_styles
    styles = {8002: 1, 8005: (0.5, -0.5, 0.25), 6003: 0}
    for seed, chosen in ((0, None), (7, None), (7, styles), (2**40 + 3, styles)):
        expected = synth.generate(label, instance, seed=seed, style=StyleSpec(instances=chosen or {}))
        np.testing.assert_array_equal(checkpoint.generate(label, instance, styles=chosen, seed=seed), expected)
        np.testing.assert_array_equal(saved.generate(label, instance, styles=chosen, seed=seed), expected)

    # Without a bank file the SavedModel backend samples in the export's graph (generate_with_seed), with the
    # session's seed folded as `image_seeds` folds it: the same image while no style is chosen.
    in_graph = SavedModelBackend(version)
    in_graph.clusters = None  # as when no bank file is found beside the export or the experiment
    for seed in (0, 7, 2**40 + 3):
        assert image_seeds(seed, 1).tolist() == [seed % 2**31]
        expected = synth.generate(label, instance, seed=seed)
        np.testing.assert_array_equal(in_graph.generate(label, instance, seed=seed), expected)


# ------------------------------------------------------------------------------------ deployed models


def test_a_saved_model_exported_before_the_relayout_samples_like_the_new_numpy_twin():
    """`tests/fixtures/legacy_0_1` holds a SavedModel written by the earlier code: its in-graph draws are the
    definition the numpy twin now follows, so a deployed model and a checkpoint agree."""
    opts = Options(**json.loads((LEGACY / "options.json").read_text()), checkpoints_dir=str(LEGACY / "checkpoints"))
    expected = np.load(LEGACY / "expected.npz")
    label, instance = expected["label"], expected["instance"]
    synth = Synthesizer.from_checkpoint(opts)
    model = tf.saved_model.load(os.fspath(LEGACY / "exported" / "1"))
    images = []
    for seed in (0, 1, 2, 77, 2**31 - 1):
        image = synth.generate(label, instance, seed=seed)
        seeded = _saved_model_image(model, "generate_with_seed", label, instance, seed=np.array([seed], np.int32))
        np.testing.assert_array_equal(seeded, image)
        images.append(image)
    assert any(not np.array_equal(images[0], other) for other in images[1:])  # the seed matters
