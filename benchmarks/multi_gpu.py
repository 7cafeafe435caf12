"""Several GPUs for one video: one GPU vs two GPUs (cfg) vs two GPUs (Ulysses), same seed, same request.

    ./scripts/gpu-bench --multi-gpu [--renders 2] [--steps 10] [--duration 2] [--out DIR]
    python -m benchmarks.multi_gpu --tiny          (two gloo ranks on the CPU: checks the script)

Each variant is a worker of its own (a process with CUDA_VISIBLE_DEVICES set as the supervisor sets
it): it builds `DiffusersEngine` from a models file whose only model is named alike in every variant
(the seed derives from the name), so all variants render the same noise. It renders once to warm up
(kernels, allocator), then `--renders` times, timed: seconds per render through the engine's whole
path (denoise, decode, conform, encode). The parent decodes each variant's last MP4 and reports its
largest and mean difference from the one-GPU MP4 (0-255 levels).

Weights: `--weights DIR` (a saved Wan pipeline), else Wan 2.1 T2V 1.3B's architecture with random
weights and the UMT5-XXL text encoder, saved once under the output directory (about 14 GB; the
compute is that of trained weights). `--tiny`: the tests' tiny Wan, on any device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

# name: (gpus_per_worker, parallel key)
VARIANTS = {"1gpu": (1, None), "cfg": (2, "cfg"), "ulysses": (2, "ulysses")}
PROMPT = "A red fox trots through fresh snow at dawn, cinematic, shallow depth of field"


def _weights(args: argparse.Namespace) -> Path:
    if args.weights is not None:
        return Path(args.weights)
    path = args.out / ("weights-tiny" if args.tiny else "weights-wan-1.3b")
    if (path / "model_index.json").is_file():
        return path
    if args.tiny:
        from tests.tiny_pipelines import save_wan

        return save_wan(path)
    import torch

    from benchmarks.diffusers_gpu import text_encoder, wan_pipeline

    tokenizer, encoder = text_encoder(torch.device("cpu"), False)
    wan_pipeline("wan-1.3b", torch.device("cpu"), tokenizer, encoder, False).save_pretrained(path)
    return path


def _models_file(args: argparse.Namespace, weights: Path, variant: str) -> Path:
    gpus, parallel = VARIANTS[variant]
    size = "max_pixels = 4096\n" if args.tiny else "max_pixels = 399360\n"  # Wan 2.1 1.3B: 832x480
    keys = f"gpus_per_worker = {gpus}\n" + (f'parallel = "{parallel}"\n' if parallel else "")
    path = args.out / f"models-{variant}.toml"
    path.write_text(
        f'[models.wan]\nengine = "diffusers"\npipeline = "WanPipeline"\nweights = "{weights}"\n'
        f"steps = {args.steps}\n{size}{keys}"
    )
    return path


def run_variant(models: Path, out: Path, renders: int, duration: int, tiny: bool) -> dict[str, Any]:
    """In the variant's own process: load, warm up, time `renders` renders."""
    from reelq.config import load_settings
    from reelq.domain import VideoSpec
    from reelq.engines.base import RenderInputs
    from reelq.engines.diffusers.engine import DiffusersEngine

    began = time.perf_counter()
    engine = DiffusersEngine(load_settings(models_file=models, home=out / "home"))
    loaded = time.perf_counter() - began
    ratio = "1:1" if tiny else "16:9"  # 1:1 at the tiny 4096 pixels: tokens that split over 2 ranks
    spec = VideoSpec(model="wan", prompt=PROMPT, duration=duration, aspect_ratio=ratio, resolution="540p")
    mp4 = out / f"{models.stem}.mp4"
    engine.render(spec, RenderInputs(), mp4, lambda _: None)
    seconds = []
    for _ in range(renders):
        began = time.perf_counter()
        engine.render(spec, RenderInputs(), mp4, lambda _: None)
        seconds.append(time.perf_counter() - began)
    engine.close()
    return {"load_s": round(loaded, 2), "render_s": [round(s, 3) for s in seconds], "mp4": str(mp4)}


def _frames(path: Path) -> Any:
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]).astype(
            np.int16
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=2, help="timed renders per variant (after a warm-up)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per render")
    parser.add_argument("--duration", type=int, default=2, help="seconds of video per render")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--weights", default=None, help="a saved Wan pipeline (default: random, built once)")
    parser.add_argument(
        "--tiny", action="store_true", help="the tests' tiny Wan, two CPU ranks: checks the script"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
    )
    parser.add_argument("--run-variant", type=Path, help=argparse.SUPPRESS)  # a variant's own process
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run_variant is not None:
        print(json.dumps(run_variant(args.run_variant, args.out, args.renders, args.duration, args.tiny)))
        return 0

    import diffusers
    import torch

    gpus = torch.cuda.device_count()
    results: dict[str, Any] = {
        "machine": {
            "gpu": torch.cuda.get_device_name() if gpus else None,
            "gpus": gpus,
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
        },
        "steps": args.steps,
        "duration": args.duration,
    }
    print(results["machine"], flush=True)
    if gpus == 1 or (gpus == 0 and not args.tiny):
        results["error"] = f"needs two GPUs (found {gpus}); --tiny runs two CPU ranks"
        print(results["error"], flush=True)
    else:
        weights = _weights(args)
        reference = None
        for variant in args.variants.split(","):
            env = dict(os.environ) | {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = "0" if VARIANTS[variant][0] == 1 else "0,1"
            command = [sys.executable, "-m", "benchmarks.multi_gpu", "--run-variant"]
            command += [str(_models_file(args, weights, variant)), "--out", str(args.out)]
            command += ["--renders", str(args.renders), "--duration", str(args.duration)]
            command += ["--tiny"] if args.tiny else []
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                results[variant] = {"error": done.stderr[-3000:]}
                print(variant, "failed:", done.stderr[-1500:], flush=True)
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            frames = _frames(Path(row["mp4"]))
            if reference is None:
                reference = frames
            diff = abs(frames - reference)
            row |= {"max_diff_vs_1gpu": int(diff.max()), "mean_diff_vs_1gpu": round(float(diff.mean()), 4)}
            results[variant] = row
            print(variant, row, flush=True)
        base = results.get("1gpu", {}).get("render_s")
        for variant in VARIANTS:
            timed = results.get(variant, {}).get("render_s")
            if base and timed:
                results[variant]["speedup_vs_1gpu"] = round(min(base) / min(timed), 2)
    (args.out / "multi_gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
