"""Render engines: the `Engine` protocol and the registry of engines a model can be served by.

`ENGINES` is the one list of engine names: `Settings` validates REELQ_ENGINES against it and
`build_engines` builds from it. A factory imports its engine when called, so only processes
that render pay for an engine's dependencies (the API process validates names, never renders).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from reelq.engines.base import Engine, ProgressCallback, RenderAborted, RenderError, RenderInputs

if TYPE_CHECKING:
    from reelq.config import Settings

EngineFactory = Callable[["Settings"], Engine]


def _synthetic(settings: Settings) -> Engine:
    from reelq.engines.synthetic import SyntheticEngine

    return SyntheticEngine(delay_seconds=settings.synthetic_delay)


# name -> factory; later `diffusers` and `relay` join here.
ENGINES: dict[str, EngineFactory] = {"synthetic": _synthetic}
DEFAULT_ENGINE = "synthetic"


def build_engines(settings: Settings) -> dict[str, Engine]:
    """One engine per configured model; models served by the same engine share one instance."""
    built: dict[str, Engine] = {}
    by_model: dict[str, Engine] = {}
    for model in settings.models:
        name = settings.engine_for(model)
        if name not in built:
            built[name] = ENGINES[name](settings)
        by_model[model] = built[name]
    return by_model


__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "Engine",
    "EngineFactory",
    "ProgressCallback",
    "RenderAborted",
    "RenderError",
    "RenderInputs",
    "build_engines",
]
