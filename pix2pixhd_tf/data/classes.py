"""The label classes of a dataset: names, colours and which classes are *things* (have instances).

One table serves everything that shows or scores label maps: colourised labels in training grids and test
pages, the editor's class list, the evaluation's per-class report. `ClassTable.for_dataset` finds a
dataset's table, from the best source available:

1. `{dataroot}/meta.json` when it lists label_nc class names (the synthetic dataset writes one);
2. label_nc 35: Cityscapes (cityscapesScripts' `labels.py`: names, colours, thing classes 24..33);
3. otherwise `class i` names with `distinct_palette` colours and no thing classes.

The tables known here are `CITYSCAPES` and `SYNTHETIC` (the built-in street scenes of
`pix2pixhd_tf.data.synthetic`), plus the Cityscapes label id -> train id mapping of its 19 evaluated classes.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

META_FILE = "meta.json"


@dataclasses.dataclass(frozen=True, eq=False)
class ClassTable:
    """Names, colours and thing classes of label ids 0..label_nc-1.

    `palette` is uint8 [label_nc, 3]; `things` are the classes whose objects carry their own instance ids
    (`class * 1000 + k`, the Cityscapes convention); every other class is *stuff*.
    """

    names: tuple[str, ...]
    palette: np.ndarray
    things: frozenset[int] = frozenset()

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        palette = np.array(self.palette, np.uint8).reshape(-1, 3)  # a copy: it is made read-only below
        if len(palette) != len(names):
            raise ValueError(f"{len(names)} class names but {len(palette)} colours")
        things = frozenset(int(c) for c in self.things)
        bad = sorted(c for c in things if not 0 <= c < len(names))
        if bad:
            raise ValueError(f"thing classes {bad} are outside 0..{len(names) - 1}")
        palette.flags.writeable = False
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "things", things)

    @property
    def label_nc(self) -> int:
        return len(self.names)

    def is_thing(self, class_id: int) -> bool:
        return int(class_id) in self.things

    def name(self, class_id: int) -> str:
        return self.names[class_id] if 0 <= class_id < len(self.names) else f"class {class_id}"

    def with_things(self, thing_classes: Iterable[int]) -> ClassTable:
        """The same names and colours with other thing classes (e.g. the editor's --thing_classes)."""
        return ClassTable(self.names, self.palette, frozenset(thing_classes))

    @classmethod
    def generic(cls, label_nc: int) -> ClassTable:
        """`class i` names, `distinct_palette` colours, no thing classes: for datasets nothing is known of."""
        return cls(tuple(f"class {i}" for i in range(label_nc)), distinct_palette(label_nc))

    @classmethod
    def for_label_nc(cls, label_nc: int) -> ClassTable:
        """The table known for `label_nc` classes alone: Cityscapes for 35, else `generic`."""
        return CITYSCAPES if label_nc == CITYSCAPES.label_nc else cls.generic(label_nc)

    @classmethod
    def for_dataset(cls, dataroot: str | os.PathLike | None, label_nc: int) -> ClassTable:
        """The table of the dataset at `dataroot` with `label_nc` classes: `from_meta`, else `for_label_nc`.

        Raises:
          ValueError: `{dataroot}/meta.json` exists but is not a JSON object.
        """
        return cls.from_meta(dataroot, label_nc) or cls.for_label_nc(label_nc)

    @classmethod
    def from_meta(cls, dataroot: str | os.PathLike | None, label_nc: int) -> ClassTable | None:
        """The table `{dataroot}/meta.json` gives ("class_names", "palette", "thing_classes"), or None when
        there is no such file or it does not list `label_nc` class names. Missing colours are distinct ones.

        Raises:
          ValueError: the file is not a JSON object.
        """
        meta = read_meta(os.path.join(dataroot, META_FILE)) if dataroot else None
        names = meta.get("class_names") if meta else None
        if not isinstance(names, list) or len(names) != label_nc:
            return None
        palette = meta.get("palette")
        if not isinstance(palette, list) or len(palette) != label_nc:
            palette = distinct_palette(label_nc)
        return cls(tuple(names), np.asarray(palette, np.uint8), frozenset(meta.get("thing_classes", ())))


def read_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """A dataset's metadata file (`{dataroot}/meta.json`) as a dict; None when there is none.

    The synthetic dataset writes one: settings, class names, palette, thing classes, appearance modes and
    the mode of every instance (see `pix2pixhd_tf.data.synthetic`).

    Raises:
      ValueError: the file is not a JSON object.
    """
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): rewrite or remove it") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} holds a {type(meta).__name__}, not a JSON object: rewrite or remove it")  # noqa: TRY004 - bad file content
    return meta


def distinct_palette(n: int) -> np.ndarray:
    """`n` deterministic, well-separated colours [n, 3] uint8; id 0 (void) is black.

    Hues advance by the golden angle, so neighbouring ids differ strongly, and brightness and saturation
    cycle through three levels so that ids far apart with similar hues still differ.
    """
    colours = [(0, 0, 0)]
    for i in range(1, n):
        hue = (i * 0.618033988749895) % 1.0
        saturation = (0.95, 0.65, 0.8)[i % 3]
        value = (0.95, 0.8, 0.6)[(i // 3) % 3]
        colours.append(tuple(round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
    return np.array(colours[:n], dtype=np.uint8).reshape(n, 3)


def _palette_of(table: ClassTable, names: Sequence[str]) -> np.ndarray:
    return table.palette[[table.names.index(n) for n in names]]


# The 35 Cityscapes labelIds (cityscapesScripts `helpers/labels.py`, ids 0..33), plus id 34 for the license
# plate (labelId -1 there), coloured like a car as pix2pixHD's own 35-colour map does. Classes with
# instances (hasInstances) are 24..33.
_CITYSCAPES_NAMES = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground", "road",
    "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge", "tunnel", "pole",
    "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle", "license plate",
)  # fmt: skip
_CITYSCAPES_PALETTE = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81), (128, 64, 128),
    (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32), (0, 0, 142),
)  # fmt: skip
CITYSCAPES = ClassTable(_CITYSCAPES_NAMES, np.array(_CITYSCAPES_PALETTE), frozenset(range(24, 34)))

# Cityscapes label id -> train id of the 19 evaluated classes (every other id is ignored), in train-id order.
CITYSCAPES_TRAIN_IDS: dict[int, int] = {
    label_id: train_id
    for train_id, label_id in enumerate((7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33))
}
CITYSCAPES_TRAIN_NAMES: tuple[str, ...] = tuple(CITYSCAPES.names[label_id] for label_id in CITYSCAPES_TRAIN_IDS)

# The synthetic street scenes (ids as `pix2pixhd_tf.data.synthetic` draws them), in the Cityscapes colours of
# the same classes so that colourised maps look familiar; person and car have instances.
_SYNTHETIC_NAMES = ("unlabeled", "sky", "road", "sidewalk", "building", "vegetation", "pole", "person", "car")
SYNTHETIC = ClassTable(
    names=_SYNTHETIC_NAMES,
    palette=_palette_of(CITYSCAPES, _SYNTHETIC_NAMES),
    things=frozenset({_SYNTHETIC_NAMES.index("person"), _SYNTHETIC_NAMES.index("car")}),
)
