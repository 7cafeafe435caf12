"""Properties of the create validator and the body parser (SPEC §1 create rules, §4 errors).

`validate_create` on any JSON-like object either returns a task that obeys every rule, or raises
`InvalidRequest` (400) naming a field of the request; never another exception. Bodies built
from valid values are always accepted, with the documented defaults. `parse_json_object` on any
bytes returns a dict or raises `InvalidRequest`. Bounded and derandomized: the same examples
on every run, no example database.
"""

from __future__ import annotations

import base64
import io
import random
import re
import tracemalloc
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from reelq.database import NewTask
from reelq.domain import (
    ASPECT_RATIOS,
    DEFAULT_DURATION,
    MAX_DURATION,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_DURATION,
    RESOLUTIONS,
    has_visible_text,
)
from reelq.images import url_syntax_problem
from reelq.service.errors import InvalidRequest
from reelq.service.schemas import parse_json_object, request_fingerprint, validate_create

MODELS = ["viduq3-pro", "viduq3-turbo"]
REQUIRED = ("model", "prompt")
FIELDS = (
    "model",
    "prompt",
    "duration",
    "aspect_ratio",
    "resolution",
    "first_image",
    "last_image",
    "seed",
    "callback_url",
)
SNAKE_CASE = re.compile(r"[a-z]+(_[a-z]+)*")
PROFILE = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _image_uri(fmt: str, mime: str, mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (8, 6), (200, 30, 90, 128)[: len(mode)]).save(buffer, fmt)
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


PNG = _image_uri("PNG", "image/png", "RGBA")
JPEG = _image_uri("JPEG", "image/jpeg")
WEBP = _image_uri("WEBP", "image/webp")
VALID_IMAGES = [PNG, JPEG, WEBP, _image_uri("PNG", "image/jpg"), "https://example.com/first.png"]
# Magic bytes that route random tails into each decoder (and a header claiming a huge canvas).
MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x7f\xff\xff\xff\x7f\xff\xff\xff",
    b"\xff\xd8\xff",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff",
    b"GIF89a",
]


@st.composite
def data_uris(draw: st.DrawFn) -> str:
    """Mostly-plausible data URIs: real images cut short, magic bytes with junk, odd headers."""
    kind = draw(st.sampled_from(["truncated", "magic", "header", "base64"]))
    if kind == "truncated":
        uri = draw(st.sampled_from([PNG, JPEG, WEBP]))
        return uri[: draw(st.integers(5, len(uri)))]
    mime = draw(
        st.sampled_from(["image/png", "image/jpeg", "image/jpg", "image/webp", "image/gif", "IMAGE/PNG"])
    )
    if kind == "magic":
        payload = draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=64))
        return f"data:{mime};base64,{base64.b64encode(payload).decode()}"
    if kind == "header":
        header = draw(st.text(max_size=20))
        return f"data:{header},{draw(st.text(max_size=20))}"
    text = draw(st.text(alphabet="ABCDEFabcdef0123456789+/=-_ \n", max_size=40))
    return f"data:{mime};base64,{text}"


urls = st.one_of(
    st.builds(
        lambda scheme, rest: scheme + rest, st.sampled_from(["http://", "https://", "HTTP://"]), st.text()
    ),
    st.sampled_from(
        [
            "https://example.com/a.png",
            "http://user:pw@example.com/a.png",
            "https://exa mple.com/a.png",
            "https://[::1/a.png",
            "https://example.com:99999/a.png",
            "http://",
            "ftp://example.com/a.png",
            "https://" + "a" * 2050,
        ]
    ),
)
# What a JSON body can decode to (orjson: integers within 64 bits, finite floats).
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
# Around the 5000-character limit, padded with whitespace that trimming removes.
long_prompts = st.builds(
    lambda pad, n, c: pad + c * n + pad,
    st.sampled_from(["", " ", "\n\t "]),
    st.integers(MAX_PROMPT_CHARS - 2, MAX_PROMPT_CHARS + 2),
    st.sampled_from(["a", "é", " ", "字"]),
)
prompts = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8") | st.sampled_from(" \t\n\x00\u3000\ud800"), max_size=40),
    long_prompts,
)
field_values = st.one_of(
    json_values,
    st.sampled_from([*MODELS, *ASPECT_RATIOS, *RESOLUTIONS, "720P", "21:9", "viduq2", "", " "]),
    st.integers(-5, 20),
    st.integers(MAX_SEED - 2, MAX_SEED + 2),
    st.sampled_from([5.0, 5.5, "5", True, False, 2**64, -(2**63) - 1, 1e300]),
    prompts,
    urls,
    data_uris(),
    st.sampled_from(VALID_IMAGES),
)


