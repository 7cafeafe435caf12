"""Load a diffusers pipeline from a local directory and set it up as its model's options say.

Nothing is downloaded: Hugging Face's offline mode is forced before diffusers is imported and every
load is `local_files_only`. Loading and configuring are separate so a benchmark (or a test) can hand
in a pipeline it built in memory and get exactly the setup a worker runs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reelq.engines.diffusers.frames import NativeRules
from reelq.engines.diffusers.options import (
    DBCache,
    DiffusersOptions,
    FirstBlockCache,
    LoraOptions,
    resolve_weights,
)

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers read it
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import diffusers
import torch

log = logging.getLogger(__name__)

# Sizes the pipelines' own input checks insist on, beyond what their VAE and patch size imply.
FAMILY_GRID = {"wan": 16, "ltx": 32}
FAMILY_FPS = {"wan": 16, "ltx": 24}
# Wan 2.2 TI2V-5B (a 48-channel VAE) was trained at 24 fps; the other Wan checkpoints at 16.
WAN_24FPS_LATENT_CHANNELS = 48


@dataclass
class LoadedModel:
    """One model's pipelines on its device, ready to render."""

    options: DiffusersOptions
    text: Any  # the text-to-video pipeline
    image: Any | None  # the pipeline for first_image (and last_image); may be `text` itself
    rules: NativeRules
    device: torch.device


def pick_device(requested: str) -> torch.device:
    if requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(options: DiffusersOptions, device: torch.device) -> LoadedModel:
    """Load a model's pipelines (sharing what the two have in common) and configure them."""
    text = _from_pretrained(options.pipeline, options.weights, options)
    image: Any | None = None
    image_class = options.image_pipeline
    if image_class == options.pipeline and options.i2v_weights in (None, options.weights):
        image = text
    elif image_class is not None and resolve_weights(options.image_weights) == resolve_weights(
        options.weights
    ):
        image = getattr(diffusers, image_class).from_pipe(text)  # same weights: no second copy
    elif image_class is not None:
        image = _from_pretrained(image_class, options.image_weights, options)
    return configure(options, text, image, device)


def _from_pretrained(class_name: str, weights: Path, options: DiffusersOptions) -> Any:
    cls = getattr(diffusers, class_name)
    # The VAE loads in its own precision (kept float32 for Wan), the rest in `dtype`.
    dtypes = {"default": getattr(torch, options.dtype), "vae": getattr(torch, options.vae_precision)}
    return cls.from_pretrained(resolve_weights(Path(weights)), dtype=dtypes, local_files_only=True)


def configure(options: DiffusersOptions, text: Any, image: Any | None, device: torch.device) -> LoadedModel:
    """Apply a model's tuning options to its pipelines and place them on `device`."""
    pipes = [text] if image is None or image is text else [text, image]
    done: set[int] = set()  # components shared by both pipelines are set up once
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        if options.flow_shift is not None:
            pipe.scheduler = _shifted(pipe.scheduler, options.flow_shift)
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        if options.vae_slicing:
            pipe.vae.enable_slicing()
        fresh = [t for t in _transformers(pipe) if id(t) not in done]
        done.update(id(t) for t in fresh)
        if options.loras and fresh:
            fuse_loras(pipe, options.loras)
        for transformer in fresh:
            if options.attention_backend:
                transformer.set_attention_backend(options.attention_backend)
        if options.cache is not None:
            enable_cache(pipe, options.cache, fresh)
        for transformer in fresh:
            if options.compile:
                # Regional compilation: one compiled block reused by every layer, so compiling takes
                # seconds, not minutes; shapes that change per request recompile once each.
                transformer.compile_repeated_blocks(fullgraph=True, dynamic=True)
        if options.cpu_offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif options.cpu_offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        else:
            pipe.to(device)
    rules = native_rules(options, text)
    return LoadedModel(options=options, text=text, image=image, rules=rules, device=device)


