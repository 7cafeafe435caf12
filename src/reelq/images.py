"""Input images: data URIs, content sniffing, URL syntax, and bounded decoding to RGB.

Everything here runs on untrusted input, so every failure becomes an `ImageError` whose message names the
field and can be shown to the client as is (a 400 at create, or the task's `error` in the worker).

Decisions (see SPEC §1 `first_image`):
- The content decides the type: only PNG, JPEG and WebP, recognised by their magic bytes. A data URI's
  declared media type must be one of the three (`image/jpg` is accepted as an alias of `image/jpeg`,
  because clients send it), but may disagree with the content.
- Data URIs must be `data:<type>[;param…];base64,<payload>`; the payload is standard-alphabet base64 with
  no whitespace; missing trailing `=` padding is tolerated, wrong padding is not.
- Bounds: 20 MB of image bytes and 40 megapixels, both checked before any pixel is decoded (the
  dimensions come from the file header), so decompression bombs cost nothing.
- Transparent images are flattened onto white: the colour under fully transparent pixels is arbitrary
  (often black), and white is how such images (logos, cut-outs) look on a page.
- EXIF orientation is applied, so a portrait photo stays upright; broken EXIF is ignored, not fatal.
- URLs (checked here for syntax only; `fetch.py` checks addresses) must be http(s), at most 2048
  characters, with a host, no user credentials (they would be stored with the task, and `user@host` is a
  classic way to disguise the real host) and no whitespace or control characters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import struct
import unicodedata

import httpx
import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# 40 MP is above any camera photo a client would reasonably send, yet bounds the decoded RGBA buffer to
# 160 MB. It is well below Pillow's own limit (~89 MP), so Pillow's bomb warning never fires for us.
MAX_IMAGE_PIXELS = 40_000_000
MAX_URL_LENGTH = 2048

_ALLOWED_TYPES = "JPEG, PNG or WebP"
_MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
# The part before the comma; a real header is short, so a long one is garbage (and not worth a regex).
_MAX_DATA_URI_HEADER = 256
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITE = (255, 255, 255)

# Pillow's plugin classes parse the header only, and (unlike Image.open) do not run Pillow's global
# decompression-bomb check, whose warning we do not want; our own, lower bound runs before any decode.
_PLUGINS: dict[str, type[Image.Image]] = {
    "png": PngImagePlugin.PngImageFile,
    "jpeg": JpegImagePlugin.JpegImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}


class ImageError(ValueError):
    """An input image is unusable; the message names the field and is meant for the client."""


# --- type sniffing ---------------------------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the magic bytes, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


# --- data URIs -------------------------------------------------------------------------------------------


def is_data_uri(value: object) -> bool:
    return isinstance(value, str) and value[:5].lower() == "data:"


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    lowered = value[:8].lower()
    return lowered.startswith("http://") or lowered.startswith("https://")


def parse_data_uri(value: str, field: str) -> bytes:
    """The bytes of a `data:image/(png|jpeg|jpg|webp)[;…];base64,…` URI; the content is not checked here."""
    if not is_data_uri(value):
        raise ImageError(f"{field} is not a data URI.")
    comma = value.find(",", 0, _MAX_DATA_URI_HEADER)
    if comma < 0:
        raise ImageError(f"{field} is not a valid data URI: expected data:image/…;base64,<data>.")
    _check_data_uri_header(value[5:comma], field)
    return _decode_base64(value[comma + 1 :], field)


def _check_data_uri_header(header: str, field: str) -> None:
    media_type, *params = header.split(";")
    if media_type.strip().lower() not in _MEDIA_TYPES:
        shown = media_type[:40] or "no media type"
        raise ImageError(f"{field} data URI must be image/png, image/jpeg or image/webp, not {shown!r}.")
    if not params or params[-1].strip().lower() != "base64":
        raise ImageError(f"{field} data URI must be base64-encoded (data:image/…;base64,<data>).")


def _decode_base64(payload: str, field: str) -> bytes:
    # Check the size from the length first: a 50 MB body must not be decoded just to be refused.
    if _base64_decoded_length(payload) > MAX_IMAGE_BYTES:
        raise ImageError(f"{field} is larger than {_megabytes(MAX_IMAGE_BYTES)}.")
    if not payload:
        raise ImageError(f"{field} data URI is empty.")
    if not _BASE64_CHARS.fullmatch(payload):
        raise ImageError(f"{field} is not valid base64 (only A-Z a-z 0-9 + / and = padding are allowed).")
    if "=" not in payload:
        payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{field} is not valid base64 (bad length or padding).") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{field} is larger than {_megabytes(MAX_IMAGE_BYTES)}.")
    return data


def _base64_decoded_length(payload: str) -> int:
    return len(payload.rstrip("=")) * 3 // 4


def _megabytes(n: int) -> str:
    value = n / (1024 * 1024)
    return f"{value:g} MB"


# --- decoding --------------------------------------------------------------------------------------------


def decode_image(data: bytes, field: str) -> tuple[Image.Image, str]:
    """Decode an input image to RGB with its orientation applied; returns (image, sha256 hex of `data`).

    Raises ImageError when the bytes are not a JPEG/PNG/WebP image, are too large (bytes or pixels), or
    cannot be decoded.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{field} is larger than {_megabytes(MAX_IMAGE_BYTES)}.")
    kind = sniff_image_type(data)
    if kind is None:
        raise ImageError(f"{field} is not a {_ALLOWED_TYPES} image.")
    header_size = _header_size(data, kind)
    if header_size is not None:
        _check_pixels(header_size, field)
    image = _decode_pixels(data, kind, field)
    return image, hashlib.sha256(data).hexdigest()


