"""TFRecord shards of a dataset in the official layout: packed once (tools/make_tfrecords.py), read by training.

Shards are `{prefix}-00000-of-00004.tfrecord` ..., each with a small JSON index beside it
(`{shard}.index.json`). One record is one sample, a `tf.train.Example` with

  label, instance, image, feat   bytes: the source files' bytes, unchanged (PNG, JPEG, .npy), so decoding
                                  is the folder pipeline's own (bit-identical samples)
  name/label, name/instance ...  bytes: the source files' paths relative to the dataroot they were packed from
  index, width, height           int64: the sample's place in the folder's sorted order, and its size

Samples go round robin: sample i is record i // N of shard i % N. The index of a shard says what the
dataset was packed with (label_nc, instances, feat_num, phase), the shard's size in bytes, and for every
record its sample index, byte offset and length, and each file's name, size and decoder. Training needs no
scan of the shards: the table of samples (sizes, decoders) comes from the indexes, a truncated shard shows as
a size that differs from its index, and each record is read by seeking to its offset.

Why records are read by index (a seek each) rather than streamed with `TFRecordDataset`: the folder
pipeline shuffles the list of sample indices with `shuffle(n, seed)` (`dataset.sample_order`). Reading
records by index lets the TFRecord pipeline run that very same shuffle over the very same table, so folder
and shards give identical batches for a seed, and resuming mid-epoch skips the same samples, with memory
for the index only. A streaming read could reproduce that order only with a shuffle buffer holding a whole
shard's image bytes (gigabytes for Cityscapes) and reading all of it before the first batch. Round-robin
shards keep per-worker file sharding: under MultiWorkerMirroredStrategy worker w of W reads the samples
i = w (mod W), which all lie in the shards k = w (mod W) when the number of shards is a multiple of W.
Reads run in parallel (the pipeline's parallel map) and are prefetched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import tensorflow as tf

from pix2pixhd_tf.data.classes import META_FILE
from pix2pixhd_tf.data.files import (
    DatasetError,
    DatasetFiles,
    DatasetLayout,
    FileInfo,
    RecordLocation,
    check_contents,
    list_folder_files,
    read_bytes,
)

FORMAT = "pix2pixhd_tf.tfrecords"
VERSION = 1
SHARD_EXTENSION = ".tfrecord"
INDEX_SUFFIX = ".index.json"
KINDS = ("label", "instance", "image", "feat")
_GLOB_CHARACTERS = "*?["
# A TFRecord record on disk: uint64 length, uint32 CRC of the length, the data, uint32 CRC of the data.
_RECORD_HEADER, _RECORD_FOOTER = 12, 4


def is_record_dataroot(dataroot: str, phase: str = "train") -> bool:
    """Whether --dataroot names TFRecord shards: a glob pattern, a `.tfrecord` file, or a folder of them.

    A folder that also holds the official layout of `phase` (`{phase}_label` or `{phase}_A`) is read as that
    layout: shards packed into the dataroot itself do not silently replace its folders.
    """
    if any(c in dataroot for c in _GLOB_CHARACTERS) or dataroot.endswith(SHARD_EXTENSION):
        return True
    if not tf.io.gfile.isdir(dataroot) or not tf.io.gfile.glob(os.path.join(dataroot, "*" + SHARD_EXTENSION)):
        return False
    return not any(tf.io.gfile.isdir(os.path.join(dataroot, f"{phase}_{s}")) for s in ("label", "A"))


def shard_glob(dataroot: str) -> str:
    """The glob of the shards --dataroot names: itself, or `{folder}/*.tfrecord`."""
    if any(c in dataroot for c in _GLOB_CHARACTERS) or dataroot.endswith(SHARD_EXTENSION):
        return dataroot
    return os.path.join(dataroot, "*" + SHARD_EXTENSION)


def output_pattern(output: str, phase: str) -> str:
    """`output` with one `*` (where the shard number goes), or a folder: `{folder}/{phase}-*.tfrecord`."""
    stars = output.count("*")
    if stars > 1 or any(c in output for c in "?["):
        raise ValueError(f"--output={output!r}: use one '*' for the shard number (e.g. /data/train-*.tfrecord).")
    return output if stars == 1 else os.path.join(output, f"{phase}-*{SHARD_EXTENSION}")


def shard_paths(pattern: str, num_shards: int) -> list[str]:
    """The shard files of `pattern`: `*` replaced by `00000-of-00004` ..."""
    return [pattern.replace("*", f"{k:05d}-of-{num_shards:05d}") for k in range(num_shards)]


def write_tfrecords(
    layout: DatasetLayout,
    *,
    phase: str,
    output: str,
    num_shards: int,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Packs the files of `phase` into `num_shards` shards with their indexes, after checking every sample.

    The samples are checked as the folder loader checks them (`files.list_folder_files`, with every file decoded
    too, since packing reads every byte anyway), so a bad sample fails here with the error that names the
    source file. Each shard is written under a temporary name and renamed when complete. The dataset's
    `meta.json` (class names, palette) is copied beside the shards when the folder has none.

    Args:
      layout: the source dataset (`DatasetLayout.of(opts)`); its dataroot must be a folder.
      phase: the folder prefix (train, test ...).
      output: a path with one `*` for the shard number, or a folder (see `output_pattern`).
      num_shards: how many shards (at most one per sample; a multiple of the number of training workers
        lets each worker read only its own shards).
      overwrite: replace shards (and indexes) that match the output pattern; otherwise refuse.
      progress: called with (samples written, samples in all) after each sample.

    Returns:
      The shard paths.

    Raises:
      DatasetError: what `list_dataset_files` finds (naming the source file).
      FileExistsError: shards matching the output pattern exist and `overwrite` is False.
      ValueError: a bad `output` or `num_shards`.
    """
    if num_shards < 1:
        raise ValueError(f"--num_shards={num_shards}: at least 1.")
    pattern = output_pattern(output, phase)
    files = list_folder_files(layout, phase=phase, require_images=False, deep_check=True)
    num_shards = min(num_shards, len(files))
    existing = tf.io.gfile.glob(pattern) + tf.io.gfile.glob(pattern + INDEX_SUFFIX)
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]}{f' and {len(existing) - 1} more files' if len(existing) > 1 else ''} already match "
            f"--output={pattern}: nothing was written. Pass --overwrite to replace them, or choose another --output."
        )
    for path in existing:
        tf.io.gfile.remove(path)
    folder = os.path.dirname(pattern)
    if folder:
        tf.io.gfile.makedirs(folder)

    kinds = [kind for kind in KINDS if getattr(files, kind) is not None]
    header = {
        "format": FORMAT,
        "version": VERSION,
        "phase": phase,
        "label_nc": layout.label_nc,
        "instances": "instance" in kinds,
        "feat_num": layout.feat_num,
        "kinds": kinds,
        "num_shards": num_shards,
        "num_samples": len(files),
    }
    paths = shard_paths(pattern, num_shards)
    done = 0
    for k, path in enumerate(paths):
        records = []
        offset = 0
        temporary = path + ".incomplete"
        if tf.io.gfile.exists(temporary):  # left by an interrupted run (and ram:// would append to it)
            tf.io.gfile.remove(temporary)
        with tf.io.TFRecordWriter(temporary) as writer:
            for i in range(k, len(files), num_shards):
                infos = {kind: getattr(files, kind)[i] for kind in kinds}
                example = _example(i, infos, files.root)
                data = example.SerializeToString()
                writer.write(data)
                records.append(
                    {
                        "index": i,
                        "offset": offset + _RECORD_HEADER,
                        "length": len(data),
                        "files": {
                            kind: [
                                _relative(info.path, files.root),
                                info.width,
                                info.height,
                                info.decode,
                                info.npy_offset,
                            ]
                            for kind, info in infos.items()
                        },
                    }
                )
                offset += _RECORD_HEADER + len(data) + _RECORD_FOOTER
                done += 1
                if progress:
                    progress(done, len(files))
        tf.io.gfile.rename(temporary, path, overwrite=True)
        index = {**header, "shard": os.path.basename(path), "bytes": tf.io.gfile.stat(path).length, "records": records}
        with tf.io.gfile.GFile(path + INDEX_SUFFIX, "w") as f:
            json.dump(index, f, separators=(",", ":"))
    meta, meta_copy = os.path.join(files.root, META_FILE), os.path.join(folder, META_FILE)
    if folder and tf.io.gfile.exists(meta) and not tf.io.gfile.exists(meta_copy):
        tf.io.gfile.copy(meta, meta_copy)
    return paths


