"""Generated machine-part images with exact object masks, written as an imagefolder.

:func:`draw_part` draws one part (gear, hex nut, washer, bolt, spring or bearing) with a random
pose, scale, position, metal colour, lighting, background texture, clutter, blur and noise, and
returns the image with a binary mask of the part. :func:`write_parts` writes a whole data set::

    DIR/train/<class>/<class>_0000.png          (also validation/ and test/)
    DIR/masks/<class>/<class>_0000.png          one 0/255 mask per image, same file name
    DIR/other/calibration/<kind>_0000.png       non-part images, no class and no mask
    DIR/other/holdout/<kind>_0100.png
    DIR/dataset_info.json

Masks and non-part images sit outside the split folders, and under folder names that contain
no split word, because ``datasets``' imagefolder loader puts every file below *any* folder
called train, validation, test, val, dev, eval, ... into that split. ``masks/train/...`` or
``other/validation/...`` would be loaded as extra training and validation images and would also
drop the class labels (the files are not all at the same depth). With this layout
``load_dataset("imagefolder", data_dir=DIR)`` returns exactly the three labelled splits.

Every image is drawn from its own generator seeded with ``(seed, class index, image index)``,
so the same seed gives byte-identical files, and a larger ``n_per_class`` only adds images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from datagen.arguments import INFO_NAME, check_seed

GENERATOR_VERSION = 1
PART_KINDS: tuple[str, ...] = ("gear", "hex_nut", "washer", "bolt", "spring", "bearing")
OTHER_KINDS: tuple[str, ...] = ("texture", "landscape", "blob", "star", "car", "text")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
OTHER_SUBSETS: tuple[str, ...] = ("calibration", "holdout")
MASKS_DIR = "masks"
OTHER_DIR = "other"
DEFAULT_SPLITS: tuple[float, float, float] = (0.7, 0.15, 0.15)
MIN_SIZE = 32

# The largest side of a part's bounding box, as a fraction of the image width.
_SCALE_RANGE = (0.18, 0.6)
# Non-part images use their own generator stream, so adding a part class never changes them.
_OTHER_STREAM = 1_000_000
# Polygons are drawn at twice the size and box-downsampled: cheap antialiasing for both the
# image and the coverage from which the binary mask is thresholded.
_SUPERSAMPLE = 2

# Base colours of bare and coated metal. Each image picks one at random (or a random paint
# colour), independent of the class, so colour never tells the classes apart.
_METALS = np.array(
    [
        [170, 174, 180],  # bright steel
        [122, 126, 132],  # steel
        [72, 74, 80],  # black oxide
        [196, 170, 92],  # brass
        [184, 116, 72],  # copper
        [206, 200, 150],  # yellow zinc
        [92, 122, 182],  # blue anodised
    ],
    dtype=np.float32,
)


class _Op(NamedTuple):
    """One drawing step in part coordinates (the part fits roughly in [-1, 1] x [-1, 1]).

    ``kind`` is ``fill`` (polygon, part of the mask), ``hole`` (polygon cut out of the mask),
    ``detail`` (polygon that only changes shading), ``stroke`` (polyline of ``width``, part of
    the mask) or ``detail_stroke`` (polyline that only changes shading). ``shade`` is the
    brightness in the shading layer, 200 meaning the plain base colour.
    """

    kind: str
    points: np.ndarray
    shade: int = 0
    width: float = 0.0


def _circle(radius: float, center: tuple[float, float] = (0.0, 0.0), vertices: int = 48) -> np.ndarray:
    angles = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    return np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], axis=1)


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def _hole(radius: float, center: tuple[float, float] = (0.0, 0.0)) -> list[_Op]:
    """A round hole with a dark rim, so the hole edge reads as a chamfer rather than a cut-out."""
    return [_Op("detail", _circle(radius * 1.18, center), 95), _Op("hole", _circle(radius, center))]


# ---------------------------------------------------------------------------------------------
# Part shapes. Each returns drawing steps in part coordinates; pose and size are applied later.
# ---------------------------------------------------------------------------------------------


def _gear(rng: np.random.Generator) -> list[_Op]:
    teeth = int(rng.integers(8, 21))
    root = rng.uniform(0.72, 0.86)
    # One tooth: root land, rising flank, tip land, falling flank, as fractions of the pitch.
    profile = np.array([0.0, 0.2, 0.36, 0.64, 0.8])
    angles = (2.0 * math.pi / teeth) * (np.arange(teeth)[:, None] + profile[None, :]).ravel()
    radii = np.tile([root, root, 1.0, 1.0, root], teeth)
    outline = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    bore = rng.uniform(0.14, 0.3)
    hub = bore * rng.uniform(1.5, 1.9)
    ops = [
        _Op("fill", outline, 200),
        _Op("detail_stroke", _circle(root * 0.94), 150, 0.035),
        _Op("detail", _circle(hub), 225),
    ]
    if rng.random() < 0.4:
        count = int(rng.integers(4, 7))
        ring = (hub + root * 0.94) / 2
        radius = min((root * 0.94 - hub) * 0.32, ring * math.sin(math.pi / count) * 0.6)
        for k in range(count):
            angle = 2.0 * math.pi * k / count
            ops += _hole(radius, (ring * math.cos(angle), ring * math.sin(angle)))
    ops += _hole(bore)
    if rng.random() < 0.5:
        ops.append(_Op("hole", _rectangle(-bore * 0.3, -bore * 1.3, bore * 0.3, 0.0)))  # keyway
    return ops


def _hex_nut(rng: np.random.Generator) -> list[_Op]:
    angles = np.arange(6) * math.pi / 3
    hexagon = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    bore = rng.uniform(0.4, 0.55)
    return [
        _Op("fill", hexagon, 195),
        # The chamfer on a real nut shows as a circle touching the six flats.
        _Op("detail_stroke", np.vstack([_circle(0.84), _circle(0.84)[:1]]), 235, 0.05),
        _Op("detail", _circle(bore * 1.3), 160),
        *_hole(bore),
    ]


def _washer(rng: np.random.Generator) -> list[_Op]:
    bore = rng.uniform(0.5, 0.72)
    return [
        _Op("fill", _circle(1.0, vertices=64), 205),
        _Op("detail_stroke", np.vstack([_circle(0.93), _circle(0.93)[:1]]), 225, 0.04),
        *_hole(bore),
    ]


def _bolt(rng: np.random.Generator) -> list[_Op]:
    """A hex bolt seen from the side: head on the left, threaded shank to the right."""
    head_end = -1.0 + rng.uniform(0.26, 0.4)
    head = rng.uniform(0.26, 0.36)  # half height
    shank = head * rng.uniform(0.5, 0.62)
    thread_start = rng.uniform(head_end + 0.1, 0.4)
    pitch = rng.uniform(0.07, 0.11)
    tip = 1.0 - pitch
    head_outline = np.array(
        [[-1.0, -head * 0.82], [-0.95, -head], [head_end, -head], [head_end, head], [-0.95, head], [-1.0, head * 0.82]]
    )
    crests = np.arange(thread_start, tip, pitch / 2)
    depth = np.where(np.arange(len(crests)) % 2 == 0, 1.0, 0.84) * shank
    top = np.vstack(
        [[head_end, -shank], [thread_start, -shank], np.stack([crests, -depth], axis=1), [1.0, -shank * 0.7]]
    )
    # The thread is a helix, so the crests on the far edge sit half a pitch further along.
    bottom = np.vstack(
        [[head_end, shank], [thread_start, shank], np.stack([crests + pitch / 2, depth], axis=1), [1.0, shank * 0.7]]
    )
    ops = [
        _Op("fill", head_outline, 190),
        _Op("detail_stroke", np.array([[-0.98, -head / 2], [head_end, -head / 2]]), 150, 0.03),
        _Op("detail_stroke", np.array([[-0.98, head / 2], [head_end, head / 2]]), 150, 0.03),
        _Op("fill", np.vstack([top, bottom[::-1]]), 205),
        _Op("detail_stroke", np.array([[head_end, -shank * 0.35], [thread_start, -shank * 0.35]]), 235, 0.04),
    ]
    for x in crests[::2]:
        ops.append(_Op("detail_stroke", np.array([[x, -shank], [x + pitch / 2, shank]]), 135, 0.025))
    return ops


def _spring(rng: np.random.Generator) -> list[_Op]:
    """A coil spring seen from the side and a little off its axis, so each turn shows as a loop."""
    turns = int(rng.integers(4, 11))
    radius = rng.uniform(0.22, 0.4)
    wire = rng.uniform(0.05, 0.1)
    tilt = rng.uniform(0.15, 0.45) * radius
    t = np.linspace(0.0, 1.0, turns * 24 + 1)
    phase = 2.0 * math.pi * turns * t
    points = np.stack([(1.0 - tilt) * (2.0 * t - 1.0) + tilt * np.sin(phase), radius * np.cos(phase)], axis=1)
    front = np.sin(phase) > 0
    # Back half-turns first and darker, front half-turns over them, as the eye sees a coil.
    ops = []
    for is_front in (False, True):
        for run in _runs(front == is_front):
            start, stop = max(run.start - 1, 0), min(run.stop + 1, len(t))
            ops.append(_Op("stroke", points[start:stop], 220 if is_front else 120, wire))
    return ops


def _runs(flags: np.ndarray) -> list[slice]:
    """The maximal runs of True in ``flags``, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.astype(np.int8), [0]])))
    return [slice(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _bearing(rng: np.random.Generator) -> list[_Op]:
    """A ball bearing from the front: outer ring, inner ring, balls in the gap between them."""
    outer_race = rng.uniform(0.78, 0.85)
    inner_race = rng.uniform(0.48, 0.55)
    bore = rng.uniform(0.26, 0.34)
    pitch_radius = (outer_race + inner_race) / 2
    balls = int(rng.integers(7, 13))
    ball = min((outer_race - inner_race) * 0.47, pitch_radius * math.sin(math.pi / balls) * 0.9)
    ops = [_Op("fill", _circle(1.0, vertices=64), 200)]
    # Half the bearings show a dark cage in the gap, the other half the background behind it.
    ops.append(_Op("fill", _circle(outer_race), 70) if rng.random() < 0.5 else _Op("hole", _circle(outer_race)))
    ops += [_Op("fill", _circle(inner_race), 205), *_hole(bore)]
    for k in range(balls):
        angle = 2.0 * math.pi * k / balls
        center = (pitch_radius * math.cos(angle), pitch_radius * math.sin(angle))
        ops.append(_Op("fill", _circle(ball, center, vertices=20), 215))
        glint = (center[0] - ball * 0.3, center[1] - ball * 0.3)
        ops.append(_Op("detail", _circle(ball * 0.35, glint, vertices=12), 250))
    return ops


# ---------------------------------------------------------------------------------------------
# Non-part objects for the "other" set, drawn by the same code as parts.
# ---------------------------------------------------------------------------------------------


def _blob(rng: np.random.Generator) -> list[_Op]:
    angles = np.linspace(0.0, 2.0 * math.pi, 64, endpoint=False)
    radius = np.ones_like(angles)
    for k in range(2, 6):
        radius += rng.uniform(0.0, 0.5 / k) * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
    return [_Op("fill", np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1), 200)]


def _star(rng: np.random.Generator) -> list[_Op]:
    points = int(rng.integers(5, 9))
    angles = np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))
    return [_Op("fill", np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), 200)]


