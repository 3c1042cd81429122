"""Find, pair and check the files of a pix2pixHD dataset before any training starts.

Layout (as in the official code): `{dataroot}/{phase}_label` (label ids), `{phase}_inst` (instance ids),
`{phase}_img` (real images) and, with `--load_features`, `{phase}_feat`; with `--label_nc 0` the input is an
RGB image from `{phase}_A` and the target comes from `{phase}_B`. Files are paired by sorted order, and the
pairing is checked by name: Cityscapes files correspond by the prefix before `_gtFine` / `_gtCoarse` /
`_leftImg8bit`, other datasets by identical names (extension aside).

The checks are cheap: only image headers are read (`PIL.Image.open(...).size`, no pixel decoding), plus the
last bytes of each file to catch truncated PNG/JPEG files. `deep_check=True` decodes every file as well, to
find any corrupt file and any label id >= label_nc up front (slow on large datasets: a full decoding pass).

Every file access goes through `tf.io.gfile`, so `dataroot` may be on any filesystem TensorFlow knows
(local paths, `gs://`, `ram://`, and those tensorflow-io registers such as `s3://`); PIL reads from a
`GFile` object. A file may also be one entry of a TFRecord shard (`FileInfo.record`, see `data/tfrecords.py`):
`read_bytes` reads either kind, so the checks and the decoders do not care where the bytes live.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.options import Options

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
FEATURE_EXTENSIONS = IMAGE_EXTENSIONS + (".npy",)
# Cityscapes names: aachen_000000_000019_gtFine_labelIds.png <-> ..._gtFine_instanceIds.png <-> ..._leftImg8bit.png.
CITYSCAPES_MARKERS = ("_gtFine", "_gtCoarse", "_leftImg8bit")

# How each file is decoded in the input pipeline (see dataset.py). Chosen up front from the PIL header.
DECODE_PNG8 = 0  # single-channel 8-bit PNG ids: tf.io.decode_png(dtype=uint8)
DECODE_PNG16 = 1  # single-channel 16-bit PNG ids: tf.io.decode_png(dtype=uint16)
DECODE_NATIVE = 2  # PNG/JPEG image that tf.io.decode_image converts like PIL's convert('RGB')
DECODE_PIL = 3  # anything else (palette or 32-bit 'I' id maps, 16-bit gray images ...): PIL in a numpy_function
DECODE_NPY = 4  # float32 .npy feature map, read with tf.io.decode_raw

# PIL modes of single-channel id maps (label and instance maps).
_ID_MODES_PNG8 = ("L",)
_ID_MODES_PNG16 = ("I;16", "I;16B")
_ID_MODES_PIL = ("P", "I", "1", "I;16L")
_IMAGE_MODES_NATIVE = {"PNG": ("L", "LA", "P", "RGB", "RGBA"), "JPEG": ("L", "RGB")}

_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"


class DatasetError(ValueError):
    """A problem with the dataset files; the message names the file(s) and says how to fix it."""


@dataclasses.dataclass(frozen=True)
class RecordLocation:
    """Where one sample lives in a TFRecord shard: the serialized tf.train.Example is `length` bytes at
    `offset` of `shard` (past the record's length and CRC words), and this file is its feature `key`."""

    shard: str
    offset: int
    length: int
    key: str  # 'label', 'instance', 'image' or 'feat'


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What the header of one file says. `record` is set when the file is an entry of a TFRecord shard;
    `path` then reads `{shard}#{record number}/{the source file's path relative to its dataroot}`."""

    path: str
    width: int
    height: int
    decode: int  # one of the DECODE_* constants
    npy_offset: int = 0  # start of the raw data in a .npy file
    record: RecordLocation | None = None


@dataclasses.dataclass(frozen=True)
class DatasetFiles:
    """The checked, paired files of one phase; sample i is (label[i], instance[i], image[i], feat[i]).

    `label` holds the `{phase}_A` images when label_nc is 0. `instance`, `image` and `feat` are None when the
    dataset has none (--no_instance, no `{phase}_img` folder at test time, no --load_features).
    """

    root: str
    phase: str
    label: tuple[FileInfo, ...]
    instance: tuple[FileInfo, ...] | None
    image: tuple[FileInfo, ...] | None
    feat: tuple[FileInfo, ...] | None

    def __len__(self) -> int:
        return len(self.label)

    @property
    def label_paths(self) -> list[str]:
        return [f.path for f in self.label]

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(width, height) of every sample before any transform."""
        return [(f.width, f.height) for f in self.label]


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    """Where the files of a dataset lie and what they hold, in the official folder layout.

    Folders of a phase: `{dataroot}/{phase}_label` (label ids; with `label_nc` 0 the RGB input images of
    `{phase}_A`), `{phase}_inst` when `instances`, `{phase}_img` (`{phase}_B`) and, when `feat_num` > 0,
    `{phase}_feat` with feature maps of `feat_num` channels (--load_features).
    """

    dataroot: str
    label_nc: int
    instances: bool = True
    feat_num: int = 0
    max_dataset_size: int = 2**31 - 1  # use the first this many samples in sorted order

    @classmethod
    def of(cls, opts: Options) -> DatasetLayout:
        """The layout the options train on: --dataroot, --label_nc, --no_instance, --load_features (with
        --feat_num) and --max_dataset_size."""
        return cls(
            dataroot=opts.dataroot,
            label_nc=opts.label_nc,
            instances=not opts.no_instance,
            feat_num=opts.feat_num if opts.load_features else 0,
            max_dataset_size=opts.max_dataset_size,
        )

    def folders(self, phase: str) -> dict[str, str]:
        """The folder of each kind of file: {'label': 'train_label', 'instance': ..., 'image': ..., 'feat': ...}."""
        names = {"label": f"{phase}_A" if self.label_nc == 0 else f"{phase}_label"}
        if self.instances:
            names["instance"] = f"{phase}_inst"
        names["image"] = f"{phase}_B" if self.label_nc == 0 else f"{phase}_img"
        if self.feat_num:
            names["feat"] = f"{phase}_feat"
        return names


def list_folder_files(
    layout: DatasetLayout, *, phase: str, require_images: bool = False, deep_check: bool = False
) -> DatasetFiles:
    """Finds and pairs the files of `phase` and checks them before any training.

    Args:
      layout: the dataset's root and folders (`DatasetLayout.of(opts)` for the options' own).
      phase: the folder prefix: train, val, test ...
      require_images: fail when the image folder (`{phase}_img` / `{phase}_B`) is missing; otherwise a
        missing image folder (inference without real images) gives `image=None`.
      deep_check: also decode every file with PIL (catches any corrupt file and label ids >= label_nc now
        instead of during training; costs a full decoding pass).

    Returns:
      The paired files, at most `layout.max_dataset_size` of them (the first ones in sorted order).

    Raises:
      DatasetError: a folder is missing or empty, counts differ, names do not correspond, a file is not a
        readable image, sizes of a sample differ, or a file has an unsupported format; the message names the
        file(s) and the fix.
    """
    root = layout.dataroot
    if not tf.io.gfile.isdir(root):
        raise DatasetError(
            f"Dataset root {root!r} does not exist: set --dataroot to the folder holding {phase}_label etc."
        )
    names = layout.folders(phase)

    listed: dict[str, list[str]] = {}
    for kind, name in names.items():
        folder = os.path.join(root, name)
        if not tf.io.gfile.isdir(folder):
            if kind == "image" and not require_images:
                continue
            raise DatasetError(_missing_folder_message(kind, folder))
        extensions = FEATURE_EXTENSIONS if kind == "feat" else IMAGE_EXTENSIONS
        paths = _list_folder(folder, extensions)
        if not paths:
            raise DatasetError(
                f"Folder {folder!r} holds no {'/'.join(e[1:] for e in extensions)} files: put the {kind} files "
                f"there or point --dataroot elsewhere."
            )
        listed[kind] = paths

    label_folder = os.path.join(root, names["label"])
    for kind, paths in listed.items():
        if kind != "label" and len(paths) != len(listed["label"]):
            raise DatasetError(_count_message(label_folder, listed["label"], os.path.join(root, names[kind]), paths))

    n = min(len(listed["label"]), max(0, layout.max_dataset_size))
    if n == 0:
        raise DatasetError(f"--max_dataset_size={layout.max_dataset_size} leaves no samples in {label_folder!r}.")
    listed = {kind: paths[:n] for kind, paths in listed.items()}

    for kind, paths in listed.items():
        if kind == "label":
            continue
        folder = os.path.join(root, names[kind])
        for a, b in zip(listed["label"], paths):
            if pairing_key(a, label_folder) != pairing_key(b, folder):
                raise DatasetError(
                    f"Files are paired by sorted order, but {a!r} and {b!r} do not correspond: their names should "
                    f"match (Cityscapes: the same prefix before _gtFine/_leftImg8bit, otherwise the same name). "
                    f"Rename or remove the unpaired file."
                )

    infos = {kind: tuple(_read_header(p, kind, layout) for p in paths) for kind, paths in listed.items()}
    _check_sizes(infos)
    if "feat" in infos:
        _check_feature_format(infos["feat"], layout.feat_num)
    files = DatasetFiles(
        root=root,
        phase=phase,
        label=infos["label"],
        instance=infos.get("instance"),
        image=infos.get("image"),
        feat=infos.get("feat"),
    )
    if deep_check:
        check_contents(files, label_nc=layout.label_nc)
    return files


def pairing_key(path: str, folder: str) -> str:
    """The name by which files of one sample correspond: the relative path without extension, cut before
    a Cityscapes marker (`_gtFine`, `_gtCoarse`, `_leftImg8bit`)."""
    rel = os.path.splitext(os.path.relpath(path, folder))[0]
    head, stem = os.path.split(rel)
    cuts = [stem.find(m) for m in CITYSCAPES_MARKERS if stem.find(m) > 0]
    if cuts:
        stem = stem[: min(cuts)]
    return os.path.join(head, stem)


def check_contents(files: DatasetFiles, *, label_nc: int, threads: int | None = None) -> None:
    """Decodes every file with PIL: raises DatasetError naming any corrupt file or label id >= label_nc.

    Files are decoded by `threads` threads (default: one per CPU, at most 16; PIL's decoders release the
    GIL) and the first bad file in sorted order is reported, whatever the threads' timing.
    """
    jobs = [(kind, info) for kind in ("label", "instance", "image", "feat") for info in getattr(files, kind) or ()]
    threads = threads or min(16, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for problem in pool.map(lambda job: _content_problem(*job, label_nc=label_nc), jobs):
            if problem:
                pool.shutdown(wait=True, cancel_futures=True)
                raise DatasetError(problem)


def _content_problem(kind: str, info: FileInfo, *, label_nc: int) -> str | None:
    """The message about one file's contents, or None if it decodes (and its label ids are in range)."""
    try:
        data = read_bytes(info)
    except (OSError, ValueError, tf.errors.OpError) as e:
        return corrupt_message(info.path, e)
    if info.decode == DECODE_NPY:
        try:
            np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError) as e:
            return corrupt_message(info.path, e)
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, zlib.error ...)
        return corrupt_message(info.path, e)
    if kind == "label" and label_nc > 0 and pixels.size and int(pixels.max()) >= label_nc:
        return label_range_message(info.path, int(pixels.max()), label_nc)
    return None


