"""The editor's scene: a label map and an instance map, the edits of the paper's interactive editing
(§3.3-3.4), per-instance styles and an undo/redo history. Pure numpy: no TensorFlow here.

Maps follow the dataset's conventions: label ids 0..label_nc-1; Cityscapes-style instance ids, where a
*thing* object (car, person, ...) has id `class * 1000 + k` and every *stuff* pixel carries its class id
(`styles.class_of`). A *region* is the set of pixels of one instance id, so a stuff class forms one region
per image (it is styled as one, exactly as the encoder pools it).

Edits (each one undoable; an edit that changes nothing is not recorded):

| edit | what it does |
|---|---|
| `paint(points, class_id, radius)` | a brush stroke (discs of `radius` along the polyline; at most MAX_STROKE_WORK pixel tests, `stroke_mask`). A stuff class paints label = instance = class. A thing class extends `instance_id` if given (it must be of that class), else starts a new object. |
| `erase(points, radius, class_id=None)` | the eraser: paints the *eraser class*, a stuff class, by default `eraser_class(classes)` (0, the void / "unlabeled" class). |
| `add_object(points, class_id, radius)` | paints a new instance of a thing class: id `class * 1000 + k`, k the smallest k >= 0 not in the map. |
| `delete(region_id, fill_class=None)` | removes a region, filled with `fill_class` (a stuff class) or, by default, the majority stuff class of a 3-pixel ring around it (the eraser class if the ring holds no stuff). |
| `relabel(region_id, class_id)` | changes a region's category. thing -> thing keeps it an object, with the next free id of the new class; -> stuff merges it into that class's region. Its chosen style is dropped (styles are per class). |
| `restyle(region_id, style)` | picks its appearance: a cluster index of its class, `"random"` (a random cluster index, stored), an explicit feature vector (finite, each value within +-MAX_STYLE_VALUE), or None (back to the seeded sample). |
| `reseed(seed)` | new seeded samples for every region without a chosen style. |

Styles (`Scene.styles`) map instance id -> cluster index or feature vector, i.e. a `StyleSpec`'s
"instances"; they persist across edits and are dropped only when their region disappears, is relabelled
or deleted. Regions without a chosen style are sampled with `Scene.seed` (per id, so an edit elsewhere never
changes them).

Uploads are checked by `load_uploads` / `read_id_png`: PNG only (status 415), at most `Limits` (413), the
label an 8-bit (or 16-bit) single-channel id map, the instance map 16-bit (8-bit accepted), same sizes,
ids < label_nc, sizes multiples of the generator's size multiple (422). `SceneError.status` is the HTTP
status the web app answers with.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from pix2pixhd_tf.data.classes import ClassTable
from pix2pixhd_tf.styles import ClusterBank, Style, class_of, classes_of

__all__ = [
    "DEFAULT_LIMITS",
    "ClassTable",
    "EditResult",
    "Limits",
    "Scene",
    "SceneError",
    "check_class",
    "check_stuff",
    "classes_json",
    "derive_instances",
    "encode_id_png",
    "eraser_class",
    "load_uploads",
    "read_id_png",
    "stroke_capacity",
    "stroke_mask",
    "validate_maps",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_INSTANCES_PER_CLASS = 1000  # ids class*1000 + k with k < 1000 (the Cityscapes convention)
MAX_INSTANCE_ID = 2**16 - 1  # instance maps are saved as 16-bit PNGs
DELETE_RING = 3  # pixels around a deleted region whose majority stuff class fills it
# Pixel tests one brush stroke may make (each segment tests its box): at most ~0.6 s on one core. The page
# sends a point every radius/4 pixels at radius <= 64, so a stroke of ~2400 points still fits.
MAX_STROKE_WORK = 48 * 2**20
# Chosen feature vectors: E's features are tanh outputs in [-1, 1] (so are the cluster centres); +-10 leaves
# room to exaggerate a style while keeping G's input in a range where it still draws a picture.
MAX_STYLE_VALUE = 10.0


class SceneError(ValueError):
    """A bad edit or upload; `status` is the HTTP status the web app answers with (4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Limits:
    """What an upload may be: at most max_height x max_width pixels and max_bytes per file."""

    max_height: int = 2048
    max_width: int = 2048
    max_bytes: int = 8 * 2**20

    def describe(self) -> str:
        return f"{self.max_width}x{self.max_height} pixels and {format_bytes(self.max_bytes)} per file"


def format_bytes(n: int) -> str:
    """'8 MB', '48.8 KB'."""
    return f"{n / 2**20:.3g} MB" if n >= 2**20 else f"{n / 1024:.3g} KB"


DEFAULT_LIMITS = Limits()


# ------------------------------------------------------------------------------------------ classes


def check_class(classes: ClassTable, class_id: Any, what: str = "class") -> int:
    """`class_id` as an int in 0..label_nc-1, else a SceneError."""
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)):
        raise SceneError(f"{what} must be an integer class id, got {class_id!r}")
    if not 0 <= int(class_id) < classes.label_nc:
        raise SceneError(f"{what} {class_id} is outside 0..{classes.label_nc - 1} (label_nc={classes.label_nc})")
    return int(class_id)


