"""Pre-encode on the CPU: seconds from the last denoising step to the closed MP4, decode-then-encode vs
encoding each frame group while Wan's VAE decodes the next (`pre_encode`).

    python -m benchmarks.pre_encode [--rounds 3] [--duration 5] [--max-pixels 36864]

The tiny Wan transformer (tests/tiny_pipelines.py) with Wan 2.1's real VAE architecture (random
weights): the decode does the real per-frame work at a small size, the output is conformed to the
SPEC size (960x540 for 540p) and encoded as in production. Rounds alternate the two settings on one
loaded pipeline; medians are printed, and whether both wrote the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--resolution", default="540p")
    parser.add_argument("--max-pixels", type=int, default=256 * 144)
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKLWan, WanPipeline

    from reelq.domain import VideoSpec
    from reelq.engines.base import RenderInputs
    from reelq.engines.diffusers.engine import STEPS_SHARE, DiffusersEngine
    from reelq.engines.diffusers.options import parse_options
    from reelq.engines.diffusers.pipelines import configure
    from tests.tiny_pipelines import save_wan

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = WanPipeline.from_pretrained(save_wan(Path(tmp) / "wan"))
        pipe.vae = AutoencoderKLWan()  # Wan 2.1's VAE: the defaults
        spec = VideoSpec(model="m", prompt="a fox", duration=args.duration, resolution=args.resolution)
        times: dict[bool, list[float]] = {False: [], True: []}
        digests: dict[bool, str] = {}
        for _ in range(args.rounds):
            for pre_encode in (False, True):
                options = {"pipeline": "WanPipeline", "weights": tmp, "steps": 2, "dtype": "float32"}
                options |= {"max_pixels": args.max_pixels, "pre_encode": pre_encode}
                model = configure(parse_options(options), pipe, None, torch.device("cpu"))
                last_step = [0.0]

                def progress(fraction: float, last_step: list[float] = last_step) -> None:
                    if fraction <= STEPS_SHARE + 1e-9:
                        last_step[0] = time.perf_counter()

                out = Path(tmp) / f"{pre_encode}.mp4"
                DiffusersEngine(None, models={"m": model}).render(spec, RenderInputs(), out, progress)  # type: ignore[arg-type]
                times[pre_encode].append(time.perf_counter() - last_step[0])
                digests[pre_encode] = hashlib.sha256(out.read_bytes()).hexdigest()
        render = model.rules
        print(f"render: {spec.frame_count} frames at {spec.width}x{spec.height} from native {render}")
        for pre_encode in (False, True):
            runs = ", ".join(f"{t:.2f}" for t in times[pre_encode])
            median = statistics.median(times[pre_encode])
            print(f"pre_encode={pre_encode}: decode+conform+encode median {median:.2f} s ({runs})")
        print(f"same MP4 bytes: {digests[False] == digests[True]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
