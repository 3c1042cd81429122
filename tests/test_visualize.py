"""Tests for label colourisation, grids and the HTML index (`pix2pixhd_tf.visualize`)."""

import re

import numpy as np
import pytest
from PIL import Image

from pix2pixhd_tf import visualize as vis
from pix2pixhd_tf.data.classes import CITYSCAPES, SYNTHETIC, ClassTable, distinct_palette

PALETTE = SYNTHETIC.palette


def test_cityscapes_palette_by_label_id():
    label = np.array([[0, 7, 8], [11, 21, 23], [24, 26, 33]])
    rgb = vis.colorize_labels(label)  # label_nc 35 is the default
    assert rgb.shape == (3, 3, 3) and rgb.dtype == np.uint8
    expected = [
        [(0, 0, 0), (128, 64, 128), (244, 35, 232)],
        [(70, 70, 70), (107, 142, 35), (70, 130, 180)],
        [(220, 20, 60), (0, 0, 142), (119, 11, 32)],
    ]
    assert rgb.tolist() == [[list(c) for c in row] for row in expected]
    assert CITYSCAPES.palette.shape == (35, 3)
    assert CITYSCAPES.palette[:5].sum() == 0 and CITYSCAPES.palette[34].tolist() == [0, 0, 142]


def test_explicit_and_distinct_palettes():
    label = np.arange(9).reshape(3, 3)
    assert np.array_equal(vis.colorize_labels(label, PALETTE), PALETTE[label])
    assert np.array_equal(vis.colorize_labels(label[..., None], PALETTE), PALETTE[label])  # [H, W, 1]
    assert np.array_equal(vis.colorize_labels(label, label_nc=9), distinct_palette(9)[label])

    palette = distinct_palette(20)
    assert palette.shape == (20, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert np.array_equal(palette, distinct_palette(20))
    assert np.array_equal(distinct_palette(40)[:20], palette)  # growing n keeps existing colours
    d = np.linalg.norm(palette[:, None].astype(float) - palette[None].astype(float), axis=-1) + np.eye(20) * 1e9
    assert d.min() > 40
    assert np.array_equal(ClassTable.for_label_nc(35).palette, CITYSCAPES.palette)


def test_colorize_rejects_ids_outside_the_palette():
    with pytest.raises(ValueError, match="palette has 9 colours"):
        vis.colorize_labels(np.array([[0, 9]]), PALETTE)
    with pytest.raises(ValueError, match="palette has 35 colours"):
        vis.colorize_labels(np.array([[-1]]))


def test_tensor_to_uint8():
    x = np.array([-1.0, -0.5, 0.0, 1.0, 1.7, -3.0], np.float32)
    assert vis.tensor_to_uint8(x).tolist() == [0, 64, 128, 255, 255, 0]
    assert vis.tensor_to_uint8(np.zeros((2, 4, 5, 3))).shape == (2, 4, 5, 3)


def test_input_visual_colours_ids_and_shows_images():
    label = np.arange(9).reshape(3, 3)
    assert np.array_equal(vis.input_visual(label, PALETTE), PALETTE[label])
    rgb = np.full((3, 3, 3), -1.0, np.float32)  # label_nc 0: the input is an image
    assert np.array_equal(vis.input_visual(rgb, ClassTable.for_label_nc(0).palette), np.zeros((3, 3, 3), np.uint8))


def test_image_grid():
    a = np.full((4, 5, 3), 10, np.uint8)
    b = np.full((4, 5, 3), 20, np.uint8)
    grey = np.full((4, 5), 30, np.uint8)
    grid = vis.image_grid([[a, b, grey], [b, a]])
    assert grid.shape == (8, 15, 3) and grid.dtype == np.uint8
    assert grid[0, 0, 0] == 10 and grid[0, 5, 0] == 20 and grid[0, 10].tolist() == [30, 30, 30]
    assert grid[4, 0, 0] == 20 and grid[4, 5, 0] == 10
    assert grid[4:, 10:].sum() == 0  # the short row is padded with black
    with pytest.raises(ValueError, match="same size"):
        vis.image_grid([[a, np.zeros((4, 6, 3), np.uint8)]])
    with pytest.raises(ValueError, match="uint8"):
        vis.image_grid([[a.astype(np.float32)]])


def test_save_image_round_trip(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "dir" / "x.png"
    vis.save_image(str(path), rgb)
    assert np.array_equal(np.array(Image.open(path)), rgb)
    vis.save_image(str(tmp_path / "g.png"), rgb[..., :1])
    assert Image.open(tmp_path / "g.png").mode == "L"
    with pytest.raises(ValueError, match="uint8"):
        vis.save_image(str(tmp_path / "f.png"), rgb.astype(np.float32))


def test_write_html_index(tmp_path):
    rows = [
        {
            "name": "scene_00000",
            "label": "images/a_label.png",
            "generated": "images/a_synth.png",
            "real": "images/a_real.png",
        },
        {"name": "<b>x</b>", "label": "images/b label.png", "generated": "images/b_synth.png"},
    ]
    path = tmp_path / "web" / "index.html"
    vis.write_html_index(str(path), "Test & results", rows)
    page = path.read_text(encoding="utf-8")
    assert "<title>Test &amp; results</title>" in page
    assert page.count("<tr>") == 3
    assert re.findall(r"<th>(\w+)</th>", page) == ["name", "label", "generated", "real"]
    assert page.count("<img ") == 5
    assert '<a href="images/a_real.png"><img src="images/a_real.png"' in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert page.rstrip().endswith("</html>")