def read_bytes(info: FileInfo) -> bytes:
    """The whole content of one file, from its filesystem (`tf.io.gfile`) or from its TFRecord shard."""
    if info.record is None:
        with tf.io.gfile.GFile(info.path, "rb") as f:
            return f.read()
    return read_record_feature(info.record)


def read_record(record: RecordLocation) -> bytes:
    """The serialized tf.train.Example at `record`, read by seeking into the shard (no scan).

    Raises:
      DatasetError: the shard is shorter than its index says (truncated).
    """
    with tf.io.gfile.GFile(record.shard, "rb") as f:
        f.seek(record.offset)
        data = f.read(record.length)
    if len(data) != record.length:
        raise DatasetError(
            f"Shard {record.shard} ends before its record at byte {record.offset}: it is truncated (an interrupted "
            f"copy or write); copy it again or re-create the shards with tools/make_tfrecords.py."
        )
    return data


def read_record_feature(record: RecordLocation) -> bytes:
    """The file `record.key` of the Example at `record`.

    Raises:
      DatasetError: the shard is truncated, or the bytes there are not an Example with that entry.
    """
    data = read_record(record)
    try:
        example = tf.train.Example.FromString(data)
        return example.features.feature[record.key].bytes_list.value[0]
    except Exception as e:  # protobuf DecodeError, IndexError (no such entry): damaged bytes either way
        raise DatasetError(
            f"Shard {record.shard} holds no readable {record.key!r} entry at byte {record.offset} "
            f"({type(e).__name__}): the shard is damaged or does not match its index; re-create it with "
            f"tools/make_tfrecords.py."
        ) from e


