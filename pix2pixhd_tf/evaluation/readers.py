"""Reading what the evaluation scores (image folders, RGB images, label maps), and the errors that name a bad
input. Shared by the protocol and the segmenter's training data, so both read label maps alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")  # PIL modes of maps of class ids


class EvaluationError(ValueError):
    """Bad input to the evaluation; the message names the file or value and how to fix it."""


class EmptyFolderError(EvaluationError):
    """A folder that should hold images is missing or holds none."""


def list_images(folder: str | Path) -> list[Path]:
    """The .png/.jpg/.jpeg files of `folder`, sorted by name.

    Raises:
      EmptyFolderError: if the folder does not exist or holds no such file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise EmptyFolderError(f"{folder} is not a folder; check --dataroot/--phase or --results_dir")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise EmptyFolderError(f"{folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images; point the flag at the images")
    return files


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as uint8 [H, W, 3] (grey and RGBA converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def read_label(path: str | Path) -> np.ndarray:
    """A label map (8/16-bit grey or palette PNG of class ids) as int32 [H, W].

    Raises:
      EvaluationError: if the file is a colour image rather than class ids.
    """
    with Image.open(path) as image:
        if image.mode not in LABEL_MODES:
            raise EvaluationError(
                f"label map {path} is a {image.mode} image; label maps must hold one class id per pixel "
                "(8-bit grey PNG such as Cityscapes' *_gtFine_labelIds.png), not colours"
            )
        return np.asarray(image).astype(np.int32)
