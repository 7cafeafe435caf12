"""How much of an input image a render can use: no decode keeps more pixels than any frame shows."""

from __future__ import annotations

import math

from PIL import Image

from reelq.domain import ASPECT_RATIOS, RESOLUTIONS, frame_size

# What a render can use of an image. Frames are at most 1920 pixels on a side and between 9:16 and 16:9
# (domain.frame_size), the engines cover-fit the image to the frame and the synthetic engine zooms in up to
# 1.12x: so of an image larger than a 16:9 frame of `RENDER_SIDE` pixels' height, only the centred 16:9
# (or 9:16) part is ever shown, and a short side of `RENDER_SIDE` covers every frame size at every zoom.
_FRAME_SIDE = max(max(frame_size(r, a)) for r in RESOLUTIONS for a in ASPECT_RATIOS)
_MAX_ASPECT = max(max(a, b) / min(a, b) for a, b in ASPECT_RATIOS.values())
RENDER_SIDE = math.ceil(_FRAME_SIDE * 1.125)
RENDER_KEEP_PIXELS = RENDER_SIDE * math.ceil(RENDER_SIDE * _MAX_ASPECT)


def _useful_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred part of a width x height image that any render can show: frames are at most
    `_MAX_ASPECT` wide (or tall), and a cover fit crops the rest away."""
    box_w = min(width, height * _MAX_ASPECT)
    box_h = min(height, width * _MAX_ASPECT)
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def render_scale(width: int, height: int) -> float:
    """How much of its size a render needs of a width x height image: 1.0 for an image of up to
    `RENDER_KEEP_PIXELS`, else the scale that brings the short side of its useful box to `RENDER_SIDE`."""
    if width * height <= RENDER_KEEP_PIXELS:
        return 1.0
    left, top, right, bottom = _useful_box(width, height)
    return min(1.0, RENDER_SIDE / min(right - left, bottom - top))


def shrink(image: Image.Image) -> Image.Image:
    """An RGB image cut down to what a render can use: its useful box at `render_scale`."""
    if image.width * image.height <= RENDER_KEEP_PIXELS:
        return image
    scale = render_scale(*image.size)
    box = _useful_box(*image.size)
    if scale == 1.0:
        return image.crop(tuple(round(edge) for edge in box))  # type: ignore[arg-type]
    left, top, right, bottom = box
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    # BOX is an area average: every source pixel counts once, so fine detail does not alias.
    return image.resize(size, Image.Resampling.BOX, box=box)
