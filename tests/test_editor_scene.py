"""The editor's scene model on small arrays: edits, new instance ids, styles, undo/redo, upload checks."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from pix2pixhd_tf.data.classes import SYNTHETIC, ClassTable
from pix2pixhd_tf.data.synthetic import CAR, PERSON, ROAD, SIDEWALK, SKY, UNLABELED
from pix2pixhd_tf.editor.scene import (
    MAX_STROKE_WORK,
    MAX_STYLE_VALUE,
    Limits,
    Scene,
    SceneError,
    derive_instances,
    encode_id_png,
    eraser_class,
    load_uploads,
    read_id_png,
    stroke_capacity,
    stroke_mask,
)
from pix2pixhd_tf.styles import ClusterBank

CLASSES = SYNTHETIC  # person (7) and car (8) are things
BANK = ClusterBank(np.arange(9 * 3 * 3, dtype=np.float32).reshape(9, 3, 3) / 100.0, np.full(9, 3))


def street() -> tuple[np.ndarray, np.ndarray]:
    """16x24: sky above, road below, a car 8000 (rows 9-12, cols 4-9) and a car 8001 (rows 9-12, cols 14-19)."""
    label = np.full((16, 24), SKY, np.int32)
    label[8:] = ROAD
    instance = label.copy()
    for k, (c0, c1) in enumerate([(4, 10), (14, 20)]):
        label[9:13, c0:c1] = CAR
        instance[9:13, c0:c1] = CAR * 1000 + k
    return label, instance


def make_scene(**kwargs) -> Scene:
    label, instance = street()
    return Scene(label, instance, CLASSES, clusters=BANK, feat_num=3, **kwargs)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def test_class_table_knows_synthetic_and_cityscapes_classes():
    assert CLASSES.names[CAR] == "car" and CLASSES.things == {PERSON, CAR} and eraser_class(CLASSES) == UNLABELED
    cityscapes = ClassTable.for_dataset(None, 35)
    assert cityscapes.names[26] == "car" and cityscapes.is_thing(26) and not cityscapes.is_thing(7)
    generic = ClassTable.for_dataset(None, 5).with_things([3])
    assert generic.names[3] == "class 3" and generic.things == {3} and len(generic.palette) == 5
    assert eraser_class(ClassTable.generic(3).with_things([0, 2])) == 1  # the void class is a thing: next stuff


def test_stroke_mask_is_a_capsule_clipped_to_the_image():
    box, mask = stroke_mask([[2, 2], [10, 2]], 1.5, (8, 12))
    assert box == (0, 5, 0, 12)
    full = np.zeros((8, 12), bool)
    full[box[0] : box[1], box[2] : box[3]] = mask
    assert full[2, 1:].all() and not full[2, 0]  # within 1.5 of the segment from x=2 to x=10
    assert full[1, 2:11].all() and full[3, 2:11].all() and not full[0].any() and not full[4].any()
    assert stroke_mask([[100, 100]], 3, (8, 12)) is None
    with pytest.raises(SceneError, match="radius"):
        stroke_mask([[1, 1]], 0, (8, 12))
    with pytest.raises(SceneError, match=r"\[x, y\]"):
        stroke_mask([1, 2, 3], 2, (8, 12))


def test_paint_stuff_changes_only_the_stroke_and_undo_redo_restore_it():
    scene = make_scene()
    label0, instance0 = scene.label.copy(), scene.instance.copy()
    result = scene.paint([[20, 3]], SIDEWALK, 2)
    assert result.changed and result.selected is None and scene.revision == 1
    changed = (scene.label != label0) | (scene.instance != instance0)
    assert changed.any() and (scene.label[changed] == SIDEWALK).all() and (scene.instance[changed] == SIDEWALK).all()
    ys, xs = np.nonzero(changed)
    assert (np.hypot(xs - 20, ys - 3) <= 2).all()
    assert scene.undo() and (scene.label == label0).all() and (scene.instance == instance0).all()
    assert scene.redo() and (scene.label[changed] == SIDEWALK).all()
    assert not scene.redo() and scene.can_undo


def test_painting_a_thing_class_starts_a_new_object_or_extends_one():
    scene = make_scene()
    new = scene.paint([[12, 2]], CAR, 1)
    assert new.selected == 8002  # 8000 and 8001 exist
    assert (scene.label[scene.instance == 8002] == CAR).all()
    grown = scene.paint([[12, 14]], CAR, 1, instance_id=8000)
    assert grown.selected == 8000 and scene.instance[14, 12] == 8000
    with pytest.raises(SceneError, match="not an object of class 7"):
        scene.paint([[1, 1]], PERSON, 1, instance_id=8000)


def test_add_object_takes_the_smallest_free_id_and_refuses_stuff():
    scene = make_scene()
    scene.delete(8000)
    assert scene.next_instance_id(CAR) == 8000  # freed
    assert scene.add_object([[12, 3]], CAR, 1).selected == 8000
    assert scene.add_object([[2, 3]], CAR, 1).selected == 8002
    assert scene.add_object([[20, 3]], PERSON, 1).selected == 7000
    with pytest.raises(SceneError, match="is stuff"):
        scene.add_object([[2, 3]], ROAD, 1)


def test_eraser_paints_the_void_class_or_a_chosen_stuff_class():
    scene = make_scene()
    scene.erase([[6, 10]], 1)
    assert scene.label[10, 6] == UNLABELED and scene.instance[10, 6] == UNLABELED
    scene.erase([[16, 10]], 1, class_id=SIDEWALK)
    assert scene.label[10, 16] == SIDEWALK
    with pytest.raises(SceneError, match="stuff class"):
        scene.erase([[1, 1]], 1, class_id=CAR)


def test_delete_fills_with_the_surrounding_majority_or_a_chosen_class():
    scene = make_scene()
    scene.restyle(8000, 2)
    scene.delete(8000)  # the car sits on road (3 of 4 sides)
    assert not (scene.instance == 8000).any() and (scene.label[9:13, 4:10] == ROAD).all()
    assert 8000 not in scene.styles  # its style went with it
    scene.delete(8001, fill_class=SIDEWALK)
    assert (scene.label[9:13, 14:20] == SIDEWALK).all() and (scene.instance[9:13, 14:20] == SIDEWALK).all()
    with pytest.raises(SceneError, match="no region 8005"):
        scene.delete(8005)
    with pytest.raises(SceneError, match="stuff class"):
        scene.delete(ROAD, fill_class=PERSON)
    scene.undo()
    scene.undo()
    assert (scene.instance[9:13, 4:10] == 8000).all() and scene.styles == {8000: 2}


def test_relabel_thing_to_thing_gets_a_new_id_and_to_stuff_merges():
    scene = make_scene()
    scene.restyle(8001, 1)
    result = scene.relabel(8001, PERSON)
    assert result.selected == 7000 and (scene.instance[9:13, 14:20] == 7000).all()
    assert (scene.label[9:13, 14:20] == PERSON).all() and scene.styles == {}  # styles are per class
    scene.relabel(8000, ROAD)
    assert (scene.instance[9:13, 4:10] == ROAD).all() and (scene.label[9:13, 4:10] == ROAD).all()
    assert not scene.relabel(SKY, SKY).changed


def test_restyle_checks_clusters_and_styles_persist_across_edits():
    scene = make_scene()
    scene.restyle(8000, 2)
    scene.restyle(8001, [0.1, 0.2, 0.3])
    scene.restyle(SKY, "random", rng=np.random.default_rng(0))
    assert scene.styles[8000] == 2 and scene.styles[8001] == (0.1, 0.2, 0.3) and 0 <= scene.styles[SKY] < 3
    scene.paint([[1, 14], [22, 14]], ROAD, 1)  # an edit elsewhere keeps every style
    scene.paint([[7, 10]], ROAD, 1)  # part of car 8000 painted over: it survives, so does its style
    assert scene.styles[8000] == 2 and scene.styles[8001] == (0.1, 0.2, 0.3)
    assert scene.style_spec()["instances"]["8000"] == 2
    with pytest.raises(SceneError, match="has 3 style clusters"):
        scene.restyle(8000, 3)
    with pytest.raises(SceneError, match="3 finite numbers"):
        scene.restyle(8000, [1.0, 2.0])
    scene.restyle(8000, None)
    assert 8000 not in scene.styles
    scene.undo()
    assert scene.styles[8000] == 2
    no_bank = Scene(*street(), CLASSES, clusters=None, feat_num=3)
    with pytest.raises(SceneError, match="no cluster bank"):
        no_bank.restyle(8000, 0)


def test_reseed_and_history_bookkeeping():
    scene = make_scene(seed=5)
    assert not scene.paint([[100, 100]], ROAD, 2).changed and not scene.can_undo  # no-op: not recorded
    scene.reseed(7)
    scene.paint([[1, 1]], ROAD, 1)
    assert scene.seed == 7 and scene.revision == 2
    scene.undo()
    scene.undo()
    assert scene.seed == 5 and scene.can_redo
    scene.paint([[3, 3]], ROAD, 1)  # a new edit clears the redo stack
    assert not scene.can_redo and scene.revision == 5


def test_history_is_bounded_by_bytes():
    scene = make_scene(max_history_bytes=600)  # about three 7x7 strokes (uint8 patches before and after)
    for x in range(0, 24, 2):
        scene.paint([[x, 2]], ROAD if x % 4 else SIDEWALK, 3)
    steps = 0
    while scene.undo():
        steps += 1
    assert 1 <= steps < 12


def test_regions_report_classes_boxes_and_styles():
    scene = make_scene()
    scene.restyle(8001, 1)
    regions = {r["id"]: r for r in scene.regions()}
    assert set(regions) == {SKY, ROAD, 8000, 8001}
    assert regions[8000] == {
        "id": 8000, "class_id": CAR, "class_name": "car", "thing": True, "pixels": 24, "bbox": [4, 9, 10, 13],
        "style": None,
    }  # fmt: skip
    assert regions[8001]["style"] == 1 and scene.region_at(15, 10) == 8001
    with pytest.raises(SceneError, match="outside"):
        scene.region_at(24, 0)


# ---------------------------------------------------------------------------------------- uploads


def test_uploads_round_trip_and_instances_can_be_derived():
    label, instance = street()
    got_label, got_instance = load_uploads(
        encode_id_png(label, sixteen_bit=False), encode_id_png(instance, sixteen_bit=True), classes=CLASSES,
        size_multiple=4,
    )  # fmt: skip
    np.testing.assert_array_equal(got_label, label)
    np.testing.assert_array_equal(got_instance, instance)
    assert Image.open(io.BytesIO(encode_id_png(instance, sixteen_bit=True))).mode.startswith("I;16")
    _, derived = load_uploads(encode_id_png(label, sixteen_bit=False), None, classes=CLASSES, size_multiple=4)
    np.testing.assert_array_equal(derived, instance)  # the two cars become 8000 and 8001
    np.testing.assert_array_equal(derive_instances(label, set()), label)


@pytest.mark.parametrize(
    "label_png, instance_png, status, message",
    [
        (b"GIF89a not a png", None, 415, "not a PNG"),
        ("rgb", None, 422, "single-channel"),
        ("big", None, 413, "limit"),
        ("ok", "narrow", 422, "same size"),
        ("ids", None, 422, "label_nc=9"),
        ("odd", None, 422, "multiples of 4"),
        ("ok", "bad_class", 422, "outside 0..8"),
    ],
)
def test_bad_uploads_are_refused_with_a_status_and_message(label_png, instance_png, status, message):
    label, instance = street()
    files = {
        "ok": png(label.astype(np.uint8)),
        "rgb": png(np.zeros((16, 24, 3), np.uint8)),
        "big": png(np.zeros((16, 40), np.uint8)),
        "narrow": png(instance[:, :20].astype(np.uint16)),
        "ids": png(np.full((16, 24), 9, np.uint8)),
        "odd": png(np.zeros((16, 22), np.uint8)),
        "bad_class": png(np.full((16, 24), 9001, np.uint16)),
    }
    label_bytes = files.get(label_png, label_png)
    instance_bytes = files[instance_png] if instance_png else None
    with pytest.raises(SceneError, match=message) as info:
        load_uploads(label_bytes, instance_bytes, classes=CLASSES, size_multiple=4, limits=Limits(32, 32, 10_000))
    assert info.value.status == status


def test_byte_limit_is_checked_before_decoding():
    with pytest.raises(SceneError, match="limit is 2048x2048 pixels and 0.977 KB") as info:
        read_id_png(b"\x89PNG\r\n\x1a\n" + b"0" * 2000, "label map", limits=Limits(max_bytes=1000), sixteen_bit=False)
    assert info.value.status == 413


def test_new_object_ids_must_fit_a_16_bit_instance_map():
    classes = ClassTable.generic(70).with_things([65, 69])
    label = np.zeros((8, 8), np.int32)
    scene = Scene(label, label, classes)
    assert scene.add_object([[2, 2]], 65, 1).selected == 65000
    with pytest.raises(SceneError, match="16-bit"):
        scene.add_object([[5, 5]], 69, 1)


# ---------------------------------------------------------------------------------------- limits per request


def _reference_stroke(points, radius, shape) -> np.ndarray:
    """Every pixel of the image against every segment: the definition stroke_mask must keep."""
    ys, xs = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    pts = np.asarray(points, np.float64)
    out = np.zeros(shape, bool)
    for a, b in itertools.pairwise(pts) if len(pts) > 1 else [(pts[0], pts[0])]:
        d = b - a
        length2 = float(d @ d)
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1) if length2 > 0 else 0.0
        out |= (xs - a[0] - t * d[0]) ** 2 + (ys - a[1] - t * d[1]) ** 2 <= radius * radius
    return out


def test_stroke_mask_matches_its_definition_pixel_for_pixel():
    rng = np.random.default_rng(0)
    shape = (40, 56)
    for radius in (0.5, 1.5, 3, 7.25):
        points = rng.uniform(-5, 60, (12, 2)).round(1)
        points[4] = points[3]  # a repeated point
        expected = _reference_stroke(points, radius, shape)
        got = stroke_mask(points.tolist(), radius, shape)
        full = np.zeros(shape, bool)
        if got is not None:
            (y0, y1, x0, x1), mask = got
            full[y0:y1, x0:x1] = mask
        np.testing.assert_array_equal(full, expected)


def test_a_stroke_over_the_work_limit_is_refused_at_once_and_changes_nothing():
    """Issue 19: 10,000 points at the largest radius held a core for 25-40 s."""
    label, instance = np.full((2048, 2048), SKY, np.int32), np.full((2048, 2048), SKY, np.int32)
    scene = Scene(label, instance, CLASSES)
    points = (np.random.default_rng(0).normal(0, 10, (10_000, 2)).cumsum(0) + 1024).tolist()
    with pytest.raises(SceneError, match="shorter strokes or use a smaller radius") as info:
        scene.paint(points, ROAD, 512)
    assert info.value.status == 422 and f"{MAX_STROKE_WORK:,}" in str(info.value)
    assert scene.revision == 0 and not scene.can_undo and (scene.label == SKY).all()
    # The page's strokes (a point every radius/4 pixels, radius <= 64) fit by the thousand.
    assert stroke_capacity(64) > 2000 and stroke_capacity(8) > 10_000
    step = np.stack([np.ones(2000), np.zeros(2000)], 1) * 16  # 2000 points 16 px apart at radius 64
    assert scene.paint((step.cumsum(0) % 2000).tolist(), ROAD, 64).changed


def test_feature_vectors_must_be_finite_and_bounded():
    scene = make_scene()
    for bad in ([1e300, 1, 1], [MAX_STYLE_VALUE + 0.5, 0, 0], [float("nan"), 0, 0], [0.1, 0.2]):
        with pytest.raises(SceneError, match="feature vector"):
            scene.restyle(8000, bad)
    with pytest.raises(SceneError, match=r"-10\.\.10 .*cluster centres lie in -1\.\.1"):
        scene.restyle(8000, [1e300, 1, 1])
    assert scene.revision == 0 and scene.styles == {}
    assert scene.restyle(8000, [MAX_STYLE_VALUE, -MAX_STYLE_VALUE, 0]).changed
    with pytest.raises(SceneError, match="feature vector"):  # initial styles (uploads) go through the same check
        Scene(*street(), CLASSES, clusters=BANK, feat_num=3, styles={8000: [1e300, 1, 1]})
