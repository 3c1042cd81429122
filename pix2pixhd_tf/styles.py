"""Per-instance styles (paper §3.4): encoding the training set, the cluster bank, sampling and style specs.

The flow, as in the official `encode_features.py` / `models/pix2pixHD_model.py`:

1. `encode_features(opts)` runs the trained encoder E over the training images. E's output is
   average-pooled per instance, so each instance has one feature vector; it is kept with its area.
2. Instances larger than h·w/64 pixels are clustered by k-means, per class (`cluster_features`).
3. At test time every instance gets a cluster centre of its class, picked at random or by a `StyleSpec`,
   written into all of its pixels (`sample_feature_map`, `apply_style`); G turns it into that style.

Facts kept from the official code:

* The class of an instance id is `id // 1000` for ids >= 1000, else the id itself (Cityscapes); stuff
  classes are "instances" too (one per image), so they get styles of their own.
* Area filter: the official code stores `num / (h*w // 32)` and keeps rows with that value > 0.5, i.e.
  instances with more than (h·w // 32) / 2 ≈ h·w/64 pixels. `keep_instance` computes exactly that test.
* k-means: `KMeans(n_clusters=min(n, opts.n_clusters), random_state=0)` per class with any kept
  instance. Differences here, all deliberate: `n_init=10` is explicit (scikit-learn's default changed to
  'auto', which is one run for k-means++); k is also capped by the number of *distinct* features (the
  official code would return duplicate centres, with a ConvergenceWarning); centres are sorted by
  cluster size, largest first, so index 0 is the most common style of a class.
* Sampling: one cluster per instance, uniformly over the class's clusters. Classes without clusters get
  zero features (the official code leaves that memory uninitialised).
* The official `features_clustered_010.npy` is a *pickled* dict {label: centres [n, feat_num]} (the
  relative-area column of `features.npy` is dropped before clustering). It is read only through
  `convert.load_official_clusters`, only when a user names the file (`ClusterBank.load("...npy")`).

Cluster file format (`clusters.npz`, written by `ClusterBank.save`, read with `allow_pickle=False`):

    centers   float32 [label_nc, K, feat_num]   row k of class c is valid iff k < counts[c]; other rows are 0
    counts    int32   [label_nc]                valid clusters per class (0: no clusters -> zero features)
    sizes     int32   [label_nc, K]             training instances per cluster (optional; 0 when unknown)
    feat_num  int32   scalar
    label_nc  int32   scalar
    version   int32   scalar (1)

`ClusterBank.as_dense()` returns exactly (centers, counts): the exported model samples in-graph from them.
The default file is `{checkpoints_dir}/{name}/clusters.npz`, beside the checkpoint.

Style spec (JSON), picking a cluster index or an explicit feature vector per instance id or per class;
an instance entry wins over its class's entry, anything not named is sampled:

    {"instances": {"8001": 2, "8002": [0.1, -0.3, 0.5]}, "classes": {"8": 4}}

With `--label_feat` the regions are the label map's classes, so "instances" keys are label ids.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # Only for annotations: importing TensorFlow is left to the functions that need it.
    import keras

    from pix2pixhd_tf.options import Options

__all__ = [
    "CLUSTERS_FILE",
    "ClusterBank",
    "InstanceFeatures",
    "ModeRecovery",
    "StyleSpec",
    "apply_style",
    "class_of",
    "cluster_features",
    "cluster_purity",
    "collect_instance_features",
    "default_cluster_file",
    "encode_features",
    "keep_instance",
    "mode_recovery",
    "precompute_feature_maps",
    "region_features",
    "sample_feature_map",
]

CLUSTERS_FILE = "clusters.npz"
FORMAT_VERSION = 1
# The official area unit: an instance's pixel count over (h * w // AREA_BLOCKS); kept if above 0.5.
AREA_BLOCKS = 32

Style = int | tuple[float, ...]
SeedLike = int | Sequence[int] | np.random.Generator | None


def class_of(region_id: int) -> int:
    """The class of an instance id: `id // 1000` for ids >= 1000, else the id (Cityscapes convention)."""
    region_id = int(region_id)
    return region_id // 1000 if region_id >= 1000 else region_id


def classes_of(region_ids: np.ndarray) -> np.ndarray:
    """`class_of` for an array of ids."""
    region_ids = np.asarray(region_ids, np.int64)
    return np.where(region_ids >= 1000, region_ids // 1000, region_ids)


def keep_instance(pixels: np.ndarray | int, height: int, width: int) -> np.ndarray | bool:
    """The official area filter: pixels / (h*w // 32) > 0.5, i.e. instances larger than about h*w/64."""
    return np.asarray(pixels) * 2 > (height * width) // AREA_BLOCKS


def default_cluster_file(opts: Options) -> str:
    """`{checkpoints_dir}/{name}/clusters.npz`."""
    return os.path.join(opts.checkpoints_dir, opts.name, CLUSTERS_FILE)


def _ranges(values: Sequence[int]) -> str:
    values = sorted(int(v) for v in values)
    return ", ".join(map(str, values)) if values else "none"


# ------------------------------------------------------------------------------------------ the cluster bank


class ClusterBank:
    """k-means centres per class in one dense array (see the module docstring for the file format)."""

    def __init__(self, centers: np.ndarray, counts: np.ndarray, sizes: np.ndarray | None = None):
        """
        Args:
            centers: float [label_nc, K, feat_num]; rows at and beyond counts[c] are ignored (zeroed).
            counts: int [label_nc], 0 <= counts[c] <= K.
            sizes: optional int [label_nc, K] training instances per cluster.

        Raises:
            ValueError: shapes or counts inconsistent.
        """
        centers = np.asarray(centers, np.float32)
        counts = np.asarray(counts, np.int32)
        if centers.ndim != 3:
            raise ValueError(f"centers must be [label_nc, K, feat_num], got shape {centers.shape}")
        label_nc, k, _ = centers.shape
        if counts.shape != (label_nc,):
            raise ValueError(f"counts must be [label_nc={label_nc}], got shape {counts.shape}")
        if counts.size and (counts.min() < 0 or counts.max() > k):
            raise ValueError(f"counts must lie in 0..{k} (the K of centers), got {counts.tolist()}")
        valid = np.arange(k)[None, :] < counts[:, None]
        self.centers = np.where(valid[..., None], centers, 0.0).astype(np.float32)
        self.counts = counts
        if sizes is None:
            sizes = np.zeros((label_nc, k), np.int32)
        sizes = np.asarray(sizes, np.int32)
        if sizes.shape != (label_nc, k):
            raise ValueError(f"sizes must be [label_nc, K] = {(label_nc, k)}, got shape {sizes.shape}")
        self.sizes = np.where(valid, sizes, 0).astype(np.int32)

    @property
    def label_nc(self) -> int:
        return self.centers.shape[0]

    @property
    def n_clusters(self) -> int:
        """K: the most clusters any class may have (the second axis of `centers`)."""
        return self.centers.shape[1]

    @property
    def feat_num(self) -> int:
        return self.centers.shape[2]

    def classes(self) -> list[int]:
        """Classes that have clusters."""
        return [int(c) for c in np.flatnonzero(self.counts)]

    def as_dense(self) -> tuple[np.ndarray, np.ndarray]:
        """(centers float32 [label_nc, K, feat_num], counts int32 [label_nc]): the in-graph format of export."""
        return self.centers, self.counts

    def describe(self) -> str:
        """'class 1: 3 clusters, class 8: 10 clusters' (for messages)."""
        parts = [f"class {c}: {self.counts[c]} cluster{'s' * bool(self.counts[c] != 1)}" for c in self.classes()]
        return ", ".join(parts) if parts else "no class has clusters"

    def __repr__(self) -> str:
        return (
            f"ClusterBank(label_nc={self.label_nc}, K={self.n_clusters}, feat_num={self.feat_num}; {self.describe()})"
        )

    # -------------------------------------------------------------------- construction and files
    @classmethod
    def from_clusters(
        cls,
        clusters: Mapping[int, np.ndarray],
        label_nc: int,
        feat_num: int | None = None,
        n_clusters: int | None = None,
        sizes: Mapping[int, np.ndarray] | None = None,
    ) -> ClusterBank:
        """From {class id: centres [n, feat_num]} (e.g. `convert.load_official_clusters`).

        Args:
            clusters: centres per class; classes absent get no clusters.
            label_nc: number of classes; every key must be below it.
            feat_num: the width of the centres (inferred when None; needed when `clusters` is empty).
            n_clusters: K (default: the most centres of any class).
            sizes: optional {class id: instances per cluster [n]}.
        """
        widths = {np.shape(c)[1] for c in clusters.values() if np.ndim(c) == 2 and np.shape(c)[0]}
        if feat_num is None:
            if len(widths) != 1:
                raise ValueError(f"cannot infer feat_num from centres of widths {sorted(widths)}: pass feat_num")
            (feat_num,) = widths
        bad = [c for c in clusters if not 0 <= int(c) < label_nc]
        if bad:
            raise ValueError(f"class ids {bad} are outside 0..{label_nc - 1} (label_nc={label_nc})")
        widths.discard(feat_num)
        if widths:
            raise ValueError(f"cluster centres have {sorted(widths)} columns but feat_num={feat_num}")
        k = max([len(c) for c in clusters.values()] + [0]) if n_clusters is None else n_clusters
        centers = np.zeros((label_nc, k, feat_num), np.float32)
        counts = np.zeros(label_nc, np.int32)
        size_array = np.zeros((label_nc, k), np.int32)
        for c, rows in clusters.items():
            rows = np.asarray(rows, np.float32).reshape(-1, feat_num)
            if len(rows) > k:
                raise ValueError(f"class {c} has {len(rows)} centres, more than n_clusters={k}")
            centers[int(c), : len(rows)] = rows
            counts[int(c)] = len(rows)
            if sizes is not None and c in sizes:
                size_array[int(c), : len(rows)] = np.asarray(sizes[c])
        return cls(centers, counts, size_array)

    def save(self, path: str | os.PathLike) -> str:
        """Write the .npz (no pickles), atomically. Returns the path."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(f"cluster files are .npz archives; got {path!r}")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path[: -len(".npz")] + ".tmp.npz"
        np.savez(
            tmp,
            centers=self.centers,
            counts=self.counts,
            sizes=self.sizes,
            feat_num=np.int32(self.feat_num),
            label_nc=np.int32(self.label_nc),
            version=np.int32(FORMAT_VERSION),
        )
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, label_nc: int | None = None, feat_num: int | None = None) -> ClusterBank:
        """Read a cluster bank: our .npz, or (explicitly named) the official pickled `features_clustered_*.npy`.

        Args:
            path: the file.
            label_nc, feat_num: if given, what the bank must have (an official file holds no label_nc:
                it is taken from here, else from its largest class id + 1).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a cluster file, or label_nc / feat_num differ from the ones given.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no cluster file {path}")
        if path.endswith(".npy"):
            from pix2pixhd_tf.convert import load_official_clusters

            clusters = load_official_clusters(path, feat_num)
            if label_nc is None:
                label_nc = max(clusters, default=-1) + 1
            bank = cls.from_clusters(clusters, label_nc, feat_num)
        else:
            try:
                data = np.load(path, allow_pickle=False)
                if not isinstance(data, np.lib.npyio.NpzFile):
                    raise ValueError("not an .npz archive")
            except Exception as e:  # numpy raises ValueError, OSError or zipfile errors for foreign files
                raise ValueError(f"{path} is not a readable .npz cluster bank ({e})") from e
            with data:
                missing = {"centers", "counts"} - set(data.files)
                if missing:
                    raise ValueError(f"{path} is not a cluster bank: it lacks {sorted(missing)}")
                version = int(data["version"]) if "version" in data.files else FORMAT_VERSION
                if version > FORMAT_VERSION:
                    raise ValueError(f"{path} has format version {version}; this code reads up to {FORMAT_VERSION}")
                bank = cls(data["centers"], data["counts"], data["sizes"] if "sizes" in data.files else None)
                for key in ("feat_num", "label_nc"):
                    if key in data.files and int(data[key]) != getattr(bank, key):
                        raise ValueError(f"{path}: {key}={int(data[key])} disagrees with centers {bank.centers.shape}")
        if label_nc is not None and bank.label_nc != label_nc:
            raise ValueError(
                f"{path} holds clusters for label_nc={bank.label_nc} classes, but the model has --label_nc={label_nc}"
            )
        if feat_num is not None and bank.feat_num != feat_num:
            raise ValueError(f"{path} holds {bank.feat_num}-d features, but the model has --feat_num={feat_num}")
        return bank

    # -------------------------------------------------------------------- lookups
    def _check_class(self, class_id: int, what: str = "") -> int:
        class_id = int(class_id)
        if not 0 <= class_id < self.label_nc:
            raise ValueError(f"{what}class {class_id} is outside 0..{self.label_nc - 1} (label_nc={self.label_nc})")
        return class_id

    def center(self, class_id: int, index: int, what: str = "") -> np.ndarray:
        """Centre `index` of class `class_id` [feat_num]; `what` prefixes error messages.

        Raises:
            ValueError: the class is out of range, has no clusters, or `index` is out of range.
        """
        class_id = self._check_class(class_id, what)
        count = int(self.counts[class_id])
        if count == 0:
            raise ValueError(
                f"{what}class {class_id} has no clusters (classes with clusters: {_ranges(self.classes())})"
            )
        if not 0 <= int(index) < count:
            raise ValueError(
                f"{what}cluster index {index} is out of range: class {class_id} has {count} "
                f"cluster{'s' * bool(count != 1)} (valid 0..{count - 1})"
            )
        return self.centers[class_id, int(index)].copy()

    def sample(self, class_id: int, rng: np.random.Generator) -> np.ndarray:
        """A centre of `class_id` chosen uniformly at random [feat_num]; zeros for a class without clusters."""
        class_id = self._check_class(class_id)
        count = int(self.counts[class_id])
        if count == 0:
            return np.zeros(self.feat_num, np.float32)
        return self.centers[class_id, int(rng.integers(count))].copy()

    def assign(self, class_id: int, features: np.ndarray) -> np.ndarray:
        """Index of the nearest centre of `class_id` for each row of `features` [n, feat_num] (int [n])."""
        class_id = self._check_class(class_id)
        count = int(self.counts[class_id])
        if count == 0:
            raise ValueError(f"class {class_id} has no clusters (classes with clusters: {_ranges(self.classes())})")
        centers = self.centers[class_id, :count]
        d = ((np.asarray(features, np.float32)[:, None, :] - centers[None]) ** 2).sum(-1)
        return d.argmin(axis=1)


# ------------------------------------------------------------------------------------------ style specs


def _parse_style(value: Any, where: str) -> Style:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a cluster index or a list of numbers, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (list, tuple, np.ndarray)) and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in value
    ):
        vector = tuple(float(v) for v in value)
        if not vector or not np.all(np.isfinite(vector)):
            raise ValueError(f"{where}: a feature vector needs finite numbers, got {list(value)!r}")
        return vector
    raise ValueError(f"{where}: expected a cluster index (int) or a feature vector (list of numbers), got {value!r}")


