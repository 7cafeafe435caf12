"""The synthetic engine, judged by decoding the MP4s it writes."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from reelq.domain import ASPECT_RATIOS, RESOLUTIONS, VideoSpec, frame_size
from reelq.engines import synthetic
from reelq.engines.base import Engine, RenderAborted, RenderInputs
from reelq.engines.synthetic import SyntheticEngine, request_seed
from reelq.media import cover_fit, probe
from tests.videos import decode_frames, psnr

PROMPT = "A red fox running through a snowy forest at dawn"


def spec_of(**kw: object) -> VideoSpec:
    fields: dict[str, object] = {"model": "viduq3-pro", "prompt": PROMPT, "duration": 1, "resolution": "540p"}
    fields.update(kw)
    return VideoSpec(**fields)  # type: ignore[arg-type]


def render(
    tmp_path: Path,
    spec: VideoSpec,
    inputs: RenderInputs | None = None,
    name: str = "out.mp4",
    engine: SyntheticEngine | None = None,
) -> Path:
    out = tmp_path / name
    (engine or SyntheticEngine()).render(spec, inputs or RenderInputs(), out, lambda _f: None)
    return out


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16))))


def natural_image(width: int, height: int, seed: int) -> Image.Image:
    """Photo-like test input: smooth light, shapes with soft edges, a little fine texture."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    light = np.stack(
        [
            128 + 90 * np.sin(xs * 5 + seed),
            128 + 90 * np.cos(ys * 4 - seed),
            128 + 70 * np.sin((xs + ys) * 3),
        ],
        axis=-1,
    )
    img = Image.fromarray(light.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(10):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(width // 30, width // 8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    texture = (rng.normal(128, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    return Image.blend(img.filter(ImageFilter.GaussianBlur(1.5)), Image.fromarray(texture), 0.12)


def test_satisfies_engine_protocol() -> None:
    engine: Engine = SyntheticEngine()
    assert engine.name == "synthetic"
    with pytest.raises(ValueError):
        SyntheticEngine(delay_seconds=-1)


@pytest.mark.parametrize("aspect_ratio", list(ASPECT_RATIOS))
@pytest.mark.parametrize("resolution", list(RESOLUTIONS))
def test_every_size_is_a_valid_h264_file(tmp_path: Path, resolution: str, aspect_ratio: str) -> None:
    spec = spec_of(resolution=resolution, aspect_ratio=aspect_ratio)
    out = render(tmp_path, spec)
    width, height = frame_size(resolution, aspect_ratio)
    info = probe(out)
    assert (info.width, info.height) == (width, height)
    assert (info.codec, info.pix_fmt, info.fps, info.faststart) == ("h264", "yuv420p", 24.0, True)
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 24
    assert (frames[0].width, frames[0].height) == (width, height)


def test_five_seconds_720p_is_exactly_120_frames(tmp_path: Path) -> None:
    out = render(tmp_path, spec_of(duration=5, resolution="720p"))
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.duration * stream.time_base == Fraction(5)
        assert stream.average_rate == 24
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 120
    assert frames[0].shape == (720, 1280, 3)
    assert probe(out).duration == 5.0
    # Not a flat colour, and it moves all the way through.
    assert frames[0].std() > 20
    assert frames[119].std() > 20
    diffs = [mean_abs_diff(frames[i], frames[i + 1]) for i in range(0, 119, 7)]
    assert min(diffs) > 0.2, diffs
    assert mean_abs_diff(frames[0], frames[119]) > 5


def test_same_request_gives_identical_video(tmp_path: Path) -> None:
    spec = spec_of(seed=7)
    a = render(tmp_path, spec, name="a.mp4")
    b = render(tmp_path, spec, name="b.mp4")
    assert a.read_bytes() == b.read_bytes()
    assert all(np.array_equal(x, y) for x, y in zip(decode_frames(a), decode_frames(b), strict=True))


@pytest.mark.parametrize(
    "change",
    [{"prompt": "An astronaut riding a horse on the moon"}, {"seed": 8}, {"model": "viduq3-turbo"}],
    ids=["prompt", "seed", "model"],
)
def test_different_request_gives_visibly_different_video(tmp_path: Path, change: dict[str, object]) -> None:
    base = decode_frames(render(tmp_path, spec_of(seed=7), name="a.mp4"))
    other = decode_frames(render(tmp_path, spec_of(**{"seed": 7, **change}), name="b.mp4"))
    for i in (0, 12, 23):
        assert mean_abs_diff(base[i], other[i]) > 10, i
    # Different palettes, not just shifted shapes: the mean colours differ.
    assert np.abs(base[12].mean(axis=(0, 1)) - other[12].mean(axis=(0, 1))).max() > 5


def test_seed_covers_every_input() -> None:
    spec = spec_of(seed=1)
    seeds = {
        request_seed(spec, RenderInputs()),
        request_seed(spec_of(seed=None), RenderInputs()),
        request_seed(spec_of(seed=0), RenderInputs()),
        request_seed(spec_of(seed=1, prompt=PROMPT + "!"), RenderInputs()),
        request_seed(spec, RenderInputs(digests=("abc",))),
        request_seed(spec, RenderInputs(digests=("ab", "c"))),
    }
    assert len(seeds) == 6
    # Duration, size and ratio are not part of it: the same scene at another size.
    assert request_seed(spec_of(seed=1, duration=3, resolution="1080p"), RenderInputs()) == request_seed(
        spec, RenderInputs()
    )


@pytest.mark.parametrize(
    "prompt",
    ["猫が雪の中を走る", "x" * 300, "word " * 1000, "café naïve façade", "  \t spaced\nout  "],
    ids=["cjk", "long-word", "5000-chars", "accents", "whitespace"],
)
def test_any_prompt_renders(tmp_path: Path, prompt: str) -> None:
    frames = decode_frames(render(tmp_path, spec_of(prompt=prompt)))
    assert len(frames) == 24
    assert frames[5].std() > 10


def test_image_to_video_starts_on_the_first_image(tmp_path: Path) -> None:
    first = natural_image(1200, 900, seed=1)  # 4:3 into 16:9: cover-fit crops top and bottom
    spec = spec_of(duration=2, resolution="720p")
    frames = decode_frames(render(tmp_path, spec, RenderInputs(first_image=first, digests=("d1",))))
    assert len(frames) == 48
    expected = np.asarray(cover_fit(first, 1280, 720))
    assert psnr(frames[0], expected) > 30
    assert psnr(frames[1], expected) > 28  # the move starts gently
    # ...and then it moves: the end is zoomed in, no longer the plain first image.
    assert psnr(frames[-1], expected) < 25
    assert mean_abs_diff(frames[24], frames[25]) > 0.2


def test_first_and_last_frame_video_ends_on_the_last_image(tmp_path: Path) -> None:
    first = natural_image(800, 800, seed=1)
    last = natural_image(500, 300, seed=2)  # smaller than the output: scaled up
    spec = spec_of(duration=2, aspect_ratio="9:16")
    inputs = RenderInputs(first_image=first, last_image=last, digests=("d1", "d2"))
    frames = decode_frames(render(tmp_path, spec, inputs))
    assert len(frames) == 48
    first_fit = np.asarray(cover_fit(first, 540, 960))
    last_fit = np.asarray(cover_fit(last, 540, 960))
    assert psnr(frames[0], first_fit) > 30
    assert psnr(frames[-1], last_fit) > 30
    assert psnr(frames[-1], first_fit) < 20
    # The middle is on the way from one to the other, not either of them.
    assert psnr(frames[24], first_fit) < 25 and psnr(frames[24], last_fit) < 25


def test_image_to_video_is_deterministic_and_keyed_on_the_images(tmp_path: Path) -> None:
    first = natural_image(640, 360, seed=3)
    spec = spec_of()
    a = render(tmp_path, spec, RenderInputs(first_image=first, digests=("x",)), name="a.mp4")
    b = render(tmp_path, spec, RenderInputs(first_image=first, digests=("x",)), name="b.mp4")
    assert a.read_bytes() == b.read_bytes()


def test_progress_is_monotonic_and_ends_at_one(tmp_path: Path) -> None:
    seen: list[float] = []
    SyntheticEngine().render(spec_of(duration=2), RenderInputs(), tmp_path / "p.mp4", seen.append)
    assert len(seen) >= 5
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[0] > 0 and seen[-1] == 1.0
    assert all(0 <= v <= 1 for v in seen)


def test_abort_from_progress_propagates_and_leaves_no_file(tmp_path: Path) -> None:
    calls: list[float] = []

    def progress(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 3:
            raise RenderAborted("lease lost")

    out = tmp_path / "aborted.mp4"
    with pytest.raises(RenderAborted, match="lease lost"):
        SyntheticEngine().render(spec_of(duration=3), RenderInputs(), out, progress)
    assert len(calls) == 3
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


class DelayClock:
    """The synthetic engine's clock (its `time` module), moved only by the engine's own sleeps: time spent
    encoding frames, or lost to a loaded machine, does not count. `real` sleeps for real as well."""

    def __init__(self, real: bool) -> None:
        self.now = 0.0
        self.real = real

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        if self.real:
            time.sleep(seconds)
        self.now += seconds


@pytest.fixture
def delay_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], DelayClock]:
    def install(real: bool) -> DelayClock:
        clock = DelayClock(real)
        monkeypatch.setattr(synthetic, "time", clock)
        return clock

    return install


def test_delay_stretches_the_render_and_keeps_reporting(
    tmp_path: Path, delay_clock: Callable[[bool], DelayClock]
) -> None:
    clock = delay_clock(True)
    seen: list[tuple[float, float]] = []
    start = time.monotonic()
    SyntheticEngine(delay_seconds=1.5).render(
        spec_of(), RenderInputs(), tmp_path / "slow.mp4", lambda f: seen.append((clock.now, f))
    )
    assert time.monotonic() - start >= 1.5  # really slept (a lower bound: safe on a slow machine)
    assert clock.now == pytest.approx(1.5)  # ...and slept the delay, no more
    assert seen[-1][1] == 1.0
    # Reports keep coming while the delay runs: no silent gap much longer than the reporting interval,
    # counted on the delay's own clock, so a slow frame encode cannot widen it.
    times = [0.0] + [t for t, _ in seen]
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.6
    assert len(seen) >= 6


def test_abort_during_delay_is_prompt(tmp_path: Path, delay_clock: Callable[[bool], DelayClock]) -> None:
    clock = delay_clock(False)  # the delay's sleeps are counted, not slept: exact on any machine

    def progress(fraction: float) -> None:
        if clock.now > 0.3:
            raise RenderAborted("drain")

    out = tmp_path / "slow.mp4"
    with pytest.raises(RenderAborted):
        SyntheticEngine(delay_seconds=60).render(spec_of(), RenderInputs(), out, progress)
    assert clock.now < 1.5  # slept: not the 60 s, nor even one frame's 2.5 s share of it
    assert not out.exists()
