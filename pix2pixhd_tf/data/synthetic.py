"""A procedural street-scene dataset, so the whole pipeline can be trained and tested without Cityscapes.

Every scene is a street seen from across the road: sky, a row of building facades, trees and hedges, a
sidewalk with poles and people, and a road with parked and passing cars. Scenes are written in the
official pix2pixHD layout (`{phase}_label`, `{phase}_inst`, `{phase}_img`) with Cityscapes-style
instance ids, so the data loader, the instance-boundary map and the feature encoder see exactly what
they would see on real data.

Each class is drawn in one of a few clearly different appearance *modes* (asphalt or cobblestone road,
red or white or ... car paint). The mode of every instance is recorded in `meta.json`, which lets tests
check that the encoder + k-means of the paper (Sec. 3.4) recovers real styles.

Label ids (the `pix2pixhd_tf.data.classes.SYNTHETIC` table: 9 classes; the thing classes car and person get
instance ids `class_id * 1000 + k`, stuff pixels carry their label id as instance id):

    0 unlabeled (unused)  1 sky  2 road  3 sidewalk  4 building  5 vegetation  6 pole  7 person  8 car

Only numpy and PIL are used; all drawing is vectorised per object, so a 256x512 scene takes a few
tens of milliseconds on one core.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from pix2pixhd_tf.data.classes import META_FILE, SYNTHETIC, read_meta

# The label ids of `SYNTHETIC.names`.
UNLABELED, SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, POLE, PERSON, CAR = range(SYNTHETIC.label_nc)

# Bump when scenes change, so `ensure_synthetic_dataset` regenerates stale copies.
GENERATOR_VERSION = 1
PHASES = ("train", "test")


class Mode(NamedTuple):
    """One appearance style of a class: a name and its nominal colour."""

    name: str
    rgb: tuple[int, int, int]


# Appearance modes per class name; a scene picks one per stuff class and one per thing instance.
MODES: dict[str, tuple[Mode, ...]] = {
    "sky": (
        Mode("clear", (105, 155, 220)),
        Mode("overcast", (172, 176, 184)),
        Mode("sunset", (225, 140, 110)),
    ),
    "road": (
        Mode("asphalt", (68, 68, 72)),
        Mode("cobblestone", (125, 108, 92)),
        Mode("concrete", (165, 162, 152)),
    ),
    "sidewalk": (
        Mode("grey_tiles", (178, 178, 172)),
        Mode("red_pavers", (165, 85, 70)),
        Mode("beige_slabs", (205, 190, 150)),
    ),
    "building": (
        Mode("red_brick", (150, 68, 48)),
        Mode("cream_plaster", (226, 210, 168)),
        Mode("grey_concrete", (128, 128, 134)),
        Mode("blue_glass", (62, 112, 165)),
    ),
    "vegetation": (
        Mode("summer_green", (62, 122, 45)),
        Mode("autumn", (196, 112, 38)),
        Mode("conifer", (32, 72, 48)),
    ),
    "pole": (Mode("steel", (150, 150, 156)), Mode("black", (35, 35, 38)), Mode("green", (40, 92, 62))),
    "person": (
        Mode("red", (200, 40, 40)),
        Mode("blue", (40, 72, 185)),
        Mode("yellow", (232, 200, 40)),
        Mode("white", (232, 232, 232)),
        Mode("black", (30, 30, 32)),
    ),
    "car": (
        Mode("red", (200, 30, 35)),
        Mode("blue", (35, 75, 195)),
        Mode("white", (236, 236, 232)),
        Mode("black", (28, 28, 32)),
        Mode("yellow", (236, 196, 35)),
        Mode("green", (35, 138, 65)),
    ),
}

_SKIN = np.array([(235, 200, 170), (205, 160, 120), (160, 110, 75), (105, 70, 50)], np.float32)
_TROUSERS = np.array([(40, 45, 70), (30, 30, 32), (95, 80, 60), (110, 112, 118)], np.float32)
_TRUNK = np.array((92, 66, 45), np.float32)
_GLASS = np.array((38, 48, 62), np.float32)


@dataclass(frozen=True)
class Scene:
    """One generated scene: label ids, Cityscapes-style instance ids, the RGB image and the modes.

    `modes` maps every instance id present in `instance` to the index of its mode in
    `MODES[SYNTHETIC.names[class_of(id)]]`.
    """

    label: np.ndarray  # [H, W] uint8
    instance: np.ndarray  # [H, W] int32
    image: np.ndarray  # [H, W, 3] uint8
    modes: dict[int, int]


def class_of_instance(instance_id: int) -> int:
    """The label id of an instance id (Cityscapes rule: `id // 1000` for ids >= 1000, else the id)."""
    return instance_id // 1000 if instance_id >= 1000 else instance_id


def scene_rng(seed: int, phase: str, index: int) -> np.random.Generator:
    """The generator of scene `index` of `phase`, so any single scene can be regenerated on its own."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(phase.encode()), index]))


