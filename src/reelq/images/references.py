"""An image reference at create time: a data URI is decoded now, at the least cost (`check_image`); a
URL is checked for syntax only (where its host resolves to is fetch.py's, at fetch time, on every hop).

URLs must be http(s), at most `MAX_URL_LENGTH` characters, with a host, no user credentials (they would
be stored with the task, and `user@host` is a classic way to disguise the real host) and no whitespace
or control characters.
"""

from __future__ import annotations

import unicodedata

import httpx

from reelq.images.datauri import is_data_uri, parse_data_uri
from reelq.images.decode import check_bytes, decode
from reelq.images.limits import MAX_URL_LENGTH, ImageError
from reelq.images.webp import WEBP_CHECKER, WEBP_CHILD_PIXELS


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    lowered = value[:8].lower()
    return lowered.startswith("http://") or lowered.startswith("https://")


def check_image(data: bytes, field: str) -> None:
    """Prove that the image decodes, at the least cost (the create-time check): every compressed byte is
    decoded, but JPEGs at 1/8 scale and nothing is converted at full size; the pixels are not kept. A WebP
    of more than `WEBP_CHILD_PIXELS` is decoded in a child process (see `_WebpChecker`).

    Raises ImageError where `decode_image` would: the same checks, decoders and conversions.
    """
    kind, size = check_bytes(data, field)
    if kind == "webp" and size is not None and size[0] * size[1] > WEBP_CHILD_PIXELS:
        WEBP_CHECKER.check(data, field, size)
        return
    decode(data, kind, field, for_render=False).close()


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
    try:
        host = url.host  # decodes an IDNA (xn--) label, which may not decode: "xn--a" is no name
    except UnicodeError:
        return "has an invalid host name (bad IDNA/punycode label)"
    if not host:
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
        raise ImageError(field, "must be a string.")
    if is_data_uri(value):
        check_image(parse_data_uri(value, field), field)
        return
    if is_http_url(value):
        problem = url_syntax_problem(value)
        if problem is not None:
            raise ImageError(field, f"{problem}.")
        return
    raise ImageError(field, "must be an http(s) URL or a data:image/…;base64 URI.")