def _parse_ids(entries: Any, kind: str) -> dict[int, Style]:
    if not isinstance(entries, Mapping):
        raise ValueError(f"style spec: '{kind}' must be an object of id -> style, got {type(entries).__name__}")
    parsed = {}
    for key, value in entries.items():
        try:
            region = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"style spec: '{kind}' key {key!r} is not an integer id") from None
        if region < 0:
            raise ValueError(f"style spec: '{kind}' id {region} is negative")
        parsed[region] = _parse_style(value, f"style spec {kind}[{key}]")
    return parsed


@dataclasses.dataclass(frozen=True)
class StyleSpec:
    """Chosen styles: a cluster index (int) or an explicit feature vector per instance id or per class."""

    instances: Mapping[int, Style] = dataclasses.field(default_factory=dict)
    classes: Mapping[int, Style] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StyleSpec:
        """From `{"instances": {"8001": 2, ...}, "classes": {"8": [0.1, 0.2, 0.3]}}` (keys may be str or int)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a style spec is a JSON object, got {type(data).__name__}")
        unknown = set(data) - {"instances", "classes"}
        if unknown:
            raise ValueError(
                f"style spec: unknown keys {sorted(map(str, unknown))}; expected 'instances' and/or 'classes'"
            )
        return cls(_parse_ids(data.get("instances", {}), "instances"), _parse_ids(data.get("classes", {}), "classes"))

    @classmethod
    def from_json(cls, text: str) -> StyleSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"style spec is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> StyleSpec:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no style spec file {path}")
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_json(f.read())
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, dict[str, Any]]:
        def out(entries):
            return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in sorted(entries.items())}

        return {"instances": out(self.instances), "classes": out(self.classes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def __bool__(self) -> bool:
        return bool(self.instances or self.classes)

    def style_for(self, region_id: int) -> Style | None:
        """The instance's own entry, else its class's entry, else None (sample it)."""
        region_id = int(region_id)
        if region_id in self.instances:
            return self.instances[region_id]
        return self.classes.get(class_of(region_id))

    def validate(self, *, label_nc: int, feat_num: int, bank: ClusterBank | None) -> None:
        """Check every entry against the model and the bank (ids present in a map are checked elsewhere).

        Raises:
            ValueError: a class outside 0..label_nc-1, a vector of the wrong length, a cluster index with
                no bank or out of the class's range.
        """
        for kind, entries in (("instances", self.instances), ("classes", self.classes)):
            for region, style in entries.items():
                cls_id = class_of(region) if kind == "instances" else region
                what = f"style spec {kind}[{region}]: "
                if not 0 <= cls_id < max(label_nc, 1):
                    raise ValueError(
                        f"{what}class {cls_id} is unknown: the model has label_nc={label_nc} classes "
                        f"(0..{label_nc - 1}; instance ids are class*1000+k)"
                    )
                if isinstance(style, tuple):
                    if len(style) != feat_num:
                        raise ValueError(f"{what}the feature vector has {len(style)} values but --feat_num={feat_num}")
                elif bank is None:
                    raise ValueError(
                        f"{what}cluster index {style} needs a cluster bank, but none is loaded: run "
                        "tools/encode_features.py or give explicit feature vectors"
                    )
                else:
                    bank.center(cls_id, style, what)

    def unmatched(self, region_ids: np.ndarray) -> tuple[list[int], list[int]]:
        """(instance ids, class ids) of the spec that do not occur among `region_ids`."""
        present = {int(r) for r in np.unique(np.asarray(region_ids))}
        classes = {class_of(r) for r in present}
        return (
            sorted(r for r in self.instances if r not in present),
            sorted(c for c in self.classes if c not in classes),
        )


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


# ------------------------------------------------------------------------------------------ encoding


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
    import tensorflow as tf
    from tqdm import tqdm

    from pix2pixhd_tf.data.dataset import build_dataset, list_dataset_files

    enc_opts = _encoding_options(opts)
    files = list_dataset_files(enc_opts, phase, require_images=True)
    dataset = build_dataset(enc_opts, phase=phase, training=False, with_paths=True, files=files)
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
        from pix2pixhd_tf.inference import load_encoder

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
    from sklearn.cluster import KMeans

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
    from PIL import Image

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
    from PIL import Image

    from pix2pixhd_tf.data.files import folder_names

    _require_encoder_model(opts, "precomputing feature maps")
    if feat_format not in ("npy", "png"):
        raise ValueError(f"feat_format must be 'npy' or 'png', got {feat_format!r}")
    if feat_format == "png" and opts.feat_num != 3:
        raise ValueError(f"PNG feature maps hold 3 channels but --feat_num={opts.feat_num}: use feat_format='npy'")
    if encoder is None:
        from pix2pixhd_tf.inference import load_encoder

        encoder = load_encoder(opts, which_epoch=which_epoch)
    names = folder_names(opts.replace(load_features=True), phase)
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


# ------------------------------------------------------------------------------------------ clusters vs modes


def cluster_purity(assignments: Sequence[int], modes: Sequence[int]) -> float:
    """Fraction of instances whose cluster's majority ground-truth mode is their own mode (1 = pure)."""
    assignments, modes = np.asarray(assignments), np.asarray(modes)
    if assignments.shape != modes.shape or assignments.ndim != 1:
        raise ValueError(f"assignments {assignments.shape} and modes {modes.shape} must be equal 1-D arrays")
    if not len(modes):
        return float("nan")
    correct = sum(np.bincount(modes[assignments == k]).max() for k in np.unique(assignments))
    return float(correct / len(modes))