def list_record_files(layout: DatasetLayout, *, deep_check: bool = False) -> DatasetFiles:
    """The samples of the shards `layout.dataroot` names, from their indexes, checked against the options.

    Only the indexes and the shards' sizes are read (no record): the returned files point into the shards
    (`FileInfo.record`), sorted by sample index, at most `layout.max_dataset_size` of them.

    Raises:
      DatasetError, naming the shard or index: the pattern matches no shard; a shard has no index, or
        another size than its index says (truncated); shards were packed with another --label_nc, without
        instance maps, or with other feature maps than the options ask; two shards hold the same sample.
        With `deep_check`, also every file that does not decode (as `files.list_folder_files`).
    """
    pattern = shard_glob(layout.dataroot)
    shards = sorted(p for p in tf.io.gfile.glob(pattern) if not p.endswith((INDEX_SUFFIX, ".incomplete")))
    if not shards:
        raise DatasetError(
            f"--dataroot={layout.dataroot!r} matches no TFRecord shard ({pattern}): check the path or pattern "
            f"(e.g. /data/train-*.tfrecord), or pack the dataset with tools/make_tfrecords.py."
        )
    samples: dict[int, tuple[str, int, dict]] = {}
    kinds = ["label"] + (["instance"] if layout.instances else []) + ["image"] + (["feat"] if layout.feat_num else [])
    phase = ""
    for shard in shards:
        index = _read_index(shard)
        _check_index(index, shard, layout)
        phase = index["phase"]
        kinds = [kind for kind in kinds if kind != "image" or "image" in index["kinds"]]
        for number, record in enumerate(index["records"]):
            i = int(record["index"])
            if i in samples:
                raise DatasetError(
                    f"Shards {samples[i][0]} and {shard} both hold sample {i}: they come from two packings; keep "
                    f"the shards of one run of tools/make_tfrecords.py under --dataroot."
                )
            samples[i] = (shard, number, record)
    chosen = sorted(samples)[: max(0, layout.max_dataset_size)]
    if not chosen:
        raise DatasetError(f"--max_dataset_size={layout.max_dataset_size} leaves no samples in {pattern}.")
    infos: dict[str, list[FileInfo]] = {kind: [] for kind in kinds}
    for i in chosen:
        shard, number, record = samples[i]
        for kind in kinds:
            name, width, height, decode, npy_offset = record["files"][kind]
            location = RecordLocation(shard, int(record["offset"]), int(record["length"]), kind)
            path = f"{shard}#{number}/{name}"
            infos[kind].append(FileInfo(path, int(width), int(height), int(decode), int(npy_offset), location))
    files = DatasetFiles(
        root=layout.dataroot,
        phase=phase,
        label=tuple(infos["label"]),
        instance=tuple(infos["instance"]) if "instance" in infos else None,
        image=tuple(infos["image"]) if "image" in infos else None,
        feat=tuple(infos["feat"]) if "feat" in infos else None,
    )
    if deep_check:  # decodes through files.read_bytes, which reads records as well as files
        check_contents(files, label_nc=layout.label_nc)
    return files


