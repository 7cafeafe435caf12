"""Bounded decoding of input images to RGB: a render's image (`decode_image`), and the decode the
create-time check runs (`decode` without keeping the pixels, images/references.py).

Everything here runs on untrusted input, so every failure becomes an `ImageError` naming the field.
The size and pixel bounds are checked before any pixel is decoded, and what the decode will hold at
its peak is estimated from the header (`_plan`) and held in the process's decode budget
(images/budget.py), so a burst waits instead of multiplying. No decode does more than it must: the
create-time check decodes JPEGs at 1/8 scale and keeps no pixels; a render gets at most what any frame
can show (images/render_size.py). Either way every compressed byte is decoded, so a broken file is
refused at create as it would fail the render. Transparent images are flattened onto white (the
colour under fully transparent pixels is arbitrary, often black; white is how logos and cut-outs look
on a page); EXIF orientation is applied, so a portrait photo stays upright (broken EXIF is ignored).
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from reelq.images.budget import BUDGET
from reelq.images.headers import header_size, sniff_image_type
from reelq.images.limits import ImageError, check_cost, check_pixels, check_size, megapixels
from reelq.images.render_size import render_scale, shrink

_ALLOWED_TYPES = "JPEG, PNG or WebP"
_WHITE = (255, 255, 255)

# Pillow's plugin classes parse the header only, and (unlike Image.open) do not run Pillow's global
# decompression-bomb check, whose warning we do not want; our own, lower bound runs before any decode.
_PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}


@dataclass(frozen=True)
class _Plan:
    """What decoding one image will cost, read from its header before any pixel is decoded."""

    draft: tuple[int, int] | None  # JPEG: the least size worth decoding (libjpeg scales by 1/2, 1/4, 1/8)
    cost: int  # bytes the decode holds at its peak, an upper estimate


def decode_image(data: bytes, field: str) -> tuple[Image.Image, str]:
    """The image as a render will use it: RGB, orientation applied, and no larger than any render needs
    (see `RENDER_SIDE`); returns (image, sha256 hex of `data`).

    Raises ImageError when the bytes are not a JPEG/PNG/WebP image, are too large (bytes, pixels or
    memory to decode), or cannot be decoded.
    """
    kind, _size = check_bytes(data, field)
    image = decode(data, kind, field, for_render=True)
    return image, hashlib.sha256(data).hexdigest()


def check_bytes(data: bytes, field: str) -> tuple[str, tuple[int, int] | None]:
    """The image's type and, where its header gives it cheaply, its size (already within the limit)."""
    check_size(len(data), field)
    kind = sniff_image_type(data)
    if kind is None:
        raise ImageError(field, f"is not a {_ALLOWED_TYPES} image.")
    size = header_size(data, kind)
    if size is not None:
        check_pixels(size, field)
    return kind, size


def decode(data: bytes, kind: str, field: str, *, for_render: bool) -> Image.Image:
    try:
        with _PLUGINS[kind](io.BytesIO(data)) as source:
            # The plugin has read the header only; this is the size Pillow will allocate.
            check_pixels(source.size, field)
            plan = _plan(source, kind, for_render)
            check_cost(plan.cost, field)
            with BUDGET.hold(plan.cost):
                if plan.draft is not None:
                    source.draft(source.mode, plan.draft)
                source.load()
                if for_render:
                    return _apply_orientation(shrink(_to_rgb(source)))
                # A corner is enough to prove that the mode converts: converting the whole image would cost
                # 4 bytes a pixel for nothing.
                corner = source.crop((0, 0, min(source.width, 64), min(source.height, 64)))
                return _apply_orientation(_to_rgb(corner))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Only reachable if an operator lowered Pillow's global limit below ours, or warnings are errors.
        raise ImageError(field, f"has too many pixels (the limit is {megapixels()}).") from None
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is the input's fault, not ours
        raise ImageError(field, f"could not be decoded: {_short_reason(exc)}.") from None


def _plan(source: Image.Image, kind: str, for_render: bool) -> _Plan:
    """The decode's draft size and peak memory, from the header (the pixels are not decoded yet).

    Pillow holds a pixel in 1 byte ("1", "L", "P"), 2 ("I;16") or 4 (everything else, RGB included).
    On top of the decoded image: a progressive JPEG makes libjpeg keep every DCT coefficient (2 bytes per
    sample, whatever the draft scale); Pillow's WebP reader (libwebp's animation decoder) holds two RGBA
    canvases and a copy of the frame, 12 bytes a pixel; a render converts the image to RGB at full size
    (4 bytes a pixel) and shrinks it in two passes (at most 4 more). Measured peaks are below these.
    """
    width, height = source.size
    pixels = width * height
    draft = None
    if kind == "jpeg":
        scale = render_scale(width, height) if for_render else 0.0
        if scale < 1.0:
            draft = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    out_w, out_h = _drafted_size(width, height, draft)
    cost = out_w * out_h * _bytes_per_pixel(source.mode)
    if kind == "jpeg" and source.info.get("progressive"):
        cost += pixels * len(source.getbands()) * 2
    if kind == "webp":
        cost += pixels * 12
    if for_render:
        # The RGB conversion (none for RGB), then the shrink's first pass and its result (at most the same).
        cost += out_w * out_h * (4 if source.mode != "RGB" else 0) + out_w * out_h * 4
    return _Plan(draft=draft, cost=cost)


def _bytes_per_pixel(mode: str) -> int:
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _drafted_size(width: int, height: int, draft: tuple[int, int] | None) -> tuple[int, int]:
    """The size Pillow's JPEG draft gives for a requested size (JpegImageFile.draft's arithmetic)."""
    if draft is None:
        return width, height
    scale = min(width // draft[0], height // draft[1])
    scale = next(s for s in (8, 4, 2, 1) if scale >= s)
    return -(-width // scale), -(-height // scale)


def _short_reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:200]


def _apply_orientation(image: Image.Image) -> Image.Image:
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF must not reject an otherwise good picture: keep it as stored
        return image
    return oriented if oriented is not None else image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with 16-bit grey scaled (not clipped) and transparency flattened onto white.

    The metadata (`info`, EXIF included) is kept, so the orientation can be applied afterwards, to the
    smaller image. No full-size copy is made that Pillow can avoid.
    """
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Pillow clips I -> L at 255, which would turn a 16-bit grey photo white: scale by 1/256 first.
        # `point` keeps I;16 at 2 bytes a pixel (the rarer integer modes go through I, 4 bytes).
        if image.mode != "I;16":
            image = image.convert("I")
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, (0, 0), rgba)
        flat.info = {k: v for k, v in image.info.items() if k != "transparency"}
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")