def check_stuff(classes: ClassTable, class_id: Any, what: str) -> int:
    """`class_id` as an int if it is a stuff class, else a SceneError."""
    class_id = check_class(classes, class_id, what)
    if classes.is_thing(class_id):
        raise SceneError(
            f"{what} must be a stuff class; {class_id} ({classes.name(class_id)}) is a thing class "
            f"(thing classes: {', '.join(classes.name(c) for c in sorted(classes.things))})"
        )
    return class_id


def eraser_class(classes: ClassTable) -> int:
    """The eraser's default class: 0 (the void / "unlabeled" class), or the first stuff class if 0 is a thing.

    Raises:
        ValueError: every class is a thing class (the eraser paints stuff).
    """
    if 0 not in classes.things:
        return 0
    stuff = sorted(set(range(classes.label_nc)) - classes.things)
    if not stuff:
        raise ValueError(f"all {classes.label_nc} classes are thing classes: the eraser needs a stuff class")
    return stuff[0]


def classes_json(classes: ClassTable) -> list[dict[str, Any]]:
    """The class list of the editor's API: id, name, colour and whether it is a thing class."""
    return [
        {"id": i, "name": n, "color": classes.palette[i].tolist(), "thing": classes.is_thing(i)}
        for i, n in enumerate(classes.names)
    ]


# ------------------------------------------------------------------------------------------ uploads


def read_id_png(data: bytes, what: str, *, limits: Limits, sixteen_bit: bool) -> np.ndarray:
    """Decode a single-channel PNG id map after checking its bytes and size (before decoding the pixels).

    Args:
        data: the file.
        what: 'label map' / 'instance map', for messages.
        sixteen_bit: whether 16-bit maps are the expected kind (instance maps); 8-bit ones are accepted too.

    Returns:
        int32 [H, W].

    Raises:
        SceneError: 413 too large, 415 not a PNG, 422 not a single-channel 8/16-bit map.
    """
    if len(data) > limits.max_bytes:
        raise SceneError(f"the {what} is {format_bytes(len(data))}; the limit is {limits.describe()}", 413)
    if not data.startswith(PNG_SIGNATURE):
        raise SceneError(f"the {what} is not a PNG file (only PNG id maps are accepted)", 415)
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG"])
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds (OSError, SyntaxError, ...) for broken files
        raise SceneError(f"the {what} is not a readable PNG ({e})", 415) from None
    width, height = image.size
    if width > limits.max_width or height > limits.max_height:
        raise SceneError(f"the {what} is {width}x{height} pixels; the limit is {limits.describe()}", 413)
    kind = "16-bit" if sixteen_bit else "8-bit"
    if image.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
        raise SceneError(
            f"the {what} must be a single-channel (grayscale) {kind} PNG of ids, got PIL mode {image.mode!r}"
            + (
                " (a colour image: upload the id map, e.g. *_labelIds.png, not a colourised one)"
                if "RGB" in image.mode or image.mode == "P"
                else ""
            )
        )
    try:
        array = np.asarray(image).astype(np.int32)
    except Exception as e:  # noqa: BLE001 - truncated or corrupt pixel data
        raise SceneError(f"the {what} could not be decoded ({e})", 415) from None
    if array.ndim != 2:
        raise SceneError(f"the {what} must be single-channel, got shape {array.shape}")
    return array


