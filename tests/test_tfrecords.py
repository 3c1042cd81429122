"""TFRecord shards: packing checks, identical batches to the folder pipeline, and clear errors on bad shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.data import tfrecords
from pix2pixhd_tf.data.dataset import DatasetError, DatasetLayout, build_dataset, list_dataset_files, sample_order
from pix2pixhd_tf.data.files import check_contents
from pix2pixhd_tf.training.trainer import Trainer, prepare_data, train
from tests.helpers import sgd_pair
from tests.test_dataset import _stem, batches, make_cityscapes, opts_for
from tests.test_train import _finish_workers, _kill, _start_workers, tiny_train_options

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_varied(root, n=7, size=(32, 64)):
    """Cityscapes-like samples whose pixels differ per sample, so any change of order shows."""
    make_cityscapes(root, n=n, size=size)
    rng = np.random.default_rng(0)
    h, w = size
    for i in range(n):
        label = rng.integers(0, 35, (h, w), dtype=np.uint8)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(label).save(os.path.join(root, "train_label", f"{_stem(i)}_gtFine_labelIds.png"))
        Image.fromarray(image).save(os.path.join(root, "train_img", f"{_stem(i)}_leftImg8bit.png"))
    return root


def pack(root, output, num_shards=3, **kw):
    opts = opts_for(root, **kw)
    return tfrecords.write_tfrecords(DatasetLayout.of(opts), phase="train", output=output, num_shards=num_shards)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = make_varied(str(tmp_path_factory.mktemp("varied")))
    out = str(tmp_path_factory.mktemp("shards"))
    paths = pack(root, os.path.join(out, "train-*.tfrecord"))
    return root, out, paths


def _same_batches(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            if key == "path":  # folder: the label file; shards: {shard}#{record}/{its source path}
                assert [os.path.basename(p) for p in x[key]] == [os.path.basename(p) for p in y[key]]
            else:
                np.testing.assert_array_equal(x[key], y[key])


def test_shard_layout_is_round_robin_and_standard_tfrecord(packed):
    root, _, paths = packed
    assert [os.path.basename(p) for p in paths] == [f"train-{k:05d}-of-00003.tfrecord" for k in range(3)]
    counts = []
    for k, path in enumerate(paths):
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())  # any TFRecord reader reads them
        counts.append(len(records))
        for number, data in enumerate(records):
            example = tf.train.Example.FromString(data)
            feature = example.features.feature
            assert feature["index"].int64_list.value[0] == k + 3 * number
            name = feature["name/label"].bytes_list.value[0].decode()
            assert name == f"train_label/{_stem(k + 3 * number)}_gtFine_labelIds.png"
            with open(os.path.join(root, name), "rb") as f:
                assert feature["label"].bytes_list.value[0] == f.read()  # the source bytes, unchanged
            assert (feature["width"].int64_list.value[0], feature["height"].int64_list.value[0]) == (64, 32)
        with open(path + tfrecords.INDEX_SUFFIX) as f:
            index = json.load(f)
        assert index["bytes"] == os.path.getsize(path) and len(index["records"]) == len(records)
        assert index["label_nc"] == 35 and index["instances"] and index["kinds"] == ["label", "instance", "image"]
    assert counts == [3, 2, 2]


@pytest.mark.parametrize("serial", [False, True])
def test_folder_and_shards_give_identical_batches(packed, serial):
    root, out, _ = packed
    for dataroot in (os.path.join(out, "train-*.tfrecord"), out):  # a glob, or a folder of shards
        for seed in (0, 5):
            kw = {"serial_batches": serial, "resize_or_crop": "crop", "fineSize": 16}
            folder = batches(build_dataset(opts_for(root, **kw), seed=seed, with_paths=True))
            shards = batches(build_dataset(opts_for(dataroot, **kw), seed=seed, with_paths=True))
            _same_batches(folder, shards)
    files = list_dataset_files(DatasetLayout.of(opts_for(out)), phase="train")
    assert (
        files.label[4].path
        == os.path.join(out, "train-00001-of-00003.tfrecord") + f"#1/train_label/{_stem(4)}_gtFine_labelIds.png"
    )
    assert sample_order(opts_for(out), files, 0) == sample_order(opts_for(root), files, 0)


def test_per_worker_shards_give_the_folder_pipelines_share(packed):
    root, out, _ = packed
    for worker in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker, num_replicas_in_sync=2)
        kw = {"batchSize": 2, "max_dataset_size": 6}
        folder = batches(build_dataset(opts_for(root, **kw), seed=3, input_context=context, with_paths=True))
        shards = batches(build_dataset(opts_for(out, **kw), seed=3, input_context=context, with_paths=True))
        _same_batches(folder, shards)
        indices = sorted(int(os.path.basename(p).split(b"_")[1]) for b in shards for p in b["path"])
        assert indices == list(range(worker, 6, 2))


def test_check_data_decodes_records(packed):
    _, out, _ = packed
    files = list_dataset_files(DatasetLayout.of(opts_for(out)), phase="train", deep_check=True)
    assert len(files) == 7
    with pytest.raises(
        DatasetError, match=r"train-00000-of-00003\.tfrecord#0/train_label/.* has id 34 >= --label_nc=5"
    ):
        # Packed with --label_nc 35, and a smaller --label_nc is refused up front from the index (see
        # test_bad_shards_fail_up_front_naming_the_file): call the decoding check itself on the records.
        check_contents(files, label_nc=5)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=3)
    pattern = str(tmp_path / "out" / "train-*.tfrecord")
    pack(root, pattern, num_shards=2)
    with pytest.raises(
        FileExistsError, match=r"train-00000-of-00002\.tfrecord and 3 more files already match.*--overwrite"
    ):
        pack(root, pattern, num_shards=2)
    opts = opts_for(root)
    paths = tfrecords.write_tfrecords(
        DatasetLayout.of(opts), phase="train", output=pattern, num_shards=1, overwrite=True
    )
    assert sorted(os.listdir(tmp_path / "out")) == [
        "train-00000-of-00001.tfrecord",
        "train-00000-of-00001.tfrecord.index.json",
    ]
    assert len(list_dataset_files(DatasetLayout.of(opts_for(pattern)), phase="train")) == 3 == len(paths) * 3


def test_packing_names_the_source_file(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=3)
    bad = os.path.join(root, "train_img", f"{_stem(1)}_leftImg8bit.png")
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=f"Cannot read {bad}.*corrupt"):
        pack(root, str(tmp_path / "out" / "train-*.tfrecord"))
    with open(bad, "wb") as f:
        f.write(data)
    label = os.path.join(root, "train_label", f"{_stem(0)}_gtFine_labelIds.png")  # the first in sorted order
    with pytest.raises(DatasetError, match=f"Label map {label} has id 34 >= --label_nc=20"):
        pack(root, str(tmp_path / "out" / "train-*.tfrecord"), label_nc=20)
    assert not os.path.exists(tmp_path / "out")  # nothing written


def test_bad_shards_fail_up_front_naming_the_file(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=4)
    out = tmp_path / "out"
    paths = pack(root, str(out / "train-*.tfrecord"), num_shards=2)

    def listing(dataroot, **kw):
        return list_dataset_files(DatasetLayout.of(opts_for(dataroot, **kw)), phase="train")

    with pytest.raises(DatasetError, match=r"--dataroot='.*/nothing-\*\.tfrecord' matches no TFRecord shard"):
        listing(str(out / "nothing-*.tfrecord"))
    with pytest.raises(DatasetError, match=f"Shard {paths[0]} was packed with --label_nc=35, but --label_nc=20: pass"):
        listing(str(out), label_nc=20)
    with pytest.raises(DatasetError, match=f"Shard {paths[0]} holds no feature maps, but --load_features"):
        listing(str(out), load_features=True)
    assert listing(str(out), no_instance=True).instance is None

    size = os.path.getsize(paths[1])
    with open(paths[1], "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(
        DatasetError, match=f"Shard {paths[1]} is {size - 100} bytes but its index says {size}: .*truncated"
    ):
        listing(str(out))
    os.remove(paths[1] + tfrecords.INDEX_SUFFIX)
    with pytest.raises(DatasetError, match=f"Shard {paths[1]} has no index {paths[1]}.index.json"):
        listing(str(out))


def test_a_shard_damaged_behind_its_index_is_named_mid_pipeline(tmp_path):
    """Damage the index cannot see (same size, other bytes) fails in the pipeline, naming the shard."""
    root = make_cityscapes(str(tmp_path / "data"), n=2)
    (path,) = pack(root, str(tmp_path / "out" / "train-*.tfrecord"), num_shards=1)
    with open(path, "r+b") as f:
        f.seek(20)
        f.write(b"\xff" * 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="train-00000-of-00001.tfrecord#"):
        batches(build_dataset(opts_for(str(tmp_path / "out"), batchSize=1, serial_batches=True)))


def test_samples_of_another_size_are_named_before_reading(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=3)
    make_cityscapes(root, n=1, size=(32, 48))  # sample 0 now 48 wide, the others 64
    out = str(tmp_path / "out")
    pack(root, out, num_shards=3)
    with pytest.raises(
        DatasetError, match=r"Samples of a batch must have one size, but .*train-00000-of-00003\.tfrecord#0/"
    ):
        build_dataset(opts_for(out, resize_or_crop="none", batchSize=2))


def test_make_tfrecords_tool(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=3)
    out = str(tmp_path / "out")
    command = [
        sys.executable,
        os.path.join(REPO, "tools", "make_tfrecords.py"),
        f"--dataroot={root}",
        f"--output={out}",
        "--num_shards=2",
    ]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "packed 3/3 samples" in result.stdout and "wrote 2 shards" in result.stdout
    assert sorted(os.listdir(out)) == [
        f"train-0000{k}-of-00002.tfrecord{end}" for k in (0, 1) for end in ("", ".index.json")
    ]
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert again.returncode == 1 and "already match" in again.stderr and "--overwrite" in again.stderr


@pytest.mark.slow
def test_two_multi_worker_processes_on_shards_end_with_identical_weights(tmp_path):
    """Two MultiWorkerMirroredStrategy workers on loopback, each reading its own shard (round robin: worker w
    reads the samples i = w mod 2, all in shard w), stay in sync and train as one process on the folder."""
    folder_opts = tiny_train_options(
        tmp_path,
        name="single",
        batchSize=2,
        serial_batches=True,
        no_flip=True,
        niter=1,
        niter_decay=0,
        steps_per_epoch=2,
        lr=0.01,
    )
    prepare_data(folder_opts)
    pattern = str(tmp_path / "shards" / "train-*.tfrecord")
    tfrecords.write_tfrecords(DatasetLayout.of(folder_opts), phase="train", output=pattern, num_shards=2)
    opts = folder_opts.replace(name="workers", dataroot=pattern, synthetic=False, strategy="multi_worker")
    procs = _start_workers(tmp_path, opts, 2, "worker", "sgd")
    try:  # the one-process run trains while the workers start (most of their time is importing and tracing)
        initial = [np.array(v) for v in Trainer(folder_opts.replace(name="fresh")).model.generator.weights]
        single = train(folder_opts, optimizers=lambda _: sgd_pair())
    except BaseException:
        _kill(procs)
        raise
    workers = _finish_workers(procs)
    for name in workers[0]:
        np.testing.assert_array_equal(workers[0][name], workers[1][name])

    largest_step = 0.0
    for i, (v, start) in enumerate(zip(single.model.generator.weights, initial)):
        if v.path.endswith("kernel"):  # biases before instance norm move by rounding noise only
            step = np.abs(np.array(v) - start).max()
            largest_step = max(largest_step, step)
            # Two one-sample gradients all-reduced instead of one two-sample batch: float32 rounding only.
            np.testing.assert_allclose(
                workers[0][f"g{i}"], np.array(v), rtol=0, atol=1e-6 + 1e-4 * step, err_msg=v.path
            )
    assert largest_step > 0.005  # two SGD steps really trained G


@pytest.mark.slow
def test_a_shard_truncated_after_the_check_is_named_mid_training(tmp_path):
    opts = tiny_train_options(tmp_path, niter=1, niter_decay=0, serial_batches=True, steps_per_epoch=4)
    prepare_data(opts)
    pattern = str(tmp_path / "shards" / "train-*.tfrecord")
    paths = tfrecords.write_tfrecords(DatasetLayout.of(opts), phase="train", output=pattern, num_shards=2)
    shard_opts = opts.replace(dataroot=pattern, synthetic=False)
    files = list_dataset_files(DatasetLayout.of(shard_opts), phase="train")  # checked while complete
    with open(paths[1], "r+b") as f:
        f.truncate(100)  # inside its first record, sample 1: the second step
    with pytest.raises(DatasetError) as err:
        Trainer(shard_opts, files=files).train()
    message = str(err.value)
    assert f"Shard {paths[1]} ends before its record at byte" in message and "truncated" in message
    assert "--continue_train" in message and "every step done is saved" in message


def test_a_dataroot_with_folders_and_shards_reads_its_folders(tmp_path):
    root = make_cityscapes(str(tmp_path / "data"), n=3)
    pack(root, root, num_shards=1)  # shards written into the dataroot itself
    assert not tfrecords.is_record_dataroot(root, "train")
    files = list_dataset_files(DatasetLayout.of(opts_for(root)), phase="train")
    assert files.label[0].record is None and files.label[0].path.startswith(os.path.join(root, "train_label"))
    assert tfrecords.is_record_dataroot(os.path.join(root, "train-*.tfrecord"))  # a glob always means shards
