"""The inference wrapper, encode_features / precompute_feature_maps, tools/test.py and the style report.

Networks are tiny and untrained, saved as checkpoints in tmp dirs; the dataset is the synthetic one at
32x64. What is asserted about locality: feature maps change exactly and only inside a restyled
instance; images change exactly only within the receptive field for a purely convolutional G, and for a
real (instance-normalised) G mostly inside (outside the receptive field the change comes only through
the instance-norm statistics, so it is small but not zero).
"""

import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.training import checkpoint as ckpt
from pix2pixhd_tf import networks
from pix2pixhd_tf.data.dataset import build_dataset
from pix2pixhd_tf.data.synthetic import CAR, write_synthetic_dataset
from benchmarks.style_report import style_report
from pix2pixhd_tf.inference import Synthesizer, run_test
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles import (
    ClusterBank,
    StyleSpec,
    default_cluster_file,
    keep_instance,
)
from pix2pixhd_tf.styles.encoding import collect_instance_features, encode_features, precompute_feature_maps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    label_nc=9,
    ngf=4,
    n_downsample_global=1,
    n_blocks_global=1,
    nef=4,
    n_downsample_E=1,
    feat_num=3,
    loadSize=64,
    fineSize=64,
    resize_or_crop="none",
    n_clusters=3,
    how_many=2,
    no_vgg_loss=True,
    nThreads=1,
)


def save_experiment(opts: Options) -> None:
    """Untrained G (and E) saved as the experiment's latest checkpoint, with its options.json."""
    keras.utils.set_random_seed(0)
    G, E = networks.build_generator(opts), networks.build_encoder(opts)
    ckpt.save(ckpt.make_checkpoint(G, None, E), ckpt.checkpoint_dir(ckpt.experiment_dir(opts), "latest"))
    ckpt.save_options(opts, ckpt.experiment_dir(opts))


def read_ids(path: str) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic_dataset(root, n_train=6, n_test=2, height=32, width=64, progress=False)
    return root


@pytest.fixture(scope="module")
def feat_opts(data_root, tmp_path_factory):
    """A trained-looking instance_feat experiment with its clusters.npz (from encode_features)."""
    work = tmp_path_factory.mktemp("feat")
    opts = Options(
        name="feat",
        checkpoints_dir=str(work / "ckpt"),
        results_dir=str(work / "results"),
        dataroot=data_root,
        instance_feat=True,
        **TINY,
    )
    save_experiment(opts)
    encode_features(opts, progress=False).save(default_cluster_file(opts))
    return opts


def test_encode_features_writes_a_bank_the_synthesizer_loads(feat_opts):
    bank = ClusterBank.load(default_cluster_file(feat_opts))
    assert (bank.label_nc, bank.feat_num, bank.n_clusters) == (9, 3, 3)
    assert bank.counts[CAR] > 0 and bank.counts.max() <= 3
    assert bank.sizes[CAR, 0] >= bank.sizes[CAR, 1]  # sorted by size
    synth = Synthesizer.from_checkpoint(feat_opts)
    np.testing.assert_array_equal(synth.clusters.centers, bank.centers)
    # One feature per instance: E's pooled value, with the official area filter.
    feats = collect_instance_features(feat_opts, synth.encoder, progress=False)
    assert feats.paths[0].endswith("train_label/scene_00000.png") and len(feats.paths) == 6
    first = feats.image_index == 0
    instance = read_ids(os.path.join(feat_opts.dataroot, "train_inst", "scene_00000.png"))
    image = np.asarray(Image.open(os.path.join(feat_opts.dataroot, "train_img", "scene_00000.png")))
    encoded = synth.encode(image, instance)
    for region, feature, pixels, kept in zip(
        feats.region_ids[first], feats.features[first], feats.pixels[first], feats.kept[first]
    ):
        np.testing.assert_allclose(encoded[instance == region][0], feature, atol=1e-5)
        assert pixels == (instance == region).sum() and kept == keep_instance(pixels, 32, 64)


