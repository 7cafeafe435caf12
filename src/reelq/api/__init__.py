"""The HTTP API (FastAPI): Vidu routes, signed downloads, health."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "create_asgi"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, not on import: the framework-free modules of this package (errors,
    # schemas, longpoll) are imported by the task service (reelq/service), which must not pull
    # FastAPI in with them.
    if name in __all__:
        from reelq.api import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
