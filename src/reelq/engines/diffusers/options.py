"""A diffusers model's keys in the models file, and what the model can be asked for.

Read by the API process at start-up, so this module imports neither torch nor diffusers: what a
checkpoint can do (first+last frame or not) is read from the JSON files `save_pretrained` wrote
beside the weights (`model_index.json`, `transformer/config.json`).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from reelq.domain import MAX_DURATION, ModelLimits
from reelq.engines.options import validate_options

# The pipeline classes reelq knows how to drive, by family. A family fixes how a request becomes
# pipeline arguments (conditioning images, frame rate) and its defaults.
T2V_PIPELINES = {"WanPipeline": "wan", "LTXPipeline": "ltx", "LTXConditionPipeline": "ltx"}
I2V_PIPELINES = {
    "WanImageToVideoPipeline": "wan",
    "LTXImageToVideoPipeline": "ltx",
    "LTXConditionPipeline": "ltx",
}
# Clip lengths the models were trained for: longer ones are out of distribution (and memory-hungry),
# so they are refused at create unless the operator raises `max_duration`.
FAMILY_MAX_DURATION = {"wan": 5, "ltx": 10}
FAMILY_STEPS = {"wan": 50, "ltx": 50}
FAMILY_GUIDANCE = {"wan": 5.0, "ltx": 3.0}

Dtype = Literal["bfloat16", "float16", "float32"]
# How a worker spanning several GPUs splits one render: "cfg" gives each of two GPUs one branch of
# classifier-free guidance; "ulysses" and "ring" are diffusers' context parallelism (the sequence split
# over the GPUs, attention exchanged by all-to-all or passed around a ring).
Parallel = Literal["cfg", "ulysses", "ring"]
GpusPerWorker = Literal[1, 2, 4, 8]
AttentionBackend = str  # diffusers' names ("native", "flash", "_flash_3", "sage", "_native_cudnn", …)


# Attention backends of diffusers that need a package beyond torch, and the module each imports. The
# others ("native", "_native_cudnn", "_native_flash", "flex", …) come with torch. Checked when the
# models file is read, so a model asking for a kernel this machine lacks is one config error line
# instead of a worker that fails at load.
ATTENTION_PACKAGES = {
    "flash": ("flash_attn", "flash-attn"),
    "flash_varlen": ("flash_attn", "flash-attn"),
    "_flash_3": ("flash_attn_interface", "FlashAttention 3 (built from source)"),
    "_flash_varlen_3": ("flash_attn_interface", "FlashAttention 3 (built from source)"),
    "sage": ("sageattention", "sageattention"),
    "sage_varlen": ("sageattention", "sageattention"),
    "_sage_qk_int8_pv_fp8_cuda": ("sageattention", "sageattention"),
    "_sage_qk_int8_pv_fp8_cuda_sm90": ("sageattention", "sageattention"),
    "_sage_qk_int8_pv_fp16_cuda": ("sageattention", "sageattention"),
    "_sage_qk_int8_pv_fp16_triton": ("sageattention", "sageattention"),
    "xformers": ("xformers", "xformers"),
}
# Backends diffusers fetches from the Hugging Face Hub at run time (the `kernels` package): workers
# run offline, so they are refused rather than failing at the first render.
HUB_ATTENTION_SUFFIX = "_hub"


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


class FirstBlockCache(BaseModel):
    """diffusers' own first-block cache (`transformer.enable_cache`): a step reuses the previous step's
    residual when the first block's output barely changed. Needs nothing beyond diffusers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["first_block"] = "first_block"
    threshold: float = Field(0.05, gt=0, le=1)