# ----------------------------------------------------------------------------------------------------------


def _example(index: int, infos: dict[str, FileInfo], root: str) -> tf.train.Example:
    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int_feature(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    label = infos["label"]
    feature = {"index": int_feature(index), "width": int_feature(label.width), "height": int_feature(label.height)}
    for kind, info in infos.items():
        feature[kind] = bytes_feature(read_bytes(info))
        feature[f"name/{kind}"] = bytes_feature(_relative(info.path, root).encode())
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root) if path.startswith(root.rstrip("/")) else path


def _read_index(shard: str) -> dict:
    path = shard + INDEX_SUFFIX
    if not tf.io.gfile.exists(path):
        raise DatasetError(
            f"Shard {shard} has no index {path}: training reads shards written by tools/make_tfrecords.py, with "
            f"their indexes beside them; copy the index too, or re-create the shards."
        )
    try:
        with tf.io.gfile.GFile(path) as f:
            index = json.load(f)
        if index.get("format") != FORMAT:
            raise ValueError(f"format {index.get('format')!r}, not {FORMAT!r}")
        if int(index.get("version", 0)) > VERSION:
            raise ValueError(f"version {index['version']} is newer than this code's {VERSION}")
    except (ValueError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
        raise DatasetError(
            f"Index {path} cannot be used ({type(e).__name__}: {e}): re-create the shards with tools/make_tfrecords.py."
        ) from e
    return index


def _check_index(index: dict, shard: str, layout: DatasetLayout) -> None:
    """The shard is complete, and was packed with what the options ask for."""
    size, expected = tf.io.gfile.stat(shard).length, int(index["bytes"])
    if size != expected:
        raise DatasetError(
            f"Shard {shard} is {size} bytes but its index says {expected}: the shard is truncated or was "
            f"replaced (an interrupted copy?); copy it again, or re-create the shards with tools/make_tfrecords.py."
        )
    fix = "re-create the shards with tools/make_tfrecords.py and the training flags"
    if int(index["label_nc"]) != layout.label_nc:
        raise DatasetError(
            f"Shard {shard} was packed with --label_nc={index['label_nc']}, but --label_nc={layout.label_nc}: "
            f"pass --label_nc={index['label_nc']}, or {fix}."
        )
    if layout.instances and not index["instances"]:
        raise DatasetError(f"Shard {shard} holds no instance maps: pass --no_instance, or {fix}.")
    if layout.feat_num and int(index["feat_num"]) != layout.feat_num:
        held = f"feature maps of {index['feat_num']} channels" if int(index["feat_num"]) else "no feature maps"
        raise DatasetError(
            f"Shard {shard} holds {held}, but --load_features asks for --feat_num={layout.feat_num}: {fix}."
        )
