"""The relay engine: serve a model by forwarding it to an upstream API and re-hosting its videos.

A relayed task only waits (minutes, upstream), so it never takes a render slot: render workers skip
relayed models, and one asynchronous relay worker process (`reelq.worker.relay`) holds many of them
at once. This package is its pure parts: no database, no process.

- `options`: the models-file keys (light; read by every process at start-up)
- `upstream`: what an upstream is to the worker (create, query, cancel) and its typed errors
- `reelq_upstream`, `vidu_upstream`: the two upstreams (a server of this API; the Vidu platform)
- `signature`: the Vidu platform's callback signature (HMAC-SHA256), computed and verified
- `rehost`: the bounded, SSRF-guarded download of the finished video into our storage
- `clients`: the client of each channel's upstream, and the start-up check of their keys
- `pokes`: how the API's callback route wakes the relay worker for one task, and that route's URL
"""

from __future__ import annotations

from pathlib import Path

from reelq.domain import VideoSpec
from reelq.engines.base import ProgressCallback, RenderError, RenderInputs


class RelayPlaceholder:
    """What a render worker holds for a relayed model: it never renders one (claims skip them)."""

    name = "relay"

    def render(
        self, spec: VideoSpec, inputs: RenderInputs, out_path: Path, progress: ProgressCallback
    ) -> None:
        raise RenderError(
            f"model {spec.model!r} is relayed to an upstream: it is served by the relay worker of "
            "`reelq serve` / `reelq worker`, not rendered here"
        )
