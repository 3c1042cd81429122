"""Encoding the training set with E and clustering the per-instance features (official encode_features.py)."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from pix2pixhd_tf.data.dataset import build_dataset
from pix2pixhd_tf.data.files import DatasetLayout
from pix2pixhd_tf.data.dataset import list_dataset_files
from pix2pixhd_tf.experiment import load_encoder
from pix2pixhd_tf.options import Options
from pix2pixhd_tf.styles.bank import ClusterBank, classes_of, keep_instance


def region_features(pooled: np.ndarray, regions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One feature per region of an instance-pooled map.

    Args:
        pooled: float [H, W, F] (E's output: constant over each region).
        regions: int [H, W].

    Returns:
        (region ids int64 [n], features float32 [n, F] (the region means), pixel counts int64 [n]).
    """
    ids, inverse, pixels = np.unique(np.asarray(regions), return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    flat = np.asarray(pooled, np.float64).reshape(-1, pooled.shape[-1])
    sums = np.stack([np.bincount(inverse, weights=flat[:, k], minlength=len(ids)) for k in range(flat.shape[1])], -1)
    return ids.astype(np.int64), (sums / pixels[:, None]).astype(np.float32), pixels.astype(np.int64)


@dataclasses.dataclass
class InstanceFeatures:
    """Every region of every encoded image: its feature, class, size and where it came from."""

    features: np.ndarray  # float32 [n, feat_num]
    classes: np.ndarray  # int32 [n]
    region_ids: np.ndarray  # int64 [n]
    pixels: np.ndarray  # int64 [n]
    relative_area: np.ndarray  # float32 [n]: pixels / (h * w)
    kept: np.ndarray  # bool [n]: passes the official area filter (> h*w/64 pixels)
    image_index: np.ndarray  # int32 [n]
    paths: list[str]  # the label file of each image

    @classmethod
    def concatenate(cls, parts: list[InstanceFeatures], paths: list[str]) -> InstanceFeatures:
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "paths"]
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in fields}, paths=paths)

    @classmethod
    def from_image(cls, pooled: np.ndarray, regions: np.ndarray, index: int) -> InstanceFeatures:
        ids, features, pixels = region_features(pooled, regions)
        h, w = np.shape(regions)
        return cls(
            features=features,
            classes=classes_of(ids).astype(np.int32),
            region_ids=ids,
            pixels=pixels,
            relative_area=(pixels / float(h * w)).astype(np.float32),
            kept=np.asarray(keep_instance(pixels, h, w), bool),
            image_index=np.full(len(ids), index, np.int32),
            paths=[],
        )


def _encoding_options(opts: Options) -> Options:
    """Whole images, in order, unflipped, one at a time: no crop (fineSize large), batchSize 1."""
    return opts.replace(batchSize=1, fineSize=2**30, serial_batches=True, no_flip=True, load_features=False)


def _require_encoder_model(opts: Options, what: str) -> None:
    if not opts.use_encoder:
        raise ValueError(
            f"{what} needs the feature encoder of a model trained with --instance_feat or --label_feat "
            "(and without --load_features, which trains G on precomputed maps and has no encoder)"
        )
    if opts.label_nc == 0:
        raise ValueError(f"{what} clusters features per class and so needs label maps (--label_nc > 0)")


def _encoded_images(opts: Options, encoder: keras.Model, phase: str, progress: bool, desc: str):
    """Yields (index, label path, regions_t [h,w], pooled [h,w,F], files) over `phase` in file order."""
    enc_opts = _encoding_options(opts)
    files = list_dataset_files(DatasetLayout.of(enc_opts), phase=phase, require_images=True)
    dataset = build_dataset(enc_opts, training=False, with_paths=True, files=files)
    run = tf.function(lambda image, regions: encoder([image, regions], training=False), reduce_retracing=True)
    for index, batch in enumerate(tqdm(dataset, total=len(files), desc=desc, unit="image", disable=not progress)):
        regions = batch["label"] if opts.label_feat else batch["instance"]
        pooled = run(batch["image"], tf.cast(regions, tf.int32))
        yield index, batch["path"][0].numpy().decode(), regions[0].numpy(), pooled[0].numpy(), files


def collect_instance_features(
    opts: Options,
    encoder: keras.Model | None = None,
    *,
    which_epoch: str | None = None,
    phase: str = "train",
    progress: bool = True,
) -> InstanceFeatures:
    """Run E over every image of `phase` and return one feature per region (instance, or label with label_feat).

    Images are encoded whole (no crop, no flip, in file order); the area filter is relative to that size.

    Args:
        opts: the experiment's options (dataroot, label_nc, feat_num, instance_feat/label_feat, ...).
        encoder: E; loaded from the experiment's checkpoint (`which_epoch`) when None.
    """
    _require_encoder_model(opts, "encoding features")
    if encoder is None:
        encoder = load_encoder(opts, which_epoch=which_epoch)
    parts, paths = [], []
    for index, path, regions, pooled, _ in _encoded_images(opts, encoder, phase, progress, "encoding features"):
        parts.append(InstanceFeatures.from_image(pooled, regions, index))
        paths.append(path)
    return InstanceFeatures.concatenate(parts, paths)