def label_range_message(path: str, max_id: int | str, label_nc: int) -> str:
    return (
        f"Label map {path} has id {max_id} >= --label_nc={label_nc}: set --label_nc to more than the largest "
        f"label id, or fix the map (ids must be 0 .. label_nc-1)."
    )


def corrupt_message(path: str, error: BaseException) -> str:
    return (
        f"Cannot read {path} ({type(error).__name__}: {error}): the file is corrupt or truncated; re-create or "
        f"remove it."
    )


# ----------------------------------------------------------------------------------------------------------


def _list_folder(folder: str, extensions: Iterable[str]) -> list[str]:
    """Files of `folder` and its subfolders with one of `extensions` (any case), in sorted order."""
    extensions = tuple(extensions)
    paths = []
    for dirpath, _, filenames in tf.io.gfile.walk(folder):
        paths.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(extensions))
    return sorted(paths)


def _missing_folder_message(kind: str, folder: str) -> str:
    fix = {
        "label": "put the label maps there (the input images with --label_nc 0), or set --dataroot / --phase",
        "instance": "put the instance maps there, or pass --no_instance",
        "image": "put the real images there (training needs them)",
        "feat": "precompute the feature maps into it, or drop --load_features",
    }[kind]
    return f"Missing {kind} folder {folder!r}: {fix}."