def test_generate_sample_and_encode(feat_opts):
    synth = Synthesizer.from_checkpoint(feat_opts)
    label = read_ids(os.path.join(feat_opts.dataroot, "test_label", "scene_00000.png"))
    instance = read_ids(os.path.join(feat_opts.dataroot, "test_inst", "scene_00000.png"))
    a = synth.generate(label, instance, seed=1)
    assert a.shape == (32, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synth.generate(label, instance, synth.sample_features(label, instance, seed=1)))
    batch = synth.generate(label[None], instance[None], seed=1)
    assert batch.shape == (1, 32, 64, 3)
    # A style for one car: only that car's feature pixels change, and its image pixels do.
    car = next(int(i) for i in np.unique(instance) if i // 1000 == CAR)
    base = synth.sample_features(label, instance, seed=1)
    index = 1 if synth.clusters.counts[CAR] > 1 else 0
    styled = synth.sample_features(label, instance, seed=1, style=StyleSpec.from_dict({"instances": {str(car): index}}))
    changed = (styled != base).any(-1)
    assert not changed[instance != car].any()
    np.testing.assert_array_equal(styled[instance == car][0], synth.clusters.centers[CAR, index])
    vector = StyleSpec.from_dict({"instances": {str(car): [1.0, -1.0, 1.0]}})
    image = synth.generate(label, instance, seed=1, style=vector)
    assert np.abs(image.astype(int) - a.astype(int))[instance == car].mean() > 0


def _car_scene():
    label = np.full((64, 64), 2, np.int32)
    label[20:36, 20:40] = CAR
    label[40:56, 40:60] = CAR
    instance = label.copy()
    instance[20:36, 20:40] = 8001
    instance[40:56, 40:60] = 8002
    return label, instance


def _outside(mask: np.ndarray, margin: int) -> np.ndarray:
    grown = tf.nn.max_pool2d(mask[None, ..., None].astype(np.float32), 2 * margin + 1, 1, "SAME")[0, ..., 0]
    return grown.numpy() == 0


def test_restyling_one_instance_changes_the_image_only_near_it():
    opts = Options(instance_feat=True, **{**TINY, "n_downsample_global": 0, "n_blocks_global": 0, "ngf": 8})
    rng = np.random.default_rng(0)
    bank = ClusterBank(rng.uniform(-1, 1, (9, 4, 3)), np.full(9, 4))
    label, instance = _car_scene()
    spec = StyleSpec.from_dict({"instances": {"8001": [3.0, -3.0, 3.0]}})
    inside = instance == 8001

    # A purely convolutional G (two 3x3 convs: receptive radius 2): exactly nothing changes farther away.
    local_g = keras.Sequential(
        [
            keras.Input((None, None, opts.generator_input_nc)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.Conv2D(3, 3, padding="same"),
        ]
    )
    synth = Synthesizer(opts, local_g, clusters=bank)
    diff = np.abs(
        synth.generate_float(label, instance, seed=0) - synth.generate_float(label, instance, seed=0, style=spec)
    )
    assert diff[inside].mean() > 0.01
    assert not diff[_outside(inside, 2)].any()

    # The real G1 (conv7, IN, ReLU, conv7: receptive radius 6): beyond it only instance-norm statistics leak.
    keras.utils.set_random_seed(0)
    synth = Synthesizer(opts, networks.build_generator(opts), clusters=bank)
    diff = np.abs(
        synth.generate_float(label, instance, seed=0) - synth.generate_float(label, instance, seed=0, style=spec)
    )
    assert diff[_outside(inside, 6)].mean() < 0.3 * diff[inside].mean()


def _run_tool(args: list[str]):
    """tools/test.py's main, in this process (a subprocess would re-import TensorFlow)."""
    spec = importlib.util.spec_from_file_location("pix2pixhd_tools_test", os.path.join(ROOT, "tools", "test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.FLAGS(["test.py"] + args)
    try:
        module.main([])
    finally:
        module.FLAGS.unparse_flags()


def _flags(opts: Options) -> list[str]:
    names = (
        "name",
        "checkpoints_dir",
        "results_dir",
        "dataroot",
        "label_nc",
        "ngf",
        "n_downsample_global",
        "n_blocks_global",
        "nef",
        "n_downsample_E",
        "loadSize",
        "fineSize",
        "resize_or_crop",
        "how_many",
    )
    return [f"--{n}={getattr(opts, n)}" for n in names] + ["--instance_feat"]


def test_tools_test_writes_images_and_index(feat_opts, tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"classes": {str(CAR): 0}, "instances": {"8999": 0}}))
    _run_tool(_flags(feat_opts) + [f"--style_spec={tmp_path / 'spec.json'}", "--sample_seed=3"])
    web = os.path.join(feat_opts.results_dir, "feat", "test_latest")
    names = sorted(os.listdir(os.path.join(web, "images")))
    assert names == [
        f"scene_0000{i}_{kind}.png" for i in (0, 1) for kind in ("input_label", "real_image", "synthesized_image")
    ]
    with open(os.path.join(web, "index.html")) as f:
        page = f.read()
    assert "images/scene_00001_synthesized_image.png" in page and "images/scene_00000_real_image.png" in page
    image = np.asarray(Image.open(os.path.join(web, "images", "scene_00000_synthesized_image.png")))
    assert image.shape == (32, 64, 3)
    # --use_encoded_image, with the results of the same run (results are overwritten in place).
    result = run_test(feat_opts.replace(phase="test", use_encoded_image=True), progress=False)
    assert len(result.rows) == 2 and result.unmatched_style == ([], [])


def _other_experiment(data_root, tmp_path, **flags) -> Options:
    opts = Options(
        **{
            **TINY,
            "name": "other",
            "checkpoints_dir": str(tmp_path / "ckpt"),
            "results_dir": str(tmp_path / "results"),
            "dataroot": data_root,
            "phase": "test",
            **flags,
        }
    )
    save_experiment(opts)
    return opts


def _rgb_dataset(root) -> str:
    rng = np.random.default_rng(0)
    for folder in ("test_A", "test_B"):
        os.makedirs(os.path.join(root, folder))
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 64, 3), np.uint8)).save(os.path.join(root, folder, f"{i}.png"))
    return str(root)


