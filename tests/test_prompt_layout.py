"""Prompt layout in the synthetic engine: no prompt may cost more than a few lines' worth of measuring.

A 5,000-character word used to be shortened one character at a time and measured again each time, and
NFKD turned 5,000 characters such as U+338F into 20,000: minutes of layout for one render.
"""

from __future__ import annotations

import math
import string
import time
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import ImageFont

from reelq.domain import MAX_PROMPT_CHARS, VideoSpec
from reelq.engines.base import RenderInputs
from reelq.engines.synthetic import SyntheticEngine, _layout, _text_sprite

PLAIN = ("A red fox running through a snowy forest at dawn, its breath curling in the cold air. " * 60)[
    :MAX_PROMPT_CHARS
]

# Every shape is at the API's limit of 5,000 characters.
HOSTILE = {
    "one long word": "p" * 5000,
    "accented long word": "\u00e9" * 5000,
    "expanding compatibility character": "\u338f" * 5000,  # NFKD: "kcal"
    "longest NFKD expansion": "\ufdfa" * 5000,  # NFKD: 18 characters, Arabic and spaces
    "ligature": "\ufb01" * 5000,  # NFKD: "fi"
    "CJK": "\u96ea\u72d0" * 2500,
    "emoji": "\U0001f98a" * 5000,
    "combining marks": "e\u0301" * 2500,
    "stacked combining marks": "a" + "\u0301\u0302\u0303\u0304" * 1249,
    "Arabic": ("\u0645\u0631\u062d\u0628\u0627 " * 1000)[:5000],
    "Arabic presentation forms": "\ufefb" * 5000,  # lam-alef ligature
    "Hebrew": "\u05e9\u05dc\u05d5\u05dd" * 1250,
    "many short words": "a " * 2500,
    "narrowest words": "i " * 2500,
    "words between dropped characters": "ab\u96ea" * 1666,
    "zero-width separators": "ab\u200b" * 1666,
}
LONG_WORDS = ["one long word", "accented long word", "expanding compatibility character", "ligature"]
LONG_WORDS += ["combining marks"]

SIZES = [(1280, 720), (1920, 1080), (720, 1280), (960, 540)]


class CountingFont:
    """The engine's font, counting what layout measures; it stops a layout that measures far too much."""

    def __init__(self, font: ImageFont.FreeTypeFont, limit: int) -> None:
        self.font = font
        self.limit = limit
        self.lengths = 0  # getlength calls
        self.string_lengths = 0  # ... of strings longer than one character (lines and cuts, not glyphs)
        self.masks = 0

    def getlength(self, text: str) -> float:
        self.lengths += 1
        self.string_lengths += len(text) > 1
        if self.lengths > self.limit:
            raise AssertionError(f"layout measured text more than {self.limit} times")
        return self.font.getlength(text)

    def getmask(self, text: str) -> object:
        self.masks += 1
        return self.font.getmask(text)


def layout_params(width: int, height: int) -> tuple[ImageFont.FreeTypeFont, float]:
    """The font and line width _text_sprite uses for a frame of this size."""
    font = ImageFont.load_default(size=max(12, round(min(width, height) * 0.05)))
    return font, width * 0.84


def measurement_bound(font: ImageFont.FreeTypeFont, max_width: float, max_lines: int) -> int:
    """What greedy wrapping needs at most: a measurement per word that fits on a line (at most a line of
    the narrowest glyph and a space), a binary search per cut word and per ellipsis, one per glyph."""
    narrowest = min(font.getlength(c) for c in string.printable if not c.isspace())
    per_line = math.ceil(max_width / narrowest) + 1
    search = math.ceil(math.log2(MAX_PROMPT_CHARS * 18)) + 2
    glyphs = 256  # the bundled font draws ~110 characters
    return glyphs + max_lines * (per_line + search) + search


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(HOSTILE))
def test_layout_measures_a_bounded_amount(name: str, size: tuple[int, int]) -> None:
    font, max_width = layout_params(*size)
    counting = CountingFont(font, limit=measurement_bound(font, max_width, 3))
    lines = _layout(HOSTILE[name], counting, max_width, 3)  # type: ignore[arg-type]
    assert len(lines) <= 3
    assert all(font.getlength(line) <= max_width for line in lines)
    # One glyph check per distinct character after normalisation, plus the one for "missing glyph".
    distinct = set(unicodedata.normalize("NFKD", HOSTILE[name]))
    assert counting.masks <= len(distinct) + 1
    if name in LONG_WORDS:
        # Each of three lines is a cut of one word, then the ellipsis: a log of the length each.
        search = math.ceil(math.log2(MAX_PROMPT_CHARS * 18)) + 2
        assert counting.string_lengths <= 4 * search
        assert lines[-1].endswith("...")