def cluster_features(
    features: InstanceFeatures,
    *,
    label_nc: int,
    n_clusters: int,
    random_state: int = 0,
    n_init: int = 10,
) -> ClusterBank:
    """k-means per class over the kept instances (see the module docstring for the official rules).

    A class with m kept instances of d distinct features gets min(m, d, n_clusters) clusters (0 if m is 0).
    Centres are sorted by cluster size, largest first.
    """
    from sklearn.cluster import KMeans  # here: importing scikit-learn takes seconds, and only clustering needs it

    feat_num = features.features.shape[1]
    centers = np.zeros((label_nc, n_clusters, feat_num), np.float32)
    counts = np.zeros(label_nc, np.int32)
    sizes = np.zeros((label_nc, n_clusters), np.int32)
    outside = sorted(set(features.classes[features.kept].tolist()) - set(range(label_nc)))
    if outside:
        raise ValueError(f"instances of classes {outside} lie outside 0..{label_nc - 1}: check --label_nc")
    for c in range(label_nc):
        x = features.features[features.kept & (features.classes == c)].astype(np.float64)
        k = min(len(np.unique(x, axis=0)), n_clusters) if len(x) else 0
        if k == 0:
            continue
        kmeans = KMeans(n_clusters=k, random_state=random_state, n_init=n_init).fit(x)
        size = np.bincount(kmeans.labels_, minlength=k)
        order = np.argsort(-size, kind="stable")
        centers[c, :k] = kmeans.cluster_centers_[order]
        sizes[c, :k] = size[order]
        counts[c] = k
    return ClusterBank(centers, counts, sizes)


def encode_features(
    opts: Options,
    encoder: keras.Model | None = None,
    *,
    which_epoch: str | None = None,
    progress: bool = True,
    random_state: int = 0,
    n_init: int = 10,
) -> ClusterBank:
    """The official encode_features.py: encode the training set, then k-means per class (`opts.n_clusters`).

    Returns the bank (save it with `bank.save(default_cluster_file(opts))`).
    """
    features = collect_instance_features(opts, encoder, which_epoch=which_epoch, phase="train", progress=progress)
    return cluster_features(
        features, label_nc=opts.label_nc, n_clusters=opts.n_clusters, random_state=random_state, n_init=n_init
    )


def _read_ids(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def _paint_full_size(regions_t: np.ndarray, pooled: np.ndarray, regions_full: np.ndarray) -> np.ndarray:
    """The pooled map at the original size: each region's feature painted into its original pixels.

    Regions lost in the resize (tiny ones) fall back to the nearest-neighbour upsampled map.
    """
    ids, feats, _ = region_features(pooled, regions_t)
    h, w = regions_full.shape
    ht, wt = regions_t.shape
    rows = np.minimum((np.arange(h) + 0.5) * ht / h, ht - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * wt / w, wt - 1).astype(int)
    fallback = pooled[rows][:, cols]
    pos = np.clip(np.searchsorted(ids, regions_full), 0, len(ids) - 1)
    found = ids[pos] == regions_full
    return np.where(found[..., None], feats[pos], fallback).astype(np.float32)


def precompute_feature_maps(
    opts: Options,
    encoder: keras.Model | None = None,
    *,
    which_epoch: str | None = None,
    phase: str = "train",
    feat_format: str = "npy",
    progress: bool = True,
) -> list[str]:
    """The official precompute_feature_maps.py: E's pooled maps into `{dataroot}/{phase}_feat` for --load_features.

    Each label file `{phase}_label/REL/NAME.png` gets `{phase}_feat/REL/NAME.npy` (or `.png`), at the label
    file's own size, which is what `data/dataset.py` pairs and reads:

    * 'npy' (default): float32 (H, W, feat_num), exact, any feat_num;
    * 'png': the official format, (feat + 1) / 2 * 255 as an RGB image (feat_num must be 3).

    A map of the other format with the same name is removed (the dataset refuses mixed folders).

    E runs on the image as the options load it, uncropped; each region's feature is then painted into the
    region's pixels of the original-size region map (the official tool upsamples ×2 instead, which is the
    same for its 512p → 1024p case).

    Returns:
        The written paths, in file order.
    """
    _require_encoder_model(opts, "precomputing feature maps")
    if feat_format not in ("npy", "png"):
        raise ValueError(f"feat_format must be 'npy' or 'png', got {feat_format!r}")
    if feat_format == "png" and opts.feat_num != 3:
        raise ValueError(f"PNG feature maps hold 3 channels but --feat_num={opts.feat_num}: use feat_format='npy'")
    if encoder is None:
        encoder = load_encoder(opts, which_epoch=which_epoch)
    names = DatasetLayout(opts.dataroot, opts.label_nc, feat_num=opts.feat_num).folders(phase)
    label_dir = os.path.join(opts.dataroot, names["label"])
    feat_dir = os.path.join(opts.dataroot, names["feat"])
    written = []
    for index, path, regions_t, pooled, files in _encoded_images(opts, encoder, phase, progress, "feature maps"):
        region_file = files.label[index].path if opts.label_feat else files.instance[index].path
        full = _paint_full_size(regions_t, pooled, _read_ids(region_file))
        target = os.path.join(feat_dir, os.path.splitext(os.path.relpath(path, label_dir))[0] + "." + feat_format)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        other = os.path.splitext(target)[0] + (".png" if feat_format == "npy" else ".npy")
        if os.path.exists(other):  # the dataset refuses folders that mix the two formats
            os.remove(other)
        if feat_format == "npy":
            np.save(target, np.ascontiguousarray(full, dtype=np.float32))
        else:
            Image.fromarray(np.clip(np.round((full + 1.0) * 127.5), 0, 255).astype(np.uint8)).save(target)
        written.append(target)
    return written


