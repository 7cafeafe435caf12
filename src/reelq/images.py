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
- Memory: what a decode will hold at its peak is estimated from the header (pixels x bytes per pixel of
  the mode, plus the decoder's own buffers) and must fit `DECODE_BUDGET_BYTES`; decodes in one process
  share that budget and `DECODE_SLOTS`, so a burst waits instead of multiplying; large blocks are mapped
  apart, so their memory goes back to the OS as soon as it is freed.
- Decode no more than needed: the create-time check (`check_image`) decodes JPEGs at 1/8 scale and keeps
  no pixels; a render (`decode_image`) gets at most what any frame can show (`RENDER_SIDE`). Either way
  every compressed byte is decoded, so a broken file is refused at create as it would fail the render.
- WebP is checked in a child process when large: Pillow's WebP reader copies the decoded frame into a
  bytes object, and frees its canvases, holding the GIL (a 40 MP WebP stalled the event loop ~100-200 ms
  from a thread), and it offers no reduced decode (`_webp` exposes only libwebp's animation decoder, at
  full size). See `_WebpChecker`.
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
import contextlib
import ctypes
import hashlib
import io
import math
import multiprocessing
import os
import re
import signal
import struct
import threading
import time
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import httpx
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from reelq.domain import ASPECT_RATIOS, RESOLUTIONS, frame_size

MAX_IMAGE_BYTES = 20 * 1024 * 1024
# 40 MP is above any camera photo a client would reasonably send, yet bounds the decoded RGBA buffer to
# 160 MB. It is well below Pillow's own limit (~89 MP), so Pillow's bomb warning never fires for us.
MAX_IMAGE_PIXELS = 40_000_000
MAX_URL_LENGTH = 2048

# The most one process's decodes hold at once. The largest single cost within the limits is a 40 MP WebP
# decoded for a render (Pillow's WebP reader holds 16 bytes a pixel, plus 4 for the RGB result): 800 MB.
# Nothing else comes near (a 40 MP RGBA PNG: 160 MB at create, 320 MB for a render), so a burst of those
# is decoded two at a time, and a WebP that size alone.
DECODE_BUDGET_BYTES = 800 * 1024 * 1024
DECODE_SLOTS = 2

# What a render can use of an image. Frames are at most 1920 pixels on a side and between 9:16 and 16:9
# (domain.frame_size), the engines cover-fit the image to the frame and the synthetic engine zooms in up to
# 1.12x: so of an image larger than a 16:9 frame of `RENDER_SIDE` pixels' height, only the centred 16:9
# (or 9:16) part is ever shown, and a short side of `RENDER_SIDE` covers every frame size at every zoom.
_FRAME_SIDE = max(max(frame_size(r, a)) for r in RESOLUTIONS for a in ASPECT_RATIOS)
_MAX_ASPECT = max(max(a, b) / min(a, b) for a, b in ASPECT_RATIOS.values())
RENDER_SIDE = math.ceil(_FRAME_SIDE * 1.125)
RENDER_KEEP_PIXELS = RENDER_SIDE * math.ceil(RENDER_SIDE * _MAX_ASPECT)

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
    kind, _size = _check_bytes(data, field)
    image = _decode(data, kind, field, for_render=True)
    return image, hashlib.sha256(data).hexdigest()


def check_image(data: bytes, field: str) -> None:
    """Prove that the image decodes, at the least cost (the create-time check): every compressed byte is
    decoded, but JPEGs at 1/8 scale and nothing is converted at full size; the pixels are not kept. A WebP
    of more than `WEBP_CHILD_PIXELS` is decoded in a child process (see `_WebpChecker`).

    Raises ImageError where `decode_image` would: the same checks, decoders and conversions.
    """
    kind, size = _check_bytes(data, field)
    if kind == "webp" and size is not None and size[0] * size[1] > WEBP_CHILD_PIXELS:
        _WEBP_CHECKER.check(data, field, size)
        return
    _decode(data, kind, field, for_render=False).close()


def _check_bytes(data: bytes, field: str) -> tuple[str, tuple[int, int] | None]:
    """The image's type and, where its header gives it cheaply, its size (already within the limit)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{field} is larger than {_megabytes(MAX_IMAGE_BYTES)}.")
    kind = sniff_image_type(data)
    if kind is None:
        raise ImageError(f"{field} is not a {_ALLOWED_TYPES} image.")
    header_size = _header_size(data, kind)
    if header_size is not None:
        _check_pixels(header_size, field)
    return kind, header_size


def _decode(data: bytes, kind: str, field: str, *, for_render: bool) -> Image.Image:
    try:
        with _PLUGINS[kind](io.BytesIO(data)) as source:
            # The plugin has read the header only; this is the size Pillow will allocate.
            _check_pixels(source.size, field)
            plan = _plan(source, kind, for_render)
            _check_cost(plan.cost, field)
            with _BUDGET.hold(plan.cost):
                if plan.draft is not None:
                    source.draft(source.mode, plan.draft)
                source.load()
                if for_render:
                    return _apply_orientation(_shrink(_to_rgb(source)))
                # A corner is enough to prove that the mode converts: converting the whole image would cost
                # 4 bytes a pixel for nothing.
                corner = source.crop((0, 0, min(source.width, 64), min(source.height, 64)))
                return _apply_orientation(_to_rgb(corner))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Only reachable if an operator lowered Pillow's global limit below ours, or warnings are errors.
        raise ImageError(f"{field} has too many pixels (the limit is {_megapixels()}).") from None
    except MemoryError:
        raise
    except Exception as exc:  # any decoder failure on untrusted bytes is the input's fault, not ours
        raise ImageError(f"{field} could not be decoded: {_short_reason(exc)}.") from None


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
        scale = _render_scale(width, height) if for_render else 0.0
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


def _check_cost(cost: int, field: str) -> None:
    if cost > DECODE_BUDGET_BYTES:
        raise ImageError(
            f"{field} would need {_megabytes(cost)} of memory to decode "
            f"(the limit is {_megabytes(DECODE_BUDGET_BYTES)})."
        )


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


def _useful_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred part of a width x height image that any render can show: frames are at most
    `_MAX_ASPECT` wide (or tall), and a cover fit crops the rest away."""
    box_w = min(width, height * _MAX_ASPECT)
    box_h = min(height, width * _MAX_ASPECT)
    left, top = (width - box_w) / 2, (height - box_h) / 2
    return (left, top, left + box_w, top + box_h)


def _render_scale(width: int, height: int) -> float:
    """How much of its size a render needs of a width x height image: 1.0 for an image of up to
    `RENDER_KEEP_PIXELS`, else the scale that brings the short side of its useful box to `RENDER_SIDE`."""
    if width * height <= RENDER_KEEP_PIXELS:
        return 1.0
    left, top, right, bottom = _useful_box(width, height)
    return min(1.0, RENDER_SIDE / min(right - left, bottom - top))


def _shrink(image: Image.Image) -> Image.Image:
    """An RGB image cut down to what a render can use: its useful box at `_render_scale`."""
    if image.width * image.height <= RENDER_KEEP_PIXELS:
        return image
    scale = _render_scale(*image.size)
    box = _useful_box(*image.size)
    if scale == 1.0:
        return image.crop(tuple(round(edge) for edge in box))  # type: ignore[arg-type]
    left, top, right, bottom = box
    size = (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale)))
    # BOX is an area average: every source pixel counts once, so fine detail does not alias.
    return image.resize(size, Image.Resampling.BOX, box=box)


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


