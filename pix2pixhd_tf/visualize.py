"""Turning label maps and generator outputs into pictures: colourised labels, grids, an HTML index.

Used by training (sample grids for TensorBoard and disk) and by `tools/test.py` (result pages), so
both show the same label | generated | real layout.
"""

from __future__ import annotations

import colorsys
import html
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

# Colours of the 35 Cityscapes labelIds (cityscapesScripts `helpers/labels.py`, ids 0..33), plus id 34
# for the license plate (labelId -1 there), coloured like a car as pix2pixHD's own 35-colour map does.
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
        (111, 74, 0),
        (81, 0, 81),
        (128, 64, 128),
        (244, 35, 232),
        (250, 170, 160),
        (230, 150, 140),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (180, 165, 180),
        (150, 100, 100),
        (150, 120, 90),
        (153, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 0, 90),
        (0, 0, 110),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
        (0, 0, 142),
    ],
    dtype=np.uint8,
)

HTML_COLUMNS = ("name", "label", "generated", "real")


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


def default_palette(label_nc: int) -> np.ndarray:
    """The Cityscapes colours for `label_nc` 35, else `distinct_palette(label_nc)`."""
    return CITYSCAPES_PALETTE.copy() if label_nc == 35 else distinct_palette(label_nc)


def colorize_labels(label: Any, palette: np.ndarray | None = None, *, label_nc: int = 35) -> np.ndarray:
    """Colour a label-id map.

    Args:
      label: integer ids [H, W] (or [H, W, 1]).
      palette: uint8 [N, 3] colours by id; defaults to `default_palette(label_nc)`.
      label_nc: the number of classes, used only to pick the default palette.

    Returns:
      uint8 [H, W, 3].

    Raises:
      ValueError: for ids outside the palette (instead of silently wrapping around).
    """
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise ValueError(f"expected a label map [H, W], got shape {label.shape}")
    palette = default_palette(label_nc) if palette is None else np.asarray(palette, dtype=np.uint8)
    if label.size and (label.min() < 0 or label.max() >= len(palette)):
        raise ValueError(f"label ids span [{label.min()}, {label.max()}] but the palette has {len(palette)} colours")
    return palette[label.astype(np.int64)]


def tensor_to_uint8(image: Any) -> np.ndarray:
    """Map a generator output in [-1, 1] (any shape, numpy or tensor) to uint8 0..255, clipping outliers."""
    image = np.asarray(image, dtype=np.float32)
    return np.clip(np.round((image + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _as_rgb(cell: np.ndarray) -> np.ndarray:
    cell = np.asarray(cell)
    if cell.dtype != np.uint8:
        raise ValueError(f"grid cells must be uint8 images, got {cell.dtype} (use tensor_to_uint8 / colorize_labels)")
    if cell.ndim == 2:
        cell = cell[..., None]
    if cell.ndim != 3 or cell.shape[-1] not in (1, 3):
        raise ValueError(f"grid cells must be [H, W], [H, W, 1] or [H, W, 3], got shape {cell.shape}")
    return np.repeat(cell, 3, axis=-1) if cell.shape[-1] == 1 else cell


def image_grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Tile uint8 images into one picture, e.g. one row per sample of label | generated | real.

    All cells must have the same height and width; rows shorter than the longest (a sample without a
    real image) are padded with black. Grey cells are repeated to RGB.

    Returns:
      uint8 [rows * H, columns * W, 3].
    """
    cells = [[_as_rgb(cell) for cell in row] for row in rows]
    sizes = {cell.shape[:2] for row in cells for cell in row}
    if len(sizes) != 1:
        raise ValueError(f"all grid cells must have the same size, got {sorted(sizes)}")
    (h, w), columns = sizes.pop(), max(len(row) for row in cells)
    blank = np.zeros((h, w, 3), np.uint8)
    return np.concatenate([np.concatenate(row + [blank] * (columns - len(row)), axis=1) for row in cells], axis=0)


def save_image(path: str, array: np.ndarray) -> None:
    """Save a uint8 [H, W] or [H, W, 3] array as an image (format from the extension), creating folders."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"save_image needs uint8, got {array.dtype} (use tensor_to_uint8 / colorize_labels)")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(array).save(path)


def write_html_index(path: str, title: str, rows: Sequence[dict[str, str]], image_width: int = 256) -> None:
    """Write a static HTML page with one table row per sample: name, then label | generated | real images.

    Image entries are paths relative to the page (as `tools/test.py` writes them); missing ones leave
    the cell empty. Every image links to itself at full size.
    """

    def cell(row: dict[str, str], column: str) -> str:
        value = row.get(column, "")
        if column == "name" or not value:
            return f"<td>{html.escape(value)}</td>"
        src = html.escape(value, quote=True)
        return f'<td><a href="{src}"><img src="{src}" width="{image_width}" alt="{column}"></a></td>'

    header = "".join(f"<th>{column}</th>" for column in HTML_COLUMNS)
    body = "\n".join("<tr>" + "".join(cell(row, column) for column in HTML_COLUMNS) + "</tr>" for row in rows)
    page = (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif} td,th{padding:4px;vertical-align:top;text-align:left}</style>\n"
        f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"<table>\n<tr>{header}</tr>\n{body}\n</table>\n</body>\n</html>\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