@pytest.mark.timeout(120)
def test_layout_time_of_hostile_prompts_is_close_to_a_plain_one() -> None:
    """Ratios of CPU time in one run: the time this thread spent computing, which a busy machine
    (other tests' processes on the same cores) does not stretch the way it stretches wall time."""

    def cost(prompt: str) -> float:
        best = math.inf
        for _ in range(3):
            start = time.thread_time()
            _text_sprite(prompt, 1280, 720)
            best = min(best, time.thread_time() - start)
        return best

    plain = cost(PLAIN)
    slow = {name: round(cost(prompt) / plain, 1) for name, prompt in HOSTILE.items()}
    assert all(ratio <= 5 for ratio in slow.values()), slow


@pytest.mark.timeout(120)
def test_render_time_of_hostile_prompts_is_close_to_a_plain_one(tmp_path: Path) -> None:
    # CPU time of the whole process (the encoder's threads included), not wall time: see above.
    def cost(prompt: str, runs: int = 1) -> float:
        spec = VideoSpec(model="viduq3-pro", prompt=prompt, duration=1, resolution="540p")
        best = math.inf
        for _ in range(runs):
            start = time.process_time()
            SyntheticEngine().render(spec, RenderInputs(), tmp_path / "out.mp4", lambda _f: None)
            best = min(best, time.process_time() - start)
        return best

    plain = cost(PLAIN, runs=2)
    names = ["one long word", "expanding compatibility character", "longest NFKD expansion"]
    slow = {name: round(cost(HOSTILE[name], runs=2) / plain, 2) for name in names}
    assert all(ratio <= 2 for ratio in slow.values()), slow


# -- the look of ordinary prompts is unchanged --------------------------------------------------------


def reference_layout(
    prompt: str, font: ImageFont.FreeTypeFont, max_width: float, max_lines: int
) -> list[str]:
    """The layout as first written: whole-prompt NFKD, one character at a time. Exact, but quadratic."""
    decomposed = unicodedata.normalize("NFKD", " ".join(prompt.split()))
    missing = bytes(font.getmask("\U0010fffd"))
    out = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        keep = ch == " " or (ch.isprintable() and bytes(font.getmask(ch)) != missing)
        out.append(ch if keep else " ")
    words = " ".join("".join(out).split()).split()
    lines: list[str] = []
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = words[i]
        if font.getlength(line) > max_width:
            while font.getlength(line) > max_width and len(line) > 1:
                line = line[:-1]
            words[i] = words[i][len(line) :]
            lines.append(line)
            continue
        i += 1
        while i < len(words) and font.getlength(f"{line} {words[i]}") <= max_width:
            line = f"{line} {words[i]}"
            i += 1
        lines.append(line)
    if i < len(words) and lines:
        last = lines[-1]
        while last and font.getlength(last + "...") > max_width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "..."
    return lines


PIECES = [
    *(string.ascii_letters + string.digits + "  .,'!-"),
    "\u00e9",
    "\u338f",
    "\u96ea",
    "\U0001f98a",
    "e\u0301",
    "\ufdfa",
    "\u0645",
    "\u05e9",
    "\u200b",
    "\t",
    "\u3000",
    "\u00df",
    "\u2026",
    "\ufb01",
    "supercalifragilistic",
    "Wm",
]


@settings(max_examples=150, deadline=None)
@given(
    pieces=st.lists(st.sampled_from(PIECES), max_size=300),
    size=st.sampled_from(SIZES),
)
def test_layout_is_the_reference_layout(pieces: list[str], size: tuple[int, int]) -> None:
    font, max_width = layout_params(*size)
    prompt = "".join(pieces)
    assert _layout(prompt, font, max_width, 3) == reference_layout(prompt, font, max_width, 3)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_long_prompts_lay_out_as_the_reference(size: tuple[int, int]) -> None:
    """Prompts long enough that the cut-off at a few lines' worth of text matters, but fast to check."""
    font, max_width = layout_params(*size)
    long_prompts = [PLAIN, "W" * 400, "i " * 600, "Wm " * 300]
    long_prompts += ["\u338f" * 150, "\u00e9" * 400, "ab\u96ea" * 300]
    for prompt in long_prompts:
        assert _layout(prompt, font, max_width, 3) == reference_layout(prompt, font, max_width, 3)