def _car(rng: np.random.Generator) -> list[_Op]:
    roof = rng.uniform(-0.45, -0.3)
    body = np.array([[-1.0, 0.0], [-0.95, -0.15], [-0.45, -0.15], [-0.3, roof], [0.35, roof], [0.55, -0.15],
                     [0.95, -0.1], [1.0, 0.2], [-1.0, 0.2]])  # fmt: skip
    window = np.array([[-0.35, -0.17], [-0.25, roof + 0.06], [0.3, roof + 0.06], [0.45, -0.17]])
    ops = [_Op("fill", body, 200), _Op("detail", window, 110)]
    for x in (-0.6, 0.6):
        ops += [_Op("fill", _circle(0.22, (x, 0.2)), 50), _Op("detail", _circle(0.1, (x, 0.2)), 180)]
    return ops


def _text(rng: np.random.Generator) -> list[_Op]:
    """Rows of random pen strokes that read like handwriting or a label."""
    ops = []
    rows = int(rng.integers(1, 4))
    height = 0.8 / rows
    for row in range(rows):
        y = -0.5 + 1.0 * (row + 0.5) / rows
        for x in np.arange(-1.0, 1.0 - height * 0.6, height * rng.uniform(0.7, 0.9)):
            points = int(rng.integers(3, 6))
            glyph = np.stack([x + rng.uniform(0, height * 0.6, points), y + rng.uniform(-0.5, 0.5, points) * height], 1)
            ops.append(_Op("stroke", glyph, 200, height * 0.12))
    return ops


