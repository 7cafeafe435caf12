"""Input images: sniffing, data URIs, bounded decoding, orientation, alpha, URL syntax."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import time
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from reelq import images
from reelq.images import (
    MAX_IMAGE_BYTES,
    ImageError,
    datauri,
    decode,
    decode_image,
    headers,
    is_data_uri,
    is_http_url,
    limits,
    parse_data_uri,
    sniff_image_type,
    validate_image_reference,
)
from reelq.images.budget import DecodeBudget


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def split_image(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: orientation changes are visible."""
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return image


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's calling card)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


PNG = encode(split_image(), "PNG")
JPEG = encode(split_image(), "JPEG", quality=95)
WEBP = encode(split_image(), "WEBP", lossless=True)
WEBP_LOSSY = encode(split_image(), "WEBP", quality=90)
GIF = encode(split_image(), "GIF")


# --- sniffing --------------------------------------------------------------------------------------------


def test_sniff_recognises_the_three_types_by_content() -> None:
    assert sniff_image_type(PNG) == "png"
    assert sniff_image_type(JPEG) == "jpeg"
    assert sniff_image_type(WEBP) == "webp"
    assert sniff_image_type(WEBP_LOSSY) == "webp"
    assert sniff_image_type(GIF) is None
    assert sniff_image_type(b"hello, world") is None
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WAVE") is None
    assert sniff_image_type(b"") is None


# --- decoding --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [PNG, JPEG, WEBP, WEBP_LOSSY], ids=["png", "jpeg", "webp", "webp-lossy"])
def test_decode_gives_rgb_and_digest(data: bytes) -> None:
    image, digest = decode_image(data, "first_image")
    assert image.mode == "RGB"
    assert image.size == (40, 20)
    assert digest == hashlib.sha256(data).hexdigest()
    red, blue = image.getpixel((5, 10)), image.getpixel((35, 10))
    assert red[0] > 200 and red[2] < 60
    assert blue[2] > 200 and blue[0] < 60


@pytest.mark.parametrize(
    "data", [GIF, b"just some text\n", b"", encode(split_image(), "BMP")], ids=["gif", "text", "empty", "bmp"]
)
def test_other_content_is_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match=r"^first_image is not a JPEG, PNG or WebP image"):
        decode_image(data, "first_image")


