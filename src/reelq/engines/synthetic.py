"""The `synthetic` engine: a deterministic, weight-free stand-in for a video model, fast on a CPU.

Text-to-video draws an animated mesh gradient in a palette derived from the request, soft discs
drifting over it and the prompt's words; image-to-video is a Ken Burns move over the first image,
cross-fading into the last one when given. Everything is a function of a sha256 of the request
(model, prompt, seed, image digests), so a retried task renders the same video.
"""

from __future__ import annotations

import colorsys
import itertools
import math
import time
import unicodedata
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from reelq.domain import MAX_PROMPT_CHARS, VideoSpec
from reelq.engines.base import ProgressCallback, RenderInputs, derive_seed
from reelq.media import BT709_RGB_TO_YUV, YUV_OFFSET, Mp4Writer, cover_box, cover_fit

# Bumping this changes every synthetic video: do it only when the look changes on purpose.
_SEED_DOMAIN = b"reelq-synthetic-v1"


def request_seed(spec: VideoSpec, inputs: RenderInputs) -> int:
    """The synthetic engine's 128-bit seed for a request (see `derive_seed`)."""
    return derive_seed(_SEED_DOMAIN, spec, inputs)


# A report goes out when 5 % more is done or 0.25 s has passed since the last one, whichever comes first:
# lively enough for a progress bar, while a render makes a few dozen calls (each may cost the caller a
# database write) rather than one per frame.
_PROGRESS_EVERY_S = 0.25
_PROGRESS_STEP = 0.05
# The frames' share of the progress bar; the rest is the encoder flush and faststart rewrite.
_FRAMES_SHARE = 0.98
# Longest single sleep of the artificial delay, so an abort raised by progress lands promptly.
_DELAY_SLICE_S = 0.1

# yuv = BT709_RGB_TO_YUV @ rgb + offset, with +0.5 folded in so that truncating to uint8 rounds.
_YUV_OFFSET_ROUNDED = YUV_OFFSET + 0.5
_BLAS_SINGLE_THREAD_MNK = 65536 * 4  # OpenBLAS: SMP_THRESHOLD_MIN x GEMM_MULTITHREAD_THRESHOLD
_KEN_BURNS_ZOOM = 1.12  # zoom reached at the far end of an image-to-video move: gentle, not dizzying


class SyntheticEngine:
    """Deterministic CPU engine; `delay_seconds` stretches each render to mimic a real model's latency.

    The delay is slept in slices between frames (progress keeps moving, an abort lands within ~0.1 s);
    encoding carries on meanwhile, so a render takes at least `delay_seconds`, not render time + delay.
    """

    name = "synthetic"

    def __init__(self, delay_seconds: float = 0.0) -> None:
        if delay_seconds < 0 or not math.isfinite(delay_seconds):
            raise ValueError(f"delay_seconds must be a finite number >= 0, got {delay_seconds}")
        self.delay_seconds = delay_seconds

    def render(
        self, spec: VideoSpec, inputs: RenderInputs, out_path: Path, progress: ProgressCallback
    ) -> None:
        rng = np.random.default_rng(request_seed(spec, inputs))
        scene: _Scene
        if inputs.first_image is not None:
            scene = _ImageScene(spec, inputs.first_image, inputs.last_image, rng)
        else:
            scene = _PromptScene(spec, rng)
        reporter = _Progress(progress)
        n = spec.frame_count
        delay_per_frame = self.delay_seconds / n if n else 0.0
        out_path = Path(out_path)
        try:
            with Mp4Writer(out_path, spec.width, spec.height, spec.fps) as writer:
                write = writer.write_yuv420p if scene.pix_fmt == "yuv420p" else writer.write
                for i in range(n):
                    write(scene.frame(i))
                    done, next_done = _FRAMES_SHARE * i / n, _FRAMES_SHARE * (i + 1) / n
                    if delay_per_frame:
                        _sleep_reporting(delay_per_frame, done, next_done, reporter)
                    reporter.maybe(next_done)
            reporter.report(1.0)
        except BaseException:
            # Mp4Writer already removed its file when the error came from inside the block; this covers
            # a failure in the final report and keeps the promise "no partial file" in one place.
            out_path.unlink(missing_ok=True)
            raise