# ----------------------------------------------------------------------------------------------------
# Texture helpers: all return float32 arrays over a given shape.


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about `cell` pixels wide (bilinear upsampled lattice)."""
    cell = max(1.0, cell)
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    lattice = rng.random((gh, gw), dtype=np.float32)
    up = Image.fromarray(lattice).resize((int(gw * cell), int(gh * cell)), Image.BILINEAR)
    return np.asarray(up, dtype=np.float32)[:h, :w] * 2.0 - 1.0


def _cell_random(rng: np.random.Generator, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A random value in [0, 1) per (row, col) cell, for per-brick / per-stone / per-window variation."""
    table = rng.random(1024, dtype=np.float32)
    key = (rows.astype(np.int64) * 73856093) ^ (cols.astype(np.int64) * 19349663)
    return table[key & 1023]


def _bricks(
    rng: np.random.Generator, y: np.ndarray, x: np.ndarray, height: float, width: float, joint: float
) -> tuple[np.ndarray, np.ndarray]:
    """A running-bond pattern: (per-brick random value, mortar mask); every other row is offset by half."""
    row = np.floor(y / height)
    xs = x + (row % 2) * (width / 2)
    col = np.floor(xs / width)
    fy, fx = y - row * height, xs - col * width
    mortar = (fy < joint) | (fx < joint)
    return _cell_random(rng, row, col), mortar


def _grid(y: np.ndarray, x: np.ndarray, height: float, width: float, joint: float) -> np.ndarray:
    """Joint lines of a rectangular grid (tiles, slabs, panels)."""
    return (np.mod(y, height) < joint) | (np.mod(x, width) < joint)