_PART_SHAPES: dict[str, Callable[[np.random.Generator], list[_Op]]] = {
    "gear": _gear,
    "hex_nut": _hex_nut,
    "washer": _washer,
    "bolt": _bolt,
    "spring": _spring,
    "bearing": _bearing,
}
_OTHER_SHAPES: dict[str, Callable[[np.random.Generator], list[_Op]]] = {
    "blob": _blob,
    "star": _star,
    "car": _car,
    "text": _text,
}


# ---------------------------------------------------------------------------------------------
# Pose and rasterisation.
# ---------------------------------------------------------------------------------------------


class _Pose(NamedTuple):
    """Maps part coordinates to supersampled pixels: ``points @ matrix.T * scale + offset``."""

    matrix: np.ndarray
    scale: float
    offset: np.ndarray

    def apply(self, points: np.ndarray) -> np.ndarray:
        return points @ self.matrix.T * self.scale + self.offset


def _random_pose(ops: Sequence[_Op], rng: np.random.Generator, canvas: int) -> _Pose:
    """A random rotation, foreshortening, size and position that keep the whole part in frame."""
    angle = rng.uniform(0.0, 2.0 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    # Squashing one axis before the rotation looks like the part is tilted away from the camera.
    squash = rng.uniform(0.75, 1.0) if rng.random() < 0.5 else 1.0
    matrix = np.array([[cos, -sin], [sin, cos]]) @ np.diag([1.0, squash])
    solid = [op for op in ops if op.kind in ("fill", "stroke")]
    turned = np.vstack([op.points @ matrix.T for op in solid])
    pad = max(op.width for op in solid) / 2
    low, high = turned.min(axis=0) - pad, turned.max(axis=0) + pad
    scale = rng.uniform(*_SCALE_RANGE) * canvas / float((high - low).max())
    margin = 0.03 * canvas
    offset = np.array([rng.uniform(margin - lo * scale, canvas - margin - hi * scale) for lo, hi in zip(low, high)])
    return _Pose(matrix, scale, offset)


def _rasterise(ops: Sequence[_Op], pose: _Pose, canvas: int) -> tuple[Image.Image, Image.Image]:
    """Draw ``ops`` into a 0/255 silhouette and a shading layer, both ``canvas`` pixels wide."""
    silhouette = Image.new("L", (canvas, canvas), 0)
    shading = Image.new("L", (canvas, canvas), 0)
    mask_pen, shade_pen = ImageDraw.Draw(silhouette), ImageDraw.Draw(shading)
    edge = max(1, canvas // 128)
    for op in ops:
        xy = [tuple(point) for point in pose.apply(op.points).tolist()]
        width = max(2, round(op.width * pose.scale))
        if op.kind == "fill":
            mask_pen.polygon(xy, fill=255)
            shade_pen.polygon(xy, fill=op.shade, outline=int(op.shade * 0.6), width=edge)
        elif op.kind == "hole":
            mask_pen.polygon(xy, fill=0)
            shade_pen.polygon(xy, fill=0)
        elif op.kind == "detail":
            shade_pen.polygon(xy, fill=op.shade)
        elif op.kind == "stroke":
            mask_pen.line(xy, fill=255, width=width, joint="curve")
            shade_pen.line(xy, fill=op.shade, width=width, joint="curve")
        elif op.kind == "detail_stroke":
            shade_pen.line(xy, fill=op.shade, width=width, joint="curve")
        else:
            raise ValueError(f"unknown drawing step kind {op.kind!r}; use fill, hole, detail, stroke or detail_stroke")
    # Details may spill over the outline; the silhouette alone decides what belongs to the part.
    return silhouette, ImageChops.multiply(shading, silhouette)


# ---------------------------------------------------------------------------------------------
# Colour, lighting, background and clutter.
# ---------------------------------------------------------------------------------------------


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return xs, ys


@cache
def _noise_field(size: int) -> np.ndarray:
    field = np.random.default_rng(0).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)
    field.flags.writeable = False
    return field


def _noise(rng: np.random.Generator, size: int, channels: int = 3) -> np.ndarray:
    """Unit Gaussian noise, ``size`` x ``size`` x ``channels``.

    A random crop of one fixed noise field: drawing fresh normals for every pixel took longer
    than all the rest of an image, and crops at random offsets are as good as fresh noise here.
    """
    top, left = rng.integers(0, size, 2)
    return _noise_field(size)[top : top + size, left : left + size, :channels]


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))