def _decode_pixels(data: bytes, kind: str, field: str) -> Image.Image:
    try:
        with _PLUGINS[kind](io.BytesIO(data)) as source:
            # The plugin has read the header only; this is the size Pillow will allocate.
            _check_pixels(source.size, field)
            source.load()
            oriented = _apply_orientation(source)
            return _to_rgb(oriented)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Only reachable if an operator lowered Pillow's global limit below ours, or warnings are errors.
        raise ImageError(f"{field} has too many pixels (the limit is {_megapixels()}).") from None
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is the input's fault, not ours
        raise ImageError(f"{field} could not be decoded: {_short_reason(exc)}.") from None


def _check_pixels(size: tuple[int, int], field: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(f"{field} could not be decoded: it has no pixels ({width}x{height}).")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(f"{field} is too large: {width}x{height} pixels (the limit is {_megapixels()}).")


def _megapixels() -> str:
    return f"{MAX_IMAGE_PIXELS / 1_000_000:g} megapixels"


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
    """RGB, with 16-bit grey scaled (not clipped) and transparency flattened onto white."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # Pillow clips I -> L at 255, which would turn a 16-bit grey photo white; scale it instead.
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        image = Image.fromarray(grey.astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, _WHITE)
        flat.paste(rgba, (0, 0), rgba)
        return flat
    return image.convert("RGB")


# --- header dimensions -----------------------------------------------------------------------------------


def _header_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) read from the header without Pillow, where the format makes that cheap.

    Pillow's WebP plugin hands the whole file to libwebp, which allocates the canvas while opening, so a
    WebP's size must be known before Pillow sees it. PNG's IHDR is checked here too; JPEG's SOF marker is
    left to Pillow's header parser (which allocates nothing).
    """
    if kind == "png":
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    if kind == "webp":
        return _webp_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk, body = data[12:16], data[20:30]
    if chunk == b"VP8X" and len(body) >= 10:
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return width, height
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


# --- references at create time ---------------------------------------------------------------------------


def url_syntax_problem(value: str) -> str | None:
    """Why `value` is not an acceptable http(s) URL (a phrase to follow the field name), or None.

    Syntax only: where the host resolves to is checked by `fetch.py`, at fetch time, on every hop.
    """
    if len(value) > MAX_URL_LENGTH:
        return f"is longer than {MAX_URL_LENGTH} characters"
    if any(_is_forbidden_url_char(c) for c in value):
        return "contains whitespace or control characters"
    try:
        url = httpx.URL(value)
    except (httpx.InvalidURL, ValueError, TypeError):
        return "is not a valid URL"
    if url.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if not url.host:
        return "has no host"
    if url.port is not None and not 0 < url.port < 65536:
        return "is not a valid URL (bad port)"
    if url.userinfo:
        return "must not contain user credentials (user:password@)"
    return None


def _is_forbidden_url_char(char: str) -> bool:
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn")


def validate_image_reference(value: object, field: str) -> None:
    """Create-time check: a data URI is decoded and checked fully now; a URL is checked for syntax only."""
    if not isinstance(value, str):
        raise ImageError(f"{field} must be a string.")
    if is_data_uri(value):
        image, _ = decode_image(parse_data_uri(value, field), field)
        image.close()
        return
    if is_http_url(value):
        problem = url_syntax_problem(value)
        if problem is not None:
            raise ImageError(f"{field} {problem}.")
        return
    raise ImageError(f"{field} must be an http(s) URL or a data:image/…;base64 URI.")
