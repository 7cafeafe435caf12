"""Pure rules of the contract: sizes, pricing, ids, wire status, content policy."""

from __future__ import annotations

import pytest

from reelq.domain import (
    VideoSpec,
    find_blocked_term,
    frame_size,
    has_visible_text,
    is_task_id,
    new_task_id,
    total_tokens,
    wire_number,
    wire_status,
)


@pytest.mark.parametrize(
    ("resolution", "ratio", "size"),
    [
        ("720p", "16:9", (1280, 720)),
        ("720p", "9:16", (720, 1280)),
        ("720p", "4:3", (960, 720)),
        ("720p", "3:4", (720, 960)),
        ("720p", "1:1", (720, 720)),
        ("540p", "16:9", (960, 540)),
        ("540p", "4:3", (720, 540)),
        ("1080p", "16:9", (1920, 1080)),
        ("1080p", "9:16", (1080, 1920)),
        ("1080p", "3:4", (1080, 1440)),
    ],
)
def test_frame_size_rule(resolution: str, ratio: str, size: tuple[int, int]) -> None:
    assert frame_size(resolution, ratio) == size
    assert all(side % 2 == 0 for side in size)


def test_spec_frames_and_size() -> None:
    spec = VideoSpec(model="viduq3-pro", prompt="x", duration=5)
    assert spec.frame_count == 120
    assert spec.size == (1280, 720)


def test_tokens_match_the_spec_example() -> None:
    assert total_tokens("viduq3-pro", 5.0, "720p") == 1500
    assert total_tokens("viduq3-turbo", 5.0, "720p") == 750
    assert total_tokens("viduq3-pro", 5.0, "540p") == 1125
    assert total_tokens("viduq3-pro", 16.0, "1080p") == 9600
    assert total_tokens("viduq3-turbo", 1.0, "540p") == 112  # 112.5 rounds half to even


def test_task_ids() -> None:
    task_id = new_task_id()
    assert task_id.startswith("video_") and len(task_id) == len("video_") + 36
    assert is_task_id(task_id)
    assert not is_task_id("video_not-a-uuid")
    assert not is_task_id(task_id.upper())
    assert not is_task_id("fd35ee52-2a98-44a6-b930-29a88ce9b8fd")


def test_wire_status_never_moves_backwards() -> None:
    assert wire_status("queued", False) == "queued"
    assert wire_status("queued", True) == "processing"  # requeued after a worker died, or handed back
    assert wire_status("processing", True) == "processing"
    assert wire_status("completed", True) == "completed"
    assert wire_status("failed", False) == "failed"


def test_wire_number() -> None:
    assert wire_number(5.0) == 5 and isinstance(wire_number(5.0), int)
    assert wire_number(5.5) == 5.5


@pytest.mark.parametrize(
    ("prompt", "hit"),
    [
        ("a BOMB MAKING tutorial", "bomb making"),
        ("bomb\n  making at night", "bomb making"),
        ("a bombmaking kit", None),  # whole words only
        ("the bombs making noise", None),
        ("a csam.", "csam"),
        ("a cat", None),
    ],
)
def test_blocked_terms_whole_words_case_insensitive(prompt: str, hit: str | None) -> None:
    assert find_blocked_term(prompt, ["bomb making", "csam"]) == hit


@pytest.mark.parametrize(
    "text",
    [
        "a",
        " \u200bx\u200b ",
        "é",
        "e\u0301",
        "猫",
        "🎬",
        "\U0001f44d\U0001f3fd",
        "\u200d🎬",
        "\u0661",
        "שלום",
        "\u2764\ufe0f",
        "\ue000x",
    ],
)
def test_text_with_something_to_see_is_visible(text: str) -> None:
    assert has_visible_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \t\n\u3000\u00a0",
        "\u200b\u200c\u200d\u2060\ufeff",  # zero-width space, joiners, word joiner, BOM
        "\u200e\u200f\u202e\u2066\u061c",  # direction marks and overrides
        "\ufe00\ufe0f\U000e0100\U000e01ef",  # variation selectors
        "\u0301\u0308\u034f\u20dd",  # combining marks with no base
        "\U000e0041\U000e007f",  # tag characters
        "\u00ad\u180e\u3164\u115f\u1160\uffa0\u2800",  # soft hyphen, fillers, blank braille
        "\ue000\U000f0000\U0010fffd",  # private use: no standard glyph
        "\x01\x7f\u0085",  # controls
    ],
)
def test_text_of_invisible_characters_is_not_visible(text: str) -> None:
    assert not has_visible_text(text)