def assert_obeys_the_rules(new: NewTask) -> None:
    assert new.model in MODELS
    assert isinstance(new.prompt, str) and "\x00" not in new.prompt
    assert new.prompt == new.prompt.strip() and 1 <= len(new.prompt) <= MAX_PROMPT_CHARS
    assert has_visible_text(new.prompt)
    assert type(new.duration) is int and MIN_DURATION <= new.duration <= MAX_DURATION
    assert new.aspect_ratio in ASPECT_RATIOS and new.resolution in RESOLUTIONS
    assert new.seed is None or (type(new.seed) is int and 0 <= new.seed <= MAX_SEED)
    assert new.last_image is None or new.first_image is not None
    for image in (new.first_image, new.last_image):
        assert image is None or image.startswith("data:") or url_syntax_problem(image) is None
    assert new.callback_url is None or url_syntax_problem(new.callback_url) is None
    assert new.idempotency_key is None and new.request_hash is None


non_blank_prompts = st.one_of(
    st.text(min_size=1, max_size=200).filter(lambda s: has_visible_text(s) and "\x00" not in s),
    long_prompts.filter(lambda s: 1 <= len(s.strip()) <= MAX_PROMPT_CHARS and has_visible_text(s)),
)
valid_optional = {
    "duration": st.integers(MIN_DURATION, MAX_DURATION) | st.none(),
    "aspect_ratio": st.sampled_from(list(ASPECT_RATIOS)) | st.none(),
    "resolution": st.sampled_from(list(RESOLUTIONS)) | st.none(),
    "seed": st.integers(0, MAX_SEED) | st.none(),
    "callback_url": st.sampled_from(["https://hooks.example.com/reelq", "http://10.0.0.1:8080/cb"])
    | st.none(),
    "bgm": json_values,  # unknown fields are ignored
}


@st.composite
def valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(
        st.fixed_dictionaries(
            {"model": st.sampled_from(MODELS), "prompt": non_blank_prompts}, optional=valid_optional
        )
    )
    images = draw(st.integers(0, 2))
    if images >= 1:
        body["first_image"] = draw(st.sampled_from(VALID_IMAGES))
    if images == 2:
        body["last_image"] = draw(st.sampled_from(VALID_IMAGES))
    return body


KEYS = st.sampled_from([*FIELDS, "extra", "bgm", "Model", ""])
# Values aimed at one field's rules (its boundaries), mixed with anything at all.
images = st.one_of(data_uris(), urls, st.sampled_from(VALID_IMAGES))
MUTATIONS = {
    "model": st.sampled_from([*MODELS, "VIDUQ3-PRO", " viduq3-pro", "x" * 101]) | st.text(max_size=10),
    "prompt": long_prompts | prompts,
    "duration": st.integers(MIN_DURATION - 2, MAX_DURATION + 2) | st.sampled_from([5.0, "5", True]),
    "seed": st.integers(-2, 2) | st.integers(MAX_SEED - 2, MAX_SEED + 2),
    "first_image": images,
    "last_image": images,
    "callback_url": urls,
}