def _metal_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.2:
        return rng.uniform(30, 230, 3).astype(np.float32)  # painted part
    base = _METALS[rng.integers(len(_METALS))]
    return np.clip(base + rng.normal(0, 10, 3), 0, 255).astype(np.float32)


def _surface_colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour of a bench, floor or tray: mostly muted, now and then vivid."""
    vivid = rng.uniform(0, 255, 3).astype(np.float32)
    grey = _luminance(vivid)
    return grey + rng.uniform(0.1, 1.0) ** 1.5 * (vivid - grey)


def _contrasting_colour(rng: np.random.Generator, colour: np.ndarray) -> np.ndarray:
    """A random background colour that a viewer can tell apart from ``colour``."""
    for _ in range(50):
        candidate = _surface_colour(rng)
        if abs(_luminance(candidate) - _luminance(colour)) > 45 or np.abs(candidate - colour).max() > 110:
            return candidate
    return np.full(3, 255.0 if _luminance(colour) < 128 else 0.0, dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in about [0, 1]: a ``cells`` x ``cells`` random grid upsampled bicubically."""
    coarse = Image.fromarray(rng.random((cells, cells), dtype=np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC))


def _background(rng: np.random.Generator, size: int, colour: np.ndarray) -> np.ndarray:
    """A float RGB texture around ``colour``: plain, gradient, wood, concrete or cutting mat."""
    xs, ys = _grid(size)
    style = int(rng.integers(5))
    if style == 0:  # plain
        tone = np.ones((size, size), np.float32)
    elif style == 1:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / size
        tone = 1.0 + rng.uniform(0.2, 0.5) * (ramp - ramp.mean())
    elif style == 2:  # wood grain
        angle = rng.uniform(0, math.pi)
        across = xs * math.cos(angle) + ys * math.sin(angle)
        period = size * rng.uniform(0.04, 0.12)
        grain = np.sin(2 * math.pi * across / period + 8.0 * _smooth_noise(rng, size, 4))
        tone = 0.85 + 0.15 * grain
    elif style == 3:  # concrete
        tone = 0.7 + 0.4 * _smooth_noise(rng, size, 6) + 0.2 * rng.random((size, size), dtype=np.float32)
    else:  # cutting mat
        period = int(size * rng.uniform(0.08, 0.2))
        lines = ((xs.astype(np.int32) % period) == 0) | ((ys.astype(np.int32) % period) == 0)
        tone = np.where(lines, 0.75, 1.0).astype(np.float32)
    return tone[..., None] * colour + 4 * _noise(rng, size, 1)


