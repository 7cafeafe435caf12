"""Render engines: the `Engine` protocol and the registry of engines a model can be served by.

`ENGINES` is the one list of engine names: `Settings` validates REELQ_ENGINES and the models file
against it and `build_engines` builds from it. A factory imports its engine when called, so only
processes that render pay for an engine's dependencies (the API process validates names and
options, never renders). `OPTION_CHECKERS` validates a model's engine-specific keys from the
models file and says what the model can do (`ModelLimits`), from configuration alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from reelq.domain import MAX_DURATION, ModelLimits
from reelq.engines.base import Engine, ProgressCallback, RenderAborted, RenderError, RenderInputs

if TYPE_CHECKING:
    from reelq.config import Settings

EngineFactory = Callable[["Settings"], Engine]
# (the model's engine-specific keys, its max_duration) -> its limits; raises ValueError when wrong.
OptionsChecker = Callable[[dict[str, Any], int | None], ModelLimits]


def _synthetic(settings: Settings) -> Engine:
    from reelq.engines.synthetic import SyntheticEngine

    return SyntheticEngine(delay_seconds=settings.synthetic_delay)


def _diffusers(settings: Settings) -> Engine:
    from reelq.engines.diffusers.engine import DiffusersEngine

    return DiffusersEngine(settings)


def _relay(settings: Settings) -> Engine:
    from reelq.engines.relay import RelayPlaceholder

    return RelayPlaceholder()


def _relay_options(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    from reelq.engines.relay.options import limits_of

    return limits_of(options, max_duration)


def _no_options(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    if options:
        raise ValueError(f"unknown key {sorted(options)[0]!r} for this engine")
    return ModelLimits(max_duration=max_duration or MAX_DURATION)


def _diffusers_options(options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    from reelq.engines.diffusers.options import limits_of

    return limits_of(options, max_duration)


# name -> factory, and name -> options checker. A relayed model is served by the relay worker
# (worker/relay.py), never by a render worker: its factory only says so.
ENGINES: dict[str, EngineFactory] = {"synthetic": _synthetic, "diffusers": _diffusers, "relay": _relay}
OPTION_CHECKERS: dict[str, OptionsChecker] = {"diffusers": _diffusers_options, "relay": _relay_options}
RELAY_ENGINE = "relay"
DEFAULT_ENGINE = "synthetic"


def check_model_options(engine: str, options: dict[str, Any], max_duration: int | None) -> ModelLimits:
    """Validate a model's engine-specific keys (no engine is loaded) and return what it can do."""
    return OPTION_CHECKERS.get(engine, _no_options)(options, max_duration)


def relayed_models(settings: Settings) -> list[str]:
    """The relayed models of this process's pools: its relay worker serves them (render workers never)."""
    return [m for m in settings.served_models if settings.catalog[m].engine == RELAY_ENGINE]


def rendered_models(settings: Settings) -> list[str]:
    """The models this process's render workers load and claim: its pools' models that are not relayed."""
    return [m for m in settings.served_models if settings.catalog[m].engine != RELAY_ENGINE]


def unrendered_models(settings: Settings) -> list[str]:
    """What a render worker's claim excludes: relayed models, and every model of another pool (SPEC §7)."""
    rendered = set(rendered_models(settings))
    return [m for m in settings.models if m not in rendered]


def build_engines(settings: Settings) -> dict[str, Engine]:
    """One engine per model this process serves (its pools'); models of one engine share an instance.

    A model of another pool is never loaded: its weights belong on that pool's cards (SPEC §7). A
    relayed model gets the relay placeholder, which only says where such a model is served.
    """
    built: dict[str, Engine] = {}
    by_model: dict[str, Engine] = {}
    for model in settings.served_models:
        name = settings.engine_for(model)
        if name not in built:
            built[name] = ENGINES[name](settings)
        by_model[model] = built[name]
    return by_model


__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "OPTION_CHECKERS",
    "RELAY_ENGINE",
    "Engine",
    "EngineFactory",
    "OptionsChecker",
    "ProgressCallback",
    "RenderAborted",
    "RenderError",
    "RenderInputs",
    "build_engines",
    "check_model_options",
    "relayed_models",
    "rendered_models",
    "unrendered_models",
]
