"""--dataroot on a non-local filesystem: TensorFlow's in-memory `ram://` stands in for gs:// or s3://."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import tensorflow as tf

from pix2pixhd_tf.data import tfrecords
from pix2pixhd_tf.data.dataset import DatasetError, DatasetLayout, build_dataset, list_dataset_files
from pix2pixhd_tf.data.synthetic import write_synthetic_dataset
from pix2pixhd_tf.training.trainer import train
from tests.test_dataset import batches
from tests.test_train import tiny_train_options


def copy_tree(source: str, target: str) -> str:
    """Copies the folder `source` to `target` (any filesystem) with tf.io.gfile."""
    for dirpath, _, filenames in tf.io.gfile.walk(source):
        relative = os.path.relpath(dirpath, source)
        folder = target if relative == "." else os.path.join(target, relative)
        tf.io.gfile.makedirs(folder)
        for name in filenames:
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(folder, name), overwrite=True)
    return target


@pytest.fixture(scope="module")
def local_and_ram(tmp_path_factory):
    local = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic_dataset(local, n_train=6, n_test=2, height=32, width=64, seed=0)
    ram = copy_tree(local, f"ram://{uuid.uuid4().hex}/synthetic")
    yield local, ram
    tf.io.gfile.rmtree(os.path.dirname(ram))


def test_ram_dataroot_gives_the_local_batches(local_and_ram, tmp_path):
    local, ram = local_and_ram
    opts = tiny_train_options(tmp_path, synthetic=False, batchSize=2, resize_or_crop="crop", fineSize=32)
    files = list_dataset_files(DatasetLayout.of(opts.replace(dataroot=ram)), phase="train", deep_check=True)
    assert len(files) == 6 and files.label[0].path.startswith("ram://")
    for seed in (0, 1):
        here = batches(build_dataset(opts.replace(dataroot=local), seed=seed))
        there = batches(build_dataset(opts.replace(dataroot=ram), seed=seed))
        assert len(here) == len(there) == 3
        for a, b in zip(here, there):
            for key in ("label", "instance", "image"):
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.slow
def test_ram_dataroot_trains_with_the_local_losses(local_and_ram, tmp_path):
    local, ram = local_and_ram
    results = {}
    for where, root in (("local", local), ("ram", ram)):
        opts = tiny_train_options(tmp_path, name=where, synthetic=False, dataroot=root, niter=1, niter_decay=0)
        results[where] = train(opts)
    assert results["ram"].global_step == results["local"].global_step == 3
    assert set(results["ram"].losses) == set(results["local"].losses) and results["local"].losses["G_GAN"] > 0
    for name, value in results["local"].losses.items():
        assert results["ram"].losses[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


def test_shards_on_ram_give_the_local_batches(local_and_ram, tmp_path):
    local, ram = local_and_ram
    opts = tiny_train_options(tmp_path, synthetic=False, dataroot=local, batchSize=2)
    pattern = f"{os.path.dirname(ram)}/shards/train-*.tfrecord"
    tfrecords.write_tfrecords(DatasetLayout.of(opts.replace(dataroot=ram)), phase="train", output=pattern, num_shards=2)
    assert tf.io.gfile.exists(f"{os.path.dirname(ram)}/shards/meta.json")  # the palette travels with the shards
    here, there = batches(build_dataset(opts, seed=2)), batches(build_dataset(opts.replace(dataroot=pattern), seed=2))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_bad_input_on_ram_names_the_file(local_and_ram, tmp_path):
    _, ram = local_and_ram
    bad_root = copy_tree(ram, f"ram://{uuid.uuid4().hex}/bad")
    opts = tiny_train_options(tmp_path, synthetic=False, dataroot=bad_root)
    layout = DatasetLayout.of(opts)
    image = f"{bad_root}/train_img/scene_00003.png"
    with tf.io.gfile.GFile(image, "rb") as f:
        data = f.read()
    tf.io.gfile.remove(image)  # ram:// appends when writing over an existing file
    with tf.io.gfile.GFile(image, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"Cannot read {image} .*corrupt or truncated"):
        list_dataset_files(layout, phase="train")
    tf.io.gfile.remove(image)
    with pytest.raises(DatasetError, match=f"'{bad_root}/train_label' has 6 files but '{bad_root}/train_img' has 5"):
        list_dataset_files(layout, phase="train")
    with pytest.raises(DatasetError, match="Dataset root 'ram://nowhere/at/all' does not exist"):
        list_dataset_files(DatasetLayout.of(opts.replace(dataroot="ram://nowhere/at/all")), phase="train")
    tf.io.gfile.rmtree(os.path.dirname(bad_root))
