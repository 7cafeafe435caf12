"""Render engines: `synthetic` (CPU, deterministic), later `diffusers` and `relay`."""

from reelq.engines.base import Engine, ProgressCallback, RenderAborted, RenderError, RenderInputs

__all__ = ["Engine", "ProgressCallback", "RenderAborted", "RenderError", "RenderInputs"]
