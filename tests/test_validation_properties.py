"""Property tests of the create validator: any JSON either becomes a valid task or a 400 naming a field."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelq.api.errors import InvalidRequest
from reelq.api.schemas import parse_json_object, validate_create
from reelq.domain import ASPECT_RATIOS, MAX_SEED, RESOLUTIONS

MODELS = ["viduq3-pro", "viduq3-turbo"]
FIELDS = [
    "model",
    "prompt",
    "duration",
    "aspect_ratio",
    "resolution",
    "first_image",
    "last_image",
    "seed",
    "callback_url",
]
PROFILE = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_values = st.one_of(
    json_values,
    st.sampled_from([*MODELS, *ASPECT_RATIOS, *RESOLUTIONS, "720P", "21:9", "", " ", "a\x00b"]),
    st.integers(-5, 20),
    st.sampled_from(["https://example.com/a.png", "data:image/png;base64,AAAA", "ftp://x/y.png"]),
)
bodies = st.dictionaries(st.sampled_from([*FIELDS, "extra", "bgm"]), field_values, max_size=9)


@PROFILE
@given(bodies)
def test_any_body_is_accepted_validly_or_refused_naming_a_field(body: dict[str, Any]) -> None:
    try:
        new = validate_create(body, MODELS)
    except InvalidRequest as exc:
        assert exc.status == 400
        assert exc.param in [*FIELDS, None]
        assert exc.message
        return
    assert new.model in MODELS
    assert 1 <= len(new.prompt) <= 5000 and new.prompt == new.prompt.strip() and "\x00" not in new.prompt
    assert 1 <= new.duration <= 16 and isinstance(new.duration, int) and not isinstance(new.duration, bool)
    assert new.aspect_ratio in ASPECT_RATIOS and new.resolution in RESOLUTIONS
    assert new.seed is None or 0 <= new.seed <= MAX_SEED
    assert new.last_image is None or new.first_image is not None


valid_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(MODELS),
        "prompt": st.text(min_size=1, max_size=200).filter(lambda s: s.strip() and "\x00" not in s),
    },
    optional={
        "duration": st.integers(1, 16),
        "aspect_ratio": st.sampled_from(list(ASPECT_RATIOS)),
        "resolution": st.sampled_from(list(RESOLUTIONS)),
        "seed": st.integers(0, MAX_SEED) | st.none(),
        "first_image": st.just("https://example.com/first.png"),
    },
)


@PROFILE
@given(valid_bodies)
def test_valid_bodies_are_always_accepted_with_defaults(body: dict[str, Any]) -> None:
    new = validate_create(body, MODELS)
    assert new.model == body["model"]
    assert new.prompt == body["prompt"].strip()
    assert new.duration == body.get("duration", 5)
    assert new.aspect_ratio == body.get("aspect_ratio", "16:9")
    assert new.resolution == body.get("resolution", "720p")
    assert new.seed == body.get("seed")


@PROFILE
@given(
    st.binary(max_size=200), st.sampled_from([None, "application/json", "text/plain", "application/x+json"])
)
def test_any_bytes_parse_to_an_object_or_a_400(body: bytes, content_type: str | None) -> None:
    try:
        parsed = parse_json_object(body, content_type)
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.param is None
        return
    assert isinstance(parsed, dict)
