"""Style sampling (paper §3.4): a cluster centre of its class for every region, or the one a `StyleSpec` names."""

from __future__ import annotations


import numpy as np

from pix2pixhd_tf.styles.bank import ClusterBank, SeedLike, StyleSpec, _ranges, class_of, classes_of


def _seed_key(seed: SeedLike) -> list[int]:
    """Entropy for per-region generators: an int or ints, a Generator (one draw), or None (fresh entropy)."""
    if seed is None:
        entropy = np.random.SeedSequence().entropy
        return [int(entropy) % 2**63]
    if isinstance(seed, np.random.Generator):
        return [int(seed.integers(2**63))]
    key = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if any(k < 0 for k in key):
        raise ValueError(f"seeds must be non-negative integers, got {seed!r}")
    return key


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
    """Features for G: per region, a cluster centre of its class (random, or chosen by `style`).

    The official `sample_features`, vectorised per image: one table row per region id, then a gather.
    Randomness is per (seed, image index, region id): the same seed gives the same styles, and adding or
    removing an object does not change the styles the others get.

    Args:
        regions: int [H, W] or [N, H, W] instance ids (label ids with --label_feat).
        bank: the cluster bank; None allowed only when `style` covers every region with a vector.
        feat_num, label_nc: default to the bank's.
        seed: int or ints (e.g. (seed, image index)), a numpy Generator, or None (not reproducible).
        style: chosen styles; entries not matched by any region raise when `strict`.

    Returns:
        float32 [H, W, feat_num] or [N, H, W, feat_num].

    Raises:
        ValueError: a region needs sampling but there is no bank; a bad or unmatched style entry.
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
    key = _seed_key(seed)
    out = np.zeros(regions.shape + (feat_num,), np.float32)
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
                table[row] = bank.sample(cls_id, np.random.default_rng(key + [n, region]))
        out[n] = table[inverse.reshape(region_map.shape)]
    return out[0] if unbatched else out