@pytest.mark.parametrize("data", [PNG, JPEG, WEBP], ids=["png", "jpeg", "webp"])
def test_truncated_image_is_refused(data: bytes) -> None:
    with pytest.raises(ImageError, match=r"^last_image could not be decoded: "):
        decode_image(data[: len(data) // 2], "last_image")


def test_corrupt_png_is_refused() -> None:
    broken = bytearray(PNG)
    broken[40:60] = b"\x00" * 20  # inside IDAT: the CRC no longer matches
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_image(bytes(broken), "first_image")


@pytest.fixture
def pillow_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What decode.py asked of Pillow: "open <type>" (the plugin reads the header; WebP's makes libwebp's
    decoder) and "load" (pixels decoded, memory allocated; refused here). A bomb refused from its header
    never gets that far, which is what makes it quick: seen, not timed."""
    calls: list[str] = []

    def recorded(kind: str, plugin: type[ImageFile.ImageFile]) -> object:
        def open_(*args: object, **kwargs: object) -> ImageFile.ImageFile:
            calls.append(f"open {kind}")
            return plugin(*args, **kwargs)

        return open_

    def load(self: ImageFile.ImageFile) -> None:
        calls.append("load")
        raise AssertionError("Pillow was asked to decode the pixels")

    monkeypatch.setattr(decode, "_PLUGINS", {kind: recorded(kind, p) for kind, p in decode._PLUGINS.items()})
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_png_bomb_is_refused_from_its_header_quickly(pillow_calls: list[str]) -> None:
    bomb = png_claiming(50_000, 50_000)
    assert len(bomb) < 200
    with pytest.raises(ImageError, match=r"first_image is too large: 50000x50000 pixels"):
        decode_image(bomb, "first_image")
    assert pillow_calls == []  # refused from the header: no decoder ran, so nothing was allocated


def _patch_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    sof = data.index(b"\xff\xc0")
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def test_jpeg_bomb_is_refused_from_its_header_quickly(pillow_calls: list[str]) -> None:
    bomb = _patch_jpeg_size(JPEG, 60_000, 60_000)
    with pytest.raises(ImageError, match=r"too large: 60000x60000 pixels"):
        decode_image(bomb, "first_image")
    assert pillow_calls == ["open jpeg"]  # the header read by Pillow, the pixels never decoded


def _webp_vp8x_claiming(width: int, height: int) -> bytes:
    body = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def _webp_vp8l_claiming(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + bits.to_bytes(4, "little") + bytes(16)
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


@pytest.mark.parametrize(
    "data", [_webp_vp8x_claiming(16_000, 16_000), _webp_vp8l_claiming(16_000, 16_000)], ids=["vp8x", "vp8l"]
)
def test_webp_bomb_is_refused_before_libwebp_allocates(data: bytes, pillow_calls: list[str]) -> None:
    with pytest.raises(ImageError, match=r"too large: 16000x16000 pixels"):
        decode_image(data, "first_image")
    assert pillow_calls == []  # Pillow's WebP plugin (libwebp's decoder) was never opened


def test_webp_header_parser_agrees_with_pillow() -> None:
    for data in (WEBP, WEBP_LOSSY, encode(Image.new("RGBA", (33, 17)), "WEBP")):
        assert headers.header_size(data, "webp") == Image.open(io.BytesIO(data)).size


def test_pixel_limit_is_ours_and_pillow_global_is_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(limits, "MAX_IMAGE_PIXELS", 799)  # 40x20 = 800 pixels
    with pytest.raises(ImageError, match="too large: 40x20 pixels"):
        decode_image(JPEG, "first_image")  # JPEG: the limit is checked on Pillow's header parse
    assert before == Image.MAX_IMAGE_PIXELS


def test_no_pillow_bomb_warning_whatever_its_global_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # Our own limit governs; Pillow's global check (a warning, which pytest turns into an error here) is
    # not reached, so a low global limit set elsewhere cannot break or spam decoding...
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for data in (PNG, JPEG):
            image, _ = decode_image(data, "first_image")
            assert image.size == (40, 20)
        # ...except that Pillow's WebP plugin raises its own DecompressionBombError (at twice the global
        # limit) while opening: that must become an ImageError, not escape.
        with pytest.raises(ImageError, match="first_image has too many pixels"):
            decode_image(WEBP, "first_image")


def test_oversized_bytes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_IMAGE_BYTES", len(PNG) - 1)
    with pytest.raises(ImageError, match=r"first_image is larger than"):
        decode_image(PNG, "first_image")


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: display rotated 90 degrees clockwise
    data = encode(split_image((40, 20)), "JPEG", quality=95, exif=exif)
    image, _ = decode_image(data, "first_image")
    assert image.size == (20, 40)
    # Rotating clockwise puts the left (red) half on top.
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow warns (not raises) outside pytest
def test_broken_exif_does_not_reject_the_image() -> None:
    data = encode(split_image(), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    image, _ = decode_image(data, "first_image")
    assert image.size == (40, 20)


def test_invalid_orientation_value_is_ignored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 42
    image, _ = decode_image(encode(split_image(), "JPEG", exif=exif), "first_image")
    assert image.size == (40, 20)


def test_alpha_is_flattened_onto_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (255, 0, 0, 128))
    image, _ = decode_image(encode(rgba, "PNG"), "first_image")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (255, 0, 0)
    r, g, b = image.getpixel((2, 2))
    assert r == 255 and 120 <= g <= 135 and 120 <= b <= 135


def test_palette_transparency_is_flattened_onto_white() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 0, 255, 0])
    palette.putpixel((1, 1), 1)
    image, _ = decode_image(encode(palette, "PNG", transparency=0), "first_image")
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (0, 255, 0)


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    image, _ = decode_image(encode(grey, "PNG"), "first_image")
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_cmyk_jpeg_is_converted() -> None:
    image, _ = decode_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), "first_image")
    assert image.mode == "RGB"
    r, g, b = image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


# --- data URIs -------------------------------------------------------------------------------------------


def test_data_uri_round_trip() -> None:
    assert parse_data_uri(data_uri(PNG), "first_image") == PNG


@pytest.mark.parametrize(
    "prefix",
    [
        "data:image/png;base64,",
        "DATA:IMAGE/PNG;BASE64,",
        "data:image/jpg;base64,",
        "data:image/jpeg;base64,",
        "data:image/webp;base64,",
        "data:image/png;name=a.png;base64,",
    ],
)
def test_data_uri_media_types_accepted(prefix: str) -> None:
    assert parse_data_uri(prefix + base64.b64encode(JPEG).decode(), "first_image") == JPEG


def test_declared_type_may_disagree_with_content_but_content_must_be_allowed() -> None:
    # Declared PNG, really JPEG: the content wins.
    image, _ = decode_image(parse_data_uri(data_uri(JPEG, "image/png"), "first_image"), "first_image")
    assert image.size == (40, 20)
    # Declared PNG, really GIF: refused by content.
    with pytest.raises(ImageError, match="not a JPEG, PNG or WebP"):
        validate_image_reference(data_uri(GIF, "image/png"), "first_image")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("data:image/gif;base64,R0lGOD", "must be image/png, image/jpeg or image/webp, not 'image/gif'"),
        ("data:text/plain;base64,aGVsbG8=", "not 'text/plain'"),
        ("data:;base64,aGVsbG8=", "not 'no media type'"),
        ("data:image/png,%89PNG", "must be base64-encoded"),
        ("data:image/png;base64", "not a valid data URI"),
        ("data:image/png;base64,", "data URI is empty"),
        ("data:image/png;base64,iVBOR w0KGgo=", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo\n", "not valid base64"),
        ("data:image/png;base64,iVBOR*w0KGgo", "not valid base64"),
        ("data:image/png;base64,iVBORw0KG_-o", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgoé", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGg=", "bad length or padding"),
        ("data:image/png;base64,iVBORw0KG", "bad length or padding"),
        ("data:image/png;base64,aGVsbG8===", "not valid base64"),
    ],
)
def test_bad_data_uris_are_refused(value: str, message: str) -> None:
    with pytest.raises(ImageError, match=r"^first_image ") as excinfo:
        parse_data_uri(value, "first_image")
    assert message in str(excinfo.value)


def test_unpadded_base64_is_tolerated() -> None:
    payload = base64.b64encode(b"ab").decode().rstrip("=")
    assert parse_data_uri(f"data:image/png;base64,{payload}", "first_image") == b"ab"


def test_too_large_data_uri_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(datauri.binascii, "a2b_base64", lambda *a, **k: calls.append(a) or b"")
    payload = "A" * (MAX_IMAGE_BYTES // 3 * 4 + 8)  # decodes to a little over 20 MB
    with pytest.raises(ImageError, match=r"^last_image is larger than 20 MB"):
        parse_data_uri("data:image/png;base64," + payload, "last_image")
    assert calls == []


def test_data_uri_just_under_the_limit_is_parsed() -> None:
    payload = "A" * (MAX_IMAGE_BYTES // 3 * 4)
    assert len(parse_data_uri("data:image/png;base64," + payload, "first_image")) == MAX_IMAGE_BYTES // 3 * 3


# --- references at create time ---------------------------------------------------------------------------


def test_is_data_uri_and_is_http_url() -> None:
    assert is_data_uri("data:image/png;base64,xx") and is_data_uri("DATA:x")
    assert not is_data_uri("http://x/") and not is_data_uri(None)
    assert is_http_url("http://x/") and is_http_url("HTTPS://x/")
    assert not is_http_url("ftp://x/") and not is_http_url("data:x") and not is_http_url(3)


@pytest.mark.parametrize(
    "value",
    [
        "http://example.com/a.png",
        "https://example.com:8443/a.png?sig=abc&x=1#frag",
        "https://bücher.de/bild.jpg",
        "http://[2001:4860::1]/x.png",
        "http://203.0.113.5/x.png",  # addresses are judged at fetch time, not here
        data_uri(PNG),
        data_uri(WEBP, "image/webp"),
    ],
)
def test_valid_references(value: str) -> None:
    validate_image_reference(value, "first_image")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ftp://example.com/a.png", "must be an http(s) URL or a data:image/"),
        ("javascript:alert(1)", "must be an http(s) URL or a data:image/"),
        ("/relative/a.png", "must be an http(s) URL or a data:image/"),
        ("", "must be an http(s) URL or a data:image/"),
        ("http://exa mple.com/a.png", "whitespace or control characters"),
        ("http://example.com/a.png\n", "whitespace or control characters"),
        ("http://example.com/\x00.png", "whitespace or control characters"),
        ("http://example.com/\u202e.png", "whitespace or control characters"),
        ("http://user:pw@example.com/a.png", "must not contain user credentials"),
        ("http://example.com@127.0.0.1/a.png", "must not contain user credentials"),
        ("http:///a.png", "has no host"),
        ("http://example.com:99999/a.png", "not a valid URL"),
        ("http://example.com:port/a.png", "not a valid URL"),
        ("http://0177.0.0.1/", "not a valid URL"),
        ("http://example.com/" + "a" * 2048, "longer than 2048 characters"),
        (data_uri(b"GIF89a....", "image/png"), "not a JPEG, PNG or WebP image"),
        (data_uri(PNG[: len(PNG) // 2]), "could not be decoded"),
        ("http://example.com:0/a.png", "not a valid URL"),
    ],
)
def test_invalid_references(value: str, message: str) -> None:
    with pytest.raises(ImageError, match=r"^first_image ") as excinfo:
        validate_image_reference(value, "first_image")
    assert message in str(excinfo.value)


def test_non_string_reference_is_refused() -> None:
    with pytest.raises(ImageError, match="must be a string"):
        validate_image_reference(12, "last_image")


# --- cost: decode no more than needed, within the budget ---------------------------------------------------


def thirds(size: tuple[int, int]) -> Image.Image:
    """Red, green and blue vertical thirds: crops and rotations are visible."""
    image = Image.new("RGB", size, (255, 0, 0))
    w, h = size
    image.paste((0, 255, 0), (w // 3, 0, 2 * w // 3, h))
    image.paste((0, 0, 255), (2 * w // 3, 0, w, h))
    return image


def test_the_create_check_decodes_jpegs_at_an_eighth_and_still_sees_every_byte() -> None:
    data = encode(thirds((8000, 4500)), "JPEG", quality=80)
    with Image.open(io.BytesIO(data)) as source:
        plan = decode._plan(source, "jpeg", for_render=False)
    assert plan.draft is not None
    assert plan.cost <= 8000 * 4500 * 4 // 64 + 4096  # a 1/8 x 1/8 RGB image, not 144 MB
    images.check_image(data, "first_image")
    with pytest.raises(ImageError, match="could not be decoded"):
        images.check_image(data[: len(data) * 9 // 10], "first_image")  # truncated: refused at 1/8 too


def test_a_render_gets_what_a_frame_can_show_not_the_whole_image() -> None:
    # 36 MP: the short side comes down to RENDER_SIDE (JPEG: decoded at 1/2 by libjpeg, then shrunk).
    image, _ = decode_image(encode(thirds((8000, 4500)), "JPEG", quality=80), "first_image")
    assert image.size == (3840, 2160) and image.mode == "RGB"
    # A 40:1 strip: only the centred 16:9 part is ever shown, so only that is kept (green, the middle).
    strip, _ = decode_image(encode(thirds((40_000, 1000)), "PNG"), "first_image")
    assert strip.size == (1778, 1000)
    assert strip.getpixel((0, 500)) == (0, 255, 0) and strip.getpixel((1777, 500)) == (0, 255, 0)
    # Small images are left as they are (the existing tests: 40x20 stays 40x20).
    assert images.RENDER_SIDE >= 1920 * 1.12  # the largest frame at the synthetic engine's deepest zoom


def test_a_shrunk_image_keeps_its_orientation_and_transparency() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the left (red) third ends up on top
    image, _ = decode_image(encode(thirds((6000, 3375)), "JPEG", quality=80, exif=exif), "first_image")
    assert image.size == (2160, 3840)
    top, bottom = image.getpixel((1080, 100)), image.getpixel((1080, 3740))
    assert top[0] > 200 and top[1] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom
    rgba = Image.new("RGBA", (5000, 4000), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (2000, 1500, 3000, 2500))
    flat, _ = decode_image(encode(rgba, "PNG"), "first_image")
    assert flat.size == (2700, 2160)
    assert flat.getpixel((5, 5)) == (255, 255, 255)
    assert flat.getpixel((1350, 1080)) == (255, 0, 0)


def test_sixteen_bit_grey_is_scaled_without_widening() -> None:
    import tracemalloc

    data = encode(Image.fromarray(np.full((2000, 3000), 40000, dtype=np.uint16)), "PNG")
    tracemalloc.start()
    try:
        image, _ = decode_image(data, "first_image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.getpixel((10, 10)) == (156, 156, 156)  # 40000 >> 8
    # Pillow's buffers are not traced; a numpy int64 copy (48 MB here, 320 MB at 40 MP) would be.
    assert peak < 8 * 1024 * 1024, f"{peak / 1e6:.0f} MB traced"


def test_an_image_costing_more_than_the_budget_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "DECODE_BUDGET_BYTES", 1000)  # 40x20 RGB at create costs 3,200 bytes
    with pytest.raises(ImageError, match=r"^first_image would need .* of memory to decode"):
        images.check_image(PNG, "first_image")
    with pytest.raises(ImageError, match="would need"):
        decode_image(JPEG, "first_image")


def test_the_decode_budget_bounds_decodes_at_once_and_bytes_held() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    budget = DecodeBudget(limit=100, slots=2)
    running: list[int] = []
    held: list[int] = []
    now = {"running": 0, "held": 0}
    lock = threading.Lock()

    def decode(cost: int) -> None:
        with budget.hold(cost):
            with lock:
                now["running"] += 1
                now["held"] += cost
                running.append(now["running"])
                held.append(now["held"])
            time.sleep(0.02)
            with lock:
                now["running"] -= 1
                now["held"] -= cost

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(decode, [10, 10, 10, 10, 60, 60, 90, 10]))
    assert max(running) == 2
    assert max(held) <= 100
    assert len(running) == 8
