"""The bounds every input image is held to, and the error that names the field.

The bounds are read here at each check (`check_size`, `check_pixels`, `check_cost`), so that they are
one setting each wherever an image is parsed or decoded.
"""

from __future__ import annotations

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


class ImageError(ValueError):
    """An input image is unusable: which field, and why (a phrase to follow the field's name).

    Kept apart so each API surface names the field its own way (OpenAI's `input_reference` is our
    `first_image`); `str()` is the message with our name.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field} {reason}")
        self.field = field
        self.reason = reason


def check_size(size: int, field: str) -> None:
    """Refuse `size` bytes of image (counted before or after decoding base64) above `MAX_IMAGE_BYTES`."""
    if size > MAX_IMAGE_BYTES:
        raise ImageError(field, f"is larger than {megabytes(MAX_IMAGE_BYTES)}.")


def check_pixels(size: tuple[int, int], field: str) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageError(field, f"could not be decoded: it has no pixels ({width}x{height}).")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(field, f"is too large: {width}x{height} pixels (the limit is {megapixels()}).")


def check_cost(cost: int, field: str) -> None:
    if cost > DECODE_BUDGET_BYTES:
        raise ImageError(
            field, f"would need {megabytes(cost)} of memory to decode "
            f"(the limit is {megabytes(DECODE_BUDGET_BYTES)})."
        )


def megabytes(n: int) -> str:
    value = n / (1024 * 1024)
    return f"{value:g} MB"


def megapixels() -> str:
    return f"{MAX_IMAGE_PIXELS / 1_000_000:g} megapixels"
