"""Data URIs: `data:<type>[;param…];base64,<payload>` parsed to the image's bytes, bounded as it goes.

The declared media type must be PNG, JPEG or WebP (`image/jpg` is accepted as an alias of
`image/jpeg`, because clients send it) but may disagree with the content, which decides
(images/headers.py). The payload is standard-alphabet base64 with no whitespace; missing trailing
`=` padding is tolerated, wrong padding is not.
"""

from __future__ import annotations

import binascii
import re

from reelq.images.limits import ImageError, check_size

_MEDIA_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/webp": "webp"}
# The part before the comma; a real header is short, so a long one is garbage (and not worth a regex).
_MAX_DATA_URI_HEADER = 256
_BASE64_CHARS = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_data_uri(value: object) -> bool:
    return isinstance(value, str) and value[:5].lower() == "data:"


def parse_data_uri(value: str, field: str) -> bytes:
    """The bytes of a `data:image/(png|jpeg|jpg|webp)[;…];base64,…` URI; the content is not checked here."""
    if not is_data_uri(value):
        raise ImageError(field, "is not a data URI.")
    comma = value.find(",", 0, _MAX_DATA_URI_HEADER)
    if comma < 0:
        raise ImageError(field, "is not a valid data URI: expected data:image/…;base64,<data>.")
    _check_data_uri_header(value[5:comma], field)
    return _decode_base64(value, comma + 1, field)


def _check_data_uri_header(header: str, field: str) -> None:
    media_type, *params = header.split(";")
    if media_type.strip().lower() not in _MEDIA_TYPES:
        shown = media_type[:40] or "no media type"
        raise ImageError(field, f"data URI must be image/png, image/jpeg or image/webp, not {shown!r}.")
    if not params or params[-1].strip().lower() != "base64":
        raise ImageError(field, "data URI must be base64-encoded (data:image/…;base64,<data>).")


_DECODE_STEP = 1 << 20  # base64 characters decoded at a time (a multiple of 4)


def _decode_base64(value: str, start: int, field: str) -> bytes:
    """The base64 payload `value[start:]`, decoded a slice at a time: a 45 MB data URI is never copied
    whole (as its payload, padded, or ASCII-encoded) on its way to the decoded bytes."""
    end = len(value)
    while end > start and end > len(value) - 2 and value[end - 1] == "=":
        end -= 1  # the padding, at most two characters (the pattern below refuses more)
    # Check the size from the length first: a 50 MB body must not be decoded just to be refused.
    check_size((end - start) * 3 // 4, field)
    if start >= len(value):
        raise ImageError(field, "data URI is empty.")
    if not _BASE64_CHARS.fullmatch(value, start):
        raise ImageError(field, "is not valid base64 (only A-Z a-z 0-9 + / and = padding are allowed).")
    if (len(value) - start) % 4 and end != len(value):
        raise ImageError(field, "is not valid base64 (bad length or padding).")  # padded, yet not whole
    pieces: list[bytes] = []
    try:
        for at in range(start, end, _DECODE_STEP):
            piece = value[at : min(at + _DECODE_STEP, end)]
            if at + _DECODE_STEP >= end:  # the last slice: its padding, as b64decode would want it
                piece += "=" * (-(end - start) % 4)
            pieces.append(binascii.a2b_base64(piece, strict_mode=True))
    except (binascii.Error, ValueError):
        raise ImageError(field, "is not valid base64 (bad length or padding).") from None
    data = b"".join(pieces)
    check_size(len(data), field)
    return data