@dataclasses.dataclass
class ModeRecovery:
    """How well clusters recover known appearance modes (e.g. the synthetic car paints)."""

    n_instances: int
    purity: float  # cluster -> majority mode accuracy
    nmi: float  # normalised mutual information between clusters and modes
    modes_present: list[int]  # ground-truth modes among the instances
    modes_found: list[int]  # modes that are the majority of at least one cluster
    clusters: list[dict[str, Any]]  # per cluster: index, size, mode, mode_name, fraction
    mode_names: list[str]

    def summary(self) -> str:
        def name(m: int) -> str:
            return self.mode_names[m] if m < len(self.mode_names) else str(m)

        missing = sorted(set(self.modes_present) - set(self.modes_found))
        scores = f"purity {self.purity:.3f}, NMI {self.nmi:.3f}"
        lines = [
            f"{self.n_instances} instances, {len(self.clusters)} clusters: {scores}",
            f"modes found {len(self.modes_found)} of {len(self.modes_present)} present: "
            f"{', '.join(name(m) for m in self.modes_found)}"
            + (f" (missing: {', '.join(name(m) for m in missing)})" if missing else ""),
        ]
        lines += [
            f"  cluster {c['cluster']}: {c['size']} instances, {c['fraction']:.0%} {c['mode_name']}"
            for c in self.clusters
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def mode_recovery(assignments: Sequence[int], modes: Sequence[int], mode_names: Sequence[str] = ()) -> ModeRecovery:
    """Compare cluster assignments with ground-truth modes: purity, NMI, and which modes clusters found."""
    from sklearn.metrics import normalized_mutual_info_score

    assignments, modes = np.asarray(assignments, int), np.asarray(modes, int)
    purity = cluster_purity(assignments, modes)
    clusters = []
    for k in np.unique(assignments):
        counts = np.bincount(modes[assignments == k])
        mode = int(counts.argmax())
        clusters.append(
            {
                "cluster": int(k),
                "size": int(counts.sum()),
                "mode": mode,
                "mode_name": mode_names[mode] if mode < len(mode_names) else str(mode),
                "fraction": float(counts.max() / counts.sum()),
            }
        )
    return ModeRecovery(
        n_instances=len(modes),
        purity=purity,
        nmi=float(normalized_mutual_info_score(modes, assignments)) if len(modes) else float("nan"),
        modes_present=sorted(set(modes.tolist())),
        modes_found=sorted({c["mode"] for c in clusters}),
        clusters=clusters,
        mode_names=list(mode_names),
    )