@pytest.mark.parametrize(
    "flags",
    [
        dict(netG="local", n_local_enhancers=1, n_blocks_local=1, no_instance=True),
        dict(label_nc=0, no_instance=True),
        dict(label_feat=True, use_encoded_image=True),
    ],
    ids=["local_no_instance", "label_nc_0", "label_feat_encoded"],
)
def test_run_test_variants(data_root, tmp_path, flags):
    root = _rgb_dataset(tmp_path / "rgb") if flags.get("label_nc") == 0 else data_root
    opts = _other_experiment(root, tmp_path, **flags)
    result = run_test(opts, progress=False)
    assert len(result.rows) == 2
    for column in ("label", "generated", "real"):
        image = np.asarray(Image.open(os.path.join(result.web_dir, result.rows[0][column])))
        assert image.shape == (32, 64, 3)


def test_label_feat_samples_per_label(data_root, tmp_path):
    opts = _other_experiment(data_root, tmp_path, label_feat=True)
    rng = np.random.default_rng(0)
    bank = ClusterBank(rng.uniform(-1, 1, (9, 2, 3)), np.full(9, 2))
    loaded = Synthesizer.from_checkpoint(opts)
    synth = Synthesizer(opts, loaded.generator, loaded.encoder, clusters=bank)
    label = read_ids(os.path.join(data_root, "test_label", "scene_00000.png"))
    instance = read_ids(os.path.join(data_root, "test_inst", "scene_00000.png"))
    features = synth.sample_features(label, instance, seed=0, style=StyleSpec.from_dict({"instances": {str(CAR): 1}}))
    np.testing.assert_array_equal(
        features[label == CAR], np.broadcast_to(bank.centers[CAR, 1], ((label == CAR).sum(), 3))
    )


def test_precompute_feature_maps_feed_load_features(feat_opts, tmp_path):
    written = precompute_feature_maps(feat_opts, progress=False)
    assert [os.path.basename(p) for p in written] == [f"scene_{i:05d}.npy" for i in range(6)]
    synth = Synthesizer.from_checkpoint(feat_opts)
    instance = read_ids(os.path.join(feat_opts.dataroot, "train_inst", "scene_00002.png"))
    image = np.asarray(Image.open(os.path.join(feat_opts.dataroot, "train_img", "scene_00002.png")))
    np.testing.assert_allclose(np.load(written[2]), synth.encode(image, instance), atol=1e-5)
    # The dataset reads them for --load_features.
    load_opts = feat_opts.replace(load_features=True, serial_batches=True, batchSize=1)
    batch = next(iter(build_dataset(load_opts, training=False)))
    np.testing.assert_allclose(batch["feat"][0], np.load(written[0]), atol=1e-6)
    # The official 8-bit PNG format.
    png = precompute_feature_maps(feat_opts, synth.encoder, feat_format="png", progress=False, phase="test")
    assert np.asarray(Image.open(png[0])).shape == (32, 64, 3)
    for path in written + png:
        os.remove(path)


