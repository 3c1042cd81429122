"""The class tables (`pix2pixhd_tf.data.classes`): known tables, the meta.json reader, the fallbacks."""

import json

import numpy as np
import pytest

from pix2pixhd_tf.data.classes import (
    CITYSCAPES,
    CITYSCAPES_TRAIN_IDS,
    CITYSCAPES_TRAIN_NAMES,
    META_FILE,
    SYNTHETIC,
    ClassTable,
    distinct_palette,
    read_meta,
)


def test_known_tables():
    assert CITYSCAPES.label_nc == 35 and CITYSCAPES.names[26] == "car" and CITYSCAPES.things == set(range(24, 34))
    assert len(CITYSCAPES_TRAIN_IDS) == len(CITYSCAPES_TRAIN_NAMES) == 19
    assert CITYSCAPES_TRAIN_IDS[7] == 0 and CITYSCAPES_TRAIN_IDS[33] == 18
    assert CITYSCAPES_TRAIN_NAMES[:3] == ("road", "sidewalk", "building") and CITYSCAPES_TRAIN_NAMES[-1] == "bicycle"
    # The synthetic scenes use the Cityscapes colours of the same classes.
    for i, name in enumerate(SYNTHETIC.names):
        assert SYNTHETIC.palette[i].tolist() == CITYSCAPES.palette[CITYSCAPES.names.index(name)].tolist()
    assert [SYNTHETIC.names[c] for c in sorted(SYNTHETIC.things)] == ["person", "car"]
    with pytest.raises(ValueError):
        SYNTHETIC.palette[0, 0] = 1  # shared tables are read-only


def test_for_dataset_prefers_meta_json_then_cityscapes_then_generic(tmp_path):
    assert ClassTable.for_dataset(None, 35) is CITYSCAPES and ClassTable.for_dataset(tmp_path, 35) is CITYSCAPES
    generic = ClassTable.for_dataset(tmp_path, 5)
    assert generic.names == tuple(f"class {i}" for i in range(5)) and not generic.things
    assert np.array_equal(generic.palette, distinct_palette(5))

    meta = {"class_names": list(SYNTHETIC.names), "palette": SYNTHETIC.palette.tolist(), "thing_classes": [7, 8]}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    table = ClassTable.for_dataset(str(tmp_path), 9)
    assert table.names == SYNTHETIC.names and table.things == SYNTHETIC.things
    assert np.array_equal(table.palette, SYNTHETIC.palette)
    assert ClassTable.for_dataset(tmp_path, 35) is CITYSCAPES  # meta.json describes another class count
    assert ClassTable.from_meta(tmp_path, 35) is None and ClassTable.from_meta(None, 9) is None

    (tmp_path / META_FILE).write_text(json.dumps({"class_names": ["a", "b"]}))  # names without colours
    assert np.array_equal(ClassTable.for_dataset(tmp_path, 2).palette, distinct_palette(2))


def test_read_meta_and_table_checks(tmp_path):
    assert read_meta(tmp_path / META_FILE) is None
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        ClassTable.for_dataset(tmp_path, 9)
    (tmp_path / META_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_meta(tmp_path / META_FILE)
    with pytest.raises(ValueError, match="2 class names but 3 colours"):
        ClassTable(("a", "b"), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"thing classes \[5\]"):
        ClassTable.generic(3).with_things([5])
    assert ClassTable.generic(4).with_things([3]).is_thing(3)
