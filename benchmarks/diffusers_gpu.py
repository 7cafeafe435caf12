"""GPU benchmark of the diffusers engine: the stock diffusers call vs reelq's configured path.

    ./scripts/gpu-bench            (installs the wheels in .whl/ first; see that script)
    python -m benchmarks.diffusers_gpu [--steps 5] [--models wan-1.3b,wan-5b] [--tiny] [--out DIR]

Real-size architectures with random weights (the compute is the same as with trained ones; no
weights can be downloaded here): Wan 2.1 T2V 1.3B at 480p (848x480, 81 frames at 16 fps) and
Wan 2.2 TI2V-5B at 720p (1280x736, 121 frames at 24 fps), with the UMT5-XXL text encoder.

Each model is timed twice in one run on the same pipeline object (same weights, same size and frame
count, same step count):
- stock: `pipe(prompt, negative_prompt, height, width, num_frames, ...)` as diffusers documents it
  (bf16 transformer, float32 VAE, default attention), frames returned as numpy;
- reelq: the same pipeline set up by `reelq.engines.diffusers.pipelines.configure` with the tuned
  options (fastest attention backend measured here, regional torch.compile), rendered through
  `DiffusersEngine.render`: the denoise, the decode, then conforming to the SPEC size at 24 fps and
  the H.264 encode, i.e. more work than the stock call does.
A clip's seconds are text encoding + 50 x the median step + decode (+ conform and encode for reelq):
denoising steps are identical, so a few of them are timed and the 50-step clip is extrapolated (a
full 50-step clip per variant does not fit in the time a GPU is lent here). Torch.compile's one-off
warm-up (paid once per worker at start) is reported apart. Peak GPU memory is per variant.
Step caching is an option, not part of the ratio: with random weights its skip rate means nothing.

Issue 24's options, on the first model (`--variants`, on by default):
- attention kernels in isolation at the model's attention shape (one self-attention call): SDPA's
  default, cuDNN, SageAttention (`sageattention`), FlashAttention 2/3 and FlashAttention 4 (the CuTe
  DSL package `flash-attn-4`; diffusers has no local backend for it, so it is timed as an op only),
  each with its largest difference from SDPA's output on the same inputs; and through diffusers'
  `attention_backend`, one transformer forward each with its output difference from `native`;
- step caches on the configured default: diffusers' first-block cache and cache-dit's DBCache, over
  `--cache-steps` steps (speed, and how many steps were served from the cache; quality needs real
  weights: see benchmarks/cache_quality.py);
- pre-encode off vs on: the seconds from the last denoising step to the closed MP4.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

CLIP_STEPS = 50
PROMPT = "A red fox trots through fresh snow at dawn, cinematic, shallow depth of field"
NEGATIVE = "blurry, low quality, distorted"
TORCH_ATTENTION = ("native", "_native_cudnn", "_native_flash", "_native_efficient")
ATTENTION_CANDIDATES = (
    "native", "_native_cudnn", "_native_flash", "_native_efficient", "sage", "flash", "_flash_3",
)  # fmt: skip
RESULTS: dict[str, Any] = {}


def _save(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "diffusers_gpu.json").write_text(json.dumps(RESULTS, indent=2, default=str))


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def text_encoder(device: Any, tiny: bool) -> tuple[Any, Any]:
    """UMT5-XXL (Wan's text encoder, 5.7B parameters) with random weights; ByT5's file-less tokenizer
    (the encoder then sees the same 512 positions as with the real tokenizer)."""
    import torch
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    if tiny:
        config = UMT5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    else:
        config = UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
        )  # fmt: skip
    with torch.device(device):
        encoder = UMT5EncoderModel(config).to(torch.bfloat16).eval()
    return ByT5Tokenizer(), encoder


def wan_pipeline(name: str, device: Any, tokenizer: Any, encoder: Any, tiny: bool) -> Any:
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    common = {"patch_size": (1, 2, 2), "attention_head_dim": 128, "freq_dim": 256, "text_dim": 4096}
    common |= {"num_layers": 30, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6}
    if name == "wan-1.3b":
        shape = {"num_attention_heads": 12, "ffn_dim": 8960, "in_channels": 16, "out_channels": 16}
        vae_config: dict[str, Any] = {}  # AutoencoderKLWan's defaults are Wan 2.1's VAE
        shift, expand = 3.0, False
    else:  # wan-5b: Wan 2.2 TI2V-5B and its 48-channel, 16x VAE
        shape = {"num_attention_heads": 24, "ffn_dim": 14336, "in_channels": 48, "out_channels": 48}
        vae_config = {
            "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": 2, "temperal_downsample": [False, True, True], "is_residual": True,
            "patch_size": 2, "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 16,
            "scale_factor_temporal": 4,
            "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48,
        }  # fmt: skip
        shift, expand = 5.0, True
    if tiny:
        common |= {"attention_head_dim": 12, "text_dim": 32, "num_layers": 2}
        shape |= {"num_attention_heads": 2, "ffn_dim": 32}
        vae_config |= {"base_dim": 8, "decoder_base_dim": 8} if vae_config else {"base_dim": 8}
    with torch.device(device):
        transformer = WanTransformer3DModel(**common, **shape, rope_max_seq_len=1024).to(torch.bfloat16)
        vae = AutoencoderKLWan(**vae_config).to(torch.float32)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift
    )
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=encoder, vae=vae, scheduler=scheduler, transformer=transformer,
        expand_timesteps=expand,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def stock_call(pipe: Any, width: int, height: int, frames: int, steps: int) -> dict[str, Any]:
    """The documented call, timed per step through its own callback hook."""
    import torch

    marks: list[float] = []

    def mark(_pipe: Any, _i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        _sync()
        marks.append(time.perf_counter())
        return tensors

    torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
    _sync()
    start = time.perf_counter()
    out = pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, height=height, width=width, num_frames=frames,
        num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=mark,
    )  # fmt: skip
    _sync()
    end = time.perf_counter()
    shape = list(out.frames.shape)
    return _phases(start, marks, end, end, shape)


def _phases(start: float, marks: list[float], decoded: float, end: float, shape: list[int]) -> dict[str, Any]:
    import torch

    steps = [b - a for a, b in itertools.pairwise(marks)]
    step = statistics.median(steps) if steps else marks[0] - start
    pre = marks[0] - start - step  # text encoding, latents, the first step's extra set-up
    decode = decoded - marks[-1]
    finish = end - decoded
    return {
        "step_s": round(step, 4),
        "steps_s": [round(s, 4) for s in steps],
        "pre_s": round(pre, 3),
        "decode_s": round(decode, 3),
        "conform_encode_s": round(finish, 3),
        # With pre-encode the decode and the encode overlap, so "decode_s" ends at the first frames
        # encoded; this is the figure to compare: the last step to the closed MP4.
        "after_steps_s": round(end - marks[-1], 3),
        "clip_s": round(pre + CLIP_STEPS * step + decode + finish, 2),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "output_shape": shape,
    }


def pick_attention(pipe: Any, width: int, height: int, frames: int) -> dict[str, float]:
    """One transformer forward at the benchmark's shape per attention backend (seconds)."""
    import torch

    transformer = pipe.transformer
    channels = transformer.config.in_channels
    lat_t = (frames - 1) // pipe.vae_scale_factor_temporal + 1
    lat_h, lat_w = height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial
    latents = torch.randn(1, channels, lat_t, lat_h, lat_w, device=pipe.device, dtype=torch.bfloat16)
    text = torch.randn(1, 512, transformer.config.text_dim, device=pipe.device, dtype=torch.bfloat16)
    timings: dict[str, float] = {}
    reference = None
    for backend in ATTENTION_CANDIDATES:
        try:
            transformer.set_attention_backend(backend)
            with torch.inference_mode():
                for _ in range(2):
                    _sync()
                    begin = time.perf_counter()
                    step = torch.tensor([500.0], device=pipe.device)
                    out = transformer(hidden_states=latents, timestep=step, encoder_hidden_states=text,
                                      return_dict=False)[0]  # fmt: skip
                    _sync()
                timings[backend] = round(time.perf_counter() - begin, 4)
            if reference is None:
                reference = out.float()
            else:  # how far this kernel's output is from SDPA's ("native") on the same inputs
                diff = (out.float() - reference).abs()
                timings[f"{backend}_max_abs_diff"] = round(float(diff.max()), 5)
                timings[f"{backend}_mean_abs_diff"] = round(float(diff.mean()), 6)
        except Exception as exc:  # a backend this machine lacks
            timings[backend] = float("nan")
            print(f"  attention {backend}: unavailable ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
    transformer.set_attention_backend("native")
    return timings


def attention_ops(heads: int, seq: int, dim: int = 128) -> dict[str, Any]:
    """One self-attention call per kernel at a model's shape (bf16, batch 1): seconds (median of 5)
    and the largest and mean difference from SDPA's default on the same inputs."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator("cuda").manual_seed(0) if torch.cuda.is_available() else None
    shape = (1, seq, heads, dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))

    def sdpa() -> Any:
        heads_first = (t.transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(*heads_first).transpose(1, 2)

    def cudnn() -> Any:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return sdpa()

    def sage() -> Any:
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD")

    def flash2() -> Any:
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)

    def flash3() -> Any:
        from flash_attn_interface import flash_attn_func

        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    def flash4() -> Any:
        from flash_attn.cute import flash_attn_func

        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out

    result: dict[str, Any] = {"shape": [1, seq, heads, dim]}
    reference = sdpa().float()
    for name, op in (("sdpa", sdpa), ("cudnn", cudnn), ("sage", sage), ("flash2", flash2),
                     ("flash3", flash3), ("flash4", flash4)):  # fmt: skip
        try:
            with torch.inference_mode():
                out = op()
                times = []
                for _ in range(5):
                    _sync()
                    begin = time.perf_counter()
                    op()
                    _sync()
                    times.append(time.perf_counter() - begin)
            diff = (out.float() - reference).abs()
            result[name] = {"s": round(statistics.median(times), 5),
                            "max_abs_diff": round(float(diff.max()), 5),
                            "mean_abs_diff": round(float(diff.mean()), 6)}  # fmt: skip
        except Exception as exc:  # not installed, or no kernel for this GPU
            result[name] = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        print(f"  attention op {name}: {result[name]}", flush=True)
    return result


def reelq_path(
    pipe: Any,
    name: str,
    spec: Any,
    steps: int,
    backend: str,
    compile: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    import torch

    from reelq.engines.base import RenderInputs
    from reelq.engines.diffusers.engine import STEPS_SHARE, DiffusersEngine
    from reelq.engines.diffusers.options import parse_options
    from reelq.engines.diffusers.pipelines import configure, disable_cache
    from reelq.media import probe

    max_pixels = 832 * 480 if name == "wan-1.3b" else 1280 * 720
    options = {
        "pipeline": "WanPipeline",
        "weights": "/in-memory",
        "steps": steps,
        "negative_prompt": NEGATIVE,
    }
    options |= {"max_pixels": max_pixels, "attention_backend": backend, "compile": compile}
    options |= extra or {}
    loaded = configure(parse_options(options), pipe, None, pipe.device)
    engine = DiffusersEngine(None, models={spec.model: loaded})  # type: ignore[arg-type]
    result: dict[str, Any] = {"attention_backend": backend, "compile": compile} | (extra or {})
    with tempfile.TemporaryDirectory() as tmp:
        if compile and not extra:  # the one-off warm-up a worker pays once at start, at this shape
            warm = dataclasses.replace(loaded, options=parse_options(options | {"steps": 2}))
            engine.models[spec.model] = warm
            begin = time.perf_counter()
            engine.render(spec, RenderInputs(), Path(tmp) / "warm.mp4", lambda _f: None)
            result["compile_warmup_s"] = round(time.perf_counter() - begin, 1)
            engine.models[spec.model] = loaded
        marks: list[float] = []
        decoded = [0.0]

        def progress(fraction: float) -> None:
            _sync()
            now = time.perf_counter()
            if fraction <= STEPS_SHARE + 1e-9:
                marks.append(now)
            elif not decoded[0]:
                decoded[0] = now

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _sync()
        start = time.perf_counter()
        out = Path(tmp) / "clip.mp4"
        engine.render(spec, RenderInputs(), out, progress)
        end = time.perf_counter()
        info = probe(out)
        result |= _phases(start, marks, decoded[0], end, [info.frame_count, info.height, info.width])
        result["mp4"] = dataclasses.asdict(info)
        result["render_plan"] = list(map(int, (loaded.rules.fps, loaded.rules.temporal, loaded.rules.grid)))
    if loaded.options.cache is not None:
        result["cached_steps"] = _cached_steps(pipe, loaded.options.cache)
        disable_cache(loaded)
    return result


def _cached_steps(pipe: Any, cache: Any) -> Any:
    """How many steps the cache served (cache-dit keeps counts; diffusers' hook does not)."""
    if type(cache).__name__ != "DBCache":
        return None
    import cache_dit

    stats = cache_dit.summary(pipe)
    return len(stats[0].cached_steps) if stats else None


def variants(
    pipe: Any, name: str, spec: Any, args: argparse.Namespace, backend: str, entry: dict[str, Any]
) -> None:
    """Issue 24's options against the configured default, on the same pipeline object."""
    compile = not args.no_compile
    runs = entry.setdefault("variants", {})
    tiny = {"front_blocks": 1} if args.tiny else {}  # the toy transformer has 2 blocks
    plans = [
        ("pre_encode_off", args.steps, {"pre_encode": False}),
        ("default_cache_steps", args.cache_steps, {}),
        ("cache_first_block", args.cache_steps, {"cache": {"type": "first_block", "threshold": 0.05}}),
        ("cache_dbcache", args.cache_steps, {"cache": {"type": "dbcache", "warmup_steps": 4} | tiny}),
    ]
    for label, steps, extra in plans:
        try:
            runs[label] = reelq_path(pipe, name, spec, steps, backend, compile, extra | {"steps": steps})
        except Exception:
            runs[label] = {"error": traceback.format_exc()[-1500:]}
        print(f"  {label}: {runs[label]}", flush=True)
        _save(args.out)


def bench_model(name: str, args: argparse.Namespace, device: Any, tokenizer: Any, encoder: Any) -> None:
    from reelq.domain import VideoSpec
    from reelq.engines.diffusers.frames import NativeRules, plan

    started = time.perf_counter()
    pipe = wan_pipeline(name, device, tokenizer, encoder, args.tiny)
    if name == "wan-1.3b":
        spec = VideoSpec(model=name, prompt=PROMPT, duration=5, aspect_ratio="16:9", resolution="540p")
        rules = NativeRules(fps=16, temporal=4, grid=16, max_pixels=832 * 480)
    else:
        spec = VideoSpec(model=name, prompt=PROMPT, duration=5, aspect_ratio="16:9", resolution="720p")
        rules = NativeRules(fps=24, temporal=4, grid=32, max_pixels=1280 * 720)
    if args.tiny:
        spec = VideoSpec(model=name, prompt=PROMPT, duration=1, aspect_ratio="16:9", resolution="540p")
        rules = NativeRules(rules.fps, rules.temporal, rules.grid, max_pixels=64 * 64)
    render = plan(spec, rules)
    entry: dict[str, Any] = {"size": f"{render.width}x{render.height}", "frames": render.num_frames}
    entry |= {"fps": render.fps, "build_s": round(time.perf_counter() - started, 1)}
    RESULTS[name] = entry
    print(f"{name}: {entry}", flush=True)
    steps = args.steps
    pipe(prompt=PROMPT, height=render.height, width=render.width, num_frames=render.num_frames,
         num_inference_steps=1, output_type="latent")  # fmt: skip  # CUDA/cuBLAS warm-up, no decode
    entry["stock"] = stock_call(pipe, render.width, render.height, render.num_frames, steps)
    print(f"  stock: {entry['stock']}", flush=True)
    _save(args.out)
    entry["attention_forward_s"] = timings = pick_attention(
        pipe, render.width, render.height, render.num_frames
    )
    # The configured default picks among PyTorch's own kernels only: SageAttention (INT8) changes the
    # output, so it is measured and reported, and left to the operator to ask for.
    usable = {k: v for k, v in timings.items() if k in TORCH_ATTENTION and v == v}
    backend = min(usable, key=usable.__getitem__) if usable else "native"
    print(f"  attention: {timings} -> {backend}", flush=True)
    _save(args.out)
    try:
        entry["reelq"] = reelq_path(pipe, name, spec, steps, backend, compile=not args.no_compile)
    except Exception:
        traceback.print_exc()
        entry["reelq_compile_error"] = traceback.format_exc()[-2000:]
        torch_reset(pipe)
        entry["reelq"] = reelq_path(pipe, name, spec, steps, backend, compile=False)
    print(f"  reelq: {entry['reelq']}", flush=True)
    entry["speedup"] = round(entry["stock"]["clip_s"] / entry["reelq"]["clip_s"], 3)
    entry["step_speedup"] = round(entry["stock"]["step_s"] / entry["reelq"]["step_s"], 3)
    print(f"  speedup per clip: {entry['speedup']}x (per step {entry['step_speedup']}x)", flush=True)
    _save(args.out)
    if args.variants and name == args.models.split(",")[0] and torch_cuda():
        heads = pipe.transformer.config.num_attention_heads
        lat_t = (render.num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        seq = lat_t * (render.height // 16) * (render.width // 16)  # 8x VAE, 2x2 patches
        entry["attention_ops"] = attention_ops(heads, seq)
        _save(args.out)
    if args.variants and name == args.models.split(",")[0]:
        variants(pipe, name, spec, args, backend, entry)
    del pipe
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_reset(pipe: Any) -> None:
    import torch

    torch._dynamo.reset()
    pipe.transformer.set_attention_backend("native")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="denoising steps timed per variant")
    parser.add_argument("--models", default="wan-1.3b,wan-5b")
    parser.add_argument("--tiny", action="store_true", help="toy widths on any device: checks the script")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--no-variants", dest="variants", action="store_false", help="skip issue 24's options"
    )
    parser.add_argument("--cache-steps", type=int, default=12, help="steps of the step-cache runs")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "results"))
    )
    args = parser.parse_args(argv)
    import diffusers
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    RESULTS["machine"] = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
        "steps_timed": args.steps, "clip_steps": CLIP_STEPS,
    }  # fmt: skip
    print(RESULTS["machine"], flush=True)
    began = time.perf_counter()
    tokenizer, encoder = text_encoder(device, args.tiny)
    RESULTS["text_encoder_build_s"] = round(time.perf_counter() - began, 1)
    for name in args.models.split(","):
        try:
            bench_model(name, args, device, tokenizer, encoder)
        except Exception:
            traceback.print_exc()
            RESULTS.setdefault(name, {})["error"] = traceback.format_exc()[-3000:]
            _save(args.out)
    _save(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