def test_style_report_on_tiny_data(feat_opts, tmp_path):
    report = style_report(
        feat_opts, os.path.join(feat_opts.dataroot, "meta.json"), output_dir=str(tmp_path), progress=False
    )
    counts = ClusterBank.load(default_cluster_file(feat_opts)).counts[CAR]
    strip = np.asarray(Image.open(tmp_path / "variants.png"))
    assert strip.shape == (32, 64 * (2 + counts), 3)  # label | real | one variant per car cluster
    with open(tmp_path / "report.json") as f:
        saved = json.load(f)
    assert saved["summary"] == report["summary"] and saved["variants_png"] == str(tmp_path / "variants.png")
    assert saved["clusters"] == counts == len(saved["rendered"])
    assert 0 < saved["purity"] <= 1 and 1 <= saved["modes_found"] <= saved["modes_present"] <= 6
    assert saved["recovery"]["n_instances"] == sum(c["size"] for c in saved["recovery"]["clusters"])


def test_official_cluster_file_must_be_named(feat_opts, tmp_path):
    official = tmp_path / "features_clustered_010.npy"
    np.save(official, {CAR: np.full((2, 3), 0.5)}, allow_pickle=True)
    synth = Synthesizer.from_checkpoint(feat_opts.replace(allow_pickle=True), cluster_file=str(official))
    assert synth.clusters.counts.tolist() == [0] * 8 + [2]
    # The default --cluster_path value is not read unless passed: clusters.npz beside the checkpoint is.
    assert Synthesizer.from_checkpoint(feat_opts).cluster_file == default_cluster_file(feat_opts)


# ------------------------------------------------------------------------------------------ errors


def test_errors_say_what_exists(feat_opts, data_root, tmp_path):
    label = read_ids(os.path.join(data_root, "test_label", "scene_00000.png"))
    instance = read_ids(os.path.join(data_root, "test_inst", "scene_00000.png"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*epoch_7.*available: latest"):
        Synthesizer.from_checkpoint(feat_opts, which_epoch="7")
    with pytest.raises(ValueError, match=r"--ngf: trained with 4, given 8"):
        Synthesizer.from_checkpoint(feat_opts.replace(ngf=8))
    with pytest.raises(FileNotFoundError, match="no cluster file .*nope.npz"):
        Synthesizer.from_checkpoint(feat_opts, cluster_file="nope.npz")

    synth = Synthesizer.from_checkpoint(feat_opts)
    with pytest.raises(ValueError, match=r"cluster index 9 is out of range: class 8 has \d clusters \(valid 0..\d\)"):
        synth.sample_features(label, instance, style=StyleSpec.from_dict({"classes": {"8": 9}}))
    with pytest.raises(ValueError, match=r"instance 8999, not in the instance map; instances present: 1, 2, "):
        synth.sample_features(label, instance, style=StyleSpec.from_dict({"instances": {"8999": 0}}))
    with pytest.raises(ValueError, match=r"features have shape \(1, 32, 64, 2\); this model needs \(1, 32, 64, 3\)"):
        synth.generate(label, instance, np.zeros((32, 64, 2), np.float32))
    with pytest.raises(ValueError, match="pass the instance map"):
        synth.generate(label, None)
    with pytest.raises(ValueError, match="not divisible by 2"):
        synth.generate(label[:, :63], instance[:, :63], np.zeros((32, 63, 3), np.float32))

    # No clusters.npz beside the checkpoint: sampling says where it looked and how to make one.
    bare = _other_experiment(data_root, tmp_path, instance_feat=True)
    with pytest.raises(ValueError, match=r"no cluster bank: .*clusters.npz does not exist.*encode_features"):
        Synthesizer.from_checkpoint(bare).generate(label, instance)

    # A model trained on precomputed features has no encoder; a plain model takes no features or styles.
    loaded = _other_experiment(data_root, tmp_path / "loaded", instance_feat=True, load_features=True)
    with pytest.raises(ValueError, match="has no encoder"):
        Synthesizer.from_checkpoint(loaded).encode(np.zeros((32, 64, 3), np.float32), instance)
    with pytest.raises(ValueError, match="needs the feature encoder"):
        encode_features(loaded, progress=False)
    plain = _other_experiment(data_root, tmp_path / "plain")
    with pytest.raises(ValueError, match="trained without --instance_feat/--label_feat"):
        Synthesizer.from_checkpoint(plain).generate(label, instance, np.zeros((32, 64, 3), np.float32))
    with pytest.raises(ValueError, match="--style_spec: this model was trained without"):
        run_test(plain, style=StyleSpec.from_dict({"classes": {"8": 0}}), progress=False)
    # A checkpoint without the encoder that these flags build (no options.json to catch it first).
    os.remove(os.path.join(ckpt.experiment_dir(loaded), "options.json"))
    with pytest.raises(ValueError, match="does not hold everything these options build") as error:
        Synthesizer.from_checkpoint(loaded.replace(load_features=False))
    assert "earlier development version" in str(error.value)  # the other cause, with what to do about it