class DBCache(BaseModel):
    """cache-dit's DBCache (`cache_dit.enable_cache`): the first `front_blocks` (and last `back_blocks`)
    blocks always run; the middle ones are skipped while the front's residual changes by less than
    `threshold`; the first `warmup_steps` steps always run in full. Needs the `cache-dit` package."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["dbcache"]
    threshold: float = Field(0.08, gt=0, le=1)
    front_blocks: int = Field(8, ge=1, le=64)
    back_blocks: int = Field(0, ge=0, le=64)
    warmup_steps: int = Field(8, ge=0, le=1000)
    # At most this many steps in a row reuse the cache (-1: no limit); bounds the drift on long clips.
    max_continuous_cached: int = Field(-1, ge=-1, le=1000)

    @model_validator(mode="after")
    def _installed(self) -> DBCache:
        if _missing("cache_dit"):
            raise ValueError(
                "cache type 'dbcache' needs the cache-dit package, which is not installed"
                " (pip install 'reelq[diffusers-fast]')"
            )
        return self


def _cache_type(value: Any) -> str | None:
    return value.get("type", "first_block") if isinstance(value, dict) else getattr(value, "type", None)


# Step caching, off unless configured (`cache = {type = ...}`): faster, at a quality cost that grows with
# the threshold. `type` picks the implementation; a table without it is diffusers' first-block cache.
CacheOptions = Annotated[
    Annotated[FirstBlockCache, Tag("first_block")] | Annotated[DBCache, Tag("dbcache")],
    Discriminator(_cache_type),
]


class LoraOptions(BaseModel):
    """One LoRA fused into the transformer at load (`loras = [{path = ..., scale = ...}]`): a file
    (`.safetensors`) or a directory holding `pytorch_lora_weights.safetensors`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    scale: float = Field(1.0, ge=-10, le=10)
    # Wan 2.2 A14B: the LoRA of the low-noise expert (`transformer_2`) is a file of its own.
    transformer_2: bool = False