@st.composite
def bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Arbitrary objects, and (mostly) valid bodies with a few fields replaced, added or removed."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.dictionaries(KEYS, field_values, max_size=10))
    body = draw(valid_bodies())
    for name in draw(st.lists(st.sampled_from(FIELDS) | KEYS, max_size=3, unique=True)):
        if name in body and draw(st.integers(0, 3)) == 0:
            del body[name]
        elif name in MUTATIONS and draw(st.integers(0, 3)):
            body[name] = draw(MUTATIONS[name])
        else:
            body[name] = draw(field_values)
    return body


@PROFILE
@given(bodies())
def test_any_body_is_accepted_validly_or_refused_naming_a_field(body: dict[str, Any]) -> None:
    try:
        new = validate_create(body, MODELS)
    except InvalidRequest as exc:
        assert type(exc) is InvalidRequest and exc.status == 400
        # The field at fault: one the body sent, or a required one it left out.
        assert exc.param is None or exc.param in FIELDS, exc.param
        assert exc.param is None or exc.param in body or exc.param in REQUIRED, (exc.param, body)
        assert exc.message and SNAKE_CASE.fullmatch(exc.code), (exc.code, exc.message)
        return
    assert_obeys_the_rules(new)
    # Accepted means every value was taken as given (or defaulted when absent or null).
    assert new.model == body["model"] and new.prompt == body["prompt"].strip()
    for name, default in (("duration", DEFAULT_DURATION), ("aspect_ratio", "16:9"), ("resolution", "720p")):
        assert getattr(new, name) == (default if body.get(name) is None else body[name])
    for name in ("seed", "first_image", "last_image", "callback_url"):
        assert getattr(new, name) == body.get(name)


@PROFILE
@given(valid_bodies())
def test_valid_bodies_are_always_accepted_with_defaults(body: dict[str, Any]) -> None:
    new = validate_create(body, MODELS)
    assert_obeys_the_rules(new)
    assert new.model == body["model"]
    assert new.prompt == body["prompt"].strip()
    assert new.duration == (body.get("duration") or DEFAULT_DURATION)
    assert new.aspect_ratio == (body.get("aspect_ratio") or "16:9")
    assert new.resolution == (body.get("resolution") or "720p")
    assert new.seed == body.get("seed")
    assert new.first_image == body.get("first_image") and new.last_image == body.get("last_image")
    assert new.callback_url == body.get("callback_url")


@PROFILE
@given(images, st.sampled_from(["first_image", "last_image"]))
def test_any_image_reference_is_accepted_or_refused_naming_its_field(image: str, field: str) -> None:
    body = {"model": MODELS[0], "prompt": "a lighthouse", "first_image": PNG, field: image}
    try:
        new = validate_create(body, MODELS)
    except InvalidRequest as exc:
        assert type(exc) is InvalidRequest and exc.status == 400 and exc.param == field
        assert exc.code in ("invalid_image", "invalid_request") and exc.message
        return
    assert_obeys_the_rules(new)
    assert getattr(new, field) == image


@PROFILE
@given(valid_bodies(), st.sampled_from(["", " ", "\n", " \t"]), st.randoms(use_true_random=False))
def test_the_idempotency_fingerprint_ignores_key_order_and_prompt_padding(
    body: dict[str, Any], pad: str, rnd: random.Random
) -> None:
    items = list({**body, "prompt": pad + body["prompt"] + pad}.items())
    rnd.shuffle(items)
    assert request_fingerprint(validate_create(dict(items), MODELS)) == request_fingerprint(
        validate_create(body, MODELS)
    )


@PROFILE
@given(valid_bodies(), st.sampled_from(["last_image_alone", "bad_enum", "bad_type", "blank_prompt"]))
def test_one_broken_rule_in_a_valid_body_is_a_400_naming_that_field(
    body: dict[str, Any], breakage: str
) -> None:
    if breakage == "last_image_alone":
        body.pop("first_image", None)
        body["last_image"], field = PNG, "last_image"
    elif breakage == "bad_enum":
        field = "resolution"
        body[field] = "720P"
    elif breakage == "bad_type":
        field = "duration"
        body[field] = "5"
    else:
        field = "prompt"
        body[field] = " \n\t "
    try:
        validate_create(body, MODELS)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.param == field
    else:
        raise AssertionError(f"accepted a body with {breakage}: {body}")


