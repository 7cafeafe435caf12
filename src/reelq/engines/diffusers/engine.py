"""The diffusers engine: renders with the open video models a worker loaded once, at start.

One instance per render worker process holds every diffusers model of the catalog on the worker's
device (the supervisor gives each worker its own GPU, or a group of them), and renders one request at
a time. Models that span several GPUs (`gpus_per_worker`) are loaded on every rank of the worker's
group (ranks.py) and render there in lockstep (parallel.py); the others render on its first GPU. Progress
is reported after every denoising step; the worker's progress callback raises to stop a render
between steps (deadline, lease lost, drain, cancel). Out of GPU memory fails the task with a clear
message and leaves the worker ready for the next one.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelq.domain import VideoSpec
from reelq.engines import rendered_models
from reelq.engines.base import (
    EngineBroken,
    ProgressCallback,
    RenderAborted,
    RenderError,
    RenderInputs,
    derive_seed,
)
from reelq.engines.diffusers.decode import can_stream, decode_groups
from reelq.engines.diffusers.frames import RenderPlan, conform_stream, plan
from reelq.engines.diffusers.options import parse_options
from reelq.engines.diffusers.parallel import agree_to_stop, set_up, split_problem
from reelq.engines.diffusers.pipelines import LoadedModel, load_model, pick_device
from reelq.engines.diffusers.ranks import RankGroup, RenderRequest, rank_device
from reelq.media import Mp4Writer, cover_fit

if TYPE_CHECKING:
    from reelq.config import Settings

import torch

log = logging.getLogger(__name__)

_SEED_DOMAIN = b"reelq-diffusers-v1"
# Shares of the progress bar: denoising steps, then the VAE decode, then conforming and encoding.
STEPS_SHARE, DECODE_SHARE = 0.85, 0.05


class DiffusersEngine:
    name = "diffusers"

    def __init__(self, settings: Settings, models: dict[str, LoadedModel] | None = None) -> None:
        """Load every diffusers model this worker serves (its pools', SPEC §7), or take `models`."""
        # A model that cannot load (missing files, too little GPU memory) fails its tasks with the
        # reason instead of taking the worker down: the other models keep rendering, and no task of
        # it waits forever for a worker that can never start.
        self.unavailable: dict[str, str] = {}
        self.group: RankGroup | None = None
        self._in_step = True  # a multi-GPU render's ranks are in step (between renders, or steps)
        if models is None:
            models = {}
            served = set(rendered_models(settings))  # never another pool's weights on this card
            ours = {
                name: entry.options
                for name, entry in settings.catalog.items()
                if entry.engine == self.name and name in served
            }
            parsed = {name: parse_options(raw) for name, raw in ours.items()}
            # The followers get the raw options, as the models file has them, and parse them alike.
            spanning = {name: ours[name] for name, options in parsed.items() if options.gpus_per_worker > 1}
            if spanning:
                sizes = {parsed[name].gpus_per_worker for name in spanning}
                if len(sizes) > 1:  # the supervisor refuses such a node; this is for callers that bypass it
                    raise ValueError(f"one worker, models spanning different GPU counts: {sorted(sizes)}")
                self.group = RankGroup(sizes.pop(), spanning)
            for name, options in parsed.items():
                started = time.monotonic()
                if options.gpus_per_worker > 1:
                    # Not caught: every rank loads it, and a rank that skipped it would leave the others
                    # waiting in the collective set-up; the worker ends and its supervisor retries.
                    models[name] = load_model(options, rank_device(options.device, 0))
                    set_up(models[name], 0, options.gpus_per_worker)
                    log.info("model %s: loaded on %d ranks", name, options.gpus_per_worker)
                    continue
                try:
                    models[name] = load_model(options, pick_device(options.device))
                except Exception as exc:
                    log.exception("model %s: cannot load %s from %s", name, options.pipeline, options.weights)
                    self.unavailable[name] = f"{type(exc).__name__}: {exc}"[:300]
                    _free_memory(pick_device(options.device))
                    continue
                log.info(
                    "model %s: %s loaded on %s in %.1f s",
                    name,
                    options.pipeline,
                    models[name].device,
                    time.monotonic() - started,
                )
        self.models = models
        if self.group is not None:
            self.group.ready()

    def close(self) -> None:
        """Stop the follower processes of a multi-GPU worker (none otherwise)."""
        if self.group is not None:
            self.group.close()

    def render(
        self, spec: VideoSpec, inputs: RenderInputs, out_path: Path, progress: ProgressCallback
    ) -> None:
        if spec.model in self.unavailable:
            raise RenderError(f"model {spec.model} could not be loaded ({self.unavailable[spec.model]})")
        model = self.models[spec.model]
        pipe = model.image if inputs.first_image is not None else model.text
        if pipe is None:  # refused at create (ModelLimits); kept for calls that bypass the API
            raise RenderError(f"model {spec.model} has no image-to-video pipeline configured")
        render = plan(spec, model.rules)
        spanning = self.group is not None and model.options.gpus_per_worker > 1
        if spanning:
            assert self.group is not None
            problem = split_problem(model, pipe, render.width, render.height, render.num_frames)
            if problem is not None:  # before any rank starts: they all stay in step
                raise RenderError(problem)
            self.group.announce(RenderRequest(spec.model, spec, inputs))
        self._in_step = True  # until a multi-GPU render's loop is left between two steps
        try:
            self._render(model, pipe, spec, inputs, render, out_path, progress)
        except Exception as exc:
            if not spanning or self._in_step or isinstance(exc, RenderAborted):
                raise  # every rank left the loop at the same step (or after its last one)
            # The followers may be waiting in a collective this rank will never reach: the group is
            # out of step, and only a fresh one is sure to be in step again.
            assert self.group is not None
            self.group.after_failure()  # a follower died: ends this process as a lost rank
            log.error("model %s: rank 0 failed during a multi-GPU render", spec.model, exc_info=True)
            raise EngineBroken(
                f"multi-GPU render failed on rank 0 ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            ) from None

    def _render(
        self,
        model: LoadedModel,
        pipe: Any,
        spec: VideoSpec,
        inputs: RenderInputs,
        render: RenderPlan,
        out_path: Path,
        progress: ProgressCallback,
    ) -> None:
        # Dropped (set to None) once encoded: the frames' memory is free before the next render.
        video: torch.Tensor | None
        latents: torch.Tensor | None
        try:
            if model.options.pre_encode and can_stream(pipe):
                # Encode each frame group while the VAE decodes the next (see decode.py).
                latents = self._denoise(model, pipe, spec, inputs, render, progress, output_type="latent")
                with torch.inference_mode():
                    groups = decode_groups(pipe, latents)
                    self._encode(groups, spec, render, out_path, progress, STEPS_SHARE + DECODE_SHARE)
                latents = None
            else:
                video = self._denoise(model, pipe, spec, inputs, render, progress)
                progress(STEPS_SHARE + DECODE_SHARE)
                self._encode([video], spec, render, out_path, progress, STEPS_SHARE + DECODE_SHARE)
        except torch.OutOfMemoryError:
            _free_memory(model.device)
            raise RenderError(
                f"out of GPU memory rendering {render.width}x{render.height}, {render.num_frames} frames; "
                "ask for a lower resolution or a shorter video"
            ) from None
        except RuntimeError as exc:
            if not breaks_the_gpu_context(exc):
                raise
            log.error(
                "model %s: GPU error, this process's CUDA context is unusable", spec.model, exc_info=True
            )
            raise EngineBroken(f"GPU error ({str(exc).splitlines()[0][:200]})") from None
        finally:
            video = latents = None
            if model.device.type == "cuda":
                torch.cuda.empty_cache()

    def _denoise(
        self,
        model: LoadedModel,
        pipe: Any,
        spec: VideoSpec,
        inputs: RenderInputs,
        render: RenderPlan,
        progress: ProgressCallback,
        output_type: str = "pt",
    ) -> torch.Tensor:
        """The denoising loop (and, with output_type "pt", the pipeline's own decode)."""
        steps = model.options.num_steps
        spanning = self.group is not None and model.options.gpus_per_worker > 1

        def on_step(_pipe: Any, step: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if not spanning:
                progress(STEPS_SHARE * (step + 1) / steps)  # raises to stop the render here
                return tensors
            stop: BaseException | None = None
            try:
                progress(STEPS_SHARE * (step + 1) / steps)
            except BaseException as exc:
                stop = exc
            # Every rank leaves the loop at this step, or none does.
            if agree_to_stop(stop is not None, model.device):
                self._in_step = True
                raise stop if stop is not None else RenderAborted("stopped by another rank")
            self._in_step = step + 1 >= len(_pipe.scheduler.timesteps)
            return tensors

        self._in_step = not spanning
        args = call_arguments(model, pipe, spec, inputs, render) | {"output_type": output_type}
        with torch.inference_mode():
            output = pipe(**args, callback_on_step_end=on_step)
        # "pt": (frames, 3, h, w) in [0, 1]; "latent": the latents batch; on the pipeline's device.
        return output.frames if output_type == "latent" else output.frames[0]

    @staticmethod
    def _encode(
        video: Iterable[torch.Tensor],
        spec: VideoSpec,
        render: RenderPlan,
        out_path: Path,
        progress: ProgressCallback,
        start: float,
    ) -> None:
        """Conform `video` (its frames in one or more (frames, 3, h, w) pieces) and encode it."""
        total = spec.frame_count
        with Mp4Writer(out_path, spec.width, spec.height, spec.fps) as writer:
            for i, frame in enumerate(conform_stream(video, spec, render)):
                writer.write(frame)
                if i % spec.fps == 0:
                    progress(start + (1 - start) * i / total)


def breaks_the_gpu_context(exc: BaseException) -> bool:
    """A CUDA error after which this process's context is unusable (not out-of-memory, handled above).

    torch raises these as `torch.AcceleratorError` (2.8 and later) or, before, as a RuntimeError
    whose message starts with "CUDA error".
    """
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and str(exc).startswith("CUDA error")


def denoise_arguments(model: LoadedModel, pipe: Any, spec: VideoSpec, inputs: RenderInputs) -> dict[str, Any]:
    """The pipeline call for a request at its native plan: what every rank of a group calls alike."""
    return call_arguments(model, pipe, spec, inputs, plan(spec, model.rules))


def call_arguments(
    model: LoadedModel, pipe: Any, spec: VideoSpec, inputs: RenderInputs, render: RenderPlan
) -> dict[str, Any]:
    """The pipeline call for a request: size, frames, steps, guidance, seed and conditioning images
    (scaled to cover the render size and centre-cropped, as the output is: never stretched)."""
    options = model.options
    seed = derive_seed(_SEED_DOMAIN, spec, inputs) % (1 << 63)
    # A CPU generator: the same seed draws the same noise on any GPU (and on the CPU).
    generator = torch.Generator(device="cpu").manual_seed(seed)
    args: dict[str, Any] = {
        "prompt": spec.prompt,
        "negative_prompt": options.negative_prompt,
        "width": render.width,
        "height": render.height,
        "num_frames": render.num_frames,
        "num_inference_steps": options.num_steps,
        "guidance_scale": options.guidance_scale,
        "generator": generator,
        "output_type": "pt",
    }
    if options.max_sequence_length is not None:
        args["max_sequence_length"] = options.max_sequence_length
    if options.family == "ltx":
        args["frame_rate"] = render.fps
    if options.guidance_2 is not None and getattr(pipe, "transformer_2", None) is not None:
        args["guidance_scale_2"] = options.guidance_2
    first = inputs.first_image and cover_fit(inputs.first_image, render.width, render.height)
    last = inputs.last_image and cover_fit(inputs.last_image, render.width, render.height)
    class_name = type(pipe).__name__
    if first is not None and class_name == "LTXConditionPipeline":
        from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

        conditions = [LTXVideoCondition(image=first, frame_index=0)]
        if last is not None:
            conditions.append(LTXVideoCondition(image=last, frame_index=render.num_frames - 1))
        args["conditions"] = conditions
    elif first is not None:
        args["image"] = first
        if last is not None:
            args["last_image"] = last
    args.update(options.pipeline_args)
    return args


def _free_memory(device: torch.device) -> None:
    """After an out-of-memory error or a failed load: drop what was left and give the cache back."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
