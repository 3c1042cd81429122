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
* Sampling: one cluster per instance, uniformly over the class's clusters (`styles.sampling`). Classes
  without clusters get zero features (the official code leaves that memory uninitialised).
* The official `features_clustered_010.npy` is a *pickled* dict {label: centres [n, feat_num]} (the
  relative-area column of `features.npy` is dropped before clustering). Unpickling runs any code the
  file holds, so it is read only through `load_official_clusters`, only with `allow_pickle=True`
  (`--allow_pickle`); without it the file is refused with how to convert it once (`PICKLE_REFUSED`).

Cluster file format (`clusters.npz`, written by `ClusterBank.save`, read with `allow_pickle=False`):

    centers   float32 [label_nc, K, feat_num]   row k of class c is valid iff k < counts[c]; other rows are 0
    counts    int32   [label_nc]                valid clusters per class (0: no clusters -> zero features)
    sizes     int32   [label_nc, K]             training instances per cluster (optional; 0 when unknown)
    feat_num  int32   scalar
    label_nc  int32   scalar
    version   int32   scalar (1)

`ClusterBank.as_dense()` returns exactly (centers, counts): the exported model embeds them as constants.
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
from typing import Any

import numpy as np
import tensorflow as tf

from pix2pixhd_tf.options import Options

__all__ = [
    "CLUSTERS_FILE",
    "ClusterBank",
    "StyleSpec",
    "class_of",
    "classes_of",
    "classes_of_graph",
    "default_cluster_file",
    "keep_instance",
    "load_official_clusters",
]

CLUSTERS_FILE = "clusters.npz"
FORMAT_VERSION = 1
# The official area unit: an instance's pixel count over (h * w // AREA_BLOCKS); kept if above 0.5.
AREA_BLOCKS = 32

Style = int | tuple[float, ...]


def class_of(region_id: int) -> int:
    """The class of an instance id: `id // 1000` for ids >= 1000, else the id (Cityscapes convention)."""
    region_id = int(region_id)
    return region_id // 1000 if region_id >= 1000 else region_id


def classes_of(region_ids: np.ndarray) -> np.ndarray:
    """`class_of` for an array of ids."""
    region_ids = np.asarray(region_ids, np.int64)
    return np.where(region_ids >= 1000, region_ids // 1000, region_ids)


def classes_of_graph(region_ids: tf.Tensor) -> tf.Tensor:
    """`classes_of`, in-graph twin (the exported SavedModel cannot call numpy)."""
    region_ids = tf.convert_to_tensor(region_ids)
    return tf.where(region_ids >= 1000, region_ids // 1000, region_ids)


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
        """From {class id: centres [n, feat_num]} (e.g. `load_official_clusters`).

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
    def load(
        cls,
        path: str | os.PathLike,
        *,
        label_nc: int | None = None,
        feat_num: int | None = None,
        allow_pickle: bool = False,
    ) -> ClusterBank:
        """Read a cluster bank: our .npz, or (with `allow_pickle`) the official pickled `features_clustered_*.npy`.

        Args:
            path: the file.
            label_nc, feat_num: if given, what the bank must have (an official file holds no label_nc:
                it is taken from here, else from its largest class id + 1).
            allow_pickle: read an official pickled .npy (unpickling runs code: trusted files only).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a cluster file, a pickle without `allow_pickle`, or label_nc / feat_num differ
                from the ones given.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no cluster file {path}")
        if path.endswith(".npy"):
            clusters = load_official_clusters(path, feat_num, allow_pickle=allow_pickle)
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

    def assign(self, class_id: int, features: np.ndarray) -> np.ndarray:
        """Index of the nearest centre of `class_id` for each row of `features` [n, feat_num] (int [n])."""
        class_id = self._check_class(class_id)
        count = int(self.counts[class_id])
        if count == 0:
            raise ValueError(f"class {class_id} has no clusters (classes with clusters: {_ranges(self.classes())})")
        centers = self.centers[class_id, :count]
        d = ((np.asarray(features, np.float32)[:, None, :] - centers[None]) ** 2).sum(-1)
        return d.argmin(axis=1)


PICKLE_REFUSED = (
    "{path} is a pickled .npy (the official features_clustered_*.npy format) and unpickling it would run any "
    "code it holds, so it was not read. If you trust it, convert it once to a pickle-free bank: "
    "python tools/convert_checkpoint.py --clusters_file={path} --allow_pickle --name=NAME "
    "--checkpoints_dir=DIR (writes DIR/NAME/clusters.npz; use that), or pass --allow_pickle to read it as it is."
)


def load_official_clusters(
    path: str | os.PathLike, feat_num: int | None = None, *, allow_pickle: bool = False
) -> dict[int, np.ndarray]:
    """Read the official `features_clustered_010.npy`: {label id: k-means centres [n_clusters, feat_num]}.

    The official encode_features.py saves `np.save(path, {label: KMeans.cluster_centers_})`, a pickled
    dict; the relative-area column of its `features.npy` is dropped before clustering, so the centres have
    feat_num columns. Labels without instances are absent and a label may have fewer than n_clusters rows.

    Unpickling can run code: this is the only place that calls `np.load(allow_pickle=True)`, and only
    when the caller opts in (`allow_pickle=True`, from `--allow_pickle`); otherwise the file is read with
    `allow_pickle=False` (which never unpickles) and refused with how to convert it once.

    Args:
        path: the .npy file.
        feat_num: if given, the number of columns every array must have.
        allow_pickle: unpickle the file (trusted files only).

    Returns:
        Label id -> float32 array [n, feat_num].

    Raises:
        ValueError: the file is not such a dict, is a pickle and `allow_pickle` is False, or its width differs
            from feat_num.
    """
    if not allow_pickle:
        try:  # numpy refuses object arrays and raw pickles here without unpickling anything
            np.load(os.fspath(path), allow_pickle=False)
        except ValueError as e:
            if "pickle" not in str(e):
                raise ValueError(f"{path} is not an official cluster file ({e})") from e
            raise ValueError(PICKLE_REFUSED.format(path=os.fspath(path))) from None
        except OSError as e:
            raise ValueError(f"{path} is not an official cluster file ({e})") from e
        raise ValueError(f"{path} is not an official cluster file (a pickled dict of label -> cluster centres).")
    data = np.load(os.fspath(path), allow_pickle=True, encoding="latin1")
    is_dict = (
        isinstance(data, np.ndarray) and data.dtype == object and data.shape == () and isinstance(data.item(), dict)
    )
    if not is_dict:
        raise ValueError(f"{path} is not an official cluster file (a pickled dict of label -> cluster centres).")
    clusters = {}
    for label, centres in data.item().items():
        centres = np.asarray(centres)
        if not isinstance(label, (int, np.integer)) or centres.ndim != 2 or not np.issubdtype(centres.dtype, np.number):
            raise ValueError(f"{path}: entry {label!r} is not label id -> 2-D array of cluster centres.")
        clusters[int(label)] = centres.astype(np.float32)
    widths = {c.shape[1] for c in clusters.values() if c.shape[0]}
    if len(widths) > 1:
        raise ValueError(f"{path}: the cluster centres have different widths {sorted(widths)}.")
    if feat_num is not None and widths and widths != {feat_num}:
        (width,) = widths
        extra = (
            " It looks like the unclustered features.npy (features + relative area): pass the *_clustered_*.npy file."
            if width == feat_num + 1
            else ""
        )
        raise ValueError(f"{path}: cluster centres have {width} columns but --feat_num={feat_num}.{extra}")
    return clusters


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