@PROFILE
@given(
    valid_bodies(),
    st.sampled_from(["", " ", "\n\t\u3000"]),
    st.integers(0, 3) | st.integers(MAX_PROMPT_CHARS - 3, MAX_PROMPT_CHARS + 3),
    st.sampled_from(["a", "é", "字", " ", "\x00"]),
)
def test_the_prompt_is_1_to_5000_characters_after_trimming(
    body: dict[str, Any], pad: str, n: int, char: str
) -> None:
    body["prompt"] = pad + char * n + pad
    valid = char.strip() and char != "\x00" and 1 <= n <= MAX_PROMPT_CHARS
    _assert_accepted_iff(valid, body, "prompt")


@PROFILE
@given(
    valid_bodies(),
    st.sampled_from(["duration", "seed"]),
    st.integers(-3, MAX_DURATION + 3)
    | st.integers(MAX_SEED - 3, MAX_SEED + 3)
    | st.sampled_from([2**63, -(2**63)]),
)
def test_integer_fields_accept_exactly_their_range(body: dict[str, Any], field: str, value: int) -> None:
    body[field] = value
    low, high = (MIN_DURATION, MAX_DURATION) if field == "duration" else (0, MAX_SEED)
    _assert_accepted_iff(low <= value <= high, body, field)


def _assert_accepted_iff(valid: object, body: dict[str, Any], field: str) -> None:
    try:
        new = validate_create(body, MODELS)
    except InvalidRequest as exc:
        assert not valid, f"refused a valid {field}: {exc.message}"
        assert exc.param == field
        return
    assert valid, f"accepted an invalid {field}: {body[field]!r}"[:300]
    assert_obeys_the_rules(new)


content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
            "",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "json",
            ";",
        ]
    ),
    st.text(max_size=40),
)
json_bodies = st.builds(
    lambda value, pad: pad + orjson.dumps(value) + pad, json_values, st.sampled_from([b"", b" ", b"\n\t"])
)


def _declares_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


@PROFILE
@given(st.one_of(st.binary(max_size=200), json_bodies), content_types)
def test_any_bytes_parse_to_an_object_or_a_400(body: bytes, content_type: str | None) -> None:
    try:
        parsed = parse_json_object(body, content_type)
    except InvalidRequest as exc:
        assert type(exc) is InvalidRequest and exc.status == 400 and exc.param is None
        assert exc.code == ("invalid_json" if _declares_json(content_type) else "invalid_content_type")
        assert exc.message
        return
    assert _declares_json(content_type)
    assert isinstance(parsed, dict)


@PROFILE
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.sampled_from([None, "application/json"])
)
def test_a_json_object_parses_to_itself(value: dict[str, Any], content_type: str | None) -> None:
    assert parse_json_object(orjson.dumps(value), content_type) == value


@pytest.mark.parametrize("filler", [b"0,", b"{},", b'"",'])
def test_a_body_of_countless_values_is_refused_before_it_is_parsed(filler: bytes) -> None:
    """50 MB of tiny values parsed cost ~1 s and ~1 GB; refused after a scan of its first megabyte."""
    values = filler * (50 * 1024 * 1024 // len(filler))
    body = b'{"model":"viduq3-pro","prompt":"x","extra":[' + values + b"0]}"
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest) as caught:
            parse_json_object(body, "application/json")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == "invalid_json"
    assert "too many JSON values" in caught.value.message
    assert peak < 1024 * 1024


def test_a_prompt_full_of_commas_is_still_a_create() -> None:
    body = orjson.dumps({"model": "viduq3-pro", "prompt": "," * MAX_PROMPT_CHARS, "seed": 1})
    assert parse_json_object(body, "application/json")["prompt"] == "," * MAX_PROMPT_CHARS
