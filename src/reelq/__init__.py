"""reelq: a self-hosted, Vidu-compatible asynchronous video-generation API.

`reelq.Client` / `reelq.AsyncClient` are the SDK (see `reelq.client`), imported lazily so
server processes that never use them do not pay for it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient"):
        from reelq import client

        return getattr(client, name)
    raise AttributeError(f"module 'reelq' has no attribute {name!r}")
