"""The rules of the contract that need no I/O: ids, statuses, sizes, pricing.

Everything here is pure so it can be shared by the API, the workers and the
SDK without importing any of them (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

TASK_ID_PREFIX = "video_"
DEFAULT_FPS = 24

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "16:9": (16, 9),
    "9:16": (9, 16),
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
}
RESOLUTIONS: dict[str, int] = {"540p": 540, "720p": 720, "1080p": 1080}

# Defaults of the token table (SPEC §1 "Tokens"); operators override them in config.
DEFAULT_MODEL_RATES: dict[str, float] = {"viduq3-pro": 300.0, "viduq3-turbo": 150.0}
DEFAULT_RESOLUTION_FACTORS: dict[str, float] = {"540p": 0.75, "720p": 1.0, "1080p": 2.0}

MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 1, 16, 5
MAX_PROMPT_CHARS = 5000
MAX_SEED = 2**31 - 1
# A whole number sent as text (a form field, a query parameter): ASCII digits only, and few enough of
# them that int() never meets Python's 4,300-digit conversion limit (a ValueError, i.e. a 500).
MAX_TEXT_INT_DIGITS = 30
_ASCII_DIGITS = re.compile(r"[0-9]+")
CANCELLED_ERROR = "Cancelled by user."
CONTENT_POLICY_PREFIX = "Content policy violation:"
# The error of a task its owner cancelled (SPEC §1); the worker recognises its cancel by it.
CANCELLED_ERROR = "Cancelled by user."


class Status(StrEnum):
    """Status as stored in the task row (the wire status is derived, see `wire_status`)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED})


def wire_status(status: str, started: bool) -> str:
    """What a client sees: a row that was claimed once and now waits for another try reads `processing`.

    The row goes back to `queued` (worker died, or handed back on shutdown) so another
    worker can claim it, but the client may already have seen `processing` and must
    never see a step backwards (SPEC §1).
    """
    if status == Status.QUEUED and started:
        return Status.PROCESSING.value
    return str(status)


def new_task_id() -> str:
    return f"{TASK_ID_PREFIX}{uuid.uuid4()}"


# A regex, not uuid.UUID(): this runs on every status read.
_TASK_ID_RE = re.compile(r"video_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def is_task_id(value: str) -> bool:
    """True for `video_` + a canonical (lower-case) UUID4 string."""
    return _TASK_ID_RE.fullmatch(value) is not None


def frame_size(resolution: str, aspect_ratio: str) -> tuple[int, int]:
    """(width, height): the short side is the resolution, the long side the ratio of it rounded to even."""
    short = RESOLUTIONS[resolution]
    a, b = ASPECT_RATIOS[aspect_ratio]
    long_side = round(short * max(a, b) / min(a, b) / 2) * 2
    return (long_side, short) if a >= b else (short, long_side)


@dataclass(frozen=True, slots=True)
class VideoSpec:
    """What to render, independent of how it is asked for or where it runs."""

    model: str
    prompt: str
    duration: int = DEFAULT_DURATION
    aspect_ratio: str = "16:9"
    resolution: str = "720p"
    seed: int | None = None
    fps: int = DEFAULT_FPS

    @property
    def size(self) -> tuple[int, int]:
        return frame_size(self.resolution, self.aspect_ratio)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    @property
    def frame_count(self) -> int:
        return self.duration * self.fps


def total_tokens(
    model: str,
    actual_duration: float,
    resolution: str,
    rates: Mapping[str, float] = DEFAULT_MODEL_RATES,
    factors: Mapping[str, float] = DEFAULT_RESOLUTION_FACTORS,
) -> int:
    """rate(model) x seconds x factor(resolution), rounded to an integer (SPEC §1)."""
    return round(rates[model] * actual_duration * factors[resolution])


def wire_number(value: float) -> int | float:
    """5.0 -> 5 so the JSON reads like the Vidu examples; keeps real fractions."""
    return int(value) if float(value).is_integer() else value


# Letters (category Lo) that Unicode marks Default_Ignorable (they render as nothing), and the blank braille
# pattern, which is a symbol drawn as an empty cell: the categories alone would count them as visible.
_BLANK_GRAPHIC = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def is_visible_char(char: str) -> bool:
    """Whether `char` draws something on its own.

    Not visible: whitespace and separators (Z*), controls, format characters such as the zero-width
    space/joiners, U+2060 and U+FEFF, surrogates, private-use and unassigned code points (C*), and marks
    (M*: combining marks and variation selectors only modify a base character, and there is none without
    a visible one), plus the blank letters above.
    """
    return unicodedata.category(char)[0] not in "ZCM" and char not in _BLANK_GRAPHIC


def has_visible_text(text: str) -> bool:
    """At least one visible character (`is_visible_char`): what "not empty" means for a prompt."""
    return any(is_visible_char(c) for c in text)


def find_blocked_term(prompt: str, terms: list[str]) -> str | None:
    """The first blocked term found in the prompt, case-insensitively, as a whole word or phrase."""
    for term in terms:
        words = term.split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
        if re.search(pattern, prompt, flags=re.IGNORECASE):
            return term
    return None


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """What a model can be asked for, known without loading it: a create that asks for more is a
    400 naming the field, never a task accepted and then failed (SPEC §5)."""

    first_image: bool = True
    last_image: bool = True
    max_duration: int = MAX_DURATION

    def refusal(
        self, model: str, duration: int, first_image: bool, last_image: bool
    ) -> tuple[str, Callable[[str], str]] | None:
        """(param, its message around a name for the field) for the first thing asked that `model`
        cannot do, else None. A function of the name: each API surface names the fields its own way."""
        if first_image and not self.first_image:
            return "first_image", lambda name: (
                f"Model '{model}' generates from text only; it does not take {name}."
            )
        if last_image and not self.last_image:
            return "last_image", lambda name: (
                f"Model '{model}' cannot use {name} (first+last frame is not supported)."
            )
        if duration > self.max_duration:
            return "duration", lambda _name: f"Model '{model}' renders at most {self.max_duration} seconds."
        return None


def parse_ascii_int(text: str) -> int | None:
    """A whole number written in ASCII digits (at most MAX_TEXT_INT_DIGITS of them), else None.

    `str.isdigit()` and `int()` accept any Unicode digit ("\u0661" is 1, "\U0001d7d9" too), `int()` also
    takes "1_0", signs and surrounding spaces, and raises past 4,300 digits: none of that is a number a
    client meant to send as text.
    """
    if len(text) > MAX_TEXT_INT_DIGITS or not _ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)
