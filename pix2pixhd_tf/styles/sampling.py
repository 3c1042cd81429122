"""Style sampling (paper §3.4): a cluster centre of its class for every region, or the one a `StyleSpec` names.

The random draw is defined once, in `cluster_draw`, and used by two twins:

* `sample_feature_map`, the numpy twin: `Synthesizer`, `tools/test.py` and the editor; it also applies
  and checks style specs.
* `sample_features_graph`, the in-graph twin: the exported SavedModel's `serving_default`, `serving_png`
  and `generate_with_seed` (a SavedModel cannot call numpy).

The draw: region id r (an instance id, or a label id with --label_feat) of class c = `class_of(r)`, in an
image with seed s, gets centre j of its class, j = P_s(r mod 2^31) mod counts[c], where P_s is the
counter-based random permutation `RandomIndexShuffle` keyed by s. It depends only on (s, r): adding or
removing other objects, or moving the image in a batch, changes nothing. Classes without clusters get
zero features. So for the same seed and style spec a checkpoint, the SavedModel and the editor give the
same features, hence the same image.

Seeds: the SavedModel takes one int32 seed per image (`generate_with_seed`; `serving_default` uses 0).
The numpy twin's `seed` names those seeds (`image_seeds`):

* an int s >= 0: seed s mod 2^31 for every image (so the SavedModel's seed s, for s < 2^31);
* a sequence of N ints: one seed per image of the batch, as the SavedModel's `seed` input;
* a numpy Generator: N seeds drawn from it (reproducible when the Generator is seeded);
* None: N fresh random seeds (not reproducible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from pix2pixhd_tf.styles.bank import ClusterBank, StyleSpec, _ranges, class_of, classes_of, classes_of_graph

__all__ = [
    "SeedLike",
    "apply_style",
    "cluster_draw",
    "image_seeds",
    "sample_feature_map",
    "sample_features_graph",
]

SeedLike = int | Sequence[int] | np.random.Generator | None

SEED_SALT = 0x5EED  # the key's third word, so seed 0 is not Philox's all-zero key
SEED_RANGE = 2**31  # the SavedModel's seeds are int32; larger Python seeds are folded into [0, 2^31)
_MAX_SHUFFLE_INDEX = 2**31 - 1  # region ids are folded into [0, 2^31) before the permutation


# ------------------------------------------------------------------------------------------ the one draw


def _floor_mod(x: tf.Tensor, m: int) -> tf.Tensor:
    """x mod m in [0, m) for int64 x of any sign. The `where` is a no-op in TensorFlow, but tf2onnx lowers
    an integer FloorMod to a truncated remainder (negative for negative x), which it corrects."""
    r = tf.math.floormod(x, m)
    return tf.where(r < 0, r + m, r)


def cluster_draw(region_ids: tf.Tensor, seeds: tf.Tensor, counts: tf.Tensor) -> tf.Tensor:
    """The cluster index of each region: int32 [M] in [0, counts) (0 where counts is 0).

    Args:
        region_ids: int [M] region ids (only their low 31 bits count).
        seeds: int [M] the seed of each region's image.
        counts: int [M] the number of clusters of each region's class.

    Graph-safe, and run eagerly by the numpy twin, so both twins draw with this very op.
    """
    ids = tf.cast(region_ids, tf.int64)
    seeds = tf.cast(seeds, tf.int64)
    key = tf.stack([tf.zeros_like(seeds), seeds, tf.fill(tf.shape(seeds), tf.constant(SEED_SALT, tf.int64))], 1)
    draw = tf.raw_ops.RandomIndexShuffle(
        index=ids & _MAX_SHUFFLE_INDEX,
        seed=key,
        max_index=tf.constant(_MAX_SHUFFLE_INDEX, tf.int64),
        rounds=4,
    )
    return tf.cast(draw % tf.cast(tf.maximum(counts, 1), tf.int64), tf.int32)


def image_seeds(seed: SeedLike, n: int) -> np.ndarray:
    """The int32 seed of each of `n` images for a numpy-twin `seed` (see the module docstring): exactly
    what to pass as the SavedModel's `seed` input for the same styles.

    Raises:
        ValueError: a negative seed, or a sequence whose length is not `n`.
    """
    if seed is None:
        seed = np.random.default_rng()
    if isinstance(seed, np.random.Generator):
        return seed.integers(SEED_RANGE, size=n).astype(np.int32)
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seeds = [int(seed)] * n
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(
                f"{len(seeds)} seeds for a batch of {n} images: pass one int (the seed of every image) or one seed "
                "per image"
            )
    if any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
    return np.array([s % SEED_RANGE for s in seeds], np.int32)


# ------------------------------------------------------------------------------------------ in-graph twin


def sample_features_graph(
    regions: tf.Tensor,
    seeds: tf.Tensor,
    bank: ClusterBank | None,
    *,
    feat_num: int,
    draw: Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor] = cluster_draw,
) -> tf.Tensor:
    """Sampled features, in-graph twin of `sample_feature_map` (no style specs): [N,H,W] region ids and
    int32 seeds [N] -> float32 [N,H,W,feat_num]. Regions whose class is outside the bank or has no
    clusters, and every region when `bank` is None, get zeros.

    `draw`: `cluster_draw`, or its ONNX twin `serving.onnx_sampling.cluster_draw_portable` (the same
    numbers). The id arithmetic uses floor-mod and where, not BitwiseAnd / Bitcast, so that tf2onnx
    converts it at opset 17 (equal results for int64 ids, negative ones included)."""
    regions = tf.convert_to_tensor(regions)
    shape = tf.shape(regions)
    if bank is None:
        return tf.zeros(tf.concat([shape, [feat_num]], 0), tf.float32)
    if bank.feat_num != feat_num:
        raise ValueError(f"the cluster bank has {bank.feat_num} features per centre, the model feat_num={feat_num}")
    # One row per (image, region id): keys are batch index * 2^32 + the id's 32 bits.
    ids = tf.cast(regions, tf.int64)
    batch_index = tf.broadcast_to(tf.range(shape[0], dtype=tf.int64)[:, None, None], tf.shape(ids))
    keys = tf.reshape(batch_index * (2**32) + _floor_mod(ids, 2**32), [-1])
    unique_keys, segment = tf.unique(keys, out_idx=tf.int32)
    row_image = unique_keys // (2**32)
    low = unique_keys % (2**32)  # unique_keys >= 0
    row_id = tf.where(low >= 2**31, low - 2**32, low)  # the low 32 bits read as a signed int32

    classes = tf.cast(classes_of_graph(row_id), tf.int32)
    known = (classes >= 0) & (classes < bank.label_nc)
    classes = tf.where(known, classes, 0)
    counts = tf.where(known, tf.gather(tf.constant(bank.counts), classes), 0)
    cluster = draw(row_id, tf.gather(tf.cast(seeds, tf.int64), row_image), counts)
    centres = tf.gather_nd(tf.constant(bank.centers), tf.stack([classes, cluster], 1))
    centres *= tf.cast(counts > 0, tf.float32)[:, None]
    return tf.reshape(tf.gather(centres, segment), tf.concat([shape, [feat_num]], 0))


# ------------------------------------------------------------------------------------------ numpy twin


def _as_batch(regions: np.ndarray) -> np.ndarray:
    regions = np.asarray(regions)
    if regions.ndim == 2:
        regions = regions[None]
    if regions.ndim != 3:
        raise ValueError(f"region maps must be [H, W] or [N, H, W], got shape {regions.shape}")
    if not np.issubdtype(regions.dtype, np.integer):
        raise ValueError(f"region maps must hold integer ids, got {regions.dtype}")
    return regions.astype(np.int64)


def _check_present(spec: StyleSpec, regions: np.ndarray) -> None:
    instances, classes = spec.unmatched(regions)
    present = np.unique(regions)
    if instances:
        raise ValueError(
            f"style spec names instance{'s' * (len(instances) > 1)} {_ranges(instances)}, not in the instance map; "
            f"instances present: {_ranges(present)}"
        )
    if classes:
        raise ValueError(
            f"style spec names class{'es' * (len(classes) > 1)} {_ranges(classes)}, not in the map; classes present: "
            f"{_ranges(set(classes_of(present).tolist()))}"
        )


def apply_style(
    features: np.ndarray,
    regions: np.ndarray,
    style: StyleSpec,
    *,
    bank: ClusterBank | None,
    label_nc: int,
    strict: bool = True,
) -> np.ndarray:
    """Overwrite the features of the regions named by `style` (a copy; other pixels are untouched).

    Args:
        features: float [N, H, W, feat_num] (or [H, W, feat_num] with `regions` [H, W]).
        regions: int instance ids (label ids with --label_feat) of the same N, H, W.
        style: the spec; instance entries win over class entries.
        bank: needed for cluster indices.
        label_nc: the model's classes, to check the spec.
        strict: raise if the spec names an instance or class absent from `regions`.

    Returns:
        float32 features of the input's shape.
    """
    features = np.array(features, np.float32)
    unbatched = features.ndim == 3
    batch = features[None] if unbatched else features
    regions = _as_batch(regions)
    if batch.shape[:3] != regions.shape:
        raise ValueError(f"features {batch.shape} and region maps {regions.shape} differ in N, H, W")
    feat_num = batch.shape[-1]
    style.validate(label_nc=label_nc, feat_num=feat_num, bank=bank)
    if strict:
        _check_present(style, regions)
    for n in range(len(regions)):
        for region in np.unique(regions[n]):
            chosen = style.style_for(region)
            if chosen is None:
                continue
            vector = (
                np.asarray(chosen, np.float32) if isinstance(chosen, tuple) else bank.center(class_of(region), chosen)
            )
            batch[n][regions[n] == region] = vector
    return batch[0] if unbatched else batch


def sample_feature_map(
    regions: np.ndarray,
    bank: ClusterBank | None,
    *,
    feat_num: int | None = None,
    label_nc: int | None = None,
    seed: SeedLike = None,
    style: StyleSpec | None = None,
    strict: bool = True,
) -> np.ndarray:
    """Features for G, numpy twin of `sample_features_graph`: per region, a cluster centre of its class
    (drawn by `cluster_draw`, or chosen by `style`).

    The official `sample_features`, vectorised per image: one table row per region id, then a gather.
    Regions `style` does not name get exactly the features the SavedModel samples for the same seeds.

    Args:
        regions: int [H, W] or [N, H, W] instance ids (label ids with --label_feat).
        bank: the cluster bank; None allowed only when `style` covers every region with a vector.
        feat_num, label_nc: default to the bank's.
        seed: the seed of every image (int), one per image, a numpy Generator, or None (see `image_seeds`).
        style: chosen styles; entries not matched by any region raise when `strict`.

    Returns:
        float32 [H, W, feat_num] or [N, H, W, feat_num].

    Raises:
        ValueError: a region needs sampling but there is no bank, or has a class outside the model's;
            a bad or unmatched style entry; a bad seed.
    """
    unbatched = np.ndim(regions) == 2
    regions = _as_batch(regions)
    feat_num = feat_num if feat_num is not None else (bank.feat_num if bank is not None else None)
    label_nc = label_nc if label_nc is not None else (bank.label_nc if bank is not None else None)
    if feat_num is None or label_nc is None:
        raise ValueError("without a cluster bank, pass feat_num and label_nc")
    if bank is not None and (bank.feat_num, bank.label_nc) != (feat_num, label_nc):
        raise ValueError(
            f"the cluster bank has feat_num={bank.feat_num}, label_nc={bank.label_nc}; the model "
            f"feat_num={feat_num}, label_nc={label_nc}"
        )
    style = style or StyleSpec()
    style.validate(label_nc=label_nc, feat_num=feat_num, bank=bank)
    if strict:
        _check_present(style, regions)
    seeds = image_seeds(seed, len(regions))
    tables, inverses = [], []
    draws = []  # (image, table row, region id) of the regions to sample
    for n, region_map in enumerate(regions):
        ids, inverse = np.unique(region_map, return_inverse=True)
        table = np.zeros((len(ids), feat_num), np.float32)
        for row, region in enumerate(ids.tolist()):
            cls_id = class_of(region)
            chosen = style.style_for(region)
            if isinstance(chosen, tuple):
                table[row] = chosen
            elif chosen is not None:
                table[row] = bank.center(cls_id, chosen)
            elif bank is None:
                raise ValueError(
                    f"region {region} (class {cls_id}) needs a sampled style but no cluster bank is loaded: run "
                    "tools/encode_features.py for this experiment (or pass --cluster_path), or give every region "
                    "an explicit feature vector"
                )
            elif not 0 <= cls_id < label_nc:
                raise ValueError(f"region {region} has class {cls_id}, outside 0..{label_nc - 1} (label_nc={label_nc})")
            else:
                draws.append((n, row, region))
        tables.append(table)
        inverses.append(inverse.reshape(region_map.shape))
    if draws:
        image, row, region = (np.array(column, np.int64) for column in zip(*draws))
        classes = classes_of(region)
        counts = bank.counts[classes]
        cluster = cluster_draw(region, seeds[image], counts).numpy()
        centres = np.where((counts > 0)[:, None], bank.centers[classes, cluster], 0.0).astype(np.float32)
        for n in range(len(regions)):
            mine = image == n
            tables[n][row[mine]] = centres[mine]
    out = np.stack([table[inverse] for table, inverse in zip(tables, inverses)])
    return out[0] if unbatched else out