def derive_instances(label: np.ndarray, things: frozenset[int] | set[int]) -> np.ndarray:
    """An instance map for a label map alone: stuff pixels get their class id, every 4-connected component
    of a thing class becomes an object `class * 1000 + k`."""
    label = np.asarray(label, np.int32)
    instance = label.copy()
    for c in sorted(things):
        components, n = ndimage.label(label == c)
        if n > MAX_INSTANCES_PER_CLASS:
            raise SceneError(f"class {c} has {n} separate objects; at most {MAX_INSTANCES_PER_CLASS} fit its ids")
        instance = np.where(components > 0, c * 1000 + components - 1, instance)
    return instance


def validate_maps(label: np.ndarray, instance: np.ndarray, *, label_nc: int, size_multiple: int) -> None:
    """Check that the maps fit the model.

    Raises:
        SceneError (422): sizes differ, sizes not multiples of `size_multiple`, label ids >= label_nc, or
            instance ids whose class is >= label_nc.
    """
    if label.shape != instance.shape:
        raise SceneError(
            f"the label map is {label.shape[1]}x{label.shape[0]} but the instance map "
            f"{instance.shape[1]}x{instance.shape[0]} (width x height): they must be the same size"
        )
    h, w = label.shape
    if h % size_multiple or w % size_multiple:
        raise SceneError(
            f"the maps are {w}x{h} (width x height); this generator needs sides that are multiples of "
            f"{size_multiple}: crop or pad them, e.g. to {w // size_multiple * size_multiple}x"
            f"{h // size_multiple * size_multiple}"
        )
    if label.size and (label.min() < 0 or label.max() >= label_nc):
        bad = np.unique(label[(label < 0) | (label >= label_nc)])
        raise SceneError(
            f"the label map holds ids {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''}; the model "
            f"has label_nc={label_nc} classes (ids 0..{label_nc - 1})"
        )
    classes = classes_of(np.unique(instance))
    if instance.size and (instance.min() < 0 or classes.max() >= label_nc):
        bad = np.unique(instance[(instance < 0) | (classes_of(instance) >= label_nc)])
        raise SceneError(
            f"the instance map holds ids {', '.join(map(str, bad[:10]))} whose class (id // 1000 for ids >= "
            f"1000, else the id) is outside 0..{label_nc - 1}"
        )


