"""Tests of the tf.data input pipeline on tiny Cityscapes-style datasets written to tmp_path."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.data import files as file_lib
from pix2pixhd_tf.data import transforms
from pix2pixhd_tf.data.dataset import DatasetError, DatasetLayout, build_dataset, list_dataset_files, output_size
from pix2pixhd_tf.options import Options

H, W = 32, 64
INSTANCE_BASE = 26000  # Cityscapes: class 26 (car), instance ids 26000 + k.


def _patterns(h=H, w=W):
    """Maps where every pixel tells where it came from, so any misaligned crop or flip shows."""
    y, x = np.mgrid[:h, :w]
    label = ((x + 2 * y) % 35).astype(np.uint8)
    instance = (INSTANCE_BASE + x + w * y).astype(np.uint16)
    image = np.stack([label * 7, x * 3, y * 7], axis=-1).astype(np.uint8)
    return label, instance, image


def _stem(i):
    return f"aachen_{i:06d}_000019"


def make_cityscapes(root, n=4, phase="train", size=(H, W), with_images=True):
    """`n` samples named like Cityscapes: 8-bit labelIds, 16-bit instanceIds, RGB leftImg8bit."""
    label, instance, image = _patterns(*size)
    for d in ("label", "inst", "img"):
        os.makedirs(os.path.join(root, f"{phase}_{d}"), exist_ok=True)
    for i in range(n):
        Image.fromarray(label).save(os.path.join(root, f"{phase}_label", f"{_stem(i)}_gtFine_labelIds.png"))
        Image.fromarray(instance).save(os.path.join(root, f"{phase}_inst", f"{_stem(i)}_gtFine_instanceIds.png"))
        if with_images:
            Image.fromarray(image).save(os.path.join(root, f"{phase}_img", f"{_stem(i)}_leftImg8bit.png"))
    if not with_images:
        os.rmdir(os.path.join(root, f"{phase}_img"))
    return root


def opts_for(root, **kw):
    defaults = dict(dataroot=str(root), label_nc=35, batchSize=2, resize_or_crop="crop", fineSize=32, loadSize=64)
    defaults.update(kw)
    return Options(**defaults)


def files_of(opts, **kw):
    """The files the options train on."""
    return list_dataset_files(DatasetLayout.of(opts), phase=opts.phase, **kw)


def batches(dataset):
    return [{k: v.numpy() for k, v in b.items()} for b in dataset]


def assert_aligned(batch):
    """The image, instance and label of every pixel come from the same source pixel."""
    label, instance, image = batch["label"], batch["instance"].astype(np.int64), batch["image"]
    rgb = np.round((image + 1.0) * 127.5).astype(np.int64)
    x, y = (instance - INSTANCE_BASE) % W, (instance - INSTANCE_BASE) // W
    np.testing.assert_array_equal(label, (x + 2 * y) % 35)
    np.testing.assert_array_equal(rgb[..., 0], label * 7)
    np.testing.assert_array_equal(rgb[..., 1], x * 3)
    np.testing.assert_array_equal(rgb[..., 2], y * 7)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    return make_cityscapes(str(tmp_path_factory.mktemp("city")))


# Shapes, dtypes and modes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, load, fine, expected",
    [
        ("resize_and_crop", 40, 32, (32, 32)),
        ("scale_width", 48, 32, (32, 48)),  # 48x24, height rounds to 2 * 16 (round(1.5) = 2)
        ("scale_width_and_crop", 48, 16, (16, 16)),
        ("crop", 64, 16, (16, 16)),
        ("none", 64, 32, (32, 64)),
    ],
)
def test_shapes_and_dtypes_per_mode(city, mode, load, fine, expected):
    opts = opts_for(city, resize_or_crop=mode, loadSize=load, fineSize=fine)
    assert output_size(opts, W, H) == expected
    ds = build_dataset(opts, with_paths=True)
    assert ds.element_spec["label"].shape.as_list() == [2, *expected]
    (b1, b2) = batches(ds)
    for b in (b1, b2):
        assert b["label"].dtype == np.int32 and b["label"].shape == (2, *expected)
        assert b["instance"].dtype == np.int32 and b["instance"].shape == (2, *expected)
        assert b["image"].dtype == np.float32 and b["image"].shape == (2, *expected, 3)
        assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
        assert b["path"].shape == (2,) and all(p.endswith(b"_gtFine_labelIds.png") for p in b["path"])
        # Nearest neighbour: resizing never invents ids.
        assert set(np.unique(b["label"])) <= set(range(35))
        assert set(np.unique(b["instance"])) <= set(range(INSTANCE_BASE, INSTANCE_BASE + W * H))


def test_geometry_follows_official_arithmetic():
    o = Options(loadSize=1024, fineSize=512, resize_or_crop="scale_width_and_crop")
    g = transforms.plan_geometry(o, 2048, 1024)
    assert (g.resized, g.window, g.max_offset, g.final) == ((512, 1024), (512, 512), (0, 512), (512, 512))
    g = transforms.plan_geometry(o.replace(resize_or_crop="scale_width"), 1000, 333)  # int(1024 * 333 / 1000)
    assert g.resized == (340, 1024) and g.final == (336, 1024)  # round(340 / 16) = 21
    # No crop when neither side exceeds fineSize; a shorter side is padded.
    g = transforms.plan_geometry(o.replace(resize_or_crop="crop", fineSize=64), 64, 32)
    assert (g.window, g.max_offset) == ((32, 64), (0, 0))
    g = transforms.plan_geometry(o.replace(resize_or_crop="crop", fineSize=48), 64, 32)
    assert (g.window, g.max_offset, g.final) == ((48, 48), (0, 16), (48, 48))


def test_nearest_matches_pil():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 35, size=(13, 21)).astype(np.uint8)
    for out_h, out_w in ((32, 48), (7, 9)):
        ours = transforms.resize_nearest(tf.constant(ids[..., None]), tf.constant([out_h, out_w])).numpy()[..., 0]
        pil = np.asarray(Image.fromarray(ids).resize((out_w, out_h), Image.NEAREST))
        np.testing.assert_array_equal(ours, pil)


def test_bicubic_close_to_pil():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(24, 40, 3)).astype(np.uint8)
    for out_h, out_w in ((48, 80), (12, 20)):
        ours = transforms.resize(tf.constant(img, tf.float32), tf.constant([out_h, out_w]), "bicubic")
        ours = np.round(np.clip(ours.numpy(), 0, 255))
        pil = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.BICUBIC), np.float64)
        assert np.abs(ours - pil).mean() < 0.5


# Shared crop and flip, determinism, sharding --------------------------------------------------------------


def test_crop_and_flip_shared_by_all_maps(city):
    opts = opts_for(city, resize_or_crop="crop", fineSize=32, batchSize=1)
    ds = build_dataset(opts, repeat=True).take(24)
    seen_offsets, seen_flips = set(), set()
    for b in batches(ds):
        assert_aligned(b)
        x = (b["instance"][0] - INSTANCE_BASE) % W
        seen_flips.add(bool(x[0, 0] > x[0, -1]))
        seen_offsets.add(int(x[0].min()))
    assert seen_flips == {True, False}
    assert len(seen_offsets) > 3


def test_no_flip_and_eval_are_fixed(city):
    opts = opts_for(city, resize_or_crop="crop", fineSize=32, no_flip=True, batchSize=1)
    for b in batches(build_dataset(opts, repeat=True).take(8)):
        x = (b["instance"][0] - INSTANCE_BASE) % W
        assert x[0, 0] < x[0, -1]
    evals = batches(build_dataset(opts.replace(no_flip=False), training=False))
    assert len(evals) == 4
    for b in evals:  # Centred crop (offset 32 // 2), never flipped.
        assert_aligned(b)
        x = (b["instance"][0] - INSTANCE_BASE) % W
        assert x[0, 0] == 16 and x[0, -1] == 47


def test_same_seed_same_batches_and_epochs_differ(city):
    opts = opts_for(city, resize_or_crop="crop", fineSize=16, seed=7)
    a, b = build_dataset(opts, with_paths=True), build_dataset(opts, with_paths=True)
    epochs_a = [batches(a), batches(a)]
    epochs_b = [batches(b), batches(b)]
    for ea, eb in zip(epochs_a, epochs_b):
        for x, y in zip(ea, eb):
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])
    flat = lambda e: np.concatenate([x["instance"].ravel() for x in e])  # noqa: E731
    assert not np.array_equal(flat(epochs_a[0]), flat(epochs_a[1]))
    other = batches(build_dataset(opts, seed=8, with_paths=True))
    assert not np.array_equal(flat(epochs_a[0]), flat(other))
    for x, y in zip(other, batches(build_dataset(opts.replace(seed=8), with_paths=True))):  # seed= is opts.seed
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_shards_are_disjoint_halves(tmp_path):
    root = make_cityscapes(str(tmp_path), n=6)
    opts = opts_for(root, batchSize=2)
    seen = []
    for i in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)
        paths = [p for b in batches(build_dataset(opts, input_context=ctx, with_paths=True)) for p in b["path"]]
        assert len(paths) == 3  # per-replica batch 1
        seen.append(set(paths))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {p.encode() for p in files_of(opts).label_paths}


def test_serial_batches_keep_order_and_max_dataset_size(city):
    opts = opts_for(city, serial_batches=True, batchSize=1, max_dataset_size=3)
    paths = [b["path"][0] for b in batches(build_dataset(opts, with_paths=True))]
    assert paths == [p.encode() for p in files_of(opts).label_paths]
    assert len(paths) == 3


# Layouts and formats ----------------------------------------------------------------------------------------


def test_an_explicit_layout_lists_what_it_names(tmp_path):
    root = make_cityscapes(str(tmp_path), n=3, phase="val")
    files = list_dataset_files(DatasetLayout(root, label_nc=35, instances=False, max_dataset_size=2), phase="val")
    assert (len(files), files.phase, files.instance, files.feat) == (2, "val", None, None)
    assert [os.path.basename(f.path) for f in files.image] == [f"{_stem(i)}_leftImg8bit.png" for i in range(2)]
    assert DatasetLayout(root, 0, feat_num=3).folders("val") == {
        "label": "val_A", "instance": "val_inst", "image": "val_B", "feat": "val_feat"
    }  # fmt: skip


def test_label_nc_0_uses_A_and_B(tmp_path):
    _, _, image = _patterns()
    for d, ext in (("train_A", "jpg"), ("train_B", "png")):
        os.makedirs(tmp_path / d)
        for i in range(2):
            Image.fromarray(image).save(tmp_path / d / f"{i:04d}.{ext}")
    opts = opts_for(tmp_path, label_nc=0, no_instance=True, resize_or_crop="scale_width", loadSize=32)
    (b,) = batches(build_dataset(opts))
    assert set(b) == {"label", "image"}
    assert b["label"].dtype == np.float32 and b["label"].shape == (2, 16, 32, 3)
    assert b["image"].shape == (2, 16, 32, 3)
    assert -1.0 <= b["label"].min() and b["label"].max() <= 1.0


def test_test_phase_without_images(tmp_path):
    root = make_cityscapes(str(tmp_path), n=3, phase="test", with_images=False)
    opts = opts_for(root, phase="test", resize_or_crop="none")
    assert files_of(opts).image is None
    train_opts = opts_for(root, resize_or_crop="none")  # phase "train": phase= picks the folders
    assert len(batches(build_dataset(train_opts, phase="test", training=False))) == 2
    got = batches(build_dataset(opts, training=False, with_paths=True))
    assert [len(b["path"]) for b in got] == [2, 1]  # no drop_remainder at test time
    assert set(got[0]) == {"label", "instance", "path"}
    with pytest.raises(DatasetError, match="test_img"):
        build_dataset(opts, training=True)


def test_palette_labels_and_pil_fallback(tmp_path):
    """Palette PNG ids are the indices (not the colours); a dataset may mix decoders; PIL and tf agree."""
    root = make_cityscapes(str(tmp_path), n=2)
    label, _, _ = _patterns()
    palette = Image.fromarray(label, mode="P")
    palette.putpalette([(7 * k + 3) % 256 for k in range(768)])
    palette.save(os.path.join(root, "train_label", f"{_stem(0)}_gtFine_labelIds.png"))
    opts = opts_for(root, resize_or_crop="none", serial_batches=True, no_flip=True)
    files = files_of(opts)
    assert [f.decode for f in files.label] == [file_lib.DECODE_PIL, file_lib.DECODE_PNG8]
    assert [f.decode for f in files.instance] == [file_lib.DECODE_PNG16] * 2
    (b,) = batches(build_dataset(opts, files=files))
    assert_aligned(b)
    # Instance maps that PIL opens as 32-bit 'I' (Pillow < 10 does so for 16-bit PNGs) go through PIL.
    as_pil = lambda infos: tuple(dataclasses.replace(f, decode=file_lib.DECODE_PIL) for f in infos)  # noqa: E731
    (c,) = batches(build_dataset(opts, files=dataclasses.replace(files, instance=as_pil(files.instance))))
    np.testing.assert_array_equal(b["instance"], c["instance"])


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_feature_maps(tmp_path, fmt):
    root = make_cityscapes(str(tmp_path), n=2)
    os.makedirs(os.path.join(root, "train_feat"))
    _, _, image = _patterns()
    feat_num = 3 if fmt == "png" else 5
    for i in range(2):
        name = os.path.join(root, "train_feat", f"{_stem(i)}_gtFine_labelIds")
        if fmt == "png":
            Image.fromarray(image).save(name + ".png")  # like precompute_feature_maps.py: (f + 1) / 2 * 255
        else:
            feat = np.concatenate([image.astype(np.float32) / 127.5 - 1.0, np.zeros((H, W, 2), np.float32)], -1)
            np.save(name + ".npy", feat)
    opts = opts_for(root, load_features=True, feat_num=feat_num, resize_or_crop="crop", fineSize=32)
    for b in batches(build_dataset(opts)):
        assert b["feat"].shape == (2, 32, 32, feat_num) and b["feat"].dtype == np.float32
        np.testing.assert_allclose(b["feat"][..., :3], b["image"], atol=1e-6)  # same crop, flip, values
    if fmt == "png":
        with pytest.raises(DatasetError, match="feat_num"):
            files_of(opts.replace(feat_num=4))


# Errors ---------------------------------------------------------------------------------------------------


def test_missing_and_empty_folders(tmp_path):
    root = make_cityscapes(str(tmp_path), n=2)
    with pytest.raises(DatasetError, match="train_feat.*--load_features"):
        files_of(opts_for(root, load_features=True))
    with pytest.raises(DatasetError, match="val_label"):
        files_of(opts_for(root, phase="val"))
    os.makedirs(os.path.join(root, "train_feat"))
    with pytest.raises(DatasetError, match="train_feat.*holds no"):
        files_of(opts_for(root, load_features=True))
    with pytest.raises(DatasetError, match="nowhere"):
        files_of(opts_for(os.path.join(root, "nowhere")))


def test_unequal_counts_name_the_extra_file(tmp_path):
    root = make_cityscapes(str(tmp_path), n=3)
    os.remove(os.path.join(root, "train_inst", f"{_stem(1)}_gtFine_instanceIds.png"))
    with pytest.raises(DatasetError, match=f"has 3 files.*has 2.*{_stem(1)}_gtFine_labelIds.png"):
        files_of(opts_for(root))


def test_unpaired_names(tmp_path):
    root = make_cityscapes(str(tmp_path), n=2)
    os.rename(
        os.path.join(root, "train_img", f"{_stem(1)}_leftImg8bit.png"),
        os.path.join(root, "train_img", "bochum_000000_000019_leftImg8bit.png"),
    )
    with pytest.raises(DatasetError, match="bochum_000000_000019_leftImg8bit.png.*do not correspond"):
        files_of(opts_for(root))


def test_size_mismatch(tmp_path):
    root = make_cityscapes(str(tmp_path), n=2)
    bad = os.path.join(root, "train_inst", f"{_stem(1)}_gtFine_instanceIds.png")
    Image.fromarray(np.zeros((H, W + 2), np.uint16)).save(bad)
    with pytest.raises(DatasetError, match=f"is {W}x{H} but {bad} is {W + 2}x{H}"):
        files_of(opts_for(root))


def test_label_ids_out_of_range(tmp_path):
    root = make_cityscapes(str(tmp_path), n=2)
    bad = os.path.join(root, "train_label", f"{_stem(1)}_gtFine_labelIds.png")
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(bad)
    opts = opts_for(root, batchSize=1, serial_batches=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{bad} has id 40 >= --label_nc=35: set --label_nc"):
        batches(build_dataset(opts))
    with pytest.raises(DatasetError, match=f"{bad} has id 40"):
        files_of(opts, deep_check=True)


def test_corrupt_files(tmp_path):
    root = make_cityscapes(str(tmp_path), n=2)
    bad = os.path.join(root, "train_img", f"{_stem(1)}_leftImg8bit.png")
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])  # truncated
    with pytest.raises(DatasetError, match=f"Cannot read {bad}.*corrupt"):
        files_of(opts_for(root))
    open(bad, "wb").write(b"not an image at all")
    with pytest.raises(DatasetError, match=f"Cannot read {bad}"):
        files_of(opts_for(root))


def test_rgb_or_jpeg_label_maps_are_refused(tmp_path):
    root = make_cityscapes(str(tmp_path), n=1)
    bad = os.path.join(root, "train_label", f"{_stem(0)}_gtFine_labelIds.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(bad)
    with pytest.raises(DatasetError, match=f"{bad} has PIL mode 'RGB'.*single-channel"):
        files_of(opts_for(root))


def test_batch_larger_than_dataset(tmp_path):
    root = make_cityscapes(str(tmp_path), n=1)
    with pytest.raises(DatasetError, match="fewer than one batch of 2"):
        build_dataset(opts_for(root, batchSize=2))
