"""Tests for the procedural street-scene dataset (`pix2pixhd_tf.data.synthetic`)."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pix2pixhd_tf.data import synthetic as syn
from pix2pixhd_tf.data.classes import SYNTHETIC

H, W = 64, 128
SETTINGS = dict(n_train=4, n_test=2, height=H, width=W, seed=0, progress=False)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    return root, syn.write_synthetic_dataset(root, **SETTINGS)


def _scenes(n, phase="train", seed=0, height=H, width=W):
    return [syn.generate_scene(syn.scene_rng(seed, phase, i), height, width) for i in range(n)]


def _touching_pairs(instance):
    """Pairs of different thing instances of the same class that are 4-neighbours somewhere."""
    pairs = set()
    for a, b in ((instance[:, 1:], instance[:, :-1]), (instance[1:], instance[:-1])):
        m = (a != b) & (a >= 1000) & (b >= 1000) & (a // 1000 == b // 1000)
        pairs |= {tuple(sorted(p)) for p in zip(a[m].tolist(), b[m].tolist())}
    return pairs


def test_constants():
    assert SYNTHETIC.label_nc == len(SYNTHETIC.names) == 9
    assert SYNTHETIC.names[0] == "unlabeled"
    assert [SYNTHETIC.names[c] for c in sorted(SYNTHETIC.things)] == ["person", "car"]
    assert SYNTHETIC.palette.shape == (9, 3) and SYNTHETIC.palette.dtype == np.uint8
    assert set(syn.MODES) == set(SYNTHETIC.names[1:])
    assert all(len(modes) >= 2 for modes in syn.MODES.values())
    assert len(syn.MODES["car"]) == 6


def test_scene_shapes_and_dtypes():
    scene = syn.generate_scene(0, H, W)
    assert scene.label.shape == (H, W) and scene.label.dtype == np.uint8
    assert scene.instance.shape == (H, W) and scene.instance.dtype == np.int32
    assert scene.image.shape == (H, W, 3) and scene.image.dtype == np.uint8
    assert set(scene.modes) == set(np.unique(scene.instance).tolist())
    with pytest.raises(ValueError, match="16x16"):
        syn.generate_scene(0, 8, 64)


def test_deterministic_by_seed_phase_and_index():
    a, b = _scenes(2), _scenes(2)
    for x, y in zip(a, b):
        assert x.image.tobytes() == y.image.tobytes() and x.instance.tobytes() == y.instance.tobytes()
        assert x.modes == y.modes
    assert a[0].image.tobytes() != a[1].image.tobytes()
    assert a[0].image.tobytes() != _scenes(1, seed=1)[0].image.tobytes()
    assert a[0].image.tobytes() != _scenes(1, phase="test")[0].image.tobytes()
    # An int seed and a Generator give the same scene.
    assert np.array_equal(syn.generate_scene(5, H, W).image, syn.generate_scene(np.random.default_rng(5), H, W).image)


def test_written_files_are_reproducible(dataset, tmp_path):
    root, _ = dataset
    syn.write_synthetic_dataset(str(tmp_path), **SETTINGS)
    for folder in ("train_label", "train_inst", "train_img", "test_img"):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            with open(os.path.join(root, folder, name), "rb") as f1, open(tmp_path / folder / name, "rb") as f2:
                assert f1.read() == f2.read(), (folder, name)


def test_same_layout_at_any_resolution():
    small, large = syn.generate_scene(3, H, W), syn.generate_scene(3, 2 * H, 2 * W)
    assert (large.label[::2, ::2] == small.label).mean() > 0.9
    assert small.modes == large.modes
    tall = syn.generate_scene(3, 96, 48)  # portrait images work too
    assert tall.label.shape == (96, 48)


def test_layout_and_dtypes_on_disk(dataset):
    root, _ = dataset
    for phase, count in (("train", 4), ("test", 2)):
        names = [sorted(os.listdir(os.path.join(root, f"{phase}_{kind}"))) for kind in ("label", "inst", "img")]
        assert names[0] == names[1] == names[2] == [f"scene_{i:05d}.png" for i in range(count)]
    label = Image.open(os.path.join(root, "train_label", "scene_00002.png"))
    inst = Image.open(os.path.join(root, "train_inst", "scene_00002.png"))
    img = Image.open(os.path.join(root, "train_img", "scene_00002.png"))
    assert (label.mode, inst.mode, img.mode) == ("L", "I;16", "RGB")
    assert label.size == inst.size == img.size == (W, H)
    scene = syn.generate_scene(syn.scene_rng(0, "train", 2), H, W)
    assert np.array_equal(np.array(label), scene.label)
    assert np.array_equal(np.array(inst).astype(np.int32), scene.instance)  # 16 bits, exactly
    assert np.array(inst).max() >= 8000
    assert np.array_equal(np.array(img), scene.image)


def test_instance_ids_follow_cityscapes_rule():
    for scene in _scenes(6):
        label, inst = scene.label.astype(np.int32), scene.instance
        thing = np.isin(label, sorted(SYNTHETIC.things))
        assert np.array_equal(inst[thing] // 1000, label[thing])
        assert np.array_equal(inst[~thing], label[~thing])
        for cls in sorted(SYNTHETIC.things):  # k = 0, 1, 2, ... without gaps
            ids = np.unique(inst[label == cls])
            assert ids.tolist() == [cls * 1000 + k for k in range(len(ids))]
            assert all(syn.class_of_instance(int(i)) == cls for i in ids)


def test_touching_same_class_instances_and_all_classes_appear():
    scenes = _scenes(6)
    assert sum(len(_touching_pairs(s.instance)) for s in scenes) >= 3
    assert sum(bool(_touching_pairs(s.instance)) for s in scenes) >= 3
    present = set(itertools.chain.from_iterable(np.unique(s.label).tolist() for s in scenes))
    assert present >= set(range(1, SYNTHETIC.label_nc))


def test_car_paint_modes_are_distinguishable():
    means, modes = [], []
    for scene in _scenes(16):
        for instance_id, mode in scene.modes.items():
            pixels = scene.image[scene.instance == instance_id]
            if instance_id // 1000 == syn.CAR and len(pixels) >= 40:
                means.append(pixels.mean(0))
                modes.append(mode)
    means, modes = np.array(means), np.array(modes)
    assert set(modes.tolist()) == set(range(len(syn.MODES["car"])))
    centres = np.stack([means[modes == m].mean(0) for m in range(len(syn.MODES["car"]))])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(len(centres)) * 1e9
    assert gaps.min() > 45  # mean RGB of different paints is far apart (black vs green is closest)
    spread = [np.linalg.norm(means[modes == m] - centres[m], axis=-1).mean() for m in range(len(centres))]
    assert max(spread) < 25  # cars of one paint vary far less (shading, exposure) than paints differ
    nearest = np.linalg.norm(means[:, None] - centres[None], axis=-1).argmin(1)
    assert (nearest == modes).all()


def test_meta_json(dataset):
    root, meta = dataset
    with open(os.path.join(root, "meta.json")) as f:
        on_disk = json.load(f)
    assert on_disk == meta
    assert meta["class_names"] == list(SYNTHETIC.names) and meta["label_nc"] == 9
    assert meta["thing_classes"] == [7, 8]
    assert meta["palette"] == SYNTHETIC.palette.tolist()
    assert (meta["height"], meta["width"], meta["seed"]) == (H, W, 0)
    assert meta["counts"] == {"train": 4, "test": 2}
    assert meta["modes"]["car"][0] == {"name": syn.MODES["car"][0].name, "rgb": list(syn.MODES["car"][0].rgb)}
    assert [len(meta["scenes"][p]) for p in ("train", "test")] == [4, 2]
    record = meta["scenes"]["train"][1]
    inst = np.array(Image.open(os.path.join(root, "train_inst", record["name"])))
    ids, areas = np.unique(inst, return_counts=True)
    assert [r["id"] for r in record["instances"]] == ids.tolist()
    assert [r["pixels"] for r in record["instances"]] == areas.tolist()
    scene = syn.generate_scene(syn.scene_rng(0, "train", 1), H, W)
    for r in record["instances"]:
        assert r["mode"] == scene.modes[r["id"]]
        assert r["mode_name"] == syn.MODES[r["class"]][r["mode"]].name
        assert r["class"] == SYNTHETIC.names[r["label"]]


def test_ensure_reuses_an_existing_dataset(tmp_path):
    root = str(tmp_path)
    first = syn.ensure_synthetic_dataset(root, **SETTINGS)
    probe = os.path.join(root, "train_img", "scene_00000.png")
    stamp = os.stat(probe).st_mtime_ns
    os.utime(probe, ns=(stamp - 10**9, stamp - 10**9))  # any rewrite would change this
    assert syn.ensure_synthetic_dataset(root, **SETTINGS) == first
    assert os.stat(probe).st_mtime_ns == stamp - 10**9

    smaller = syn.ensure_synthetic_dataset(root, **{**SETTINGS, "n_train": 2, "seed": 1})
    assert smaller["seed"] == 1 and len(os.listdir(os.path.join(root, "train_label"))) == 2  # stale files gone

    os.remove(os.path.join(root, "test_inst", "scene_00001.png"))  # incomplete -> rewritten
    syn.ensure_synthetic_dataset(root, **{**SETTINGS, "n_train": 2, "seed": 1})
    assert os.path.exists(os.path.join(root, "test_inst", "scene_00001.png"))


def test_cli_writes_a_dataset(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools", "make_synthetic_dataset.py"),
        f"--dataroot={tmp_path}",
        "--n_train=2",
        "--n_test=1",
        "--height=32",
        "--width=48",
        "--seed=3",
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    with open(tmp_path / "meta.json") as f:
        meta = json.load(f)
    assert (meta["height"], meta["width"], meta["seed"], meta["counts"]) == (32, 48, 3, {"train": 2, "test": 1})
