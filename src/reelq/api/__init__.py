"""The HTTP API (FastAPI): Vidu routes, signed downloads, health."""

from reelq.api.app import create_app, create_asgi

__all__ = ["create_app", "create_asgi"]