def fuse_loras(pipe: Any, loras: list[LoraOptions]) -> None:
    """Load each LoRA as an adapter, fuse them all into the transformer weights at their scales, then
    drop the adapters: renders run the plain (fused) layers, as fast as without a LoRA."""
    names: list[str] = []
    for i, lora in enumerate(loras):
        path = lora.path.expanduser()
        source, weight_name = (path.parent, path.name) if path.is_file() else (path, None)
        name = f"reelq_lora_{i}"
        pipe.load_lora_weights(
            source, weight_name=weight_name, adapter_name=name, load_into_transformer_2=lora.transformer_2
        )
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
    components = ["transformer"] + (["transformer_2"] if any(lora.transformer_2 for lora in loras) else [])
    pipe.fuse_lora(components=components, adapter_names=names, lora_scale=1.0)
    pipe.unload_lora_weights()  # the adapters' own layers; the fused weights stay


def enable_cache(pipe: Any, cache: FirstBlockCache | DBCache, fresh: list[Any]) -> None:
    """Turn a pipeline's step cache on (`fresh`: its transformers not already set up through the other
    pipeline of the model)."""
    if isinstance(cache, DBCache):
        import cache_dit

        always = cache.front_blocks + cache.back_blocks
        for transformer in fresh:  # cache-dit would only fail at the first render
            found = getattr(transformer, "blocks", None) or getattr(transformer, "transformer_blocks", ())
            if found and always > len(found):
                raise ValueError(
                    f"cache: front_blocks + back_blocks ({always}) is more than the transformer's"
                    f" {len(found)} blocks"
                )
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=cache.front_blocks,
            Bn_compute_blocks=cache.back_blocks,
            residual_diff_threshold=cache.threshold,
            max_warmup_steps=cache.warmup_steps,
            max_continuous_cached_steps=cache.max_continuous_cached,
        )
        with _quiet("cache_dit"):
            cache_dit.enable_cache(pipe, cache_config=config)
        return
    from diffusers import FirstBlockCacheConfig

    for transformer in fresh:
        transformer.enable_cache(FirstBlockCacheConfig(threshold=cache.threshold))


def disable_cache(model: LoadedModel) -> None:
    """Take a model's step cache off again: its pipelines then render exactly as never cached."""
    cache = model.options.cache
    if cache is None:
        return
    pipes = [model.text] if model.image is None or model.image is model.text else [model.text, model.image]
    done: set[int] = set()
    for pipe in pipes:
        if isinstance(cache, DBCache):
            import cache_dit

            with _quiet("cache_dit"):
                cache_dit.disable_cache(pipe)
            continue
        for transformer in _transformers(pipe):
            if id(transformer) not in done:
                done.add(id(transformer))
                transformer.disable_cache()


def is_cached(pipe: Any) -> bool:
    """Whether a step cache (either kind) is on for one of the pipeline's transformers."""
    for transformer in _transformers(pipe):
        if getattr(transformer, "is_cache_enabled", False):
            return True
        if getattr(transformer, "_is_cached", False):  # cache-dit's mark
            return True
    return False


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """cache-dit logs a table per call at INFO: keep worker logs to warnings."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def native_rules(options: DiffusersOptions, pipe: Any) -> NativeRules:
    """Frame count steps, size grid and frame rate of a loaded pipeline."""
    family = options.family
    if family == "wan":
        temporal = int(pipe.vae_scale_factor_temporal)
        spatial = int(pipe.vae_scale_factor_spatial) * int(pipe.transformer.config.patch_size[1])
        trained_fps = 24 if pipe.vae.config.z_dim == WAN_24FPS_LATENT_CHANNELS else FAMILY_FPS["wan"]
    else:
        temporal = int(pipe.vae_temporal_compression_ratio)
        spatial = int(pipe.vae_spatial_compression_ratio) * int(pipe.transformer_spatial_patch_size)
        trained_fps = FAMILY_FPS["ltx"]
    return NativeRules(
        fps=options.fps or trained_fps,
        temporal=temporal,
        grid=math.lcm(spatial, FAMILY_GRID[family]),
        max_pixels=options.max_pixels,
    )


def _transformers(pipe: Any) -> list[Any]:
    found = (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None))
    return [t for t in found if t is not None]


def _shifted(scheduler: Any, shift: float) -> Any:
    """The same scheduler with its flow shift changed (UniPC calls it flow_shift, Euler shift)."""
    key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
    return type(scheduler).from_config(scheduler.config, **{key: shift})
