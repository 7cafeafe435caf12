"""What an image's first bytes say: its type (magic bytes; the content decides, never a declared
media type) and, where the format makes it cheap, its size before any decoder runs."""

from __future__ import annotations

import struct


def sniff_image_type(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the magic bytes, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def header_size(data: bytes, kind: str) -> tuple[int, int] | None:
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
