"""The seam between a worker and whatever makes the pixels."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from reelq.domain import VideoSpec

ProgressCallback = Callable[[float], None]
"""Called with the fraction done (0..1). It may raise `RenderAborted` to stop the render."""


class RenderAborted(Exception):
    """Raised through the progress callback when the render must stop (lease lost, drain)."""


class RenderCancelled(RenderAborted):
    """Raised through the progress callback when the task's owner cancelled it (or deleted it).

    Engines need nothing special for it: calling the progress callback between frames or denoising
    steps is the hook. An engine that holds resources across steps may catch `RenderAborted` (this
    is one) to release them, and must re-raise it.
    """


class RenderError(Exception):
    """A render failed for a reason worth showing to the client (it becomes the task's `error`)."""


class EngineBroken(RenderError):
    """The render failed in a way that leaves this process unable to render again: a CUDA error other
    than running out of memory (an illegal memory access, a device-side assert, an Xid) corrupts the
    process's GPU context, and every later call on it fails too.

    The worker process then ends without settling the task, as if it had crashed: the supervisor
    starts a fresh process (a fresh context) and the task is retried there, its attempt spent, so
    a task that breaks the GPU every time fails after REELQ_MAX_ATTEMPTS instead of crash-looping.
    """


@dataclass(frozen=True)
class RenderInputs:
    """Decoded input images (RGB) and their content digests (part of the determinism key)."""

    first_image: Image.Image | None = None
    last_image: Image.Image | None = None
    digests: tuple[str, ...] = field(default=())


class Engine(Protocol):
    """Turns a spec (and optional images) into an MP4 file at `out_path`."""

    name: str

    def render(
        self, spec: VideoSpec, inputs: RenderInputs, out_path: Path, progress: ProgressCallback
    ) -> None: ...


def derive_seed(domain: bytes, spec: VideoSpec, inputs: RenderInputs) -> int:
    """A 128-bit seed from everything that defines the video (length-prefixed, so fields never blur):
    a retried task renders the same video as its first attempt would have."""
    h = hashlib.sha256(domain)
    for part in (spec.model, spec.prompt, "" if spec.seed is None else str(spec.seed), *inputs.digests):
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return int.from_bytes(h.digest()[:16], "big")
