"""From a request to a model's native shape, and from its frames back to what the contract promises.

A model renders at its own frame rate, in frame counts and sizes its architecture allows (Wan: 4k+1
frames at 16 fps, sizes in multiples of 16; LTX-Video: 8k+1 frames, multiples of 32). `plan` picks
the smallest native render that covers the request; `conform` turns the rendered frames into exactly
`duration x 24` frames of the SPEC size: each output frame shows the native frame nearest its time,
scaled to cover the SPEC size and centre-cropped (never stretched).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from reelq.domain import VideoSpec

if TYPE_CHECKING:  # torch is the diffusers extra's: imported where the frames are made, not here
    import numpy as np
    import torch

# Frames resized per batch on the device: bounds the memory of the float copies (a 1080p frame is
# 24 MB in float32) while keeping the GPU busy.
CONFORM_BATCH = 8


@dataclass(frozen=True, slots=True)
class NativeRules:
    """What a loaded pipeline accepts: frames = temporal x k + 1, sizes multiples of `grid`."""

    fps: int
    temporal: int
    grid: int
    max_pixels: int


@dataclass(frozen=True, slots=True)
class RenderPlan:
    width: int
    height: int
    num_frames: int
    fps: int

    def source_index(self, out_frame: int, out_fps: int) -> int:
        """The native frame nearest in time to output frame `out_frame`."""
        return min(self.num_frames - 1, math.floor(out_frame * self.fps / out_fps + 0.5))


def plan(spec: VideoSpec, rules: NativeRules) -> RenderPlan:
    """The smallest native render covering `spec`: at least its duration, its aspect ratio, and its size
    or, above `max_pixels`, that area (scaled up by `conform`)."""
    seconds = spec.frame_count / spec.fps
    needed = math.ceil(seconds * rules.fps - 1e-9)
    num_frames = rules.temporal * math.ceil(max(0, needed - 1) / rules.temporal) + 1
    width, height = spec.width, spec.height
    g = rules.grid
    if width * height <= rules.max_pixels:
        w, h = g * math.ceil(width / g), g * math.ceil(height / g)
    else:
        scale = math.sqrt(rules.max_pixels / (width * height))
        w, h = max(g, g * round(width * scale / g)), max(g, g * round(height * scale / g))
    return RenderPlan(width=w, height=h, num_frames=num_frames, fps=rules.fps)


def conform(video: torch.Tensor, spec: VideoSpec, render: RenderPlan) -> Iterator[np.ndarray]:
    """Yield the spec's frames (H x W x 3 uint8 numpy) from `video`, a (frames, 3, h, w) tensor in [0, 1]
    on any device; resizing runs where the tensor lives (the GPU, for a real model)."""
    return conform_stream([video], spec, render)


def conform_stream(
    chunks: Iterable[torch.Tensor], spec: VideoSpec, render: RenderPlan
) -> Iterator[np.ndarray]:
    """`conform` over a video that arrives in pieces: (frames, 3, h, w) tensors in [0, 1], in order (a VAE
    decoding frame group by group). Each output frame is yielded as soon as its native frame has
    arrived; frames no later output needs are dropped. The same batches of the same frames as `conform`
    of the whole video, so the same pixels."""
    import torch

    indices = [render.source_index(i, spec.fps) for i in range(spec.frame_count)]
    held: list[torch.Tensor] = []  # native frames [base, base + len(held)) still needed
    base = 0
    out = 0  # the next output frame
    for chunk in chunks:
        held.extend(chunk.unbind(0))
        arrived = base + len(held)
        # Whole batches only (the last may be short): the batch boundaries are those of `conform`.
        while out < len(indices):
            end = min(out + CONFORM_BATCH, len(indices))
            if indices[end - 1] >= arrived:
                break
            batch = torch.stack([held[i - base] for i in indices[out:end]])
            yield from _resize(batch, spec)
            out = end
        keep_from = indices[out] if out < len(indices) else arrived
        del held[: max(0, keep_from - base)]
        base = max(base, keep_from)
    if out < len(indices):  # fewer frames than the plan: conform of the whole video would fail alike
        ended, needed = base + len(held), indices[-1] + 1
        raise ValueError(f"the video ended at native frame {ended}, the plan needs {needed}")


def _resize(batch: torch.Tensor, spec: VideoSpec) -> Iterator[np.ndarray]:
    import torch
    import torch.nn.functional as F

    _, _, h, w = batch.shape
    width, height = spec.width, spec.height
    scale = max(width / w, height / h)
    scaled_w, scaled_h = max(width, round(w * scale)), max(height, round(h * scale))
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    batch = batch.float()
    if (scaled_w, scaled_h) != (w, h):
        # antialias only matters when shrinking; bicubic keeps upscaled edges crisp.
        batch = F.interpolate(batch, size=(scaled_h, scaled_w), mode="bicubic", antialias=scale < 1)
    batch = batch[:, :, top : top + height, left : left + width]
    pixels = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    yield from pixels.cpu().numpy()