def _count_message(folder_a: str, paths_a: list[str], folder_b: str, paths_b: list[str]) -> str:
    keys_a = {pairing_key(p, folder_a): p for p in paths_a}
    keys_b = {pairing_key(p, folder_b): p for p in paths_b}
    lonely = [p for k, p in keys_a.items() if k not in keys_b] + [p for k, p in keys_b.items() if k not in keys_a]
    detail = f" Without a counterpart: {', '.join(lonely[:5])}{' ...' if len(lonely) > 5 else ''}." if lonely else ""
    return (
        f"{folder_a!r} has {len(paths_a)} files but {folder_b!r} has {len(paths_b)}: every sample needs one file "
        f"in each folder.{detail} Add the missing files or remove the extra ones."
    )


def _read_header(path: str, kind: str, layout: DatasetLayout) -> FileInfo:
    if path.lower().endswith(".npy"):
        return _read_npy_header(path, layout.feat_num)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            with Image.open(f) as im:
                width, height = im.size
                mode, fmt = im.mode, im.format
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 1024))
            tail = f.read()
            ends = {"PNG": (_PNG_END, 64), "JPEG": (_JPEG_END, 1024)}.get(fmt)
            if ends and ends[0] not in tail[-ends[1] :]:
                # No end marker: truncated, or (JPEG) trailing data after the image. Decode to tell them apart.
                f.seek(0)
                with Image.open(f) as im:
                    im.load()
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError ...).
        raise DatasetError(corrupt_message(path, e)) from e

    if kind in ("label", "instance") and not (kind == "label" and layout.label_nc == 0):
        if fmt != "PNG":
            raise DatasetError(
                f"{kind.capitalize()} map {path} is a {fmt}: lossy formats alter ids; save label and instance "
                f"maps as PNG."
            )
        if mode in _ID_MODES_PNG8:
            decode = DECODE_PNG8
        elif mode in _ID_MODES_PNG16:
            decode = DECODE_PNG16
        elif mode in _ID_MODES_PIL:
            decode = DECODE_PIL
        else:
            raise DatasetError(
                f"{kind.capitalize()} map {path} has PIL mode {mode!r}, but it must hold one id per pixel: save "
                f"it as a single-channel 8-bit ('L'), 16-bit ('I;16') or palette ('P') PNG of ids"
                f"{' (or use --label_nc 0 for RGB input)' if kind == 'label' else ''}."
            )
    else:
        decode = DECODE_NATIVE if mode in _IMAGE_MODES_NATIVE.get(fmt, ()) else DECODE_PIL
    return FileInfo(path, width, height, decode)


def _read_npy_header(path: str, feat_num: int) -> FileInfo:
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
            f.seek(0, os.SEEK_END)
            size = f.tell()
        expected = offset + int(np.prod(shape)) * dtype.itemsize
        if size < expected:
            raise ValueError(f"{size} bytes, but its header announces {expected}")
    except Exception as e:  # a bad header raises ValueError, a read error OSError or tf.errors.OpError.
        raise DatasetError(corrupt_message(path, e)) from e
    if dtype != np.dtype("<f4") or (fortran_order and len(shape) > 1) or len(shape) != 3 or shape[2] != feat_num:
        raise DatasetError(
            f"Feature map {path} is a {dtype} array of shape {shape}"
            f"{' in Fortran order' if fortran_order else ''}; it must be a float32 (H, W, feat_num={feat_num}) "
            f"array: save it with np.save(path, np.ascontiguousarray(features, dtype=np.float32))."
        )
    return FileInfo(path, int(shape[1]), int(shape[0]), DECODE_NPY, offset)


def _check_sizes(infos: dict[str, tuple[FileInfo, ...]]) -> None:
    for kind, files in infos.items():
        if kind == "label":
            continue
        for a, b in zip(infos["label"], files):
            if (a.width, a.height) != (b.width, b.height):
                raise DatasetError(
                    f"{a.path} is {a.width}x{a.height} but {b.path} is {b.width}x{b.height}: the label, instance, "
                    f"image and feature maps of a sample must have the same size; resize one of them."
                )


def _check_feature_format(feats: tuple[FileInfo, ...], feat_num: int) -> None:
    npy = [f for f in feats if f.decode == DECODE_NPY]
    if npy and len(npy) != len(feats):
        other = next(f for f in feats if f.decode != DECODE_NPY)
        raise DatasetError(
            f"Feature maps mix .npy ({npy[0].path}) and image files ({other.path}): store them all one way."
        )
    if not npy and feat_num != 3:
        raise DatasetError(
            f"Feature map {feats[0].path} is an image, which holds 3 channels (as the official "
            f"precompute_feature_maps.py writes), but --feat_num={feat_num}: set --feat_num 3 or store "
            f"float32 (H, W, {feat_num}) .npy files."
        )
