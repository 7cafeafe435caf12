"""The HTTP transports over the task service: the FastAPI app and the raw-ASGI fast path."""

from __future__ import annotations

from reelq.api.app import create_app, create_asgi

__all__ = ["create_app", "create_asgi"]
