"""The evaluation protocol, the compact segmenter and the evaluation tools on tiny data sets made in tmp_path."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pix2pixhd_tf.data.files import DatasetError
from pix2pixhd_tf.evaluation import metrics, readers, segmenter
from pix2pixhd_tf.evaluation import protocol
from pix2pixhd_tf.flags import parse_size

ROOT = Path(__file__).resolve().parents[1]
PALETTE = np.array([[60, 60, 60], [220, 60, 60], [60, 200, 60]], np.float32)  # class colours
NUM_CLASSES = len(PALETTE)
HEIGHT, WIDTH = 32, 64
SWD_FAST = metrics.SWDConfig(patches_per_image=16, num_projections=16, num_repeats=1)


def _make_split(root: Path, phase: str, count: int, seed: int, noise: float = 0.0) -> list[str]:
    """Cityscapes-style names; class 0 background, rectangles of classes 1 and 2, a void (255) corner."""
    rng = np.random.default_rng(seed)
    (root / f"{phase}_label").mkdir(parents=True, exist_ok=True)
    (root / f"{phase}_img").mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(count):
        label = np.zeros((HEIGHT, WIDTH), np.uint8)
        for cls in (1, 2):
            top, left = rng.integers(0, HEIGHT - 8), rng.integers(0, WIDTH - 8)
            label[top : top + rng.integers(6, 16), left : left + rng.integers(6, 30)] = cls
        label[:2, :2] = 255
        image = PALETTE[np.minimum(label, NUM_CLASSES - 1)] + rng.normal(0, noise, (HEIGHT, WIDTH, 3))
        stem = f"city_{i:06d}"
        Image.fromarray(label).save(root / f"{phase}_label" / f"{stem}_gtFine_labelIds.png")
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / f"{phase}_img" / f"{stem}_leftImg8bit.png")
        stems.append(f"{stem}_gtFine_labelIds")
    return stems


def _copy_as_generated(root: Path, phase: str, results: Path, suffix: str = "_synthesized_image") -> None:
    """Perfect generator: the real images, named after the label maps (plus the official extra files)."""
    results.mkdir(parents=True, exist_ok=True)
    labels = sorted((root / f"{phase}_label").iterdir())
    for label, real in zip(labels, sorted((root / f"{phase}_img").iterdir())):
        shutil.copy(real, results / f"{label.stem}{suffix}.png")
        shutil.copy(label, results / f"{label.stem}_input_label.png")


def _oracle_model(num_classes: int = NUM_CLASSES) -> keras.Model:
    """Nearest-palette-colour classifier as a 1×1 conv: logit_c = x·p_c − |p_c|²/2 on 0..255 inputs."""
    palette = np.concatenate([PALETTE, np.full((num_classes - NUM_CLASSES, 3), 255.0)])[:num_classes]
    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(num_classes, 1)
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([palette.T[None, None].astype(np.float32), (-0.5 * (palette**2).sum(1)).astype(np.float32)])
    return model


def _stand_in_features() -> keras.Model:
    """A tiny feature model instead of InceptionV3 (same `FeatureCollector` path)."""
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(8, 3, strides=2), keras.layers.GlobalAveragePooling2D()]
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    _make_split(root, "test", 4, seed=1)
    _make_split(root, "train", 3, seed=2)
    _copy_as_generated(root, "test", root / "results")
    saved = segmenter.save_segmenter(_oracle_model(), root / "oracle_segmenter")
    return root, saved


# ----------------------------------------------------------------------------------------------------
# Segmenter.


def test_segmenter_trains_to_high_accuracy_and_round_trips(tmp_path):
    _make_split(tmp_path, "train", 8, seed=0, noise=20.0)
    model = segmenter.train_segmenter(
        tmp_path,
        num_classes=NUM_CLASSES,
        epochs=10,
        batch_size=4,
        learning_rate=5e-3,
        base_filters=8,
        depth=2,
        verbose=0,
    )
    pairs = protocol.paired_files(tmp_path, "train", NUM_CLASSES)
    images = np.stack([protocol.read_rgb(image) for _, image in pairs])
    labels = np.stack([protocol.read_label(label) for label, _ in pairs])
    predicted = np.asarray(model(images.astype(np.float32), training=False)).argmax(-1)
    confusion = metrics.confusion_matrix(labels, predicted, NUM_CLASSES)
    assert metrics.segmentation_scores(confusion).pixel_accuracy > 0.9

    odd = images[:2, :31, :63]  # any size works
    expected = np.asarray(model(odd.astype(np.float32), training=False)).argmax(-1)
    for path in (tmp_path / "seg.keras", tmp_path / "seg_savedmodel"):
        segmenter.save_segmenter(model, path)
        loaded = protocol.load_segmenter(path)
        assert loaded.num_classes == NUM_CLASSES
        np.testing.assert_array_equal(loaded(odd), expected)


def test_savedmodel_with_float_input_and_class_id_output(tmp_path):
    class RedIsOne(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4, 5, 3], tf.float32)])
        def __call__(self, x):  # expects 0..1 inputs
            return {"class_ids": tf.cast(x[..., 0] > 0.5, tf.int32), "extra": tf.reduce_mean(x, axis=-1)}

    module = RedIsOne()
    tf.saved_model.save(module, str(tmp_path / "red"), signatures={"serving_default": module.__call__})
    loaded = protocol.load_segmenter(tmp_path / "red", input_range="0_1")
    assert loaded.num_classes is None and loaded.input_dtype == tf.float32
    images = np.zeros((1, 4, 5, 3), np.uint8)
    images[0, :2, :, 0] = 200
    np.testing.assert_array_equal(loaded(images)[0], np.repeat([[1], [1], [0], [0]], 5, axis=1))
    with pytest.raises(protocol.SegmenterError, match="only takes 4x5 images.*--eval_size=4x5"):
        loaded(np.zeros((1, 8, 10, 3), np.uint8))
    with pytest.raises(protocol.SegmenterError, match="no output 'probs'"):
        protocol.load_segmenter(tmp_path / "red", output_key="probs")
    with pytest.raises(protocol.SegmenterError, match="neither a .keras file nor a SavedModel"):
        protocol.load_segmenter(tmp_path)


# ----------------------------------------------------------------------------------------------------
# Features.


def test_inception_feature_path_with_random_weights():
    model = protocol.build_inception(weights=None, image_size=75)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((40, 60, 3), (80, 50, 3), (75, 75, 3))]
    features = protocol.inception_features(images, model, image_size=75, batch_size=2)
    assert features.shape == (3, 2048) and np.all(np.isfinite(features))
    with pytest.raises(protocol.EvaluationError, match="does not exist"):
        protocol.build_inception(weights="/nonexistent/inception_notop.h5")


# ----------------------------------------------------------------------------------------------------
# The protocol.


def test_evaluate_perfect_generator_matches_the_oracle_and_writes_the_report(dataset, tmp_path):
    root, saved = dataset
    report = protocol.evaluate(
        root,
        root / "results",
        label_nc=NUM_CLASSES,
        segmenter=saved,
        feature_model=_stand_in_features(),
        feature_image_size=32,
        reference_dir=root / "train_img",
        swd_config=SWD_FAST,
        kid_subsets=3,
        progress=False,
    )
    assert report["num_images"] == 4 and report["image_size"] == [HEIGHT, WIDTH]
    assert set(report) >= {"segmentation", "fid", "kid", "swd", "metrics"}
    seg = report["segmentation"]
    assert seg["generated"] == seg["real"]
    assert seg["generated"]["pixel_accuracy"] == 1.0 and seg["generated"]["mean_iou"] == 1.0
    assert seg["num_classes"] == NUM_CLASSES and len(seg["generated"]["per_class_iou"]) == NUM_CLASSES
    assert report["fid"]["generated_vs_real"] == pytest.approx(0.0, abs=1e-6)
    assert set(report["kid"]["generated_vs_real"]) == {"mean", "std", "num_subsets", "subset_size"}
    swd = report["swd"]
    assert swd["generated_vs_real"]["mean"] == 0.0
    assert list(swd["generated_vs_real"]["levels"]) == ["32x64", "16x32"]
    assert swd["reference"]["num_images"] == 3 and swd["reference"]["mean"] > 0 and swd["ratio"] == 0.0

    markdown = protocol.write_report(report, tmp_path / "out" / "report.json")
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == report
    assert (tmp_path / "out" / "report.md").read_text() == markdown
    assert "| pixel accuracy | 1.0000 | 1.0000 |" in markdown
    assert "| FID |" in markdown and "| 16x32 |" in markdown and "IoU generated" in markdown


def test_evaluate_counts_a_wrong_generated_image(dataset, tmp_path):
    root, saved = dataset
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    first = min(results.glob("*_synthesized_image.png"))
    Image.fromarray(np.full((HEIGHT, WIDTH, 3), 60, np.uint8)).save(first)  # all background
    report = protocol.evaluate(
        root,
        results,
        label_nc=NUM_CLASSES,
        segmenter=saved,
        metrics=["seg", "swd"],
        swd_config=SWD_FAST,
        progress=False,
    )
    generated, real = report["segmentation"]["generated"], report["segmentation"]["real"]
    assert real["pixel_accuracy"] == 1.0
    assert generated["pixel_accuracy"] < 1.0 and generated["mean_iou"] < 1.0
    assert report["swd"]["generated_vs_real"]["mean"] > 0
    assert "fid" not in report and "kid" not in report

    # The confusion counts say where: the first image's class 1 and 2 pixels all went to class 0.
    first_label = np.array(Image.open(min((root / "test_label").iterdir())))
    all_labels = np.stack([np.array(Image.open(f)) for f in sorted((root / "test_label").iterdir())])
    confusion = np.array(generated["confusion"])
    assert np.array_equal(np.array(real["confusion"]), np.diag(np.diag(real["confusion"])))
    markdown = protocol.format_markdown(report)
    for cls in (1, 2):
        assert confusion[cls, 0] == (first_label == cls).sum() and confusion[cls, 3 - cls] == 0
        share = (first_label == cls).sum() / (all_labels == cls).sum()
        assert f"| {cls} | {generated['per_class_iou'][cls]:.4f} | 1.0000 | 0 {100 * share:.0f}% (0%) |" in markdown
    assert "| 0 | " in markdown and markdown.split("| 0 | ")[1].split("\n")[0].endswith("| – |")


def test_exact_names_without_suffix_and_eval_size(dataset, tmp_path):
    root, saved = dataset
    results = tmp_path / "results"
    results.mkdir()
    for path in sorted((root / "results").glob("*_synthesized_image.png")):
        # Exact label names, generated at twice the size: --eval_size brings everything to one size.
        image = Image.open(path).resize((2 * WIDTH, 2 * HEIGHT), Image.NEAREST)
        image.save(results / path.name.replace("_synthesized_image", ""))
    with pytest.raises(protocol.ImageSizeError, match=r"64x128 but .*gtFine_labelIds.png is 32x64.*--eval_size"):
        protocol.evaluate(root, results, label_nc=NUM_CLASSES, metrics=["swd"], progress=False)
    report = protocol.evaluate(
        root, results, label_nc=NUM_CLASSES, segmenter=saved, metrics=["seg"], eval_size=(HEIGHT, WIDTH), progress=False
    )
    assert report["segmentation"]["generated"]["pixel_accuracy"] > 0.95


# ----------------------------------------------------------------------------------------------------
# Bad input.


def test_segmenter_with_another_class_count(dataset, tmp_path):
    root, _ = dataset
    path = tmp_path / "five.keras"
    _oracle_model(num_classes=5).save(path)
    with pytest.raises(protocol.SegmenterError, match=r"predicts 5 classes but the labels have 3 \(label_nc=3\)"):
        protocol.evaluate(root, root / "results", label_nc=NUM_CLASSES, segmenter=path, metrics=["seg"])


def test_missing_segmenter_empty_folder_and_unknown_metric(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(protocol.EvaluationError, match="--segmenter"):
        protocol.evaluate(root, root / "results", label_nc=NUM_CLASSES, metrics=["seg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(readers.EmptyFolderError, match="empty"):
        protocol.evaluate(root, tmp_path / "empty", label_nc=NUM_CLASSES, metrics=["swd"])
    with pytest.raises(protocol.EvaluationError, match="unknown metrics"):
        protocol.evaluate(root, root / "results", label_nc=NUM_CLASSES, metrics=["psnr"])
    with pytest.raises(DatasetError, match="val_label"):
        protocol.evaluate(root, root / "results", label_nc=NUM_CLASSES, phase="val", metrics=["swd"])


def test_generated_image_without_label(dataset, tmp_path):
    root, _ = dataset
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    shutil.copy(next(results.glob("*_synthesized_image.png")), results / "stray_synthesized_image.png")
    with pytest.raises(protocol.PairingError, match="stray_synthesized_image.png.*--generated_suffix"):
        protocol.evaluate(root, results, label_nc=NUM_CLASSES, metrics=["swd"])


def test_generated_image_of_another_size(dataset, tmp_path):
    root, _ = dataset
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    victim = sorted(results.glob("*_synthesized_image.png"))[1]
    Image.open(victim).resize((WIDTH, HEIGHT + 2)).save(victim)
    with pytest.raises(protocol.ImageSizeError, match=victim.name):
        protocol.evaluate(root, results, label_nc=NUM_CLASSES, metrics=["swd"])


def test_colour_label_map_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "label.png")
    with pytest.raises(protocol.EvaluationError, match="one class id per pixel"):
        protocol.read_label(tmp_path / "label.png")
    assert parse_size("512x1024") == (512, 1024) and parse_size(" 256 X 512 ") == (256, 512)
    for bad in ("512", "", "0x512", "-1x2", "axb"):  # '' too: flags where '' means "no size" check it first
        with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
            parse_size(bad)


# ----------------------------------------------------------------------------------------------------
# The tools, end to end.


@pytest.mark.slow
def test_tools_train_segmenter_then_evaluate(dataset, tmp_path):
    root, _ = dataset
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    seg_path = tmp_path / "segmenter.keras"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "train_segmenter.py"),
            f"--dataroot={root}",
            "--phase=test",
            f"--label_nc={NUM_CLASSES}",
            "--epochs=1",
            "--base_filters=4",
            "--depth=1",
            f"--output={seg_path}",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    output = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "evaluate.py"),
            f"--dataroot={root}",
            "--phase=test",
            f"--results_dir={root / 'results'}",
            f"--label_nc={NUM_CLASSES}",
            f"--segmenter={seg_path}",
            "--metrics=seg,swd",
            "--phase2=train",
            "--swd_projections=8",
            "--swd_repeats=1",
            f"--output={output}",
        ],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    report = json.loads(output.read_text())
    assert report["segmentation"]["generated"] == report["segmentation"]["real"]
    assert report["swd"]["reference"]["dir"].endswith("train_img")
    assert "| pixel accuracy |" in run.stdout and output.with_suffix(".md").is_file()
