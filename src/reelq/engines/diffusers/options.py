"""A diffusers model's keys in the models file, and what the model can be asked for.

Read by the API process at start-up, so this module imports neither torch nor diffusers: what a
checkpoint can do (first+last frame or not) is read from the JSON files `save_pretrained` wrote
beside the weights (`model_index.json`, `transformer/config.json`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from reelq.catalog import validate_options
from reelq.domain import MAX_DURATION, ModelLimits

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
AttentionBackend = str  # diffusers' names ("native", "flash", "_flash_3", "sage", "_native_cudnn", …)


class CacheOptions(BaseModel):
    """Step caching (diffusers' `enable_cache`): reuses a step's residual when the first block's output
    barely changed. Faster, at a quality cost that grows with `threshold`; off unless configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["first_block"] = "first_block"
    threshold: float = Field(0.05, gt=0, le=1)


class DiffusersOptions(BaseModel):
    """The `[models.<name>]` keys of a diffusers model (README "The diffusers engine")."""

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
    max_sequence_length: int | None = Field(None, ge=16, le=4096)  # None: the pipeline's default
    # Passed to every call of the pipeline as is (e.g. LTX 0.9.1+: decode_timestep = 0.05).
    pipeline_args: dict[str, float | int | str | bool] = Field(default_factory=dict)

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
        return self

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