class _Progress:
    """Throttles calls to the caller's progress callback and keeps them monotonic."""

    def __init__(self, callback: ProgressCallback) -> None:
        self._callback = callback
        self._last_value = -1.0
        self._last_time = time.monotonic()

    def maybe(self, value: float) -> None:
        now = time.monotonic()
        if value - self._last_value >= _PROGRESS_STEP or now - self._last_time >= _PROGRESS_EVERY_S:
            self.report(value)

    def report(self, value: float) -> None:
        if value <= self._last_value:
            return
        self._last_value, self._last_time = value, time.monotonic()
        self._callback(value)


def _sleep_reporting(seconds: float, start: float, end: float, reporter: _Progress) -> None:
    """Sleep in short slices, moving progress from `start` towards `end` so a waiting client sees motion."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, _DELAY_SLICE_S))
        done = 1.0 - max(0.0, deadline - time.monotonic()) / seconds
        reporter.maybe(start + (end - start) * done)


class _Scene(Protocol):
    pix_fmt: str  # "rgb24" (H x W x 3) or "yuv420p" (PyAV's planar layout), see Mp4Writer

    def frame(self, index: int) -> np.ndarray: ...


# -- text-to-video -------------------------------------------------------------------------------------


def _palette(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """A harmonious palette: (background base colour, `count` accent colours), float32 RGB 0..255."""
    base_hue = rng.random()
    # Hue offsets of classic schemes: analogous, complementary, split-complementary, triadic.
    schemes = [(-0.08, 0.0, 0.08), (0.0, 0.5), (0.0, 0.42, 0.58), (0.0, 1 / 3, 2 / 3)]
    offsets = schemes[rng.integers(len(schemes))]
    dark = rng.random() < 0.7  # mostly dusky backgrounds: accents and white text read best on them
    bg_v = rng.uniform(0.10, 0.22) if dark else rng.uniform(0.55, 0.70)
    base = colorsys.hsv_to_rgb(base_hue % 1.0, rng.uniform(0.35, 0.7), bg_v)
    accents = []
    for k in range(count):
        hue = (base_hue + offsets[k % len(offsets)] + rng.normal(0, 0.025)) % 1.0
        accents.append(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.85), rng.uniform(0.75, 1.0)))
    return np.array(base, np.float32) * 255, np.array(accents, np.float32) * 255


class _PromptScene:
    """Mesh-gradient background, drifting soft discs and the prompt's words, all keyed on the request.

    Drawn straight into yuv420p planes: every step is a weighted sum of colours, and the RGB -> YUV map is
    affine, so it can be applied to the colours once instead of to every pixel of every frame. That halves
    the pixels drawn (chroma is a quarter size) and saves the encoder thread its colour conversion.
    """

    pix_fmt = "yuv420p"
    _GLOWS = 7  # big blurry colour fields in the background
    _DISCS = 6  # sharper soft-edged discs in front

    def __init__(self, spec: VideoSpec, rng: np.random.Generator) -> None:
        self.w, self.h, self.fps = spec.width, spec.height, spec.fps
        short = min(self.w, self.h)
        base, accents = _palette(rng, self._GLOWS + self._DISCS)
        # Luma sample positions, and chroma ones (each the centre of its 2 x 2 luma block).
        self._y_rows = np.arange(self.h, dtype=np.float64)
        self._y_cols = np.arange(self.w, dtype=np.float64)
        self._c_rows = np.arange(self.h // 2) * 2 + 0.5
        self._c_cols = np.arange(self.w // 2) * 2 + 0.5

        # Background = base + sum_k gy_k(y) gx_k(x) (colour_k - base): a sum of separable Gaussians is a
        # low-rank matrix, so each plane is one small matrix product per frame.
        g = self._GLOWS
        glow_rgb = (accents[:g] - base) * rng.uniform(0.55, 0.9, (g, 1))
        self._glow_sigma = rng.uniform(0.22, 0.45, (g, 2)) * np.array([self.w, self.h])
        self._glow_center = rng.uniform(0.0, 1.0, (g, 2))
        self._glow_orbit = rng.uniform(0.08, 0.3, (g, 2))
        self._glow_speed = rng.uniform(0.15, 0.45, (g, 2)) * rng.choice([-1, 1], (g, 2))
        self._glow_phase = rng.uniform(0, 2 * math.pi, (g, 2))
        # A gentle vertical shade, lighter at the top, whose strength breathes over time.
        shade_rgb = np.array([18.0, 18.0, 24.0]) * rng.uniform(0.5, 1.2)
        # Colours as (Y, U, V) rows. Differences of colours take the matrix alone; the base also takes the
        # offset, plus 0.5 so that the final float -> uint8 truncation rounds to nearest.
        self._glow_yuv = glow_rgb @ BT709_RGB_TO_YUV.T
        self._shade_yuv = shade_rgb @ BT709_RGB_TO_YUV.T
        self._base_yuv = BT709_RGB_TO_YUV @ base + _YUV_OFFSET_ROUNDED

        # Discs are drawn once into sprites (region * keep + add per frame); whole-pixel placement is fine
        # at these speeds.
        self._discs = [
            _YuvSprite(
                *_disc_sprite(
                    radius=rng.uniform(0.06, 0.16) * short,
                    color=accents[g + k],
                    opacity=rng.uniform(0.55, 0.9),
                )
            )
            for k in range(self._DISCS)
        ]
        d = self._DISCS
        self._disc_center = rng.uniform(0.15, 0.85, (d, 2))
        self._disc_orbit = rng.uniform(0.05, 0.3, (d, 2))
        self._disc_speed = rng.uniform(0.25, 0.9, (d, 2)) * rng.choice([-1, 1], (d, 2))
        self._disc_phase = rng.uniform(0, 2 * math.pi, (d, 2))

        text = _text_sprite(spec.prompt, self.w, self.h)
        self._text = _YuvSprite(*text) if text is not None else None
        self._text_bob_phase = rng.uniform(0, 2 * math.pi)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` in PyAV's yuv420p layout: (H*3/2) x W uint8, planes Y, U, V one after another."""
        t = index / self.fps
        buf = np.empty(self.h * self.w * 3 // 2, np.float32)
        n_y, n_c = self.h * self.w, self.h * self.w // 4
        planes = (
            buf[:n_y].reshape(self.h, self.w),
            buf[n_y : n_y + n_c].reshape(self.h // 2, self.w // 2),
            buf[n_y + n_c :].reshape(self.h // 2, self.w // 2),
        )
        self._background(t, planes)
        for k, sprite in enumerate(self._discs):
            cx, cy = (
                self._disc_center[k]
                + self._disc_orbit[k] * np.sin(self._disc_speed[k] * t + self._disc_phase[k])
            ) * np.array([self.w, self.h])
            sprite.draw(planes, round(cx) - sprite.width // 2, round(cy) - sprite.height // 2)
        if self._text is not None:
            bob = round(0.008 * self.h * math.sin(0.9 * t + self._text_bob_phase))
            x0 = (self.w - self._text.width) // 2
            y0 = int(self.h * 0.72) - self._text.height // 2 + bob
            y0 = min(max(0, y0), self.h - self._text.height)
            self._text.draw(planes, x0, y0, opacity=min(1.0, t / 0.6))  # words fade in over 0.6 s
        out = np.clip(buf, 0, 255, out=np.empty(buf.shape, np.uint8), casting="unsafe")
        return out.reshape(self.h * 3 // 2, self.w)

    def _background(self, t: float, planes: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        wobble = np.sin(self._glow_speed * t + self._glow_phase)
        centers = (self._glow_center + self._glow_orbit * wobble) * np.array([self.w, self.h])
        shade_yuv = self._shade_yuv * (1.0 + 0.3 * math.sin(0.7 * t))
        for channel, plane in enumerate(planes):
            rows, cols = (self._y_rows, self._y_cols) if channel == 0 else (self._c_rows, self._c_cols)
            # Terms: the glows, the constant base, the vertical shade.
            left = np.empty((len(rows), self._GLOWS + 2), np.float32)
            left[:, :-2] = np.exp(-(((rows[:, None] - centers[:, 1]) / self._glow_sigma[:, 1]) ** 2))
            left[:, -2] = 1.0
            left[:, -1] = 0.5 - rows / self.h
            right = np.empty((self._GLOWS + 2, len(cols)), np.float32)
            right[:-2] = np.exp(-(((cols[None, :] - centers[:, :1]) / self._glow_sigma[:, :1]) ** 2))
            right[:-2] *= self._glow_yuv[:, channel, None]
            right[-2] = self._base_yuv[channel]
            right[-1] = shade_yuv[channel]
            _matmul_single_thread(left, right, plane)


def _matmul_single_thread(left: np.ndarray, right: np.ndarray, out: np.ndarray) -> None:
    """out = left @ right, in bands of rows small enough for OpenBLAS to run on the calling thread.

    OpenBLAS hands a product bigger than ~256k multiply-adds to its thread pool, whose threads then spin
    between frames and starve x264 of the second core (docs/performance.md, "Renders").
    """
    rows = max(1, _BLAS_SINGLE_THREAD_MNK // (left.shape[1] * right.shape[1]))
    for y in range(0, left.shape[0], rows):
        np.matmul(left[y : y + rows], right, out=out[y : y + rows])


class _YuvSprite:
    """An RGB sprite (`region * keep + add`, premultiplied) turned into yuv420p planes once.

    Chroma is averaged over 2 x 2 blocks, once for each parity of the luma position, so a sprite can sit
    at any whole luma pixel and its colour stays aligned with its luma.
    """

    def __init__(self, keep: np.ndarray, add: np.ndarray) -> None:
        self.height, self.width = keep.shape
        # Weights under a blend sum to 1, so the colours' share (1 - keep) takes the offset.
        add_yuv = add @ BT709_RGB_TO_YUV.T + (1.0 - keep)[..., None] * _YUV_OFFSET_ROUNDED
        self.y_keep = keep.astype(np.float32)
        self.y_add = add_yuv[..., 0].astype(np.float32)
        self.chroma: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for py in (0, 1):
            for px in (0, 1):
                # Shift by the parity, pad with "transparent" to even size, average 2 x 2 blocks.
                pad = ((py, (self.height + py) % 2), (px, (self.width + px) % 2))
                k = np.pad(keep, pad, constant_values=1.0)
                u = np.pad(add_yuv[..., 1], pad)
                v = np.pad(add_yuv[..., 2], pad)
                self.chroma[py, px] = tuple(
                    (a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))).astype(np.float32)
                    for a in (k, u, v)
                )

    def draw(
        self, planes: tuple[np.ndarray, np.ndarray, np.ndarray], x0: int, y0: int, opacity: float = 1.0
    ) -> None:
        y_plane, u_plane, v_plane = planes
        _blend(y_plane, self.y_keep, self.y_add, x0, y0, opacity)
        c_keep, c_u, c_v = self.chroma[y0 % 2, x0 % 2]
        _blend(u_plane, c_keep, c_u, x0 // 2, y0 // 2, opacity)
        _blend(v_plane, c_keep, c_v, x0 // 2, y0 // 2, opacity)


def _blend(plane: np.ndarray, keep: np.ndarray, add: np.ndarray, x0: int, y0: int, opacity: float) -> None:
    """plane[y0:, x0:] = plane * keep + add, clipped to the plane (sprites may drift partly off it)."""
    h, w = keep.shape
    sx0, sy0 = max(0, -x0), max(0, -y0)
    sx1, sy1 = min(w, plane.shape[1] - x0), min(h, plane.shape[0] - y0)
    if sx0 >= sx1 or sy0 >= sy1:
        return
    region = plane[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1]
    keep, add = keep[sy0:sy1, sx0:sx1], add[sy0:sy1, sx0:sx1]
    if opacity >= 1.0:
        region *= keep
        region += add
    else:
        region *= 1.0 - opacity * (1.0 - keep)
        region += opacity * add


def _disc_sprite(radius: float, color: np.ndarray, opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged disc lit from the upper left, as RGB (keep, add) arrays of size ~2r."""
    feather = max(2.0, 0.12 * radius)  # soft edge, but still reads as a disc rather than a glow
    size = int(2 * (radius + feather)) + 2
    coords = (np.arange(size) - (size - 1) / 2) / radius
    dist = np.sqrt(coords[:, None] ** 2 + coords[None, :] ** 2)
    alpha = np.clip((1.0 - dist) * (radius / feather), 0.0, 1.0) * opacity
    lit = np.minimum(color * 1.25 + 30, 255)
    light = np.clip(0.5 - 0.35 * (coords[None, :] + coords[:, None]), 0.0, 1.0)[..., None]
    shade = color + light * (lit - color)
    return 1.0 - alpha, alpha[..., None] * shade


_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont  # what load_default() gives, with or without FreeType

# Text kept for layout, in rendered width: this many times what the lines can hold. Generous, so that
# kerning (a string is a little narrower than the sum of its glyphs) never leaves the lines short of text,
# yet bounded, so that no prompt makes layout cost more than a few lines' worth of measuring.
_LAYOUT_SLACK = 2.0
_ELLIPSIS = "..."


def _text_sprite(prompt: str, width: int, height: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The prompt's words in white over a soft shadow, rendered once by Pillow, as RGB (keep, add)."""
    short = min(width, height)
    size = max(12, round(short * 0.05))
    font = ImageFont.load_default(size=size)
    lines = _layout(prompt, font, max_width=width * 0.84, max_lines=3)
    if not lines:
        return None
    text = "\n".join(lines)
    pad = max(4, round(short * 0.02))
    spacing = round(size * 0.25)
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    left, top, right, bottom = probe.multiline_textbbox(
        (0, 0), text, font=font, spacing=spacing, align="center"
    )
    w = min(width, int(right - left) + 2 * pad)
    h = min(height, int(bottom - top) + 2 * pad)
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).multiline_text(
        (pad - left, pad - top), text, fill=255, font=font, spacing=spacing, align="center"
    )
    shadow = mask.filter(ImageFilter.GaussianBlur(max(2, pad * 0.6)))
    a_text = np.asarray(mask, np.float64) / 255.0
    a_shadow = np.minimum(1.0, np.asarray(shadow, np.float64) / 255.0 * 1.6) * 0.55
    # Shadow (black) first, then the text (white) over it.
    keep = (1.0 - a_shadow) * (1.0 - a_text)
    add = (a_text * 250.0)[..., None] * np.ones(3)
    return keep, add


def _layout(prompt: str, font: _Font, max_width: float, max_lines: int) -> list[str]:
    """The lines drawn for a prompt; costs a few lines' worth of measuring whatever the prompt holds."""
    return _wrap(_renderable(prompt, font, _LAYOUT_SLACK * max_lines * max_width), font, max_width, max_lines)


def _renderable(prompt: str, font: _Font, budget: float) -> str:
    """The prompt reduced to what the bundled font can draw (accents stripped, other scripts dropped), cut
    once the glyphs kept are `budget` pixels wide: only a few lines are ever drawn.

    Pillow's default font covers ASCII only; anything else would be drawn as a row of tofu boxes.
    Each prompt character is normalised (NFKD) on its own and the result cached: per character the
    decomposition is the same as the whole string's, because canonical reordering only moves combining
    marks, which are dropped. So a prompt costs one dictionary look-up per character read, plus one
    glyph check per distinct character, and reading stops at the budget: `"\u338f" * 5000` ("kcal" each)
    no longer becomes 20,000 characters to lay out.
    """
    missing = bytes(font.getmask("\U0010fffd"))
    glyphs: dict[str, float | None] = {}  # character -> its width when drawable, else None
    forms: dict[str, tuple[str, float]] = {}  # prompt character -> (what is drawn for it, its width)
    out: list[str] = []
    used = 0.0
    # The API refuses longer prompts; the cap keeps the engine bounded when called some other way.
    for ch in itertools.islice(prompt, MAX_PROMPT_CHARS):
        form = forms.get(ch)
        if form is None:
            form = forms[ch] = _drawn_form(ch, font, missing, glyphs)
        out.append(form[0])
        used += form[1]
        if used > budget:
            break
    return " ".join("".join(out).split())


def _drawn_form(ch: str, font: _Font, missing: bytes, glyphs: dict[str, float | None]) -> tuple[str, float]:
    """What one prompt character becomes on screen, and a width that counts towards the layout budget."""
    if ch.isspace():
        return " ", 0.0
    drawn: list[str] = []
    width = 0.0
    for part in unicodedata.normalize("NFKD", ch):  # at most 18 characters (U+FDFA)
        if unicodedata.combining(part):
            continue
        if part == " ":
            drawn.append(" ")
            continue
        if part not in glyphs:
            drawable = part.isprintable() and bytes(font.getmask(part)) != missing
            # At least a pixel each, so that even a zero-width glyph counts against the budget.
            glyphs[part] = max(1.0, font.getlength(part)) if drawable else None
        glyph_width = glyphs[part]
        if glyph_width is None:
            drawn.append(" ")
        else:
            drawn.append(part)
            width += glyph_width
    return "".join(drawn), width


def _wrap(text: str, font: _Font, max_width: float, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width; the last line ends in an ellipsis when text is left over."""
    lines: list[str] = []
    words = text.split()
    i = 0
    while i < len(words) and len(lines) < max_lines:
        line = words[i]
        if font.getlength(line) > max_width:  # one overlong word: cut it and carry the rest over
            line = line[: max(1, _fitting_prefix(line, "", font, max_width))]
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
        lines[-1] = last[: _fitting_prefix(last, _ELLIPSIS, font, max_width)].rstrip() + _ELLIPSIS
    return lines


def _fitting_prefix(text: str, suffix: str, font: _Font, max_width: float) -> int:
    """The longest n such that text[:n] + suffix is at most `max_width` wide (0 when none is).

    Binary search (width grows with each character): a log of the length in measurements, where
    shortening one character at a time measured a 5,000-character word thousands of times.
    """
    lo, hi = 0, len(text)  # text[:lo] + suffix fits, or lo == 0; text[:hi + 1] + suffix does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if font.getlength(text[:mid] + suffix) <= max_width:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- image-to-video ------------------------------------------------------------------------------------


def _ease(s: float) -> float:
    """Smoothstep: starts and ends at rest, so moves neither jerk in nor stop dead."""
    s = min(1.0, max(0.0, s))
    return s * s * (3.0 - 2.0 * s)


class _KenBurns:
    """Zoomed, panned views of one image at the output size; zoom 1.0 is exactly `cover_fit`."""

    # Pillow's filtered resize of every frame costs more than the encoder (docs/performance.md,
    # "Renders"). So the image is resampled well once, at twice the size the deepest zoom needs, and each
    # frame samples it with NEAREST: a band-limited source sampled at half-pixel steps looks like bilinear.
    _SUPERSAMPLE = 2

    def __init__(self, image: Image.Image, width: int, height: int, rng: np.random.Generator) -> None:
        self.w, self.h = width, height
        self.exact = np.asarray(cover_fit(image, width, height))
        image = image.convert("RGB")
        k = self._SUPERSAMPLE * _KEN_BURNS_ZOOM
        self.source = image.resize(
            (round(width * k), round(height * k)),
            Image.Resampling.LANCZOS,
            box=cover_box(*image.size, width, height),
            reducing_gap=3.0,  # big photos: a fast integer reduce first, LANCZOS for the last step
        )
        angle = rng.uniform(0, 2 * math.pi)
        self.pan = (math.cos(angle) * 0.7, math.sin(angle) * 0.7)  # fraction of the slack used by the pan

    def view(self, zoom: float) -> Image.Image:
        if zoom <= 1.0:
            return Image.fromarray(self.exact)
        bw, bh = self.source.size
        vw, vh = bw / zoom, bh / zoom
        cx = bw / 2 + self.pan[0] * (bw - vw) / 2
        cy = bh / 2 + self.pan[1] * (bh - vh) / 2
        view_box = (cx - vw / 2, cy - vh / 2, cx + vw / 2, cy + vh / 2)
        return self.source.resize((self.w, self.h), Image.Resampling.NEAREST, box=view_box)


class _ImageScene:
    """First image zooming in; with a last image, a cross-fade into it as it settles back to zoom 1.0."""

    pix_fmt = "rgb24"

    def __init__(
        self,
        spec: VideoSpec,
        first: Image.Image,
        last: Image.Image | None,
        rng: np.random.Generator,
    ) -> None:
        self.n = spec.frame_count
        self.first = _KenBurns(first, spec.width, spec.height, rng)
        self.last = _KenBurns(last, spec.width, spec.height, rng) if last is not None else None

    def frame(self, index: int) -> np.ndarray:
        s = index / (self.n - 1) if self.n > 1 else 0.0
        if index == 0:
            return self.first.exact
        if self.last is None:
            return np.asarray(self.first.view(1.0 + (_KEN_BURNS_ZOOM - 1.0) * _ease(s)))
        if index == self.n - 1:
            return self.last.exact
        # Both images move the whole time; the blend happens in the middle so each end holds its image.
        mix = _ease((s - 0.2) / 0.6)
        zoom_first = 1.0 + (_KEN_BURNS_ZOOM - 1.0) * _ease(s)
        zoom_last = 1.0 + (_KEN_BURNS_ZOOM - 1.0) * (1.0 - _ease(s))
        if mix <= 0.0:
            return np.asarray(self.first.view(zoom_first))
        if mix >= 1.0:
            return np.asarray(self.last.view(zoom_last))
        return np.asarray(Image.blend(self.first.view(zoom_first), self.last.view(zoom_last), mix))