class DiffusersOptions(BaseModel):
    """The `[models.<name>]` keys of a diffusers model (docs/engine-diffusers.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str
    weights: Path
    i2v_pipeline: str | None = None
    i2v_weights: Path | None = None
    # None: decided from the i2v checkpoint (see `_takes_last_image`); true/false overrides it.
    last_image: bool | None = None

    device: str = "auto"  # "auto": the worker's GPU (cuda) when there is one, else the CPU
    dtype: Dtype = "bfloat16"
    # None: float32 for Wan (its VAE loses detail in half precision), `dtype` for LTX-Video.
    vae_dtype: Dtype | None = None
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, le=50)
    guidance_2: float | None = Field(None, ge=0, le=50)  # Wan 2.2's low-noise expert
    flow_shift: float | None = Field(None, gt=0, le=100)
    negative_prompt: str | None = Field(None, max_length=5000)
    # The largest frame the model renders, in pixels (width x height): requests above it are rendered at
    # this area and scaled up to the SPEC size. Wan 2.1 1.3B is a 480p model: 399360 (832 x 480).
    max_pixels: int = Field(1280 * 720, ge=64 * 64)
    fps: int | None = Field(None, ge=1, le=120)  # the model's native frame rate (default by family)
    attention_backend: AttentionBackend | None = None
    compile: bool = False  # torch.compile of the transformer's repeated blocks, once per worker
    vae_tiling: bool = False
    vae_slicing: bool = False
    cpu_offload: Literal["none", "model", "sequential"] = "none"
    cache: CacheOptions | None = None
    loras: list[LoraOptions] = Field(default_factory=list, max_length=8)
    # Wan: decode the latents frame group by frame group and encode each group into the MP4 while the
    # VAE decodes the next (same frames, same file as decoding first: see engine.py). Off: the
    # pipeline decodes the whole clip, then it is encoded.
    pre_encode: bool = True
    max_sequence_length: int | None = Field(None, ge=16, le=4096)  # None: the pipeline's default
    # Passed to every call of the pipeline as is (e.g. LTX 0.9.1+: decode_timestep = 0.05).
    pipeline_args: dict[str, float | int | str | bool] = Field(default_factory=dict)
    # GPUs one worker spans for one render (docs/diffusers.md, "Several GPUs for one video").
    gpus_per_worker: GpusPerWorker = 1
    parallel: Parallel | None = None  # None: "cfg" on 2 GPUs with guidance, else "ulysses"

    @model_validator(mode="after")
    def _known_pipelines(self) -> DiffusersOptions:
        if self.pipeline not in T2V_PIPELINES:
            raise ValueError(f"pipeline {self.pipeline!r} is not one of {', '.join(sorted(T2V_PIPELINES))}")
        if self.i2v_pipeline is not None and self.i2v_pipeline not in I2V_PIPELINES:
            known = ", ".join(sorted(I2V_PIPELINES))
            raise ValueError(f"i2v_pipeline {self.i2v_pipeline!r} is not one of {known}")
        if self.i2v_pipeline is not None and I2V_PIPELINES[self.i2v_pipeline] != self.family:
            raise ValueError("pipeline and i2v_pipeline must be of one family (both Wan or both LTX)")
        if self.i2v_weights is not None and self.i2v_pipeline is None:
            raise ValueError("i2v_weights needs i2v_pipeline")
        self._attention_installed()
        for lora in self.loras:
            if not lora.path.expanduser().exists():
                raise ValueError(f"loras: {lora.path} does not exist")
        if self.loras and _missing("peft"):
            raise ValueError(
                "loras need the peft package, which is not installed (pip install 'reelq[diffusers]')"
            )
        self._parallel_possible()
        return self

    def _parallel_possible(self) -> None:
        """Refuse the multi-GPU combinations that cannot render, when the models file is read."""
        n = self.gpus_per_worker
        if n == 1:
            if self.parallel is not None:
                raise ValueError(f"parallel = {self.parallel!r} needs gpus_per_worker = 2, 4 or 8")
            return
        mode = self.parallel_mode
        if mode == "cfg" and self.guidance_scale <= 1:
            raise ValueError(
                "parallel = 'cfg' splits classifier-free guidance, which a guidance of 1 or less turns off:"
                " there is no second branch to give the second GPU; use 'ulysses' or 'ring'"
            )
        if mode == "cfg" and n != 2:
            raise ValueError(
                f"parallel = 'cfg' runs its two guidance branches on exactly 2 GPUs, not {n};"
                " for 4 or 8 use 'ulysses' or 'ring'"
            )
        if mode == "ring" and self.attention_backend not in (
            None,
            "flash",
            "_native_cudnn",
            "_native_flash",
            "sage",
        ):
            raise ValueError(
                f"parallel = 'ring' needs an attention backend that returns the log-sum-exp (flash,"
                f" _native_cudnn, _native_flash or sage), not {self.attention_backend!r}"
            )
        if self.cpu_offload != "none":
            raise ValueError(
                "cpu_offload keeps the model off the GPUs: it cannot be combined with gpus_per_worker > 1"
            )
        if self.cache is not None:
            raise ValueError(
                "a step cache decides per GPU: it cannot be combined with gpus_per_worker > 1 yet"
            )
        if self.device not in ("auto", "cuda", "cpu"):
            raise ValueError(
                f"device {self.device!r} names one device; a worker spanning {n} GPUs uses 'auto' (its GPUs)"
            )

    def _attention_installed(self) -> None:
        backend = self.attention_backend
        if backend is None:
            return
        if backend.endswith(HUB_ATTENTION_SUFFIX):
            raise ValueError(
                f"attention_backend {backend!r} downloads its kernel from the Hugging Face Hub at run time;"
                " workers run offline: install the kernel's package and name its local backend"
            )
        module, package = ATTENTION_PACKAGES.get(backend, (None, None))
        if module is not None and _missing(module):
            raise ValueError(f"attention_backend {backend!r} needs {package}, which is not installed")

    @property
    def family(self) -> str:
        return T2V_PIPELINES[self.pipeline]

    @property
    def image_pipeline(self) -> str | None:
        """The pipeline class that serves first_image (and last_image), if any."""
        if self.i2v_pipeline is not None:
            return self.i2v_pipeline
        # LTXConditionPipeline does text-to-video and image conditioning with one set of weights.
        return self.pipeline if self.pipeline in I2V_PIPELINES else None

    @property
    def image_weights(self) -> Path:
        return self.i2v_weights or self.weights

    @property
    def vae_precision(self) -> str:
        return self.vae_dtype or ("float32" if self.family == "wan" else self.dtype)

    @property
    def num_steps(self) -> int:
        return self.steps or FAMILY_STEPS[self.family]

    @property
    def guidance_scale(self) -> float:
        return FAMILY_GUIDANCE[self.family] if self.guidance is None else self.guidance

    @property
    def parallel_mode(self) -> str | None:
        """How this model splits a render over its worker's GPUs (None: one GPU)."""
        if self.gpus_per_worker == 1:
            return None
        if self.parallel is not None:
            return self.parallel
        return "cfg" if self.gpus_per_worker == 2 and self.guidance_scale > 1 else "ulysses"


