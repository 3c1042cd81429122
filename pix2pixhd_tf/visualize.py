"""Turning label maps and generator outputs into pictures: colourised labels, grids, an HTML index.

Used by training (sample grids for TensorBoard and disk) and by `tools/test.py` (result pages), so
both show the same label | generated | real layout.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from pix2pixhd_tf.data.classes import ClassTable

HTML_COLUMNS = ("name", "label", "generated", "real")


def colorize_labels(label: Any, palette: np.ndarray | None = None, *, label_nc: int = 35) -> np.ndarray:
    """Colour a label-id map.

    Args:
      label: integer ids [H, W] (or [H, W, 1]).
      palette: uint8 [N, 3] colours by id; defaults to `ClassTable.for_label_nc(label_nc).palette` (Cityscapes
        for 35); a dataset's own colours are `ClassTable.for_dataset(dataroot, label_nc).palette`.
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
    palette = ClassTable.for_label_nc(label_nc).palette if palette is None else np.asarray(palette, dtype=np.uint8)
    if label.size and (label.min() < 0 or label.max() >= len(palette)):
        raise ValueError(f"label ids span [{label.min()}, {label.max()}] but the palette has {len(palette)} colours")
    return palette[label.astype(np.int64)]


def tensor_to_uint8(image: Any) -> np.ndarray:
    """Map a generator output in [-1, 1] (any shape, numpy or tensor) to uint8 0..255, clipping outliers."""
    image = np.asarray(image, dtype=np.float32)
    return np.clip(np.round((image + 1.0) * 127.5), 0, 255).astype(np.uint8)


def input_visual(label: Any, palette: np.ndarray) -> np.ndarray:
    """G's input map as a picture: label ids [H, W] coloured by `palette` (the dataset's
    `ClassTable.for_dataset(...).palette`), an input image [H, W, C] in [-1, 1] (label_nc 0) as it is."""
    label = np.asarray(label)
    return colorize_labels(label, palette) if label.ndim == 2 else tensor_to_uint8(label)


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