def load_uploads(
    label_png: bytes,
    instance_png: bytes | None,
    *,
    classes: ClassTable,
    size_multiple: int,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and check an uploaded label (+ instance) PNG pair; without an instance map, one is derived
    (`derive_instances`). Returns (label, instance), int32 [H, W] each. Raises SceneError."""
    label = read_id_png(label_png, "label map", limits=limits, sixteen_bit=False)
    if instance_png is None:
        instance = None
    else:
        instance = read_id_png(instance_png, "instance map", limits=limits, sixteen_bit=True)
    if instance is not None and instance.shape != label.shape:
        validate_maps(label, instance, label_nc=classes.label_nc, size_multiple=size_multiple)
    if instance is None:
        validate_maps(label, label, label_nc=classes.label_nc, size_multiple=size_multiple)
        instance = derive_instances(label, classes.things)
    validate_maps(label, instance, label_nc=classes.label_nc, size_multiple=size_multiple)
    return label, instance


def encode_id_png(ids: np.ndarray, *, sixteen_bit: bool) -> bytes:
    """An id map as a single-channel PNG: 8-bit (label maps, ids < 256) or 16-bit (instance maps)."""
    ids = np.asarray(ids)
    if sixteen_bit or ids.max(initial=0) > 255:
        if ids.max(initial=0) > 65535:
            raise ValueError(f"ids up to {ids.max()} do not fit a 16-bit PNG")
        image = Image.fromarray(ids.astype(np.uint16))
    else:
        image = Image.fromarray(ids.astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------ strokes


Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)


def _parse_points(points: Any) -> np.ndarray:
    try:
        pts = np.asarray(points, np.float64)
    except (TypeError, ValueError):
        raise SceneError("points must be a list of [x, y] pairs of numbers") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or not 1 <= len(pts) <= 10_000:
        raise SceneError(f"points must be 1 to 10000 [x, y] pairs, got an array of shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise SceneError("points must be finite numbers")
    return pts


def stroke_capacity(radius: float) -> int:
    """About how many points a stroke at `radius` may have within MAX_STROKE_WORK when they are radius/4
    apart, as the page sends them (each segment then tests a box of about (2.25 r + 2)^2 pixels)."""
    side = int(np.ceil(2.25 * radius)) + 2
    return max(1, MAX_STROKE_WORK // side**2)


def stroke_mask(points: Any, radius: float, shape: tuple[int, int]) -> tuple[Box, np.ndarray] | None:
    """The pixels within `radius` of the polyline through `points` ([x, y] in pixel units, pixel centres at
    integer coordinates): (box, bool mask of the box), or None when the stroke misses the image.

    Each segment tests the pixels of its box; the sum over segments may be at most MAX_STROKE_WORK (checked
    before any work), so one request cannot hold a core for long (10,000 points at radius 512 asked for
    ~10^10 pixel tests, 25-40 s; the largest accepted stroke now takes well under a second).

    Raises:
        SceneError (422): bad points or radius, or a stroke over MAX_STROKE_WORK.
    """
    pts = _parse_points(points)
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)) or not 0.5 <= radius <= 512:
        raise SceneError(f"the brush radius must be a number in 0.5..512 pixels, got {radius!r}")
    h, w = shape
    r = float(radius)
    y0 = max(0, int(np.floor(pts[:, 1].min() - r)))
    y1 = min(h, int(np.ceil(pts[:, 1].max() + r)) + 1)
    x0 = max(0, int(np.floor(pts[:, 0].min() - r)))
    x1 = min(w, int(np.ceil(pts[:, 0].max() + r)) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    if len(pts) > 1:  # a repeated point adds nothing to the stroke
        pts = pts[np.concatenate([[True], np.any(pts[1:] != pts[:-1], axis=1)])]
    starts, ends = (pts[:-1], pts[1:]) if len(pts) > 1 else (pts, pts)
    # Each segment is tested over its own box (clipped to the image): bound the total before doing any.
    sy0 = np.maximum(y0, np.floor(np.minimum(starts[:, 1], ends[:, 1]) - r)).astype(np.int64)
    sy1 = np.minimum(y1, np.ceil(np.maximum(starts[:, 1], ends[:, 1]) + r).astype(np.int64) + 1)
    sx0 = np.maximum(x0, np.floor(np.minimum(starts[:, 0], ends[:, 0]) - r)).astype(np.int64)
    sx1 = np.minimum(x1, np.ceil(np.maximum(starts[:, 0], ends[:, 0]) + r).astype(np.int64) + 1)
    work = int(np.sum(np.clip(sy1 - sy0, 0, None) * np.clip(sx1 - sx0, 0, None)))
    if work > MAX_STROKE_WORK:
        raise SceneError(
            f"this stroke ({len(pts)} points at radius {radius:g}) would test {work:,} pixels; one edit may test "
            f"at most {MAX_STROKE_WORK:,} (about {stroke_capacity(r):,} points at this radius): send it as "
            "shorter strokes or use a smaller radius"
        )
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    for a, b, top, bottom, left, right in zip(starts, ends, sy0.tolist(), sy1.tolist(), sx0.tolist(), sx1.tolist()):
        if top >= bottom or left >= right:
            continue
        ys = np.arange(top, bottom, dtype=np.float64)[:, None]  # broadcast, not a full grid per segment
        xs = np.arange(left, right, dtype=np.float64)[None, :]
        d = b - a
        length2 = float(d @ d)
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0.0, 1.0) if length2 > 0 else 0.0
        dist2 = (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2
        mask[top - y0 : bottom - y0, left - x0 : right - x0] |= dist2 <= r * r
    if not mask.any():
        return None
    return (y0, y1, x0, x1), mask


# ------------------------------------------------------------------------------------------ the scene


@dataclasses.dataclass
class EditResult:
    """What an edit did: whether anything changed, and the region the editor should select next (a new or
    relabelled object), if any."""

    changed: bool
    selected: int | None = None


@dataclasses.dataclass
class _Step:
    """One undoable edit: the changed box of both maps before and after, and styles/seed before and after."""

    box: Box | None
    label_before: np.ndarray | None
    label_after: np.ndarray | None
    instance_before: np.ndarray | None
    instance_after: np.ndarray | None
    styles_before: dict[int, Style]
    styles_after: dict[int, Style]
    seed_before: int
    seed_after: int

    @property
    def nbytes(self) -> int:
        arrays = (self.label_before, self.label_after, self.instance_before, self.instance_after)
        return sum(a.nbytes for a in arrays if a is not None)


def _compact(ids: np.ndarray) -> np.ndarray:
    """Ids in the smallest unsigned dtype that holds them (history patches: uint8 labels, uint16 instances)."""
    top = int(ids.max(initial=0))
    return ids.astype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32)


def _changed_box(diff: np.ndarray) -> Box | None:
    """The bounding box of the True pixels of `diff` [H, W], or None."""
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class Scene:
    """An editable label + instance map with per-instance styles and an undo/redo history.

    Attributes:
        label, instance: int32 [H, W] (read them; change them only through the edits).
        styles: {instance id: cluster index or feature vector (tuple)}.
        seed: the seed of the sampled styles of regions without a chosen style.
        revision: increases with every change, undo and redo (the web app caches images by it).
    """

    def __init__(
        self,
        label: np.ndarray,
        instance: np.ndarray,
        classes: ClassTable,
        *,
        clusters: ClusterBank | None = None,
        feat_num: int = 0,
        styles: Mapping[int, Any] | None = None,
        seed: int = 0,
        name: str = "scene",
        max_history_bytes: int = 64 * 2**20,
    ):
        """
        Args:
            label, instance: the maps (checked against `classes.label_nc`; sizes are the caller's business).
            classes: names, colours and thing classes.
            clusters: the cluster bank, to check and draw cluster indices (None: only vectors can be chosen).
            feat_num: the model's feature width (0: the model takes no styles).
            styles: initial chosen styles {instance id: index or vector}; ids absent from the map are dropped.
            seed: the sampling seed.
            name: used for download file names.
            max_history_bytes: the oldest steps are forgotten beyond this.
        """
        label = np.asarray(label)
        instance = np.asarray(instance)
        if label.ndim != 2 or label.shape != instance.shape:
            raise SceneError(f"label {label.shape} and instance {instance.shape} maps must be [H, W] of one size")
        validate_maps(label, instance, label_nc=classes.label_nc, size_multiple=1)
        self.label = label.astype(np.int32)
        self.instance = instance.astype(np.int32)
        self.classes = classes
        self.eraser = eraser_class(classes)
        self.clusters = clusters
        self.feat_num = int(feat_num)
        self.seed = self._check_seed(seed)
        self.name = name
        self.revision = 0
        self.max_history_bytes = max_history_bytes
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []
        present = set(np.unique(self.instance).tolist())
        self.styles: dict[int, Style] = {}
        for region, style in (styles or {}).items():
            region = int(region)
            if region in present:
                self.styles[region] = self.check_style(region, style)

    # ---------------------------------------------------------------- queries
    @property
    def shape(self) -> tuple[int, int]:
        return self.label.shape

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def region_at(self, x: Any, y: Any) -> int:
        """The instance id at pixel (x, y)."""
        try:
            xi, yi = int(x), int(y)
        except (TypeError, ValueError):
            raise SceneError(f"x and y must be integers, got {x!r}, {y!r}") from None
        h, w = self.shape
        if not (0 <= xi < w and 0 <= yi < h):
            raise SceneError(f"pixel ({xi}, {yi}) is outside the {w}x{h} image")
        return int(self.instance[yi, xi])

    def region_mask(self, region_id: int) -> np.ndarray:
        mask = self.instance == int(region_id)
        if not mask.any():
            raise SceneError(f"there is no region {region_id} in the instance map", 404)
        return mask

    def regions(self) -> list[dict[str, Any]]:
        """Every region: id, class, name, thing, pixels, bbox [x0, y0, x1, y1] (half-open), chosen style."""
        ids, inverse, counts = np.unique(self.instance, return_inverse=True, return_counts=True)
        boxes = ndimage.find_objects(inverse.reshape(self.shape) + 1)
        out = []
        for region, pixels, box in zip(ids.tolist(), counts.tolist(), boxes):
            c = class_of(region)
            style = self.styles.get(region)
            out.append(
                {
                    "id": region,
                    "class_id": c,
                    "class_name": self.classes.name(c),
                    "thing": region >= 1000,
                    "pixels": pixels,
                    "bbox": [box[1].start, box[0].start, box[1].stop, box[0].stop],
                    "style": list(style) if isinstance(style, tuple) else style,
                }
            )
        return out

    def next_instance_id(self, class_id: int) -> int:
        """`class * 1000 + k` with the smallest k >= 0 not in the instance map."""
        class_id = check_class(self.classes, class_id)
        base = class_id * 1000
        ids = np.unique(self.instance[(self.instance >= base) & (self.instance < base + MAX_INSTANCES_PER_CLASS)])
        used = set((ids - base).tolist())
        k = next((k for k in range(MAX_INSTANCES_PER_CLASS) if k not in used), None)
        if k is None:
            raise SceneError(f"class {class_id} already has {MAX_INSTANCES_PER_CLASS} objects, the most its ids allow")
        if base + k > MAX_INSTANCE_ID:
            raise SceneError(
                f"an object of class {class_id} would get id {base + k}, which does not fit a 16-bit instance map "
                f"(ids up to {MAX_INSTANCE_ID}: classes up to {MAX_INSTANCE_ID // 1000} can have objects)"
            )
        return base + k

    def style_spec(self) -> dict[str, Any]:
        """The chosen styles as a StyleSpec JSON dict (for tools/test.py --style_spec)."""
        return {
            "instances": {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.styles.items())},
            "classes": {},
        }

    # ---------------------------------------------------------------- edits
    def paint(self, points: Any, class_id: Any, radius: float, *, instance_id: int | None = None) -> EditResult:
        """A brush stroke of `class_id` (see the module docstring)."""
        class_id = check_class(self.classes, class_id)
        stroke = stroke_mask(points, radius, self.shape)
        if stroke is None:
            return EditResult(False)
        if self.classes.is_thing(class_id):
            if instance_id is None:
                region = self.next_instance_id(class_id)
            else:
                region = int(instance_id)
                if region < 1000 or class_of(region) != class_id:
                    raise SceneError(
                        f"instance {region} is not an object of class {class_id} ({self.classes.name(class_id)}): "
                        f"extend an object of that class or leave instance_id out to start a new one"
                    )
        else:
            if instance_id is not None and int(instance_id) != class_id:
                raise SceneError(f"{self.classes.name(class_id)} is a stuff class: its pixels are region {class_id}")
            region = class_id
        changed = self._paint_box(stroke, class_id, region)
        return EditResult(changed, region if changed and region >= 1000 else None)

    def add_object(self, points: Any, class_id: Any, radius: float) -> EditResult:
        """Paint a new object of a thing class (id class*1000 + the next free k)."""
        class_id = check_class(self.classes, class_id)
        if not self.classes.is_thing(class_id):
            things = ", ".join(f"{c} ({self.classes.name(c)})" for c in sorted(self.classes.things)) or "none"
            raise SceneError(
                f"class {class_id} ({self.classes.name(class_id)}) is stuff; objects are of thing classes: {things}"
            )
        return self.paint(points, class_id, radius)

    def erase(self, points: Any, radius: float, class_id: Any = None) -> EditResult:
        """Paint the eraser class (default `self.eraser`, the void class; any stuff class may be given)."""
        class_id = self.eraser if class_id is None else check_stuff(self.classes, class_id, "the eraser class")
        return self.paint(points, class_id, radius)

    def delete(self, region_id: Any, fill_class: Any = None) -> EditResult:
        """Remove a region, filled with `fill_class` or the majority stuff class around it."""
        region = self._check_region(region_id)
        mask = self.region_mask(region)
        if fill_class is None:
            fill = self._surrounding_stuff(mask)
        else:
            fill = check_stuff(self.classes, fill_class, "the fill class")
        box = self._mask_box(mask)
        changed = self._paint_box((box, mask[box[0] : box[1], box[2] : box[3]]), fill, fill)
        return EditResult(changed)

    def relabel(self, region_id: Any, class_id: Any) -> EditResult:
        """Change a region's category (thing -> thing: a new id of the new class; -> stuff: merged)."""
        region = self._check_region(region_id)
        class_id = check_class(self.classes, class_id)
        if class_id == class_of(region) and (region >= 1000) == self.classes.is_thing(class_id):
            return EditResult(False)
        mask = self.region_mask(region)
        new_region = self.next_instance_id(class_id) if self.classes.is_thing(class_id) else class_id
        box = self._mask_box(mask)
        changed = self._paint_box((box, mask[box[0] : box[1], box[2] : box[3]]), class_id, new_region)
        return EditResult(changed, new_region if new_region >= 1000 else None)

    def restyle(self, region_id: Any, style: Any, *, rng: np.random.Generator | None = None) -> EditResult:
        """Choose a region's style: a cluster index, 'random', a feature vector, or None (sampled)."""
        region = self._check_region(region_id)
        self.region_mask(region)
        styles = dict(self.styles)
        if style is None:
            styles.pop(region, None)
        else:
            if isinstance(style, str) and style == "random":
                count = self._cluster_count(region)
                style = int((rng or np.random.default_rng()).integers(count))
            styles[region] = self.check_style(region, style)
        return EditResult(self._commit_styles(styles, self.seed), region)

    def reseed(self, seed: Any = None, *, rng: np.random.Generator | None = None) -> EditResult:
        """New sampled styles for the regions without a chosen one (a random seed when None)."""
        seed = int((rng or np.random.default_rng()).integers(2**31)) if seed is None else self._check_seed(seed)
        return EditResult(self._commit_styles(dict(self.styles), seed))

    def undo(self) -> bool:
        return self._replay(self._undo, self._redo, before=True)

    def redo(self) -> bool:
        return self._replay(self._redo, self._undo, before=False)

    def _replay(self, source: list[_Step], target: list[_Step], *, before: bool) -> bool:
        """Move the newest step of `source` onto `target`, restoring its before (undo) or after (redo) state."""
        if not source:
            return False
        step = source.pop()
        self._apply(step, before=before)
        target.append(step)
        return True

    # ---------------------------------------------------------------- internals
    @staticmethod
    def _check_seed(seed: Any) -> int:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise SceneError(f"the seed must be a non-negative integer, got {seed!r}")
        return int(seed)

    def _check_region(self, region_id: Any) -> int:
        if isinstance(region_id, bool) or not isinstance(region_id, (int, np.integer)):
            raise SceneError(f"the region must be an integer instance id, got {region_id!r}")
        return int(region_id)

    def _cluster_count(self, region: int) -> int:
        c = class_of(region)
        if self.feat_num == 0:
            raise SceneError("this model takes no styles (it was trained without --instance_feat/--label_feat)")
        if self.clusters is None:
            raise SceneError(
                "no cluster bank is loaded, so cluster styles cannot be chosen (run tools/encode_features.py, or "
                "pass --cluster_path); explicit feature vectors still work"
            )
        count = int(self.clusters.counts[c]) if 0 <= c < self.clusters.label_nc else 0
        if count == 0:
            raise SceneError(f"class {c} ({self.classes.name(c)}) has no style clusters in the cluster bank")
        return count

    def check_style(self, region: int, style: Any) -> Style:
        """`style` (a cluster index or feature vector) for `region`, checked; SceneError if it cannot be used."""
        if isinstance(style, (list, tuple, np.ndarray)):
            if self.feat_num == 0:
                raise SceneError("this model takes no styles (it was trained without --instance_feat/--label_feat)")
            try:
                vector = tuple(float(v) for v in style)
            except (TypeError, ValueError):
                raise SceneError(f"a feature vector must hold numbers, got {style!r}") from None
            if len(vector) != self.feat_num or not np.all(np.isfinite(vector)):
                raise SceneError(
                    f"a feature vector needs {self.feat_num} finite numbers (--feat_num), got {list(style)[:16]}"
                )
            if max(abs(v) for v in vector) > MAX_STYLE_VALUE:
                raise SceneError(
                    f"a feature vector's values must lie in -{MAX_STYLE_VALUE:g}..{MAX_STYLE_VALUE:g} (the encoder's "
                    f"features and cluster centres lie in -1..1), got {list(vector)}: pick a cluster or scale it down"
                )
            return vector
        if isinstance(style, bool) or not isinstance(style, (int, np.integer)):
            raise SceneError(f"a style is a cluster index, 'random', a feature vector or null; got {style!r}")
        count = self._cluster_count(region)
        if not 0 <= int(style) < count:
            c = class_of(region)
            raise SceneError(
                f"cluster {style} does not exist: class {c} ({self.classes.name(c)}) has {count} style clusters "
                f"(0..{count - 1})"
            )
        return int(style)

    @staticmethod
    def _mask_box(mask: np.ndarray) -> Box:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1

    def _surrounding_stuff(self, mask: np.ndarray) -> int:
        """The most common stuff class in a DELETE_RING-pixel ring around `mask` (ties: the smaller id)."""
        y0, y1, x0, x1 = self._mask_box(mask)
        h, w = self.shape
        y0, x0 = max(0, y0 - DELETE_RING), max(0, x0 - DELETE_RING)
        y1, x1 = min(h, y1 + DELETE_RING), min(w, x1 + DELETE_RING)
        local = mask[y0:y1, x0:x1]
        ring = ndimage.binary_dilation(local, iterations=DELETE_RING) & ~local
        labels = self.label[y0:y1, x0:x1][ring]
        stuff = labels[~np.isin(labels, sorted(self.classes.things))] if self.classes.things else labels
        if not len(stuff):
            return self.eraser
        return int(np.bincount(stuff).argmax())

    def _paint_box(self, stroke: tuple[Box, np.ndarray], class_id: int, region: int) -> bool:
        (y0, y1, x0, x1), mask = stroke
        label_before = self.label[y0:y1, x0:x1].copy()
        instance_before = self.instance[y0:y1, x0:x1].copy()
        label_after = np.where(mask, class_id, label_before).astype(np.int32)
        instance_after = np.where(mask, region, instance_before).astype(np.int32)
        changed = _changed_box((label_before != label_after) | (instance_before != instance_after))
        if changed is None:
            return False
        cy0, cy1, cx0, cx1 = changed
        box = (y0 + cy0, y0 + cy1, x0 + cx0, x0 + cx1)
        crop = (slice(cy0, cy1), slice(cx0, cx1))
        self.label[box[0] : box[1], box[2] : box[3]] = label_after[crop]
        self.instance[box[0] : box[1], box[2] : box[3]] = instance_after[crop]
        # Regions that lost pixels may be gone: their chosen styles go with them.
        touched = set(np.unique(instance_before[crop]).tolist())
        styles = {k: v for k, v in self.styles.items() if k not in touched or (self.instance == k).any()}
        self._record(
            _Step(
                box,
                _compact(label_before[crop]),
                _compact(label_after[crop]),
                _compact(instance_before[crop]),
                _compact(instance_after[crop]),
                dict(self.styles),
                styles,
                self.seed,
                self.seed,
            )
        )
        self.styles = styles
        return True

    def _commit_styles(self, styles: dict[int, Style], seed: int) -> bool:
        if styles == self.styles and seed == self.seed:
            return False
        self._record(_Step(None, None, None, None, None, dict(self.styles), styles, self.seed, seed))
        self.styles, self.seed = styles, seed
        return True

    def _record(self, step: _Step) -> None:
        self._undo.append(step)
        self._redo.clear()
        self.revision += 1
        total = sum(s.nbytes for s in self._undo)
        while len(self._undo) > 1 and total > self.max_history_bytes:
            total -= self._undo.pop(0).nbytes

    def _apply(self, step: _Step, *, before: bool) -> None:
        if step.box is not None:
            y0, y1, x0, x1 = step.box
            self.label[y0:y1, x0:x1] = step.label_before if before else step.label_after
            self.instance[y0:y1, x0:x1] = step.instance_before if before else step.instance_after
        self.styles = dict(step.styles_before if before else step.styles_after)
        self.seed = step.seed_before if before else step.seed_after
        self.revision += 1