def _child(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator for one object or one texture.

    Noise arrays have resolution-dependent sizes; drawing them from their own generator keeps every
    layout decision identical across resolutions, so a scene is the same street at any size.
    """
    return np.random.default_rng(rng.integers(2**63))


def _rgb(colour: Any) -> np.ndarray:
    return np.asarray(colour, np.float32)


def _shade(base: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """`base` colour [3] times a per-pixel brightness factor [...] -> [..., 3]."""
    return factor[..., None] * base


# ----------------------------------------------------------------------------------------------------


class _Canvas:
    """Label ids, (temporary) instance ids and float colour, painted back to front."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.label = np.zeros((height, width), np.uint8)
        self.instance = np.zeros((height, width), np.int32)
        self.image = np.zeros((height, width, 3), np.float32)
        self.ys = np.arange(height, dtype=np.float32)[:, None]
        self.xs = np.arange(width, dtype=np.float32)[None, :]

    def window(
        self, top: float, left: float, bottom: float, right: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Clipped integer window and its pixel coordinates, or None when it lies outside the canvas."""
        y0, y1 = max(0, int(np.floor(top))), min(self.h, int(np.ceil(bottom)))
        x0, x1 = max(0, int(np.floor(left))), min(self.w, int(np.ceil(right)))
        if y0 >= y1 or x0 >= x1:
            return None
        return (slice(y0, y1), slice(x0, x1)), self.ys[y0:y1], self.xs[:, x0:x1]

    def paint(self, where: tuple[slice, slice], mask: np.ndarray, label: int, instance: int, rgb: np.ndarray) -> None:
        """Paint `rgb` [h, w, 3] (or [3]) over `mask` inside window `where`."""
        self.label[where][mask] = label
        self.instance[where][mask] = instance
        colour = rgb[mask] if rgb.ndim == 3 else rgb
        self.image[where][mask] = colour


# ----------------------------------------------------------------------------------------------------
# Stuff: sky, road, sidewalk, buildings (one mode per scene each).


def _draw_sky(c: _Canvas, rng: np.random.Generator, mode: int, bottom: float) -> None:
    where, y, x = c.window(0, 0, bottom, c.w)
    t = np.broadcast_to(y / max(bottom, 1.0), (y.shape[0], x.shape[1]))
    clouds = 0.65 * _value_noise(rng, *t.shape, c.h / 5) + 0.35 * _value_noise(rng, *t.shape, c.h / 14)
    name = MODES["sky"][mode].name
    if name == "clear":
        rgb = (1 - t)[..., None] * _rgb((62, 118, 212)) + t[..., None] * _rgb((165, 200, 238))
        puff = np.clip((clouds - 0.25) * 2.5, 0, 1)[..., None]
        rgb = rgb * (1 - 0.85 * puff) + 0.85 * puff * _rgb((242, 244, 248))
    elif name == "overcast":
        rgb = _shade(_rgb((176, 180, 188)), 0.92 + 0.08 * t + 0.1 * clouds)
    else:  # sunset
        rgb = (1 - t)[..., None] * _rgb((110, 82, 150)) + t[..., None] * _rgb((250, 168, 92))
        streak = np.clip((clouds - 0.3) * 2.0, 0, 1)[..., None]
        rgb = rgb * (1 - 0.6 * streak) + 0.6 * streak * _rgb((235, 120, 120))
    c.paint(where, np.ones(t.shape, bool), SKY, SKY, rgb)


def _draw_road(c: _Canvas, rng: np.random.Generator, mode: int, top: float) -> None:
    where, y, x = c.window(top, 0, c.h, c.w)
    shape = (y.shape[0], x.shape[1])
    base = _rgb(MODES["road"][mode].rgb)
    dash = 0.22 * c.h
    dash_offset = rng.uniform(0, 2 * dash)
    tex = _child(rng)
    grain = tex.normal(0, 1, shape).astype(np.float32)
    name = MODES["road"][mode].name
    if name == "asphalt":
        rgb = _shade(base, 1 + 0.07 * grain + 0.08 * _value_noise(tex, *shape, c.h / 6))
        lane_y = top + 0.42 * (c.h - top)
        line = (np.abs(y - lane_y) < max(1.0, 0.008 * c.h)) & (np.mod(x + dash_offset, 2 * dash) < dash)
        rgb[line] = _rgb((228, 228, 220))
    elif name == "cobblestone":
        size = max(3.0, 0.028 * c.h)
        value, mortar = _bricks(tex, y - top + 0 * x, x + 0 * y, size, 1.5 * size, max(1.0, 0.18 * size))
        rgb = _shade(base, 0.78 + 0.4 * value + 0.06 * grain)
        rgb[mortar] = _rgb((70, 62, 55))
    else:  # concrete slabs
        joints = _grid(y - top + 0 * x, x + 0 * y, 0.14 * c.h, 0.36 * c.h, max(1.0, 0.006 * c.h))
        rgb = _shade(base, 1 + 0.04 * grain + 0.07 * _value_noise(tex, *shape, c.h / 8))
        rgb[joints] = base * 0.7
    c.paint(where, np.ones(shape, bool), ROAD, ROAD, rgb)


def _draw_sidewalk(c: _Canvas, rng: np.random.Generator, mode: int, top: float, bottom: float) -> None:
    where, y, x = c.window(top, 0, bottom, c.w)
    shape = (y.shape[0], x.shape[1])
    yy, xx = y - top + 0 * x, x + 0 * y
    base = _rgb(MODES["sidewalk"][mode].rgb)
    grain = rng.normal(0, 1, shape).astype(np.float32)
    name = MODES["sidewalk"][mode].name
    joint = max(1.0, 0.006 * c.h)
    if name == "grey_tiles":
        size = max(3.0, c.h / 26)
        value, _ = _bricks(rng, yy, xx, size, size, 0)
        rgb = _shade(base, 0.93 + 0.14 * value + 0.04 * grain)
        rgb[_grid(yy, xx, size, size, joint)] = base * 0.72
    elif name == "red_pavers":
        size = max(2.0, c.h / 48)
        value, mortar = _bricks(rng, yy, xx, size, 2 * size, joint * 0.8)
        rgb = _shade(base, 0.85 + 0.3 * value + 0.05 * grain)
        rgb[mortar] = _rgb((118, 100, 92))
    else:  # beige slabs
        rgb = _shade(base, 1 + 0.04 * grain + 0.06 * _value_noise(rng, *shape, c.h / 10))
        rgb[_grid(yy, xx, c.h / 12, c.h / 7, joint)] = base * 0.75
    curb = y >= bottom - max(1.0, 0.014 * c.h)  # the kerb stones along the road
    rgb[np.broadcast_to(curb, shape)] = _rgb((196, 196, 192))
    c.paint(where, np.ones(shape, bool), SIDEWALK, SIDEWALK, rgb)


def _draw_building(
    c: _Canvas, rng: np.random.Generator, mode: int, left: float, right: float, top: float, bottom: float
) -> None:
    win = c.window(top, left, bottom, right)
    if win is None:
        return
    where, y, x = win
    shape = (y.shape[0], x.shape[1])
    v, u = y - top + 0 * x, x - left + 0 * y  # facade coordinates in pixels
    name = MODES["building"][mode].name
    base = _rgb(MODES["building"][mode].rgb) * rng.uniform(0.88, 1.1)
    floor = c.h * rng.uniform(0.055, 0.08)
    column = floor * rng.uniform(0.8, 1.25)
    tex = _child(rng)
    grain = tex.normal(0, 1, shape).astype(np.float32)
    fv, fu = np.mod(v, floor) / floor, np.mod(u - 0.3 * column, column) / column
    joint = max(1.0, 0.005 * c.h)
    if name == "red_brick":
        value, mortar = _bricks(tex, v, u, max(2.0, c.h / 70), max(4.0, c.h / 30), joint * 0.7)
        rgb = _shade(base, 0.82 + 0.3 * value + 0.05 * grain)
        rgb[mortar] = _rgb((178, 168, 152))
    elif name == "cream_plaster":
        rgb = _shade(base, 1 + 0.025 * grain + 0.05 * _value_noise(tex, *shape, c.h / 10))
        rgb[fv < 0.06] = base * 1.06  # cornice band at every floor
    elif name == "grey_concrete":
        rgb = _shade(base, 1 + 0.05 * grain + 0.08 * _value_noise(tex, *shape, c.h / 12))
        rgb[(fv < 0.05) | (np.abs(fu - 0.97) < 0.03)] = base * 0.75  # panel seams
    else:  # blue glass curtain wall: reflections and mullions instead of windows
        sheen = 0.85 + 0.25 * _value_noise(tex, *shape, c.h / 4) + 0.15 * (1 - fv)
        rgb = _shade(base, sheen + 0.02 * grain)
        rgb[(fv < 0.07) | (fu < 0.06)] = _rgb((150, 155, 160))
    if name != "blue_glass":
        row, col = np.floor(v / floor), np.floor((u - 0.3 * column) / column)
        window = (fu > 0.25) & (fu < 0.75) & (fv > 0.25) & (fv < 0.8) & (v > 0.5 * floor)
        window &= (y < bottom - 1.3 * floor) & (u > 0.15 * column) & (u < (right - left) - 0.15 * column)
        lit = _cell_random(tex, row, col) > 0.85
        glass = _shade(_GLASS, 1 + 1.2 * (1 - fv) * (fu < 0.5))  # a diagonal-ish reflection
        glass[lit] = _rgb((232, 205, 120))
        rgb[window] = glass[window]
        shop = (y >= bottom - 0.9 * floor) & (y < bottom - 0.1 * floor) & (fu > 0.1) & (fu < 0.9)
        rgb[shop] = _shade(_GLASS, 1.3 + 0.4 * fu)[shop]  # ground-floor shop windows
    rgb[v < max(1.0, 0.012 * c.h)] *= 0.7  # roof edge
    c.paint(where, np.ones(shape, bool), BUILDING, BUILDING, rgb)


# ----------------------------------------------------------------------------------------------------
# Props standing on the ground, painted far to near: trees, hedges, poles (stuff), people, cars (things).


def _foliage(rng: np.random.Generator, mode: int, shape: tuple[int, int], scale: float) -> np.ndarray:
    base = _rgb(MODES["vegetation"][mode].rgb)
    leaves = 0.6 * _value_noise(rng, *shape, max(1.5, scale / 6)) + 0.4 * rng.uniform(-1, 1, shape)
    rgb = _shade(base, 0.92 + 0.3 * leaves.astype(np.float32))
    if MODES["vegetation"][mode].name == "autumn":  # mixed red and yellow leaves
        rgb[..., 1] *= 1 + 0.25 * _value_noise(rng, *shape, max(1.5, scale / 4))
    return rgb


def _draw_tree(c: _Canvas, rng: np.random.Generator, mode: int, cx: float, foot: float, s: float) -> None:
    radius = 0.2 * c.h * s * rng.uniform(0.8, 1.25)
    trunk_h = radius * rng.uniform(1.2, 2.0)
    cy = foot - trunk_h - 0.5 * radius
    blobs = rng.uniform((-0.8, -0.6, 0.6), (0.8, 0.3, 0.9), (4, 3)) * radius  # canopy = 4 discs (dx, dy, r)
    tex = _child(rng)
    win = c.window(cy - 1.6 * radius, cx - 1.8 * radius, foot, cx + 1.8 * radius)
    if win is None:
        return
    where, y, x = win
    shape = (y.shape[0], x.shape[1])
    canopy = np.zeros(shape, bool)
    edge = 0.2 * _value_noise(tex, *shape, max(1.5, radius / 3))
    for dx, dy, r in blobs:
        canopy |= np.sqrt((y - cy - dy) ** 2 + (x - cx - dx) ** 2) / r + edge < 1
    trunk = (np.abs(x - cx) < max(1.0, 0.12 * radius)) & (y > cy)
    rgb = _foliage(tex, mode, shape, radius)
    bark = _shade(_TRUNK, 0.8 + 0.4 * np.clip(1 - np.abs(x - cx) / (0.12 * radius + 1), 0, 1))
    rgb = np.where((trunk & ~canopy)[..., None], bark, rgb)
    c.paint(where, canopy | trunk, VEGETATION, VEGETATION, rgb)


def _draw_hedge(c: _Canvas, rng: np.random.Generator, mode: int, left: float, right: float, foot: float) -> None:
    height = 0.06 * c.h * rng.uniform(0.8, 1.4)
    phase = rng.uniform(0, 6)
    win = c.window(foot - 1.3 * height, left, foot, right)
    if win is None:
        return
    where, y, x = win
    shape = (y.shape[0], x.shape[1])
    bumps = 0.15 * height * np.sin(x / (0.3 * height) + phase)
    mask = np.broadcast_to(y > foot - height + bumps, shape)
    c.paint(where, mask, VEGETATION, VEGETATION, _foliage(_child(rng), mode, shape, height))


def _draw_pole(c: _Canvas, rng: np.random.Generator, mode: int, cx: float, foot: float, s: float) -> None:
    width = max(1.5, 0.014 * c.h * s)
    top = foot - c.h * rng.uniform(0.45, 0.7) * s
    arm = 0.12 * c.h * s * rng.choice([-1, 1])
    win = c.window(top - width, min(cx, cx + arm) - width, foot, max(cx, cx + arm) + width)
    if win is None:
        return
    where, y, x = win
    mast = (np.abs(x - cx) < width / 2) & (y >= top)
    lo, hi = sorted((cx, cx + arm))
    bracket = (x >= lo) & (x <= hi) & (np.abs(y - top) < max(0.5, 0.35 * width))
    lamp = (np.abs(x - cx - arm) < 1.5 * width) & (y >= top) & (y < top + 1.2 * width)
    roundness = np.clip(1 - np.abs(x - cx) / width, 0, 1)  # cylinder shading across the mast
    rgb = _shade(_rgb(MODES["pole"][mode].rgb), 0.7 + 0.5 * roundness + 0 * y)
    rgb[lamp] = _rgb((238, 232, 200))
    c.paint(where, mast | bracket | lamp, POLE, POLE, rgb)


def _draw_person(
    c: _Canvas, rng: np.random.Generator, mode: int, instance: int, cx: float, foot: float, s: float
) -> None:
    ph = 0.24 * c.h * s * rng.uniform(0.85, 1.1)
    win = c.window(foot - ph, cx - 0.3 * ph, foot, cx + 0.3 * ph)
    if win is None:
        return
    where, y, x = win
    v, u = (y - foot + ph) / ph, (x - cx) / ph  # 0 at the top of the head, 1 at the feet
    stride = rng.uniform(0.0, 0.08)
    head = (v - 0.08) ** 2 + (u / 0.85) ** 2 < 0.075**2
    torso = (v >= 0.15) & (v < 0.56) & (np.abs(u) < 0.1 + 0.02 * (v < 0.25))
    arms = (v >= 0.17) & (v < 0.5) & (np.abs(u) >= 0.1) & (np.abs(u) < 0.15)
    legs = (v >= 0.56) & (np.abs(np.abs(u) - 0.055 - stride * (v - 0.56)) < 0.045)
    shirt = _shade(_rgb(MODES["person"][mode].rgb), 1.08 - 0.25 * v + 0 * u)
    rgb = np.where((torso | arms)[..., None], shirt, 0)
    trousers = _shade(_TROUSERS[rng.integers(len(_TROUSERS))], 1.1 - 0.3 * v + 0 * u)
    rgb = np.where(legs[..., None], trousers, rgb)
    rgb = np.where(head[..., None], _SKIN[rng.integers(len(_SKIN))], rgb)
    c.paint(where, head | torso | arms | legs, PERSON, instance, rgb.astype(np.float32))


def _car_size(rng: np.random.Generator, image_height: float, s: float) -> tuple[float, float]:
    """Height and length of a car at depth scale `s` (decided at layout time, for parking rows)."""
    ch = 0.16 * image_height * s * rng.uniform(0.9, 1.1)
    return ch, ch * rng.uniform(2.2, 2.6)


def _draw_car(
    c: _Canvas,
    rng: np.random.Generator,
    mode: int,
    instance: int,
    left: float,
    foot: float,
    size: tuple[float, float],
) -> None:
    """A side-view car of `size` (height, length) with its wheels on `foot`."""
    ch, cw = size
    win = c.window(foot - ch, left, foot, left + cw)
    if win is None:
        return
    where, y, x = win
    v, u = (y - foot + ch) / ch, (x - left) / cw
    px = cw / ch  # u units -> v units
    corner = 0.12
    du = np.clip(np.maximum(corner / px - u, u - 1 + corner / px), 0, None) * px
    dv = np.clip(np.maximum(0.42 + corner - v, v - 0.85 + corner), 0, None)
    body = (v >= 0.42) & (v < 0.85) & (u >= 0) & (u < 1) & (du**2 + dv**2 < corner**2)
    t = np.clip((v - 0.04) / 0.4, 0, 1)  # the cabin is a trapezoid from the roof to the waist
    front = rng.random() < 0.5
    cab_l, cab_r = 0.3 - 0.16 * t, 0.72 + 0.14 * t
    if front:
        cab_l, cab_r = 1 - cab_r, 1 - cab_l
    cabin = (v >= 0.04) & (v < 0.44) & (u > cab_l) & (u < cab_r)
    glass = (v >= 0.1) & (v < 0.4) & (u > cab_l + 0.04) & (u < cab_r - 0.04) & (np.abs(u - 0.5) > 0.02)
    wheel_r = 0.16
    wheels = np.zeros(body.shape, bool)
    hubs = np.zeros(body.shape, bool)
    for wu in (0.2, 0.8):
        d2 = ((u - wu) * px) ** 2 + (v - 1 + wheel_r) ** 2
        wheels |= d2 < wheel_r**2
        hubs |= d2 < (0.5 * wheel_r) ** 2
    paint = _rgb(MODES["car"][mode].rgb) * rng.uniform(0.95, 1.05)
    rgb = _shade(paint, np.clip(1.15 - 0.45 * v, 0.6, 1.2) + 0 * u)
    seams = ((np.abs(v - 0.62) < 0.012) | (np.abs(u - 0.5) < 0.006)) & body
    rgb[seams] *= 0.7
    lamp_u = (u > 0.97) if front else (u < 0.03)
    rear_u = (u < 0.03) if front else (u > 0.97)
    lamps = (v > 0.48) & (v < 0.56)
    rgb[lamps & lamp_u] = _rgb((245, 240, 200))
    rgb[lamps & rear_u] = _rgb((200, 20, 20))
    rgb[glass] = _shade(_GLASS, 1 + 1.5 * (0.4 - v) * (u < 0.6))[glass]
    rgb[wheels] = _rgb((24, 24, 26))
    rgb[hubs] = _rgb((150, 150, 155))
    c.paint(where, body | cabin | wheels, CAR, instance, rgb)


# ----------------------------------------------------------------------------------------------------
# Scene layout.


def _check_size(height: int, width: int) -> None:
    if height < 16 or width < 16:
        raise ValueError(f"synthetic scenes need at least 16x16 pixels, got {height}x{width}")


def generate_scene(rng_or_seed: np.random.Generator | int, height: int, width: int) -> Scene:
    """Generate one street scene of `height` x `width` pixels.

    Layout is in fractions of the height, so wider images simply hold more buildings, cars and people.

    Args:
      rng_or_seed: a numpy Generator (consumed) or an int seed.
      height, width: output size in pixels (at least 16 x 16).

    Returns:
      A `Scene` whose thing instance ids are numbered `class * 1000 + k` (k = 0, 1, ... in paint order
      over the visible instances) and whose `modes` cover every instance id present.
    """
    _check_size(height, width)
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    c = _Canvas(height, width)
    h, w, aspect = float(height), float(width), width / height
    stuff_classes = (SKY, ROAD, SIDEWALK, BUILDING, VEGETATION, POLE)
    stuff = {cls: int(rng.integers(len(MODES[SYNTHETIC.names[cls]]))) for cls in stuff_classes}  # one mode each

    base = h * rng.uniform(0.5, 0.6)  # where the facades meet the sidewalk
    curb = base + h * rng.uniform(0.08, 0.13)  # where the sidewalk meets the road

    def depth_scale(foot: float) -> float:
        return 0.35 + (foot - base) / (h - base)  # nearer (lower) objects are larger

    _draw_sky(c, _child(rng), stuff[SKY], base)
    _draw_sidewalk(c, _child(rng), stuff[SIDEWALK], base, curb)
    _draw_road(c, _child(rng), stuff[ROAD], curb)
    left = -rng.uniform(0, 0.3) * h
    while left < w:
        right = left + h * rng.uniform(0.35, 0.9)
        _draw_building(c, _child(rng), stuff[BUILDING], left, right, h * rng.uniform(0.06, 0.38), base)
        left = right

    # Props standing on the ground, as (foot y, order, draw), painted far to near so nearer ones occlude.
    # Each gets its own generator now, so the layout never depends on the order of drawing.
    props: list[tuple[float, int, Callable[[], Any]]] = []
    serial = {PERSON: 0, CAR: 0}
    thing_modes: dict[int, int] = {}

    def add_stuff(foot: float, draw: Callable[..., Any], *args: Any) -> None:
        obj = _child(rng)
        props.append((foot, len(props), lambda: draw(c, obj, *args)))

    def add_thing(cls: int, foot: float, draw: Callable[..., Any], *args: Any) -> None:
        temp_id = cls * 1000 + serial[cls]  # renumbered over the visible instances at the end
        serial[cls] += 1
        thing_modes[temp_id] = int(rng.integers(len(MODES[SYNTHETIC.names[cls]])))
        add_stuff(foot, draw, thing_modes[temp_id], temp_id, *args)

    veg, pole = stuff[VEGETATION], stuff[POLE]
    for _ in range(int(rng.integers(0, 3))):
        left = rng.uniform(-0.2, 0.9) * w
        add_stuff(base + 0.01 * h, _draw_hedge, veg, left, left + h * rng.uniform(0.3, 0.8), base + 0.01 * h)
    for _ in range(1 + int(rng.integers(0, max(1, round(1.5 * aspect))))):
        foot = rng.uniform(base + 0.01 * h, base + 0.4 * (curb - base))
        add_stuff(foot, _draw_tree, veg, rng.uniform(0, w), foot, depth_scale(foot))
    for _ in range(1 + int(rng.integers(0, max(1, round(aspect))))):
        foot = rng.uniform(base + 0.5 * (curb - base), curb - 0.02 * h)
        add_stuff(foot, _draw_pole, pole, rng.uniform(0, w), foot, depth_scale(foot))

    # People: groups of 1-3 walking side by side, so same-class instances touch.
    for group in range(1 + int(rng.integers(0, max(1, round(1.5 * aspect))))):
        on_road = group > 0 and rng.random() < 0.25
        if on_road:
            foot = rng.uniform(curb + 0.05 * h, 0.95 * h)
        else:
            foot = rng.uniform(base + 0.3 * (curb - base), curb)
        cx = rng.uniform(0.05, 0.95) * w
        for _ in range(int(rng.integers(1, 4))):
            f = foot + h * rng.uniform(-0.01, 0.01)
            add_thing(PERSON, f, _draw_person, cx, f, depth_scale(f))
            cx += 0.24 * h * depth_scale(foot) * rng.uniform(0.12, 0.24)

    # Cars: a parked row (overlapping bumpers), more parked cars further along, and passing traffic.
    row_foot = curb + (h - curb) * rng.uniform(0.12, 0.22)
    row_left = rng.uniform(-0.1, 0.6) * w
    for _ in range(int(rng.integers(2, 4))):
        size = _car_size(rng, h, depth_scale(row_foot))
        add_thing(CAR, row_foot, _draw_car, row_left, row_foot, size)
        row_left += size[1] * rng.uniform(0.85, 0.97)
    for lane in ((0.1, 0.28), (0.7, 0.98)):
        for _ in range(int(rng.integers(0, max(1, round(aspect)) + 1))):
            foot = curb + (h - curb) * rng.uniform(*lane)
            left = rng.uniform(-0.3, 1.0) * w
            add_thing(CAR, foot, _draw_car, left, foot, _car_size(rng, h, depth_scale(foot)))

    for _, _, draw in sorted(props, key=lambda p: (p[0], p[1])):
        draw()

    instance, modes = _renumber_things(c.instance, thing_modes)
    for cls, mode in stuff.items():
        if np.any(c.label == cls):
            modes[cls] = mode
    light = rng.uniform(0.92, 1.06)  # overall exposure
    image = np.clip(c.image * light + 0.5, 0, 255).astype(np.uint8)
    return Scene(label=c.label, instance=instance, image=image, modes=dict(sorted(modes.items())))


def _renumber_things(instance: np.ndarray, modes: dict[int, int]) -> tuple[np.ndarray, dict[int, int]]:
    """Number the *visible* thing instances k = 0, 1, ... per class (fully occluded ones leave no gap)."""
    present = np.unique(instance)
    lut = np.arange(present.max() + 1, dtype=np.int32)
    new_modes: dict[int, int] = {}
    for cls in sorted(SYNTHETIC.things):
        ids = present[(present >= cls * 1000) & (present < (cls + 1) * 1000)]
        for k, old in enumerate(ids):
            lut[old] = cls * 1000 + k
            new_modes[cls * 1000 + k] = modes[int(old)]
    return lut[instance], new_modes


# ----------------------------------------------------------------------------------------------------
# Writing the dataset.


def _settings(n_train: int, n_test: int, height: int, width: int, seed: int) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "height": height,
        "width": width,
        "seed": seed,
        "counts": {"train": n_train, "test": n_test},
    }


def _phase_dirs(root: str, phase: str) -> list[str]:
    """The label, instance and image folders of `phase`, in the official pix2pixHD naming."""
    return [os.path.join(root, f"{phase}_{kind}") for kind in ("label", "inst", "img")]


def _count_scenes(folder: str) -> int:
    if not os.path.isdir(folder):
        return 0
    return sum(name.startswith("scene_") and name.endswith(".png") for name in os.listdir(folder))


def _scene_record(name: str, scene: Scene) -> dict[str, Any]:
    ids, areas = np.unique(scene.instance, return_counts=True)
    instances = []
    for instance_id, area in zip(ids.tolist(), areas.tolist()):
        cls = class_of_instance(instance_id)
        mode = scene.modes[instance_id]
        instances.append(
            {
                "id": instance_id,
                "label": cls,
                "class": SYNTHETIC.names[cls],
                "mode": mode,
                "mode_name": MODES[SYNTHETIC.names[cls]][mode].name,
                "pixels": area,
            }
        )
    return {"name": name, "instances": instances}


def write_synthetic_dataset(
    root: str, *, n_train: int, n_test: int, height: int, width: int, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Write the synthetic dataset in the pix2pixHD layout and return its metadata.

    Writes `{root}/{phase}_label/scene_NNNNN.png` (8-bit label ids), `{phase}_inst/` (16-bit instance
    ids), `{phase}_img/` (RGB) for phase in train and test, and `{root}/meta.json` last, so an
    interrupted run is detected (no meta) and redone. Older `scene_*.png` files are removed first.

    Returns:
      The metadata also written to meta.json: settings, class names, palette, modes and, per phase and
      scene, every instance with its class, ground-truth mode (index and name) and pixel count.

    Raises:
      ValueError: for negative scene counts or sizes below 16x16.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"scene counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    _check_size(height, width)
    meta: dict[str, Any] = {
        **_settings(n_train, n_test, height, width, seed),
        "class_names": list(SYNTHETIC.names),
        "label_nc": SYNTHETIC.label_nc,
        "thing_classes": sorted(SYNTHETIC.things),
        "palette": SYNTHETIC.palette.tolist(),
        "modes": {cls: [{"name": m.name, "rgb": list(m.rgb)} for m in modes] for cls, modes in MODES.items()},
        "scenes": {},
    }
    os.makedirs(root, exist_ok=True)
    meta_path = os.path.join(root, META_FILE)
    if os.path.exists(meta_path):
        os.remove(meta_path)
    with tqdm(total=n_train + n_test, desc="synthetic scenes", unit="scene", disable=not progress) as bar:
        for phase, count in zip(PHASES, (n_train, n_test)):
            dirs = _phase_dirs(root, phase)
            for d in dirs:
                os.makedirs(d, exist_ok=True)
                for old in os.listdir(d):
                    if old.startswith("scene_") and old.endswith(".png"):
                        os.remove(os.path.join(d, old))
            records = []
            for i in range(count):
                scene = generate_scene(scene_rng(seed, phase, i), height, width)
                name = f"scene_{i:05d}.png"
                Image.fromarray(scene.label).save(os.path.join(dirs[0], name))
                Image.fromarray(scene.instance.astype(np.uint16)).save(os.path.join(dirs[1], name))
                Image.fromarray(scene.image).save(os.path.join(dirs[2], name))
                records.append(_scene_record(name, scene))
                bar.update()
            meta["scenes"][phase] = records
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, meta_path)
    return meta


def ensure_synthetic_dataset(
    root: str, *, n_train: int, n_test: int, height: int, width: int, seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Reuse the dataset under `root` when its meta.json matches these settings, else (re)write it.

    Lets configs point at a synthetic dataroot without paying for regeneration on every run; a missing
    or deleted scene file also triggers a rewrite.
    """
    meta = read_meta(os.path.join(root, META_FILE))
    if meta is not None:
        wanted = _settings(n_train, n_test, height, width, seed)
        complete = all(
            _count_scenes(folder) == count
            for phase, count in zip(PHASES, (n_train, n_test))
            for folder in _phase_dirs(root, phase)
        )
        if complete and all(meta.get(key) == value for key, value in wanted.items()):
            return meta
    return write_synthetic_dataset(
        root, n_train=n_train, n_test=n_test, height=height, width=width, seed=seed, progress=progress
    )


def read_synthetic_meta(path: str) -> dict[str, Any]:
    """The synthetic dataset's meta.json at `path`: classes, appearance modes and, per phase, every scene's
    instances with their ground-truth mode (what `write_synthetic_dataset` returns).

    Raises:
      FileNotFoundError: there is no such file.
      ValueError: the file is not the synthetic dataset's meta.json (no modes or scenes).
    """
    meta = read_meta(path)
    if meta is None:
        raise FileNotFoundError(f"no {path}: write the synthetic dataset with tools/make_synthetic_dataset.py")
    if not isinstance(meta.get("modes"), dict) or not isinstance(meta.get("scenes"), dict):
        raise ValueError(f"{path} lists no appearance modes or scenes: is it the synthetic dataset's meta.json?")
    return meta