# "org/name": a Hugging Face repository id (weights already in the local cache).
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_weights(value: Path) -> Path:
    """The directory of a model's weights: `value` itself, or, for a Hugging Face repository id
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers") that is no local directory, its snapshot in the local
    Hugging Face cache (`HF_HUB_CACHE`), found offline: nothing is downloaded."""
    path = value.expanduser()
    if (path / "model_index.json").is_file() or not _REPO_ID.fullmatch(str(value)):
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # the diffusers extra is not installed here
        return path
    try:
        return Path(snapshot_download(str(value), local_files_only=True))
    except Exception:  # not in the cache: the caller reports the missing model_index.json
        return path


def parse_options(options: dict[str, Any]) -> DiffusersOptions:
    return DiffusersOptions.model_validate(options)


def limits_of(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    """Validate a diffusers model's keys (its weights must be on disk) and say what it can do."""
    opts = validate_options(DiffusersOptions, options)
    for name, path in (("weights", opts.weights), ("i2v_weights", opts.i2v_weights)):
        if path is not None and not (resolve_weights(path) / "model_index.json").is_file():
            raise ValueError(
                f"{name}: {path} holds no model_index.json (write it with save_pretrained) and is no model"
                " in the local Hugging Face cache"
            )
    _heads_divide(opts)
    image_pipeline = opts.image_pipeline
    last_image = opts.last_image
    if last_image is None:
        last_image = image_pipeline is not None and _takes_last_image(
            image_pipeline, resolve_weights(opts.image_weights)
        )
    return ModelLimits(
        first_image=image_pipeline is not None,
        last_image=image_pipeline is not None and last_image,
        max_duration=min(MAX_DURATION, max_duration or FAMILY_MAX_DURATION[opts.family]),
    )


def _heads_divide(opts: DiffusersOptions) -> None:
    """Ulysses gives each GPU a share of the attention heads: their number must divide evenly."""
    if opts.parallel_mode != "ulysses":
        return
    config = _read_json(resolve_weights(opts.weights) / "transformer" / "config.json")
    heads = config.get("num_attention_heads")
    if isinstance(heads, int) and heads % opts.gpus_per_worker:
        raise ValueError(
            f"parallel = 'ulysses' splits the transformer's {heads} attention heads over"
            f" {opts.gpus_per_worker} GPUs: they must divide evenly; use 'ring' or fewer GPUs"
        )


def _takes_last_image(pipeline: str, weights: Path) -> bool:
    """Whether a checkpoint was trained to end on a given frame, from its saved configuration.

    - LTXConditionPipeline: yes (a condition at the last frame index); LTXImageToVideoPipeline: no.
    - WanImageToVideoPipeline: Wan 2.2 TI2V-5B (`expand_timesteps`) conditions the first frame only;
      Wan 2.1 I2V (a CLIP image encoder, `image_dim` set) only when it is the FLF2V checkpoint (it
      has `pos_embed_seq_len`); Wan 2.2 I2V-A14B (no image encoder) yes.
    """
    if pipeline == "LTXConditionPipeline":
        return True
    if pipeline != "WanImageToVideoPipeline":
        return False
    index = _read_json(weights / "model_index.json")
    if index.get("expand_timesteps"):
        return False
    transformer = _read_json(weights / "transformer" / "config.json")
    if transformer.get("image_dim") is not None:
        return transformer.get("pos_embed_seq_len") is not None
    return True


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