def _landscape(rng: np.random.Generator, size: int) -> np.ndarray:
    """A photo-like outdoor scene: sky gradient, hills along a horizon, textured ground."""
    xs, ys = _grid(size)
    horizon = size * rng.uniform(0.3, 0.7) + size * 0.15 * (_smooth_noise(rng, size, 3)[0] - 0.5)
    sky_top, sky_bottom = rng.uniform([20, 60, 120], [120, 170, 250]), rng.uniform([150, 170, 190], [250, 240, 255])
    ground = rng.uniform([40, 50, 20], [150, 140, 90])
    fraction = (ys / horizon[None, :]).clip(0, 1)[..., None]
    sky = sky_top * (1 - fraction) + sky_bottom * fraction
    earth = ground * (0.7 + 0.5 * _smooth_noise(rng, size, 8))[..., None]
    return np.where((ys < horizon[None, :])[..., None], sky, earth).astype(np.float32)


def _clutter(rng: np.random.Generator, canvas: int) -> tuple[Image.Image, Image.Image]:
    """A few small distractors: scratches, dots, paper scraps and scribbles.

    Returns premultiplied RGB and coverage, supersampled, so they downsample like the part.
    """
    colour_layer = Image.new("RGB", (canvas, canvas), (0, 0, 0))
    coverage = Image.new("L", (canvas, canvas), 0)
    pens = ImageDraw.Draw(colour_layer), ImageDraw.Draw(coverage)
    for _ in range(int(rng.integers(1, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        center = rng.uniform(0, canvas, 2)
        reach = canvas * rng.uniform(0.02, 0.1)
        kind = int(rng.integers(4))
        if kind == 0:  # scratch or cable
            end = center + rng.normal(0, canvas * 0.15, 2)
            xy = [tuple(center), tuple(end)]
            width = int(rng.integers(1, 4)) * (canvas // 128 + 1)
            for pen, fill in zip(pens, (colour, 255)):
                pen.line(xy, fill=fill, width=width)
        elif kind == 1:  # dot or small round stain
            box = [tuple(center - reach / 2), tuple(center + reach / 2)]
            for pen, fill in zip(pens, (colour, 255)):
                pen.ellipse(box, fill=fill)
        else:  # paper scrap or scribble
            xy = [tuple(p) for p in (center + rng.uniform(-reach, reach, (int(rng.integers(3, 6)), 2))).tolist()]
            for pen, fill in zip(pens, (colour, 255)):
                if kind == 2:
                    pen.polygon(xy, fill=fill)
                else:
                    pen.line(xy, fill=fill, width=canvas // 128 + 1)
    return colour_layer, coverage


def _downsample(image: Image.Image) -> np.ndarray:
    return np.asarray(image.reduce(_SUPERSAMPLE), dtype=np.float32)


def _add_clutter(scene: np.ndarray, rng: np.random.Generator, canvas: int) -> np.ndarray:
    colour_layer, coverage = _clutter(rng, canvas)
    alpha = _downsample(coverage)[..., None] / 255
    return scene * (1 - alpha) + _downsample(colour_layer)


def _cast_shadow(scene: np.ndarray, silhouette: Image.Image, rng: np.random.Generator) -> np.ndarray:
    size = scene.shape[0]
    shift = tuple(int(v) for v in rng.integers(-size // 30 - 1, size // 30 + 2, 2))
    shadow = Image.new("L", silhouette.size, 0)
    shadow.paste(silhouette, shift)
    shadow = shadow.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.01, 0.04)))
    return scene * (1 - rng.uniform(0.15, 0.45) * np.asarray(shadow, np.float32)[..., None] / 255)


def _shade_object(
    coverage: np.ndarray, shading: np.ndarray, colour: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Premultiplied colour of the object: base colour x shading x a directional light + a highlight.

    Light and highlight are computed on the object's bounding box only; outside it the
    premultiplied colour is zero anyway, and this step was the slowest of the whole drawing.
    """
    rows, cols = np.nonzero(coverage)
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    xs, ys = _grid(coverage.shape[0])
    xs, ys = xs[top:bottom, left:right], ys[top:bottom, left:right]
    cy, cx = rows.mean(), cols.mean()
    extent = max(bottom - top, right - left) / 2
    angle = rng.uniform(0, 2 * math.pi)
    along = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)) / extent
    light = 0.8 + rng.uniform(0.15, 0.35) * np.clip(along, -1, 1)
    spot_x, spot_y = cx + 0.4 * extent * math.cos(angle), cy + 0.4 * extent * math.sin(angle)
    width = extent * rng.uniform(0.2, 0.5)
    glint = np.exp(-((xs - spot_x) ** 2 + (ys - spot_y) ** 2) / (2 * width**2)) * rng.uniform(40, 110)
    box = (slice(top, bottom), slice(left, right))
    part = np.zeros((*coverage.shape, 3), np.float32)
    part[box] = shading[box][..., None] / 200 * colour * light[..., None] + (glint * coverage[box] / 255)[..., None]
    return part


def _finish(scene: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sensor noise and, for half the images, a slight defocus."""
    scene = scene + rng.uniform(1, 6) * _noise(rng, scene.shape[0])
    # Adding 0.5 before the truncating cast rounds, at a fraction of the cost of np.round.
    image = Image.fromarray(np.clip(scene + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * scene.shape[0] / 128))
    return image


def _draw_object(ops: Sequence[_Op], rng: np.random.Generator, size: int) -> tuple[Image.Image, Image.Image]:
    """Draw ``ops`` in a random pose on a random textured, cluttered background."""
    canvas = size * _SUPERSAMPLE
    pose = _random_pose(ops, rng, canvas)
    silhouette, shading = _rasterise(ops, pose, canvas)
    colour = _metal_colour(rng)
    scene = _background(rng, size, _contrasting_colour(rng, colour * 0.85))
    scene = _add_clutter(scene, rng, canvas)
    coverage_image = silhouette.reduce(_SUPERSAMPLE)
    scene = _cast_shadow(scene, coverage_image, rng)
    coverage = np.asarray(coverage_image, np.float32)
    part = _shade_object(coverage, _downsample(shading), colour, rng)
    scene = scene * (1 - coverage[..., None] / 255) + part
    # A pixel belongs to the part when the part covers at least half of it.
    mask = Image.fromarray(np.where(coverage >= 128, 255, 0).astype(np.uint8), "L")
    return _finish(scene, rng), mask


def _check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise ValueError(f"size={size} is too small to draw recognisable parts; use size >= {MIN_SIZE}")


def draw_part(kind: str, rng: np.random.Generator, size: int = 128) -> tuple[Image.Image, Image.Image]:
    """Draw one machine part in a random pose on a random background.

    Args:
        kind: One of :data:`PART_KINDS`.
        rng: The source of all randomness; the same generator state gives the same image.
        size: Width and height of the square image in pixels, at least :data:`MIN_SIZE`.

    Returns:
        The RGB image and an ``L`` mask of the same size, 255 where the part covers at least
        half of the pixel and 0 elsewhere (background, shadow, clutter and holes).

    >>> image, mask = draw_part("gear", np.random.default_rng(0), 64)
    >>> image.size, mask.mode
    ((64, 64), 'L')
    """
    if kind not in _PART_SHAPES:
        raise ValueError(f"kind={kind!r} is not a part; use one of {', '.join(PART_KINDS)}")
    _check_size(size)
    return _draw_object(_PART_SHAPES[kind](rng), rng, size)


def draw_other(kind: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one image that shows no machine part, for out-of-distribution checks.

    Args:
        kind: One of :data:`OTHER_KINDS`: a bare ``texture`` with clutter, a photo-like
            ``landscape``, or a non-part object (``blob``, ``star``, ``car``, ``text``) drawn
            with the same lighting and backgrounds as the parts.
        rng: The source of all randomness.
        size: Width and height of the square image in pixels, at least :data:`MIN_SIZE`.

    Returns:
        The RGB image.
    """
    _check_size(size)
    if kind in _OTHER_SHAPES:
        return _draw_object(_OTHER_SHAPES[kind](rng), rng, size)[0]
    if kind == "texture":
        scene = _background(rng, size, _surface_colour(rng))
        return _finish(_add_clutter(scene, rng, size * _SUPERSAMPLE), rng)
    if kind == "landscape":
        return _finish(_landscape(rng, size), rng)
    raise ValueError(f"kind={kind!r} is not a non-part kind; use one of {', '.join(OTHER_KINDS)}")


# ---------------------------------------------------------------------------------------------
# Writing the data set.
# ---------------------------------------------------------------------------------------------


def split_sizes(count: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """How many of ``count`` images go to train, validation and test.

    Args:
        count: Images per class.
        splits: Relative sizes of train, validation and test; they need not add up to 1.

    Raises:
        ValueError: If ``splits`` is not three positive numbers, or a split would get no image.
    """
    if len(splits) != 3 or min(splits) <= 0:
        raise ValueError(f"splits={tuple(splits)} must be three positive fractions for train, validation, test")
    total = sum(splits)
    validation, test = round(count * splits[1] / total), round(count * splits[2] / total)
    sizes = (count - validation - test, validation, test)
    if min(sizes) < 1:
        empty = SPLITS[sizes.index(min(sizes))]
        raise ValueError(
            f"n_per_class={count} leaves the {empty} split empty with splits={tuple(splits)}; "
            f"use more images per class or a larger {empty} fraction"
        )
    return sizes


def mask_path(image_path: str | Path) -> Path:
    """The mask of an image written by :func:`write_parts`: ``DIR/masks/<class>/<file name>``."""
    image_path = Path(image_path)
    return image_path.parents[2] / MASKS_DIR / image_path.parent.name / image_path.name


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 1 instead of Pillow's 6: files grow about 13% but saving is 3-4x faster, and
    # at the default level saving took longer than drawing.
    image.save(path, format="PNG", compress_level=1)


def write_parts(
    out: str | Path,
    seed: int = 0,
    size: int = 128,
    n_per_class: int = 200,
    splits: Sequence[float] = DEFAULT_SPLITS,
    n_other: int | None = None,
) -> dict:
    """Write generated machine parts (6 classes) with object masks, plus non-part images, to ``out``.

    The layout is in the module docstring. Files already in ``out`` with the same names are
    replaced; nothing else is removed.

    Args:
        out: Output directory, created if needed.
        seed: Non-negative seed; the same seed writes byte-identical files.
        size: Image width and height in pixels, at least :data:`MIN_SIZE`.
        n_per_class: Images per part class, across all three splits.
        splits: Relative sizes of train, validation and test.
        n_other: Non-part images, split in half into ``other/calibration`` and
            ``other/holdout``; defaults to ``n_per_class``.

    Returns:
        The contents of ``out/dataset_info.json``: name, seed, size, classes and image counts.

    Raises:
        ValueError: If an argument is out of range; nothing is written then.
    """
    check_seed(seed)
    _check_size(size)
    sizes = split_sizes(n_per_class, splits)
    n_other = n_per_class if n_other is None else n_other
    if n_other < 2:
        raise ValueError(f"n_other={n_other} cannot fill both {' and '.join(OTHER_SUBSETS)}; use n_other >= 2")
    out = Path(out)
    split_of = np.repeat(np.arange(3), sizes)
    counts = {split: {kind: sizes[i] for kind in PART_KINDS} for i, split in enumerate(SPLITS)}
    for class_index, kind in enumerate(PART_KINDS):
        for index in range(n_per_class):
            image, mask = draw_part(kind, np.random.default_rng([seed, class_index, index]), size)
            name = f"{kind}_{index:04d}.png"
            _save(image, out / SPLITS[split_of[index]] / kind / name)
            _save(mask, out / MASKS_DIR / kind / name)
    other_counts = dict.fromkeys(OTHER_SUBSETS, 0)
    for index in range(n_other):
        kind = OTHER_KINDS[index % len(OTHER_KINDS)]
        subset = OTHER_SUBSETS[0] if index < n_other // 2 else OTHER_SUBSETS[1]
        image = draw_other(kind, np.random.default_rng([seed, _OTHER_STREAM, index]), size)
        _save(image, out / OTHER_DIR / subset / f"{kind}_{index:04d}.png")
        other_counts[subset] += 1
    info = {
        "name": "parts",
        "generator": __name__,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "splits": dict(zip(SPLITS, (float(f) for f in splits))),
        "classes": list(PART_KINDS),
        "counts": counts,
        "other_counts": other_counts,
        "masks": f"{MASKS_DIR}/<class>/<image file name>",
    }
    (out / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    return info


def write_example_batch(path: str | Path, seed: int = 99, size: int = 128, per_part: int = 2) -> list[str]:
    """Write a zip of JPEGs mixing parts (``per_part`` of each kind) and one image of each non-part kind.

    The app's Inspect tab offers it as its example batch: the parts model should name the
    parts and answer "unknown" for the rest. File names say what each image shows, so the
    answers can be checked by eye. Returns the member names.
    """
    import io
    import zipfile

    rng = np.random.default_rng(seed)
    images = [(f"{kind}_{i + 1}.jpg", draw_part(kind, rng, size)[0]) for kind in PART_KINDS for i in range(per_part)]
    images += [(f"other_{kind}.jpg", draw_other(kind, rng, size)) for kind in OTHER_KINDS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        for name, image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            archive.writestr(name, buffer.getvalue())
    return [name for name, _ in images]
