"""The cluster bank, k-means per class, sampling and style specs (no networks here)."""

import numpy as np
import pytest
import tensorflow as tf

from benchmarks.style_report import cluster_purity, mode_recovery
from pix2pixhd_tf.styles import (
    ClusterBank,
    StyleSpec,
    apply_style,
    class_of,
    classes_of,
    classes_of_graph,
    image_seeds,
    keep_instance,
    sample_feature_map,
    sample_features_graph,
)
from pix2pixhd_tf.styles.encoding import InstanceFeatures, cluster_features, region_features

LABEL_NC, FEAT_NUM = 9, 3


def make_bank(k: int = 4, seed: int = 0) -> ClusterBank:
    """Classes 1, 2 with k clusters, class 8 with 3, the rest none."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(LABEL_NC, np.int32)
    counts[[1, 2]] = k
    counts[8] = 3
    return ClusterBank(rng.uniform(-1, 1, (LABEL_NC, k, FEAT_NUM)), counts)


def scene() -> np.ndarray:
    """A 16x32 region map: road (2), sky (1), cars 8000, 8001, 8002."""
    regions = np.full((16, 32), 2, np.int64)
    regions[:4] = 1
    regions[6:10, 2:8] = 8000
    regions[6:12, 12:20] = 8001
    regions[8:14, 24:30] = 8002
    return regions


# ------------------------------------------------------------------------------------------ the bank


def test_bank_save_load_round_trip(tmp_path):
    bank = make_bank()
    path = bank.save(tmp_path / "clusters.npz")
    with np.load(path, allow_pickle=False) as data:  # the documented, pickle-free format
        assert set(data.files) >= {"centers", "counts", "feat_num", "label_nc"}
        assert data["centers"].dtype == np.float32 and data["centers"].shape == (LABEL_NC, 4, FEAT_NUM)
        assert (
            data["counts"].dtype == np.int32 and int(data["feat_num"]) == FEAT_NUM and int(data["label_nc"]) == LABEL_NC
        )
    loaded = ClusterBank.load(path, label_nc=LABEL_NC, feat_num=FEAT_NUM)
    centers, counts = loaded.as_dense()
    np.testing.assert_array_equal(centers, bank.centers)
    np.testing.assert_array_equal(counts, bank.counts)
    assert not centers[8, 3:].any() and not centers[0].any()  # invalid rows are zero
    assert loaded.classes() == [1, 2, 8]


def test_official_cluster_file_conversion(tmp_path):
    # The official features_clustered_010.npy: np.save of a dict {label: KMeans.cluster_centers_ [n, feat_num]}.
    official = {1: np.arange(6, dtype=np.float64).reshape(2, 3), 8: np.ones((5, 3))}
    path = tmp_path / "features_clustered_010.npy"
    np.save(path, official, allow_pickle=True)
    bank = ClusterBank.load(path, label_nc=LABEL_NC, feat_num=FEAT_NUM, allow_pickle=True)
    assert bank.label_nc == LABEL_NC and bank.n_clusters == 5
    assert bank.counts.tolist() == [0, 2, 0, 0, 0, 0, 0, 0, 5]
    np.testing.assert_array_equal(bank.centers[1, :2], official[1])
    assert not bank.centers[1, 2:].any()
    # Converted once, it is an ordinary pickle-free bank.
    np.testing.assert_array_equal(ClusterBank.load(bank.save(tmp_path / "c.npz")).centers, bank.centers)
    # The unclustered features.npy (features + area column) is refused with a hint.
    np.save(tmp_path / "features.npy", {1: np.ones((4, 4))}, allow_pickle=True)
    with pytest.raises(ValueError, match="features.npy"):
        ClusterBank.load(tmp_path / "features.npy", feat_num=FEAT_NUM, allow_pickle=True)


def test_bank_errors_say_what_exists(tmp_path):
    bank = make_bank()
    with pytest.raises(ValueError, match=r"class 8 has 3 clusters \(valid 0..2\)"):
        bank.center(8, 3)
    with pytest.raises(ValueError, match=r"class 5 has no clusters \(classes with clusters: 1, 2, 8\)"):
        bank.center(5, 0)
    with pytest.raises(ValueError, match=r"outside 0..8"):
        bank.center(9, 0)
    with pytest.raises(FileNotFoundError, match="no cluster file"):
        ClusterBank.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        ClusterBank.load(tmp_path / "junk.npz")
    path = bank.save(tmp_path / "c.npz")
    with pytest.raises(ValueError, match="--label_nc=35"):
        ClusterBank.load(path, label_nc=35)
    with pytest.raises(ValueError, match="--feat_num=4"):
        ClusterBank.load(path, feat_num=4)
    with pytest.raises(ValueError, match="counts must lie"):
        ClusterBank(np.zeros((2, 3, 3)), [1, 4])


def test_sample_picks_valid_centres_and_zero_for_classes_without_clusters():
    bank = make_bank()
    regions = np.concatenate([8000 + np.arange(60), [5]]).reshape(1, 61)  # 60 cars and class 5 (no clusters)
    features = sample_feature_map(regions, bank, seed=0)[0]
    picks = {tuple(f) for f in features[:60]}
    assert picks == {tuple(c) for c in bank.centers[8, :3]}  # uniform over the 3 valid rows, never row 3
    np.testing.assert_array_equal(features[60], np.zeros(FEAT_NUM))
    np.testing.assert_array_equal(bank.assign(8, bank.centers[8, [2, 0, 1]] + 1e-3), [2, 0, 1])


# ------------------------------------------------------------------------------------------ encoding + k-means


def test_class_of_and_area_threshold():
    ids = (0, 7, 999, 1000, 8001, 26123)
    assert [class_of(i) for i in ids] == [0, 7, 999, 1, 8, 26]
    assert classes_of(ids).tolist() == classes_of_graph(tf.constant(ids)).numpy().tolist() == [0, 7, 999, 1, 8, 26]
    # Official: keep num / (h*w // 32) > 0.5. For 32x64, h*w//32 = 64: more than 32 pixels.
    assert not keep_instance(32, 32, 64) and keep_instance(33, 32, 64)


def test_region_features_of_a_pooled_map():
    regions = scene()
    table = {1: [0.1, 0.2, 0.3], 2: [-1, 0, 1], 8000: [0.5, 0.5, 0.5], 8001: [0, 0, 0], 8002: [1, 1, -1]}
    pooled = np.zeros(regions.shape + (3,), np.float32)
    for region, value in table.items():
        pooled[regions == region] = value
    ids, features, pixels = region_features(pooled, regions)
    assert ids.tolist() == sorted(table)
    np.testing.assert_allclose(features, [table[i] for i in sorted(table)], atol=1e-6)
    assert pixels.tolist() == [int((regions == i).sum()) for i in sorted(table)]


def _features(points: dict[int, np.ndarray], kept: dict[int, np.ndarray] | None = None) -> InstanceFeatures:
    classes = np.concatenate([np.full(len(p), c) for c, p in points.items()]).astype(np.int32)
    n = len(classes)
    keep = np.concatenate([kept[c] if kept and c in kept else np.ones(len(p), bool) for c, p in points.items()])
    return InstanceFeatures(
        features=np.concatenate(list(points.values())).astype(np.float32),
        classes=classes,
        region_ids=np.arange(n) + 8000,
        pixels=np.full(n, 100),
        relative_area=np.full(n, 0.1, np.float32),
        kept=keep,
        image_index=np.arange(n, dtype=np.int32),
        paths=[],
    )


def test_kmeans_recovers_well_separated_clusters():
    rng = np.random.default_rng(0)
    modes = np.array([[0.8, -0.8, 0.0], [-0.8, 0.8, 0.2], [0.0, 0.0, -0.9], [0.7, 0.7, 0.7]])
    sizes = [30, 20, 12, 6]
    cars = np.concatenate([m + 0.02 * rng.standard_normal((s, 3)) for m, s in zip(modes, sizes)])
    outliers = np.full((3, 3), 5.0)  # small instances: dropped by the area filter
    points = {8: np.concatenate([cars, outliers]), 1: np.array([[0.1, 0.1, 0.1], [0.3, 0.3, 0.3]]), 2: np.ones((3, 3))}
    kept = {8: np.r_[np.ones(len(cars), bool), np.zeros(3, bool)]}
    bank = cluster_features(_features(points, kept), label_nc=LABEL_NC, n_clusters=4)
    assert bank.counts.tolist() == [0, 2, 1, 0, 0, 0, 0, 0, 4]  # fewer instances (or distinct ones) -> fewer clusters
    # Sorted by size: the centres are the modes in order of their instance counts.
    np.testing.assert_allclose(bank.centers[8, :4], modes, atol=0.02)
    assert bank.sizes[8].tolist() == sizes
    assert not np.isclose(bank.centers, 5.0).any()
    # Deterministic (fixed random_state, explicit n_init).
    again = cluster_features(_features(points, kept), label_nc=LABEL_NC, n_clusters=4)
    np.testing.assert_array_equal(again.centers, bank.centers)


# ------------------------------------------------------------------------------------------ sampling + styles


def test_sampling_is_deterministic_and_stable_under_edits():
    bank, regions = make_bank(), scene()
    a = sample_feature_map(regions, bank, seed=3)
    assert a.shape == regions.shape + (FEAT_NUM,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, sample_feature_map(regions, bank, seed=3))
    seeds = [sample_feature_map(regions, bank, seed=s) for s in range(8)]
    assert any(not np.array_equal(seeds[0], s) for s in seeds[1:])
    # Every instance is constant over its pixels and is one of its class's centres.
    for region in np.unique(regions):
        values = a[regions == region]
        assert (values == values[0]).all()
        assert any(
            np.array_equal(values[0], c) for c in bank.centers[class_of(region), : bank.counts[class_of(region)]]
        )
    # Removing car 8000 leaves every other instance's style unchanged.
    edited = regions.copy()
    edited[edited == 8000] = 2
    b = sample_feature_map(edited, bank, seed=3)
    np.testing.assert_array_equal(b[regions != 8000], a[regions != 8000])
    # Batches: an int is the seed of every image; a sequence gives one seed per image (the SavedModel's input).
    batch = sample_feature_map(np.stack([regions, regions]), bank, seed=3)
    np.testing.assert_array_equal(batch[0], a)
    np.testing.assert_array_equal(batch[1], a)
    batch = sample_feature_map(np.stack([regions, regions]), bank, seed=[3, 4])
    np.testing.assert_array_equal(batch[0], a)
    np.testing.assert_array_equal(batch[1], seeds[4])


def test_numpy_and_graph_twins_draw_the_same_features():
    bank = make_bank()
    regions = np.stack([scene(), scene()[:, ::-1]])
    regions[1, :2, :3] = 8007  # an instance only in the second image
    regions[0, 0, 0] = 5  # a class without clusters: zeros in both
    for seeds in ([0, 0], [3, 11], [2**31 - 1, 12345]):
        graph = sample_features_graph(regions, np.array(seeds, np.int32), bank, feat_num=FEAT_NUM).numpy()
        np.testing.assert_array_equal(sample_feature_map(regions, bank, seed=seeds), graph)
    # Inside a traced function too (as in the SavedModel), with dynamic shapes.
    traced = tf.function(
        lambda r, s: sample_features_graph(r, s, bank, feat_num=FEAT_NUM),
        input_signature=[tf.TensorSpec([None, None, None], tf.int32), tf.TensorSpec([None], tf.int32)],
    )
    np.testing.assert_array_equal(
        traced(regions.astype(np.int32), np.array([3, 11], np.int32)).numpy(),
        sample_feature_map(regions, bank, seed=[3, 11]),
    )


def test_seeds_map_onto_the_saved_models_int32_seeds():
    assert image_seeds(7, 3).tolist() == [7, 7, 7] and image_seeds(7, 3).dtype == np.int32
    assert image_seeds([1, 2], 2).tolist() == [1, 2]
    assert image_seeds(2**31 + 5, 1).tolist() == [5]  # larger seeds (the editor's) fold into int32
    np.testing.assert_array_equal(image_seeds(np.random.default_rng(4), 3), image_seeds(np.random.default_rng(4), 3))
    assert image_seeds(None, 2).shape == (2,)
    with pytest.raises(ValueError, match="2 seeds for a batch of 3 images"):
        image_seeds([1, 2], 3)
    with pytest.raises(ValueError, match="non-negative"):
        image_seeds(-1, 1)
    bank, regions = make_bank(), scene()
    np.testing.assert_array_equal(
        sample_feature_map(regions, bank, seed=np.random.default_rng(4)),
        sample_feature_map(regions, bank, seed=int(image_seeds(np.random.default_rng(4), 1)[0])),
    )


def test_style_for_one_instance_changes_only_its_pixels():
    bank, regions = make_bank(), scene()
    base = sample_feature_map(regions, bank, seed=0)
    spec = StyleSpec.from_dict({"instances": {"8001": 2}})
    styled = sample_feature_map(regions, bank, seed=0, style=spec)
    changed = (styled != base).any(-1)
    assert changed.any() and not changed[regions != 8001].any()
    np.testing.assert_array_equal(styled[regions == 8001][0], bank.centers[8, 2])
    # An explicit vector, and instance entries winning over class entries.
    spec = StyleSpec.from_json('{"instances": {"8002": [0.1, -0.3, 0.5]}, "classes": {"8": 1}}')
    styled = sample_feature_map(regions, bank, seed=0, style=spec)
    np.testing.assert_allclose(styled[regions == 8002], np.broadcast_to([0.1, -0.3, 0.5], ((regions == 8002).sum(), 3)))
    for car in (8000, 8001):
        np.testing.assert_array_equal(styled[regions == car][0], bank.centers[8, 1])
    unchanged = ~np.isin(regions, [8000, 8001, 8002])
    np.testing.assert_array_equal(styled[unchanged], base[unchanged])
    # apply_style on top of other features (e.g. encoded ones) touches only the named regions too.
    encoded = np.random.default_rng(0).uniform(-1, 1, base.shape).astype(np.float32)
    out = apply_style(encoded, regions, StyleSpec.from_dict({"instances": {"8000": 0}}), bank=bank, label_nc=LABEL_NC)
    np.testing.assert_array_equal(out[regions != 8000], encoded[regions != 8000])
    np.testing.assert_array_equal(out[regions == 8000][0], bank.centers[8, 0])


def test_style_spec_round_trip_and_file(tmp_path):
    spec = StyleSpec.from_dict({"instances": {"8001": 2, 8002: [0.1, -0.3, 0.5]}, "classes": {"8": 4}})
    assert spec.instances == {8001: 2, 8002: (0.1, -0.3, 0.5)} and spec.classes == {8: 4}
    (tmp_path / "spec.json").write_text(spec.to_json())
    assert StyleSpec.load(tmp_path / "spec.json") == spec
    assert not StyleSpec() and spec


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"instances": {"8001": 3}}, r"cluster index 3 is out of range: class 8 has 3 clusters \(valid 0..2\)"),
        ({"classes": {"5": 0}}, r"class 5 has no clusters \(classes with clusters: 1, 2, 8\)"),
        ({"classes": {"12": 0}}, r"class 12 is unknown: the model has label_nc=9 classes \(0..8"),
        ({"instances": {"12001": 0}}, r"class 12 is unknown"),
        ({"instances": {"8001": [0.1, 0.2]}}, r"2 values but --feat_num=3"),
        (
            {"instances": {"8005": 0}},
            r"instance 8005, not in the instance map; instances present: 1, 2, 8000, 8001, 8002",
        ),
        ({"classes": {"7": [0, 0, 0]}}, r"class 7, not in the map; classes present: 1, 2, 8"),
    ],
)
def test_style_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        sample_feature_map(scene(), make_bank(), seed=0, style=StyleSpec.from_dict(spec))


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "not valid JSON"),
        ('{"instance": {}}', r"unknown keys \['instance'\]"),
        ('{"instances": {"car": 1}}', "not an integer id"),
        ('{"instances": {"8001": true}}', "expected a cluster index or a list of numbers"),
        ('{"instances": {"8001": "red"}}', "expected a cluster index"),
        ('{"instances": {"8001": [1, null, 2]}}', "expected a cluster index"),
        ('{"classes": []}', "must be an object"),
    ],
)
def test_style_spec_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        StyleSpec.from_json(text)


def test_non_strict_spec_and_missing_bank():
    regions = scene()
    spec = StyleSpec.from_dict({"instances": {"8005": 0, "8001": 1}})
    # Not strict (tools/test.py over many images): absent ids are skipped, and reported by `unmatched`.
    styled = sample_feature_map(regions, make_bank(), seed=0, style=spec, strict=False)
    np.testing.assert_array_equal(styled[regions == 8001][0], make_bank().centers[8, 1])
    assert spec.unmatched(regions) == ([8005], [])
    # Without a bank only explicit vectors work.
    with pytest.raises(ValueError, match="needs a sampled style but no cluster bank"):
        sample_feature_map(regions, None, feat_num=3, label_nc=LABEL_NC, seed=0)
    with pytest.raises(ValueError, match="cluster index 1 needs a cluster bank"):
        sample_feature_map(
            regions, None, feat_num=3, label_nc=LABEL_NC, style=StyleSpec.from_dict({"classes": {"8": 1}})
        )
    vectors = StyleSpec.from_dict({"classes": {str(c): [c / 10] * 3 for c in (1, 2, 8)}})
    out = sample_feature_map(regions, None, feat_num=3, label_nc=LABEL_NC, style=vectors)
    np.testing.assert_allclose(out[regions == 8002][0], [0.8] * 3)


# ------------------------------------------------------------------------------------------ clusters vs modes


def test_cluster_purity_and_mode_recovery():
    modes = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert cluster_purity([5, 5, 5, 6, 6, 7, 7, 7], modes) == 1.0
    assert cluster_purity([0, 0, 0, 0, 0, 1, 1, 1], modes) == pytest.approx(6 / 8)
    report = mode_recovery([0, 0, 0, 0, 0, 1, 1, 1], modes, ["red", "blue", "white"])
    assert report.modes_present == [0, 1, 2] and report.modes_found == [0, 2]
    assert report.clusters[0] == {"cluster": 0, "size": 5, "mode": 0, "mode_name": "red", "fraction": 0.6}
    assert "modes found 2 of 3 present" in report.summary() and "missing: blue" in report.summary()
    assert mode_recovery([1, 1, 2, 2, 3, 3, 3, 3], modes).nmi < 1.0
    with pytest.raises(ValueError, match="equal 1-D"):
        cluster_purity([0, 1], [0])
