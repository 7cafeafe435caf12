"""What a step cache costs in quality, on your weights: PSNR and SSIM of each frame against the uncached
render of the same request and seed.

    python -m benchmarks.cache_quality --models /etc/reelq/models.toml --model wan-fast \\
        [--prompts prompts.txt] [--duration 5] [--resolution 720p] [--cache '{"type": "dbcache"}']

It loads the model as a worker would (its models-file entry; `--cache` overrides the entry's `cache`,
which is otherwise what is measured), renders each prompt twice through the pipeline, the same seed
each time, once with the cache and once with it removed, and prints per prompt the mean and worst
PSNR (dB) and SSIM over the native frames, and the seconds of each render. As a rough guide, a mean
PSNR above 30 dB and SSIM above 0.9 is hard to tell apart when played; judge by eye too (`--save DIR`
writes both MP4s of every prompt). Random weights make these numbers meaningless: use real ones.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_PROMPTS = (
    "A red fox trots through fresh snow at dawn, cinematic, shallow depth of field",
    "A busy street market at night, neon signs reflected in puddles, handheld camera",
    "Waves crash against black volcanic rocks, slow motion, spray catching the sunlight",
)


def psnr(a: Any, b: Any) -> list[float]:
    """Per frame, for (frames, 3, h, w) tensors in [0, 1]."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1)
    return [math.inf if m == 0 else 10 * math.log10(1 / m) for m in mse.tolist()]


def ssim(a: Any, b: Any) -> list[float]:
    """Per frame, on luma, with the usual 11-pixel Gaussian window (sigma 1.5), for tensors in [0, 1]."""
    import torch
    import torch.nn.functional as F

    weights = torch.tensor([0.299, 0.587, 0.114], device=a.device).view(1, 3, 1, 1)
    x, y = (t.float().mul(weights).sum(1, keepdim=True) for t in (a, b))
    g = torch.exp(-((torch.arange(11, device=a.device) - 5.0) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).view(1, 1, 11, 11)

    def blur(t: Any) -> Any:
        return F.conv2d(t, window)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return value.flatten(1).mean(1).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="the models file")
    parser.add_argument("--model", required=True, help="a diffusers model of it")
    parser.add_argument("--cache", type=json.loads, help="the cache table to measure, as JSON")
    parser.add_argument("--prompts", type=Path, help="one prompt a line (default: three built in)")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--resolution", default="720p")
    parser.add_argument("--aspect-ratio", default="16:9")
    parser.add_argument("--save", type=Path, help="write both MP4s of every prompt here")
    args = parser.parse_args(argv)

    import torch

    from reelq.catalog import load_catalog
    from reelq.domain import VideoSpec
    from reelq.engines.base import RenderInputs
    from reelq.engines.diffusers.engine import call_arguments
    from reelq.engines.diffusers.frames import conform, plan
    from reelq.engines.diffusers.options import parse_options
    from reelq.engines.diffusers.pipelines import disable_cache, load_model, pick_device
    from reelq.media import Mp4Writer

    entry = load_catalog(args.models)[args.model]
    options = dict(entry.options)
    if args.cache is not None:
        options["cache"] = args.cache
    if not options.get("cache"):
        parser.error(f"model {args.model} has no cache configured: pass --cache")
    parsed = parse_options(options)
    model = load_model(parsed, pick_device(parsed.device))
    prompts = args.prompts.read_text().splitlines() if args.prompts else list(DEFAULT_PROMPTS)
    renders: list[tuple[str, VideoSpec, dict[str, Any]]] = []
    for prompt in filter(None, (p.strip() for p in prompts)):
        spec = VideoSpec(
            model=args.model, prompt=prompt, duration=args.duration,
            aspect_ratio=args.aspect_ratio, resolution=args.resolution,
        )  # fmt: skip
        arguments = call_arguments(model, model.text, spec, RenderInputs(), plan(spec, model.rules))
        renders.append((prompt, spec, arguments))

    def render(arguments: dict[str, Any]) -> tuple[Any, float]:
        arguments = dict(arguments)
        arguments["generator"] = torch.Generator("cpu").manual_seed(arguments["generator"].initial_seed())
        began = time.perf_counter()
        with torch.inference_mode():
            frames = model.text(**arguments).frames[0]
        return frames, time.perf_counter() - began

    cached = [render(arguments) for _, _, arguments in renders]  # the cache is on as loaded
    disable_cache(model)
    plain = [render(arguments) for _, _, arguments in renders]
    for i, ((prompt, spec, _), (a, ta), (b, tb)) in enumerate(zip(renders, cached, plain, strict=True)):
        p, s = psnr(a, b), ssim(a, b)
        finite = [v for v in p if math.isfinite(v)] or [math.inf]
        row = {
            "prompt": prompt[:60],
            "psnr_mean_db": round(sum(finite) / len(finite), 2), "psnr_worst_db": round(min(p), 2),
            "ssim_mean": round(sum(s) / len(s), 4), "ssim_worst": round(min(s), 4),
            "cached_s": round(ta, 1), "uncached_s": round(tb, 1), "speedup": round(tb / ta, 2),
        }  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            for label, video in (("cached", a), ("uncached", b)):
                with Mp4Writer(args.save / f"{i}-{label}.mp4", spec.width, spec.height, spec.fps) as writer:
                    for frame in conform(video, spec, plan(spec, model.rules)):
                        writer.write(frame)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
