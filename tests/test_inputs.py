"""Label/instance maps to network inputs, and the errors that bad inputs must raise."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf import inputs, visualize
from pix2pixhd_tf.training.model import Pix2PixHD
from tests.helpers import random_batch, tiny_options


def _official_get_edges(t: np.ndarray) -> np.ndarray:
    """pix2pixHD_model.get_edges on [N, H, W] (the official code works on [N, 1, H, W])."""
    edge = np.zeros(t.shape, bool)
    edge[:, :, 1:] |= t[:, :, 1:] != t[:, :, :-1]
    edge[:, :, :-1] |= t[:, :, 1:] != t[:, :, :-1]
    edge[:, 1:, :] |= t[:, 1:, :] != t[:, :-1, :]
    edge[:, :-1, :] |= t[:, 1:, :] != t[:, :-1, :]
    return edge.astype(np.float32)


def test_one_hot_labels():
    label = tf.constant([[[0, 2], [1, 2]]])
    out = inputs.one_hot_labels(label, 3)
    assert out.shape == (1, 2, 2, 3) and out.dtype == tf.float32
    np.testing.assert_array_equal(out[0, :, :, 2], [[0, 1], [0, 1]])
    np.testing.assert_array_equal(tf.argmax(out, -1), label)


def test_instance_edges_mark_both_sides_and_separate_touching_instances():
    # Two cars of class 26 side by side (26000, 26001) on road (7); a car at the border.
    inst = np.full((1, 5, 6), 7, np.int32)
    inst[0, 1:3, 0:2] = 26000
    inst[0, 1:3, 2:4] = 26001
    inst[0, 4, 5] = 26002
    expected = np.array(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 0, 1],
            [0, 0, 0, 0, 1, 1],
        ],
        np.float32,
    )
    edges = np.asarray(inputs.instance_edges(inst))
    assert edges.shape == (1, 5, 6, 1)
    np.testing.assert_array_equal(edges[0, ..., 0], expected)
    np.testing.assert_array_equal(edges[0, ..., 0], _official_get_edges(inst)[0])
    np.testing.assert_array_equal(edges[0, 1:3, 1:3, 0], 1)  # the shared car/car border, both sides


def test_instance_edges_equal_official_on_random_maps():
    inst = np.random.default_rng(0).integers(0, 3, (2, 9, 11)).astype(np.int32)
    np.testing.assert_array_equal(inputs.instance_edges(inst)[..., 0], _official_get_edges(inst))


def test_encode_input_concatenates_one_hot_and_edges():
    opts = tiny_options()
    batch = random_batch(opts, n=1)
    x = inputs.encode_input(batch["label"], batch["instance"], label_nc=opts.label_nc)
    assert x.shape == (1, 32, 32, opts.label_nc + 1)
    np.testing.assert_array_equal(x[..., -1:], inputs.instance_edges(batch["instance"]))
    assert inputs.encode_input(batch["label"], None, label_nc=opts.label_nc).shape[-1] == opts.label_nc


def test_label_id_not_below_label_nc_raises_with_the_fix():
    label = tf.constant([[[0, 1], [2, 5]]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label_nc=5.*--label_nc"):
        inputs.one_hot_labels(label, 5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= 0"):
        inputs.one_hot_labels(-label, 5)


def test_label_check_also_runs_in_a_graph():
    one_hot = tf.function(lambda x: inputs.one_hot_labels(x, 3))
    with pytest.raises(tf.errors.InvalidArgumentError, match="label_nc=3"):
        one_hot(tf.constant([[[3]]]))


def test_wrong_channel_count_raises():
    image = tf.zeros((1, 8, 8, 1))
    with pytest.raises(ValueError, match="1 channels but the model expects 3"):
        inputs.encode_input(image, None, label_nc=0, input_nc=3)
    assert inputs.encode_input(image, None, label_nc=0, input_nc=1).shape == (1, 8, 8, 1)


def test_label_map_with_a_channel_axis_raises():
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        inputs.one_hot_labels(tf.zeros((1, 8, 8, 1), tf.int32), 5)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        inputs.encode_input(tf.zeros((1, 8, 8)), None, label_nc=0, input_nc=3)


def test_image_size_not_a_multiple_raises_naming_size_and_multiple():
    with pytest.raises(ValueError, match=r"36x32 is not divisible by 8"):
        inputs.check_image_size(tf.zeros((1, 36, 32, 3)), 8)
    inputs.check_image_size(tf.zeros((1, 40, 32, 3)), 8)
    dynamic = tf.function(lambda x: inputs.check_image_size(x, 8), input_signature=[tf.TensorSpec([1, None, None, 3])])
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 8"):
        dynamic(tf.zeros((1, 36, 32, 3)))


@pytest.mark.parametrize(
    "overrides, multiple",
    [({}, 4), ({"netG": "local", "n_local_enhancers": 2}, 16), ({"instance_feat": True, "n_downsample_E": 3}, 8)],
    ids=["global", "local2", "encoder"],
)
def test_generate_raises_for_sizes_that_cannot_round_trip(overrides, multiple):
    opts = tiny_options(**overrides)
    model = Pix2PixHD.from_options(opts)
    assert opts.size_multiple == multiple
    bad = random_batch(opts, n=1, h=multiple * 3 + multiple // 2, w=multiple * 2)
    with pytest.raises(
        ValueError, match=f"{multiple * 3 + multiple // 2}x{multiple * 2} is not divisible by {multiple}"
    ):
        model.generate(bad)
    assert model.generate(random_batch(opts, n=1, h=multiple * 3, w=multiple * 2)).shape == (
        1,
        multiple * 3,
        multiple * 2,
        3,
    )


def test_generator_input_appends_checked_features():
    conditioning = inputs.encode_input(np.zeros((2, 8, 12), np.int32), np.zeros((2, 8, 12), np.int32), label_nc=3)
    features = np.random.default_rng(0).uniform(-1, 1, (2, 8, 12, 3)).astype(np.float32)
    x = inputs.generator_input(conditioning, features, feat_num=3, size_multiple=4)
    np.testing.assert_array_equal(x, tf.concat([conditioning, features], -1))
    assert inputs.generator_input(conditioning, None, size_multiple=4) is not None
    with pytest.raises(ValueError, match=r"the generator input size 8x12 is not divisible by 8"):
        inputs.generator_input(conditioning, features, feat_num=3, size_multiple=8)
    with pytest.raises(ValueError, match="trained without --instance_feat/--label_feat, so it takes no features"):
        inputs.generator_input(conditioning, features, size_multiple=4)
    with pytest.raises(ValueError, match=r"needs a feature map \[N, H, W, 3\]"):
        inputs.generator_input(conditioning, None, feat_num=3, size_multiple=4)
    with pytest.raises(ValueError, match=r"features have shape \(2, 8, 12, 2\); this model needs \(2, 8, 12, 3\)"):
        inputs.generator_input(conditioning, features[..., :2], feat_num=3, size_multiple=4)
    # Dynamic shapes (the SavedModel): the checks run in the graph and name what is wrong.
    traced = tf.function(
        lambda c, f: inputs.generator_input(c, f, feat_num=3, size_multiple=4),
        input_signature=[tf.TensorSpec([None, None, None, 4]), tf.TensorSpec([None, None, None, 3])],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="the features and the label map must have the same"):
        traced(conditioning, features[:, :4])
    with pytest.raises(tf.errors.InvalidArgumentError, match="the generator input height and width must be multiples"):
        traced(conditioning[:, :6], features[:, :6])


def test_label_and_instance_maps_must_match():
    with pytest.raises(ValueError, match="the label and instance maps must have the same batch size, height and width"):
        inputs.encode_input(np.zeros((1, 8, 8), np.int32), np.zeros((1, 8, 4), np.int32), label_nc=3)


def test_uint8_conversions_are_the_pipelines():
    image = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    unit = inputs.from_uint8(image)
    np.testing.assert_array_equal(unit, image.astype(np.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(inputs.to_uint8(unit), image)
    outputs = np.linspace(-1.2, 1.2, 1001, dtype=np.float32)  # includes half-way values and outliers
    np.testing.assert_array_equal(inputs.to_uint8(outputs), visualize.tensor_to_uint8(outputs))
    # label_nc 0: a uint8 input image is normalised like the data pipeline's images.
    rgb = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 3)).astype(np.uint8)
    np.testing.assert_array_equal(inputs.encode_input(rgb, None, label_nc=0), inputs.from_uint8(rgb))
