"""How much faster than real time the synthetic engine renders, end to end (frames + H.264 + MP4).

    python benchmarks/render_speed.py [--runs 5] [--json results.json] [--no-i2v]

Each case renders a 5 s video `--runs` times after one warm-up render and reports the median wall time
and the real-time factor: seconds of video per second of wall clock (above 1 is faster than real time).
The table goes to stderr, the JSON to stdout (and to --json when given).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reelq import media
from reelq.domain import VideoSpec
from reelq.engines.base import RenderInputs
from reelq.engines.synthetic import SyntheticEngine

DURATION = 5


@dataclass(frozen=True)
class Case:
    name: str
    resolution: str
    images: int  # 0: text-to-video, 1: first image, 2: first and last image


CASES = [
    Case("t2v-720p", "720p", 0),
    Case("t2v-1080p", "1080p", 0),
    Case("i2v-first-last-720p", "720p", 2),
    Case("i2v-first-last-1080p", "1080p", 2),
]


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """A stand-in for a camera photo: smooth light, soft shapes and fine texture (which costs x264 bits)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width] / max(width, height)
    light = np.stack(
        [128 + 90 * np.sin(xs * 5 + seed), 128 + 90 * np.cos(ys * 4), 128 + 70 * np.sin(xs + ys)], -1
    )
    img = Image.fromarray(light.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x, y, r = rng.integers(0, width), rng.integers(0, height), rng.integers(width // 30, width // 8)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    texture = Image.fromarray(rng.normal(128, 12, (height, width, 3)).clip(0, 255).astype(np.uint8))
    return Image.blend(img.filter(ImageFilter.GaussianBlur(1.5)), texture, 0.12)


def run_case(case: Case, runs: int, workdir: Path) -> dict[str, object]:
    spec = VideoSpec(
        model="viduq3-pro",
        prompt="A red fox running through a snowy forest at dawn, cinematic lighting",
        duration=DURATION,
        resolution=case.resolution,
        seed=42,
    )
    inputs = RenderInputs()
    if case.images:
        # A 12 MP landscape photo and a square one: inputs bigger than the output, as phones make them.
        first = photo_like(4000, 3000, 1)
        last = photo_like(2400, 2400, 2) if case.images == 2 else None
        inputs = RenderInputs(first_image=first, last_image=last, digests=("a", "b")[: case.images])
    engine = SyntheticEngine()
    out = workdir / f"{case.name}.mp4"
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        engine.render(spec, inputs, out, lambda _f: None)
        elapsed = time.perf_counter() - start
        if i:  # the first render warms caches (font, code paths) and is not counted
            times.append(elapsed)
    info = media.probe(out)
    median = statistics.median(times)
    return {
        "case": case.name,
        "width": info.width,
        "height": info.height,
        "frames": info.frame_count,
        "video_seconds": info.duration,
        "file_bytes": out.stat().st_size,
        "runs_s": [round(t, 3) for t in times],
        "median_s": round(median, 3),
        "realtime_factor": round(info.duration / median, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed renders per case (default 5)")
    parser.add_argument("--json", type=Path, help="also write the JSON results to this file")
    parser.add_argument("--no-i2v", action="store_true", help="text-to-video cases only")
    args = parser.parse_args()

    cases = [c for c in CASES if not (args.no_i2v and c.images)]
    results = []
    with tempfile.TemporaryDirectory(prefix="reelq-bench-") as tmp:
        for case in cases:
            result = run_case(case, args.runs, Path(tmp))
            results.append(result)
            print(
                f"{case.name:22} {result['width']}x{result['height']} {result['frames']} frames: "
                f"median {result['median_s']:.2f} s -> {result['realtime_factor']:.2f}x real time "
                f"({result['file_bytes'] / 1e6:.1f} MB)",
                file=sys.stderr,
                flush=True,
            )
    report = {
        "benchmark": "render_speed",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pyav": av.__version__,
        },
        "encoder": {
            "preset": media.DEFAULT_PRESET,
            "crf": media.DEFAULT_CRF,
            "x264_threads": media.X264_THREADS,
        },
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