# --- the decode budget -----------------------------------------------------------------------------------


class _DecodeBudget:
    """At most `slots` decodes at once in this process, holding at most `limit` bytes between them.

    A decode waits for room rather than failing: a burst of large images is decoded a few at a time,
    never all at once. (Costs above `limit` are refused before they get here.)
    """

    def __init__(self, limit: int, slots: int) -> None:
        self.limit = limit
        self.slots = slots
        self._used = 0
        self._running = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self._running < self.slots and self._used + cost <= self.limit)
            self._used += cost
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._used -= cost
                self._running -= 1
                self._changed.notify_all()


# glibc's mallopt parameter number (malloc.h) and the size from which allocations get their own mapping.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 8 * 1024 * 1024


def _map_large_blocks_apart() -> None:
    """Make glibc give every allocation of 8 MB or more its own mapping, returned to the OS when freed.

    Decoded pixels are large blocks (Pillow allocates images in 16 MB blocks; libwebp, libjpeg and the
    bytes of a frame in one piece). By default glibc raises its mmap threshold after the first such block
    is freed, and later ones come from the heaps of the decoding threads' arenas, where freed memory stays
    with the process: 8 creates of a 40 MP image left the API process at 5 GB for good. malloc_trim after
    each burst would hand it back, but then every new image is zeroed (calloc) on reused memory while
    Pillow holds the GIL: measured 90-130 ms stalls of the event loop per 40 MP RGBA decode, against 15 ms
    with fresh mappings, which the kernel zeroes lazily as the decoder (not holding the GIL) writes them.
    8 MB keeps smaller buffers (a 1080p video frame is 6 MB) on the heap as before. Process-wide, set once
    by whichever process imports this module; elsewhere than glibc there is nothing to set.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


_map_large_blocks_apart()
_BUDGET = _DecodeBudget(DECODE_BUDGET_BYTES, DECODE_SLOTS)


# --- large WebPs: checked in a child process -------------------------------------------------------------

# From how many pixels a WebP's create-time check runs in a child process. Below it the GIL-held copy is
# short (4 MP: 16 MB, a few ms) and a thread is cheaper than a round trip to another process.
WEBP_CHILD_PIXELS = 4_000_000
# A check that takes longer is stopped (its process killed) and the image refused: a 40 MP WebP takes
# under a second, so this is only ever reached by a decoder stuck on hostile input.
WEBP_CHECK_TIMEOUT = 60.0
# What a WebP check holds at its peak (`_plan`: the RGB or RGBA frame, 4 bytes a pixel, plus libwebp's
# canvases and Pillow's copy, 12).
_WEBP_CHECK_BYTES_PER_PIXEL = 16


class _WebpChecker:
    """Checks large WebPs (`check_image`) in a pool of child processes, so that no pixel work holds this
    process's GIL (the API's event loop runs here).

    Only the bytes go to the child and only the verdict (None, or the ImageError's message) comes back.
    The pool is started on first use (spawn, so no copy of the server's state or threads is inherited),
    has `DECODE_SLOTS` processes at most, and every check holds its cost in this process's decode budget
    while the child decodes: the children's memory is this host's memory too. A child that dies (killed
    for memory, say) breaks the pool: it is replaced, and the check is tried once more on the new one (the
    death may have been a neighbouring check's); a second death refuses the image with a clear message.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def check(self, data: bytes, field: str, size: tuple[int, int]) -> None:
        cost = size[0] * size[1] * _WEBP_CHECK_BYTES_PER_PIXEL
        _check_cost(cost, field)
        with _BUDGET.hold(cost):
            for _attempt in range(2):
                pool = self._current()
                try:
                    future = pool.submit(_check_in_child, data, field)
                    message = future.result(timeout=WEBP_CHECK_TIMEOUT)
                except FutureTimeout:  # first: since 3.11 it is the builtin TimeoutError, an OSError
                    self._discard(pool, kill=True)
                    raise ImageError(
                        f"{field} could not be decoded: it took longer than {WEBP_CHECK_TIMEOUT:g} s."
                    ) from None
                except (BrokenProcessPool, OSError, RuntimeError):
                    # A child died, could not be started, or the pool was shut down under us.
                    self._discard(pool, kill=False)
                    continue
                if message is not None:
                    raise ImageError(message)
                return
        raise ImageError(
            f"{field} could not be decoded: the decoding process stopped unexpectedly (out of memory?); "
            "try again, or send a smaller image."
        )

    def pids(self) -> list[int]:
        """The process ids of the pool's children now (none before the first large WebP)."""
        with self._lock:
            return list(self._processes(self._pool))

    def close(self) -> None:
        """Stop the children (at server shutdown); a later check starts a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_child,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor, *, kill: bool) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        if kill:
            # A running task cannot be cancelled, and Python 3.11's executor has no way to stop its
            # workers (3.14's kill_workers): kill them by hand, the others' checks are retried.
            for process in self._processes(pool).values():
                with contextlib.suppress(OSError):
                    process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _processes(pool: ProcessPoolExecutor | None) -> dict[int, multiprocessing.process.BaseProcess]:
        return dict(getattr(pool, "_processes", None) or {})


def _start_child(parent: int) -> None:
    """Runs first in each pool child."""
    # Ctrl-C reaches the whole process group: the server shuts the pool down, the children need not
    # print a KeyboardInterrupt traceback each.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The children hold both ends of the pool's pipes, so a server killed outright (kill -9) would leave
    # them waiting for work forever: leave with it.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _check_in_child(data: bytes, field: str) -> str | None:
    """`check_image` in a pool child, in this process: None if the image decodes, else why not."""
    try:
        kind, _size = _check_bytes(data, field)
        _decode(data, kind, field, for_render=False).close()
    except ImageError as exc:
        return str(exc)
    except MemoryError:
        return f"{field} could not be decoded: out of memory."
    return None


def close_decoder_processes() -> None:
    """Stop the processes that check large WebPs (the API calls this at shutdown)."""
    _WEBP_CHECKER.close()


_WEBP_CHECKER = _WebpChecker(DECODE_SLOTS)


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
    """Create-time check: a data URI is decoded now (`check_image`); a URL is checked for syntax only."""
    if not isinstance(value, str):
        raise ImageError(f"{field} must be a string.")
    if is_data_uri(value):
        check_image(parse_data_uri(value, field), field)
        return
    if is_http_url(value):
        problem = url_syntax_problem(value)
        if problem is not None:
            raise ImageError(f"{field} {problem}.")
        return
    raise ImageError(f"{field} must be an http(s) URL or a data:image/…;base64 URI.")
