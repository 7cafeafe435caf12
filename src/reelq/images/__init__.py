"""Input images: data URIs, content sniffing, URL syntax, and bounded decoding to RGB.

Everything here runs on untrusted input, so every failure becomes an `ImageError` whose message names the
field and can be shown to the client as is (a 400 at create, or the task's `error` in the worker).

One module a concern:
- `limits.py`: the bounds (20 MB of image bytes, 40 megapixels, the decode budget) and `ImageError`;
- `headers.py`: the type from the magic bytes (PNG, JPEG or WebP; the content decides) and the size
  from the header, before any decoder runs;
- `datauri.py`: `data:<type>[;param…];base64,<payload>` parsed to bytes, a slice at a time;
- `decode.py`: bounded decoding: cost estimated from the header and held in the process's budget
  (`budget.py`), a render's image no larger than any frame shows (`render_size.py`), transparency
  flattened onto white, EXIF orientation applied;
- `webp.py`: large WebPs checked in child processes (Pillow's WebP reader holds the GIL);
- `references.py`: the create-time check of a reference: a data URI decoded now (`check_image`, JPEGs
  at 1/8 scale, no pixels kept), a URL checked for syntax only (`fetch.py` checks addresses).

The contract they implement: docs/SPEC.md §1 (`first_image`).
"""

from reelq.images.datauri import is_data_uri, parse_data_uri
from reelq.images.decode import decode_image
from reelq.images.headers import sniff_image_type
from reelq.images.limits import (
    DECODE_BUDGET_BYTES,
    DECODE_SLOTS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_URL_LENGTH,
    ImageError,
)
from reelq.images.references import check_image, is_http_url, url_syntax_problem, validate_image_reference
from reelq.images.render_size import RENDER_SIDE
from reelq.images.webp import close_decoder_processes

__all__ = [
    "DECODE_BUDGET_BYTES",
    "DECODE_SLOTS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_URL_LENGTH",
    "RENDER_SIDE",
    "ImageError",
    "check_image",
    "close_decoder_processes",
    "decode_image",
    "is_data_uri",
    "is_http_url",
    "parse_data_uri",
    "sniff_image_type",
    "url_syntax_problem",
    "validate_image_reference",
]
